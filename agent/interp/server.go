package interp

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/internal/durable"
	"github.com/meshagent/agent/placement"
	"github.com/meshagent/agent/state"
)

// This file is the server's side: starting, stopping, re-adopting and
// restarting the interpreters of this host.

// The queries a server answers for interpreters, addressed to it alone.
const (
	querySpawn = "spawn"
	queryStop  = "stop-interpreter"
	queryExit  = "interpreter-exit"
	// querySuperseded, addressed to an interpreter's own member, tells its
	// supervisor that a newer generation of its request was placed: sent
	// by its host when the host's registry does not list it.
	querySuperseded = "interpreter-superseded"
)

const (
	// startTimeout bounds a server's start of one supervisor.
	startTimeout = 10 * time.Second
	// settle is how long a new interpreter must keep running before its
	// supervisor reports it started: one that exits at once is reported as
	// died, with its status, rather than as started.
	settle = 200 * time.Millisecond
)

// spawnOrder is what the asker sends the elected server.
type spawnOrder struct {
	RequestID string   `msgpack:"rid"`
	Kind      string   `msgpack:"k"`
	Args      []string `msgpack:"a,omitempty"`
	Asker     string   `msgpack:"f"`
	Restart   string   `msgpack:"rp,omitempty"`
	Gen       int      `msgpack:"g,omitempty"`
	// Replaces names the lost interpreter an owner re-places with this
	// order; the server that starts it reports interpreter-replaced.
	Replaces string `msgpack:"rl,omitempty"`
	// Lease is the request's OwnerLease: the server stops the interpreter
	// once Asker has been gone that long (leases.go).
	Lease time.Duration `msgpack:"ol,omitempty"`
	// ID names this order: askOne sends it again when the first send is
	// not acknowledged within a second, and the server must carry it out
	// once. Empty from an older agent.
	ID string `msgpack:"i,omitempty"`
	// restart marks a host's own restart of a request, and ordered is
	// the registry's Ordered of the start it repeats. Neither is sent: an
	// order from an asker starts a lineage of its own.
	restart bool   `msgpack:"-"`
	ordered int    `msgpack:"-"`
	owner   string `msgpack:"-"` // with restart: the lease's owner, kept`
}

// spawnAnswer is the server's reply: where the interpreter runs, or why not.
type spawnAnswer struct {
	Name     string `msgpack:"n,omitempty"`
	PID      int    `msgpack:"p,omitempty"`
	Endpoint string `msgpack:"e,omitempty"`
	Existing bool   `msgpack:"x,omitempty"`
	Gen      int    `msgpack:"g,omitempty"`
	Refusal  string `msgpack:"r,omitempty"`
	// Conflict, when set, says the request's interpreter runs here but
	// the order asked for something else (another kind, say).
	Conflict string `msgpack:"cf,omitempty"`
	// Died, when set, says the interpreter started but exited at once
	// (its status and first lines of output): no other server should try.
	Died string `msgpack:"d,omitempty"`
	// Conn is the connection of a kind with a connection file, key
	// included: sent only to the asker that started the interpreter.
	Conn *connAnswer `msgpack:"c,omitempty"`
	// Launched, with a Refusal, says a supervisor was launched for the
	// order and then stopped: its member may have been seen alive at the
	// order's generation, so the next attempt must go above it.
	Launched bool `msgpack:"l,omitempty"`
}

// stopOrder names an interpreter to stop; with RequestID instead, it asks
// the server to stop whatever it started for that request (an asker taking
// back a spawn it reported as failed).
type stopOrder struct {
	Name string `msgpack:"n"`
	// A take-back names the spawn order it takes back instead: the
	// request and the generation the order carried. Only what that order
	// started stops, and the order, should it arrive late, starts nothing.
	RequestID string `msgpack:"rid,omitempty"`
	Gen       int    `msgpack:"g,omitempty"`
	TakeBack  bool   `msgpack:"tb,omitempty"` // false: an older asker's take-back, of any generation
	// Superseded, with Name, says the request's owner has seen this
	// generation of it, newer than the named interpreter's: the host
	// stops it unless it is that new.
	Superseded int `msgpack:"sg,omitempty"`
}

// takeBackMemory is how long a server remembers a taken-back order, so
// that the order arriving after its take-back starts nothing. A spawn
// order is a serf query: a lossy network can deliver it late, seconds
// after its asker gave up on it.
const takeBackMemory = 2 * time.Minute

type stopAnswer struct {
	Error string `msgpack:"e,omitempty"`
}

// exitOrder asks a server how one of its interpreters ended.
type exitOrder struct {
	Name string `msgpack:"n"`
}

type exitAnswer struct {
	Running bool `msgpack:"r,omitempty"`
	// Lost: the server started it, but its supervisor is gone (it died
	// without a record; the server notices within a second).
	Lost   bool   `msgpack:"l,omitempty"`
	Found  bool   `msgpack:"f,omitempty"`
	How    string `msgpack:"h,omitempty"`
	Status string `msgpack:"s,omitempty"`
	Code   int    `msgpack:"c,omitempty"`
	Output string `msgpack:"o,omitempty"`
}

// InterpreterName names one interpreter of a request: the kind, the
// request id and a random launch id, so that two interpreters of one
// request (started on both sides of a partition, or a re-placement) are
// two members, never a name conflict.
func InterpreterName(kind, rid string) string {
	var b [2]byte
	rand.Read(b[:])
	return kind + "-" + rid + "-" + hex.EncodeToString(b[:])
}

func (l *Lifecycle) registryPath() string { return filepath.Join(l.cfg.Dir, "interpreters.json") }

// loadRegistry reads the registry and keeps the interpreters whose
// supervisor still runs: after a restart the agent re-adopts them.
func (l *Lifecycle) loadRegistry() error {
	j, err := openJournal(l.cfg.Dir, l.memory, &l.claims, l.clock.Now(), l.logger)
	if err != nil {
		return fmt.Errorf("requests journal: %w: move %s aside to start knowing no request", err, filepath.Join(l.cfg.Dir, journalName))
	}
	l.journal = j
	data, err := os.ReadFile(l.registryPath())
	if errors.Is(err, os.ErrNotExist) {
		l.registry = state.NewRegistry()
		return nil
	}
	if err != nil {
		return fmt.Errorf("read interpreter registry: %w", err)
	}
	reg, err := state.UnmarshalRegistry(data)
	if err != nil {
		return fmt.Errorf("%s: %w: move it aside to start with no interpreters", l.registryPath(), err)
	}
	dropped := reg.Retain(func(i state.Interpreter) bool { return l.procs.Running(i.SupervisorPID, i.Spec) })
	l.registry = reg
	for _, i := range dropped {
		if _, err := ReadExit(filepath.Dir(i.Spec)); err != nil && i.Restart == RestartOnFailure {
			// It died without a record (with the host, say): start it
			// again once this agent has joined and can tell whether the
			// mesh re-placed it meanwhile.
			l.logger.Warn("on-failure interpreter gone while the agent was down; it starts again once the agent has joined",
				"interpreter", i.Name, "pid", i.PID)
			l.lostAtStart = append(l.lostAtStart, i)
			continue
		}
		l.logger.Info("interpreter gone while the agent was down", "interpreter", i.Name, "pid", i.PID)
	}
	for _, i := range reg.List() {
		l.logger.Info("re-adopted running interpreter", "interpreter", i.Name, "pid", i.PID, "endpoint", i.Endpoint)
	}
	if len(dropped) > 0 {
		return l.saveRegistryLocked()
	}
	return nil
}

// saveRegistryLocked writes the registry; l.regMu must be held.
func (l *Lifecycle) saveRegistryLocked() error {
	data, err := l.registry.Marshal()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(l.cfg.Dir, 0o700); err != nil {
		return err
	}
	return durable.WriteFile(l.registryPath(), data, 0o600)
}

// MemberAddrs lists the gossip addresses of the interpreters this server
// runs (re-adopted after a restart, say), from their specs.
func (l *Lifecycle) MemberAddrs() []string {
	l.regMu.Lock()
	list := l.registry.List()
	l.regMu.Unlock()
	var out []string
	for _, i := range list {
		if spec, err := LoadSpec(i.Spec); err == nil {
			out = append(out, spec.Gossip)
		}
	}
	return out
}

// Running counts the live interpreters this server started. Safe for
// concurrent use.
func (l *Lifecycle) Running() int {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	if l.registry == nil {
		return 0
	}
	return l.registry.Len()
}

// Starting counts spawns accepted but not yet registered. Safe for
// concurrent use.
func (l *Lifecycle) Starting() int {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	return len(l.inflight)
}

// Kinds lists the kinds this server offers, sorted.
func (l *Lifecycle) Kinds() []string { return Names(l.kinds()) }

// KindRefusal says why this server would refuse a new interpreter of kind
// (not offered, or at the kind's max), or "" when it would not. Safe for
// concurrent use.
func (l *Lifecycle) KindRefusal(kind string) string {
	k, ok := l.kinds()[kind]
	if !ok {
		return ""
	}
	if k.Max <= 0 {
		return ""
	}
	l.regMu.Lock()
	defer l.regMu.Unlock()
	if n := l.countKindLocked(kind); n >= k.Max {
		return fmt.Sprintf("at the limit for kind %q: %d of %d", kind, n, k.Max)
	}
	return ""
}

func (l *Lifecycle) countKindLocked(kind string) int {
	n := l.registry.CountKind(kind)
	for _, st := range l.inflight {
		if st.kind == kind {
			n++
		}
	}
	return n
}

// handleSpawnOrder answers the spawn query: start the interpreter unless
// this request already started one or the server is full.
func (l *Lifecycle) handleSpawnOrder(q *gossip.Query) {
	var o spawnOrder
	var ans spawnAnswer
	switch err := msgpack.Unmarshal(q.Payload, &o); {
	case err != nil:
		ans.Refusal = "cannot decode the spawn order: " + err.Error()
	case l.deps.AllowSpawn != nil && !l.deps.AllowSpawn(q.From):
		ans.Refusal = fmt.Sprintf("rate limited: %s sent more than its share of spawn orders (--spawn-rate-limit)", q.From)
		l.logger.Warn("spawn order refused: rate limit", "asker", q.From)
	default:
		ans = l.decideSpawnOrder(o)
	}
	respond(q, ans, l.logger)
}

// decideSpawnOrder carries out a spawn order once: the same order again
// (askOne sends it again when the first send is not acknowledged in a
// second) gets the first one's answer. Before, an asker paused right
// after it sent an order sent it again on its return; the interpreter the
// first one started had ended meanwhile, and the second started another
// of the same generation that no answer named (chaos seed 24191,
// the-answer-stands).
func (l *Lifecycle) decideSpawnOrder(o spawnOrder) spawnAnswer {
	return l.spawnOrders.once(o.ID, l.clock.Now(), func() spawnAnswer { return l.startInterpreter(o) })
}

func respond(q *gossip.Query, ans any, logger interface{ Warn(string, ...any) }) {
	data, err := msgpack.Marshal(ans)
	if err == nil {
		err = q.Respond(data)
	}
	if err != nil {
		logger.Warn("answer not sent", "query", q.Name, "to", q.From, "err", err)
	}
}

func (l *Lifecycle) startInterpreter(o spawnOrder) spawnAnswer {
	if !validRequestID(o.RequestID) {
		// It becomes part of a directory name: a member of the mesh must
		// not steer that.
		return spawnAnswer{Refusal: fmt.Sprintf("request id %q is not 1 to 64 letters and digits", o.RequestID)}
	}
	explicitRestart := o.Restart
	refusal := ""
	kind, ok := l.kinds()[o.Kind]
	if !ok {
		refusal = fmt.Sprintf("kind %q is not offered here (offered: %s)", o.Kind, strings.Join(Names(l.kinds()), ", "))
	} else if err := kind.CheckArgs(o.Args); err != nil {
		refusal = err.Error()
	} else if _, err := ParseRestart(o.Restart); err != nil {
		refusal = err.Error()
	}
	if o.Restart == "" {
		o.Restart = kind.Restart // the request named none: the kind's
	}
	if o.Restart == RestartNo {
		o.Restart = ""
	}
	select {
	case <-l.deps.Done:
		refusal = "shutting down"
	default:
	}
	if refusal == "" && l.deps.Draining != nil && l.deps.Draining() {
		refusal = "draining: this server takes no new interpreters"
	}

	// An interpreter of the request that runs or is starting here is the
	// answer, whatever this server would refuse to start now.
	var view []Instance
	if l.deps.Node != nil {
		_, view = l.meshView() // before regMu: serf's lock is not taken under it
	}
	l.regMu.Lock()
	if _, ok := l.takenBack[order{o.RequestID, o.Gen}]; ok {
		l.regMu.Unlock()
		l.logger.Info("spawn order refused: its asker took it back before it arrived", "request", o.RequestID, "gen", o.Gen,
			"asker", o.Asker)
		return spawnAnswer{Refusal: "the asker took this spawn back before it arrived"}
	}
	for {
		if i, ok := l.registry.ByRequestID(o.RequestID); ok {
			l.regMu.Unlock()
			_, err := ReadExit(filepath.Dir(i.Spec))
			if err == nil || !l.procs.Running(i.SupervisorPID, i.Spec) {
				// It ended (its supervisor is leaving the mesh: a kernel
				// restart stops, then spawns the same key at once), or
				// its supervisor died and this server has not noticed
				// yet. Forget it now and start the request anew.
				l.supervisorGone(i.Name)
				l.regMu.Lock()
				continue
			}
			if c := orderConflict(o, explicitRestart, i); c != "" {
				return spawnAnswer{Name: i.Name, Conflict: c}
			}
			return spawnAnswer{Name: i.Name, PID: i.PID, Endpoint: i.Endpoint, Existing: true, Gen: i.Gen,
				Conn: connectionFor(i.Spec, o.Asker)}
		}
		st, busy := l.inflight[o.RequestID]
		if !busy {
			break
		}
		wait := st.done
		// The same order arrived twice (the asker re-sent it): wait for
		// the first start to finish and answer with its outcome.
		l.regMu.Unlock()
		<-wait
		l.regMu.Lock()
		if _, ok := l.registry.ByRequestID(o.RequestID); !ok {
			l.regMu.Unlock()
			return spawnAnswer{Refusal: "the first attempt to start this request failed; see the server's log"}
		}
	}
	if in, ok := l.unregisteredHereLocked(view, o); ok {
		l.regMu.Unlock()
		// As for a registered one: an order for something else is a
		// conflict. The tags carry the arguments only with a restart
		// policy; without them only the kind and policy can differ.
		args := in.Tags.Args
		if len(args) == 0 {
			args = o.Args
		}
		if c := orderConflict(o, explicitRestart, state.Interpreter{Name: in.Name, Kind: in.Tags.Kind, Args: args,
			Restart: in.Tags.Restart}); c != "" {
			return spawnAnswer{Name: in.Name, Conflict: c}
		}
		l.logger.Warn("spawn order answered with an interpreter of its request that runs on this host outside this agent's registry "+
			"(the agent restarted without its data dir)", "interpreter", in.Name, "request", o.RequestID, "gen", in.Tags.Gen,
			"order_gen", o.Gen, "asker", o.Asker)
		return spawnAnswer{Name: in.Name, PID: in.Tags.PID, Endpoint: in.Tags.Endpoint, Existing: true, Gen: in.Tags.Gen}
	}
	if refusal != "" {
		l.regMu.Unlock()
		return spawnAnswer{Refusal: refusal}
	}
	running := l.registry.Len() + len(l.inflight)
	if l.cfg.Capacity > 0 && running >= l.cfg.Capacity {
		l.regMu.Unlock()
		return spawnAnswer{Refusal: fmt.Sprintf("at capacity: %d of %d interpreters", running, l.cfg.Capacity)}
	}
	if kind.Max > 0 {
		if n := l.countKindLocked(o.Kind); n >= kind.Max {
			l.regMu.Unlock()
			return spawnAnswer{Refusal: fmt.Sprintf("at the limit for kind %q: %d of %d", o.Kind, n, kind.Max)}
		}
	}
	name := InterpreterName(o.Kind, o.RequestID)
	done := make(chan struct{})
	l.inflight[o.RequestID] = starting{done: done, kind: o.Kind, name: name, gen: o.Gen}
	l.regMu.Unlock()
	defer func() {
		l.regMu.Lock()
		delete(l.inflight, o.RequestID)
		l.regMu.Unlock()
		close(done)
	}()

	ans, err := l.launch(kind, name, o, 0)
	if err != nil {
		var died *diedError
		if errors.As(err, &died) {
			l.logger.Warn("interpreter exited at once", "interpreter", name, "kind", o.Kind, "asker", o.Asker, "status", died.status)
			return spawnAnswer{Name: name, Died: died.Error()}
		}
		l.logger.Error("interpreter did not start", "interpreter", name, "kind", o.Kind, "asker", o.Asker, "err", err)
		return spawnAnswer{Refusal: "could not start: " + err.Error(), Launched: true}
	}
	l.regMu.Lock()
	_, takenBack := l.takenBack[order{o.RequestID, o.Gen}]
	l.regMu.Unlock()
	if takenBack {
		// The asker gave up on this server while it started, and took the
		// spawn back: it reported another server, or a failure.
		l.logger.Info("stopping an interpreter whose spawn its asker took back while it started", "interpreter", name,
			"asker", o.Asker)
		l.stopSupervisor(name)
		return spawnAnswer{Refusal: "the asker took this spawn back while it started", Launched: true}
	}
	l.logger.Info("interpreter started", "interpreter", name, "kind", o.Kind, "pid", ans.PID, "endpoint", ans.Endpoint,
		"asker", o.Asker, "restart", o.Restart, "gen", o.Gen)
	l.emit(Event{Type: EventStarted, Interpreter: name, RequestID: o.RequestID, Host: l.cfg.Node, Gen: o.Gen})
	if o.Replaces != "" {
		l.logger.Info("interpreter-replaced: started in place of a lost interpreter", "interpreter", name, "was", o.Replaces,
			"owner", o.Asker, "gen", o.Gen)
		l.emit(Event{Type: EventReplaced, Interpreter: name, RequestID: o.RequestID, Host: l.cfg.Node, Gen: o.Gen,
			Reason: "re-placed " + o.Replaces + " for " + o.Asker})
	}
	l.changed()
	ans.Gen = o.Gen
	return ans
}

// validRequestID reports whether rid is what RequestIDFor and NewRequestID
// make: 1 to 64 ASCII letters and digits.
func validRequestID(rid string) bool {
	if len(rid) == 0 || len(rid) > 64 {
		return false
	}
	for _, c := range rid {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// unregisteredHere finds, in the view, an alive interpreter of o's request
// on host (this server) of o's generation or newer: one whose supervisor
// outlived an agent that then restarted without its data dir, so its
// registry does not hold it. It is the order's answer: a spawn order
// gossiped again after such a restart (serf's new process has no memory
// of the query) would otherwise start a second copy beside it, of the
// same generation, and the duplicate rule could stop the one its asker
// was given (chaos seed 42499, the-answer-stands).
// One this agent started and let go, or stopped, is ending instead (a
// kernel restart stops, then spawns the same key at once). Caller holds
// regMu.
func (l *Lifecycle) unregisteredHereLocked(view []Instance, o spawnOrder) (Instance, bool) {
	for _, in := range view {
		if in.Tags.RequestID != o.RequestID || in.Host != l.cfg.Node || in.Status != gossip.StatusAlive ||
			in.Tags.Gen < o.Gen || in.Tags.End != "" {
			continue
		}
		if _, ok := l.forgotten[in.Name]; ok {
			continue
		}
		if _, ok := l.abandoned[in.Name]; ok {
			continue
		}
		if _, ok := l.superseded[in.Name]; ok {
			continue
		}
		return in, true
	}
	return Instance{}, false
}

// forgetAfter is how long the agent remembers the interpreters its
// registry let go: longer than a member takes to leave.
const forgetAfter = 2 * time.Minute

// orderConflict says how a spawn order differs from the request's
// interpreter i that runs here, or "" when it asks for the same: the kind,
// the arguments, and the restart policy when the order named one.
func orderConflict(o spawnOrder, explicitRestart string, i state.Interpreter) string {
	var diffs []string
	if o.Kind != i.Kind {
		diffs = append(diffs, fmt.Sprintf("kind %q, not %q", i.Kind, o.Kind))
	}
	if !slices.Equal(o.Args, i.Args) && (len(o.Args) > 0 || len(i.Args) > 0) {
		diffs = append(diffs, fmt.Sprintf("arguments %q, not %q", i.Args, o.Args))
	}
	if explicitRestart != "" && o.Restart != i.Restart {
		have, want := i.Restart, o.Restart
		if have == "" {
			have = RestartNo
		}
		if want == "" {
			want = RestartNo
		}
		diffs = append(diffs, fmt.Sprintf("restart policy %q, not %q", have, want))
	}
	if len(diffs) == 0 {
		return ""
	}
	return fmt.Sprintf("the request's interpreter %s already runs with %s: use another key, or stop it first (`agent stop %s`)",
		i.Name, strings.Join(diffs, " and "), i.Name)
}

// claimKeep is how long a server remembers an asker's claim: about one
// election and its spawn order.
const claimKeep = 20 * time.Second

// claims are the generations askers claimed lately, by request, and which
// asker holds each request: the first whose claim is still fresh. A
// server grants a claim only to that asker, so of two askers electing the
// same request at once (their views disagree on its coordinator, or an
// owner re-places it while a keyed spawn runs) at most one gets a
// majority's grants: majorities share a server, and a server grants one.
// Safe for concurrent use.
//
// A server also keeps, for genKeep, the highest generation claimed of each
// request (floor), as a Paxos acceptor keeps the highest ballot it
// promised: a claim ends after claimKeep, but what it placed may run on
// where the servers never saw it. Bids report it, so a later placement
// goes above it. Before, an election granted by every server placed
// generation 2 on h9 just as a partition cut h9 off with a third of the
// servers; the other side never saw it, and 27 s later, the claim
// forgotten, placed generation 2 again for the same key, and the copy
// the client had not been given won at the heal (chaos seed 60189,
// the-answer-stands).
type claims struct {
	mu     sync.Mutex
	reqs   map[string][]claim
	floor  map[string]claimFloor
	pruned time.Time // when the floors were last pruned
	j      *journal  // keeps the claims across a restart, on a server (journal.go)
}

// claimFloor is the highest generation claimed of a request, by which
// asker in which attempt, and when it was last claimed.
type claimFloor struct {
	gen     int
	asker   string
	attempt uint64
	at      time.Time
}

// raiseFloorLocked notes a claim of gen for rid. c.mu is held.
func (c *claims) raiseFloorLocked(rid, asker string, gen int, attempt uint64, now time.Time) {
	if c.floor == nil {
		c.floor = map[string]claimFloor{}
	}
	f, ok := c.floor[rid]
	switch {
	case !ok || gen > f.gen:
		f = claimFloor{gen: gen, asker: asker, attempt: attempt, at: now}
	case gen == f.gen && f.asker == asker:
		f.attempt, f.at = max(f.attempt, attempt), now
	default:
		return
	}
	c.floor[rid] = f
	c.j.add(floorRec(rid, f))
}

// pruneFloorLocked forgets the floors older than genKeep, and the oldest
// past maxRemembered. c.mu is held.
func (c *claims) pruneFloorLocked(now time.Time) {
	maps.DeleteFunc(c.floor, func(_ string, f claimFloor) bool { return now.Sub(f.at) > genKeep })
	dropOldest(c.floor, maxRemembered, func(f claimFloor) time.Time { return f.at }, now)
}

type claim struct {
	asker   string
	attempt uint64 // the newest attempt the asker claimed it in
	gen     int
	first   time.Time // when this asker's claims began
	at      time.Time // its latest
}

// record notes asker's claim of gen for rid (when it makes one) and
// returns the highest generation another asker claimed within claimKeep,
// and which asker, and the asker that holds the request now: the first
// fresh claimer that alive does not say is gone (a claim does not outlive
// its asker: a coordinator that failed must not keep the next one
// waiting). The claim's attempt (0: none named) is noted under the same
// lock: a withdrawal of the asker's earlier attempt, handled in between,
// deleted the claim just granted, and the next asker was granted the
// request and told of no claim (chaos seed 21306 under a flapping split:
// two placements at generation 1, the-answer-stands).
func (c *claims) record(rid, asker string, gen int, claiming bool, attempt uint64, now time.Time, alive func(string) bool) (best int, by string, found bool, holder string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reqs == nil {
		c.reqs = map[string][]claim{}
	}
	for r, cs := range c.reqs {
		c.reqs[r] = slices.DeleteFunc(cs, func(x claim) bool { return now.Sub(x.at) > claimKeep })
		if len(c.reqs[r]) == 0 {
			delete(c.reqs, r)
		}
	}
	for _, x := range c.reqs[rid] {
		if x.asker != asker && (!found || x.gen > best || x.gen == best && x.asker < by) {
			best, by, found = x.gen, x.asker, true
		}
	}
	if now.Sub(c.pruned) > time.Minute {
		c.pruneFloorLocked(now)
		c.pruned = now
	}
	// The floor, but for this very attempt's own claim (a bid asked
	// again, or a reclaim in the same placement).
	if f, ok := c.floor[rid]; ok && (f.asker != asker || attempt == 0 || f.attempt != attempt) && (!found || f.gen > best) {
		best, by, found = f.gen, f.asker, true
	}
	if claiming {
		c.raiseFloorLocked(rid, asker, gen, attempt, now)
		k := slices.IndexFunc(c.reqs[rid], func(x claim) bool { return x.asker == asker })
		if k < 0 {
			c.reqs[rid] = append(c.reqs[rid], claim{asker: asker, gen: gen, first: now, at: now})
			k = len(c.reqs[rid]) - 1
		} else {
			x := &c.reqs[rid][k]
			x.gen, x.at = max(x.gen, gen), now
		}
		c.reqs[rid][k].attempt = max(c.reqs[rid][k].attempt, attempt)
		c.j.add(claimRec(rid, c.reqs[rid][k]))
	}
	var first time.Time
	for _, x := range c.reqs[rid] {
		if x.asker != asker && alive != nil && !alive(x.asker) {
			continue
		}
		if holder == "" || x.first.Before(first) || x.first.Equal(first) && x.asker < holder {
			holder, first = x.asker, x.first
		}
	}
	return best, by, found, holder
}

// release withdraws asker's claim of rid made in attempt or before: it
// deferred to another. A claim of a later attempt stays: gossip can
// deliver a release after the claim that followed it.
func (c *claims) release(rid, asker string, attempt uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs, ok := c.reqs[rid]; ok {
		if c.reqs[rid] = slices.DeleteFunc(cs, func(x claim) bool { return x.asker == asker && x.attempt <= attempt }); len(c.reqs[rid]) == 0 {
			delete(c.reqs, rid)
		}
		c.j.add(journalRec{K: "u", R: rid, A: asker, N: attempt})
	}
}

// abandonGrace is how long a supervisor that missed its start has to
// stop before it is killed.
const abandonGrace = 5 * time.Second

// abandon records that this server gave up on starting name: no rule may
// start it again.
func (l *Lifecycle) abandon(name string) {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	now := l.clock.Now()
	for n, at := range l.abandoned {
		if now.Sub(at) > time.Hour {
			delete(l.abandoned, n)
		}
	}
	l.abandoned[name] = now
}

// endedHere is a request's interpreter that ended on this server on
// purpose, and when.
type endedHere struct {
	name string
	at   time.Time
}

// endedKeep is how long a server tells bidders which interpreter of a
// request ended on it on purpose: longer than the mesh takes to call a
// member whose leave was lost failed, and its owner to try re-placing it.
const endedKeep = 10 * time.Minute

// noteEnded records that interpreter name of request rid ended here on
// purpose: its supervisor wrote how (stopped, a duplicate, exited, gave
// up), or this server gave up on its start. Under loss its leave can be
// lost, and the mesh then takes it for failed on a live host; bids name
// it, so that its owner does not re-place what ended on purpose. Before,
// a start given up under 22% loss was re-placed by its owner after the
// spawn had told its client it failed (chaos seed 72834,
// every-answer-true).
func (l *Lifecycle) noteEnded(rid, name string) {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	now := l.clock.Now()
	maps.DeleteFunc(l.endedHere, func(_ string, e endedHere) bool { return now.Sub(e.at) > endedKeep })
	l.endedHere[rid] = endedHere{name: name, at: now}
}

// endedName is the interpreter of request rid that ended here on purpose
// within endedKeep, if any.
func (l *Lifecycle) endedName(rid string) string {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	if e, ok := l.endedHere[rid]; ok && l.clock.Now().Sub(e.at) <= endedKeep {
		return e.name
	}
	return ""
}

// Holding names the interpreter of request rid that this server runs or
// is starting, with its generation. Safe for concurrent use.
func (l *Lifecycle) Holding(rid string) (name string, gen int, ok bool) {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	if i, ok := l.registry.ByRequestID(rid); ok {
		return i.Name, i.Gen, true
	}
	if st, ok := l.inflight[rid]; ok {
		return st.name, st.gen, true
	}
	return "", 0, false
}

// Bid completes a server's bid for req with what its interpreters say:
// how many run and start here, the kinds offered, whether one of the
// request's runs here already, the highest generation of it seen, and a
// refusal when the server drains, is full or is at the kind's limit
// (unless b already has one). Safe for concurrent use.
//
// A claim in req (the asker means to place that generation) is
// remembered for claimKeep: a bid to another asker of the same request
// reports it as known, so that of two coordinators that elect at once
// (their views named different ones), the second places a generation
// above the first's, and the later answer wins.
func (l *Lifecycle) Bid(asker string, req bidding.Request, b placement.Bid) placement.Bid {
	b.Running, b.Pending, b.Capacity = l.Running(), l.Starting(), l.cfg.Capacity
	b.Kinds = l.Kinds()
	b.OffersKind = slices.Contains(b.Kinds, req.Kind)
	if name, gen, ok := l.Holding(req.ID); ok {
		b.Holds, b.HoldsGen = name, gen
	}
	if gen := l.KnownGen(req.ID); gen != NoGen {
		b.Known, b.KnownGen = true, gen
	}
	b.Ended = l.endedName(req.ID)
	if req.Claim > 0 && l.deps.Node != nil {
		b.Servers = l.memory.serversKnown(ServerQuorum(l.deps.Node.Members()))
	}
	if req.Claim < 0 {
		l.claims.release(req.ID, asker, req.Attempt)
	}
	gen, by, ok, holder := l.claims.record(req.ID, asker, req.Claim-1, req.Claim > 0, req.Attempt, l.clock.Now(), l.notGone)
	if ok {
		b.Claimer, b.Claimed, b.ClaimGen = by, true, gen
	}
	if req.Claim > 0 {
		b.Grant = placement.Granted
		if holder != asker {
			b.Grant, b.Claimer = placement.Denied, holder
		}
	}
	if b.Refusal == "" && l.deps.Draining != nil && l.deps.Draining() {
		b.Refusal = "draining: this server takes no new interpreters (agent drain --undo ends it)"
	}
	if b.Refusal == "" && b.Capacity > 0 && b.Running+b.Pending >= b.Capacity {
		b.Refusal = fmt.Sprintf("at capacity: %d of %d interpreters", b.Running+b.Pending, b.Capacity)
	}
	if b.Refusal == "" {
		b.Refusal = l.KindRefusal(req.Kind)
	}
	return b
}

// notGone reports whether name is not known gone in this agent's view:
// alive or leaving, or not listed at all (a view fresh from a restart does
// not list every member yet, and a claim of one it has not heard of must
// still hold).
func (l *Lifecycle) notGone(name string) bool {
	if l.deps.Node == nil {
		return true
	}
	for _, m := range l.deps.Node.Members() {
		if m.Name == name {
			return m.Status != gossip.StatusFailed && m.Status != gossip.StatusLeft
		}
	}
	return true
}

// KnownGen is the highest generation of request rid this agent has seen,
// or NoGen. Safe for concurrent use.
func (l *Lifecycle) KnownGen(rid string) int { return l.memory.genOf(rid) }

// stopSupervisor tells one interpreter's supervisor to stop it.
func (l *Lifecycle) stopSupervisor(name string) {
	l.regMu.Lock()
	i, ok := l.registry.Get(name)
	l.regMu.Unlock()
	if ok {
		l.procs.Terminate(i.SupervisorPID)
	}
}

// diedError is a launch whose interpreter exited before it settled.
type diedError struct{ status, output string }

func (e *diedError) Error() string {
	if e.output == "" {
		return "the interpreter exited at once: " + e.status
	}
	return "the interpreter exited at once: " + e.status + "; its output began: " + e.output
}

// launch starts the supervisor of one interpreter and registers it;
// restarts counts how often this host already restarted the request.
func (l *Lifecycle) launch(kind Kind, name string, o spawnOrder, restarts int) (spawnAnswer, error) {
	ip := l.deps.Node.LocalMember().Addr.String()
	childPort, err := l.procs.FreePort(ip, false)
	if err != nil {
		return spawnAnswer{}, err
	}
	gossipPort, err := l.procs.FreePort(ip, true)
	if err != nil {
		return spawnAnswer{}, err
	}
	var ports map[string]int
	if len(kind.Ports) > 0 {
		if ports, err = kind.namedPorts(ip, l.procs.FreePort); err != nil {
			return spawnAnswer{}, err
		}
		childPort = ports[kind.Ports[0]] // the endpoint: a kernel's shell port
	}
	endpoint := net.JoinHostPort(ip, strconv.Itoa(childPort))
	dir := filepath.Join(l.cfg.Dir, "interpreters", name)
	spec := Spec{
		Name: name, Kind: kind.Name, Host: l.cfg.Node, RequestID: o.RequestID,
		Argv:      kind.argv(name, endpoint, strconv.Itoa(childPort), o.Args),
		Env:       childEnv(kind, name, endpoint, strconv.Itoa(childPort)),
		Dir:       kind.Dir,
		Endpoint:  endpoint,
		Gossip:    net.JoinHostPort(ip, strconv.Itoa(gossipPort)),
		Join:      []string{l.deps.Node.Addr()},
		Profile:   l.cfg.Profile,
		Keys:      l.deps.Node.LocalKeys(),
		OutputLog: filepath.Join(dir, "output.log"),
		StopGrace: l.cfg.StopGrace,
		User:      kind.User, UID: kind.UID, GID: kind.GID,
		Restart: o.Restart, Gen: o.Gen, Restarts: restarts, Reap: l.cfg.Reap,
	}
	if o.Restart == RestartOnFailure {
		spec.Args = o.Args
	}
	spec.Asker = o.Asker
	var conn *rpc.Connection
	if len(ports) > 0 {
		var connFile string
		if kind.Connection != "" {
			c, err := newConnection(kind, ip, ports)
			if err != nil {
				return spawnAnswer{}, err
			}
			uid, gid := -1, -1
			if kind.User != "" {
				uid, gid = int(kind.UID), int(kind.GID)
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return spawnAnswer{}, err
			}
			if connFile, err = writeConnection(dir, c, uid, gid); err != nil {
				os.RemoveAll(dir)
				return spawnAnswer{}, err
			}
			conn, spec.ConnectionFile = &c, connFile
		}
		spec.Argv, spec.Env = kind.expand(spec.Argv, spec.Env, ports, connFile)
	}
	spec.Checks = kind.checksFor(spec)
	s, childPID, err := l.startSupervisor(dir, spec)
	if err != nil {
		var died *diedError
		if !errors.As(err, &died) {
			os.RemoveAll(dir) // nothing ran: leave no folder behind
		}
		return spawnAnswer{}, err
	}
	rec := state.Interpreter{Name: name, Kind: kind.Name, RequestID: o.RequestID, SupervisorPID: s.PID, PID: childPID,
		Endpoint: endpoint, Spec: filepath.Join(dir, "spec.json"), Started: l.clock.Now().UTC(),
		Restart: o.Restart, Args: o.Args, Gen: o.Gen, Restarts: restarts, Ordered: o.Gen + 1}
	if o.Lease > 0 {
		rec.Owner, rec.OwnerLease = o.Asker, o.Lease
	}
	if o.restart {
		rec.Ordered, rec.Owner, rec.OwnerLease = o.ordered, o.owner, o.Lease
	}
	l.regMu.Lock()
	err = l.registry.Add(rec)
	if err == nil {
		l.supervisors[name] = s
		if serr := l.saveRegistryLocked(); serr != nil {
			l.logger.Error("interpreter registry not saved; a restart will not re-adopt it", "interpreter", name, "err", serr)
		}
	}
	l.regMu.Unlock()
	if err != nil {
		l.procs.Terminate(s.PID)
		return spawnAnswer{}, err
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		select {
		case <-s.Done:
			l.supervisorGone(name)
		case <-l.deps.Done:
		}
	}()
	return spawnAnswer{Name: name, PID: childPID, Endpoint: endpoint, Conn: toConnAnswer(conn)}, nil
}

// startSupervisor writes the spec into dir and launches its supervisor,
// then waits for its readiness report: the interpreter's pid, or why it did
// not start (a *diedError when it exited at once).
func (l *Lifecycle) startSupervisor(dir string, spec Spec) (Started, int, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Started{}, 0, err
	}
	specPath := filepath.Join(dir, "spec.json")
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return Started{}, 0, err
	}
	if err := durable.WriteFile(specPath, data, 0o600); err != nil {
		return Started{}, 0, err
	}
	s, err := l.procs.Launch(specPath, spec)
	if err != nil {
		return s, 0, err
	}
	select {
	case rd := <-s.Ready:
		if rd.Died != "" {
			return s, 0, &diedError{status: rd.Died, output: rd.Output}
		}
		if rd.Error != "" {
			l.procs.Kill(s.PID)
			return s, 0, errors.New(rd.Error)
		}
		return s, rd.PID, nil
	case <-l.clock.After(startTimeout):
		// It may have joined the mesh by now: a stop makes it leave saying
		// so, where a kill would leave a failed member the mesh could take
		// for one to restart. A supervisor that does not stop is killed.
		l.abandon(spec.Name)
		l.noteEnded(spec.RequestID, spec.Name)
		l.procs.Terminate(s.PID)
		select {
		case <-s.Done:
		case <-l.clock.After(abandonGrace):
			l.procs.Kill(s.PID)
		}
		return s, 0, fmt.Errorf("supervisor not ready within %s", startTimeout)
	}
}

// supervisorGone handles a supervisor that exited: it forgets the
// interpreter, says how it ended, and, when the supervisor itself crashed
// (no exit record) under the on-failure policy, starts the request again on
// this host.
func (l *Lifecycle) supervisorGone(name string) {
	l.regMu.Lock()
	rec, ok := l.registry.Get(name)
	removed := l.registry.Remove(name)
	delete(l.supervisors, name)
	if removed {
		now := l.clock.Now()
		for n, at := range l.forgotten {
			if now.Sub(at) > forgetAfter {
				delete(l.forgotten, n)
			}
		}
		l.forgotten[name] = now
		if err := l.saveRegistryLocked(); err != nil {
			l.logger.Error("interpreter registry not saved", "err", err)
		}
	}
	l.regMu.Unlock()
	if !ok || !removed {
		return
	}
	exit, err := ReadExit(filepath.Dir(rec.Spec))
	newer := l.takeSuperseded(name)
	switch {
	case err == nil:
		l.noteEnded(rec.RequestID, name)
		l.logger.Info("interpreter gone", "interpreter", name, "how", exit.How, "status", exit.Status, "restarts", exit.Restarts)
		ev := Event{Type: EventExited, Interpreter: name, RequestID: rec.RequestID, Host: l.cfg.Node, How: exit.How,
			Status: exit.Status, Reason: exit.Reason}
		switch {
		case exit.GaveUp:
			ev.Type = EventGaveUp
			l.logger.Error("interpreter-gave-up: it failed too often under its restart policy, and was not restarted again",
				"interpreter", name, "request", rec.RequestID, "status", exit.Status, "restarts", exit.Restarts)
		case exit.How == HowStopped && newer >= 0:
			// This server stopped it for a newer generation: a duplicate.
			ev.Type, ev.Reason = EventDuplicate, fmt.Sprintf("superseded by generation %d of its request", newer)
		case exit.How == HowStopped:
			ev.Type = EventStopped
			l.meshMu.Lock()
			if why, ok := l.stopWhy[name]; ok {
				ev.Reason = why // this server stopped it, for its owner's lease
				delete(l.stopWhy, name)
			}
			l.meshMu.Unlock()
		case exit.How == HowDuplicate:
			// Its host says so even if it never saw both alive at once.
			ev.Type = EventDuplicate
			l.logger.Warn("interpreter-duplicate: this host's interpreter stopped, a duplicate of its request", "interpreter", name,
				"request", rec.RequestID, "reason", exit.Reason)
		}
		l.emit(ev)
	default:
		l.logger.Warn("interpreter gone: its supervisor exited without a record (it crashed or was killed)", "interpreter", name)
		l.emit(Event{Type: EventExited, Interpreter: name, RequestID: rec.RequestID, Host: l.cfg.Node, How: "supervisor-failed"})
		if rec.Restart == RestartOnFailure {
			l.restartHere(rec)
		}
	}
	l.changed()
}

// takeSuperseded is the generation that superseded the interpreter called
// name, which this server stopped for it, or -1; it forgets it.
func (l *Lifecycle) takeSuperseded(name string) int {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	g, ok := l.superseded[name]
	if !ok {
		return -1
	}
	delete(l.superseded, name)
	return g
}

// restartHere starts a request again on this host after its supervisor
// crashed, within the on-failure policy's bounds.
func (l *Lifecycle) restartHere(rec state.Interpreter) {
	l.regMu.Lock()
	if l.restarting[rec.RequestID] {
		l.regMu.Unlock()
		return
	}
	t := l.hostRestarts[rec.RequestID]
	if t == nil {
		t = NewTracker(DefaultBackoff)
		l.hostRestarts[rec.RequestID] = t
	}
	delay, ok := t.Next(l.clock.Now())
	if ok {
		l.restarting[rec.RequestID] = true
	}
	l.regMu.Unlock()
	if !ok {
		l.logger.Error("interpreter-gave-up: its supervisor failed too often, not restarting it", "request", rec.RequestID)
		l.emit(Event{Type: EventGaveUp, Interpreter: rec.Name, RequestID: rec.RequestID, Host: l.cfg.Node, How: "supervisor-failed"})
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		select {
		case <-l.deps.Done:
			return
		case <-l.clock.After(delay):
		}
		// A start that failed is tried again, within the policy's bounds
		// (then interpreter-gave-up), once this attempt let go of the
		// request. Before, it was only logged: a supervisor that missed
		// its start deadline (a lossy network slowed its join) left the
		// mesh as stopped, which the rules read as a stop on purpose,
		// and nothing ran the request again (chaos seed 51076,
		// nothing-lost).
		retry := false
		defer func() {
			if retry {
				l.restartHere(rec)
			}
		}()
		defer func() {
			l.regMu.Lock()
			delete(l.restarting, rec.RequestID)
			l.regMu.Unlock()
		}()
		kind, ok := l.kinds()[rec.Kind]
		if !ok {
			return
		}
		// As a placement: servers know a claim by the agent that makes
		// it, so this restart and a keyed spawn this agent coordinated
		// were both granted, and both started generation 1 (chaos seed
		// 50545, the-answer-stands). One at a time; the placement that
		// went first is found below, or its bid holds the request.
		ctx, cancel := l.untilDone(2 * coordinatorTimeout)
		unlock, err := l.placing.lock(ctx, rec.RequestID)
		cancel()
		if err != nil {
			return // the owner covers it, as after a refused claim
		}
		defer unlock()
		l.regMu.Lock()
		_, running := l.registry.ByRequestID(rec.RequestID)
		_, starting := l.inflight[rec.RequestID]
		l.regMu.Unlock()
		if running || starting {
			return // started here meanwhile, by a spawn
		}
		name := InterpreterName(rec.Kind, rec.RequestID)
		// One generation up: the new start outranks the dead one's member,
		// which the mesh may still list alive for a moment.
		gen, ok := l.claimRestart(rec, NextGen(max(rec.Gen, l.memory.genOf(rec.RequestID))))
		if !ok {
			return
		}
		l.memory.placed(rec.RequestID, gen, l.clock.Now())
		o := spawnOrder{RequestID: rec.RequestID, Kind: rec.Kind, Args: rec.Args, Asker: l.cfg.Node, Restart: rec.Restart, Gen: gen,
			restart: true, ordered: rec.Ordered, owner: rec.Owner, Lease: rec.OwnerLease}
		if _, err := l.launch(kind, name, o, rec.Restarts+1); err != nil {
			l.logger.Error("interpreter not restarted after its supervisor failed; trying again", "request", rec.RequestID, "err", err)
			retry = true
			return
		}
		l.logger.Info("interpreter-restart: started again after its supervisor failed", "interpreter", name, "request", rec.RequestID)
		l.emit(Event{Type: EventRestarted, Interpreter: name, RequestID: rec.RequestID, Host: l.cfg.Node, Gen: gen})
		l.changed()
	}()
}

// restartClaims bounds how often a host asks the servers for its restart
// of a request, restartClaimEvery apart, before it leaves the request to
// its owner's re-placement (which covers an interpreter that failed on a
// live host that did not start it again).
const (
	restartClaims     = 5
	restartClaimEvery = 2 * time.Second
)

// claimRestart asks the servers, as a keyed spawn's election does, for
// the host's own restart of rec at generation gen, and returns the
// generation to start (above any the servers saw) once a majority of them
// granted it. A restart races the mesh: the request's owner may re-place
// it at the same moment (it saw the interpreter fail), or a keyed spawn
// may. Without the claim, both started the same generation and the
// duplicate rule kept one by name, maybe not the one a client was given
// (chaos seeds 111, 168, 200: the-answer-stands). It does not restart
// when a server holds the request (another copy of rec's generation or a
// newer one runs or starts), and it
// asks again later when no majority answered or another asker holds the
// request, while this host still runs nothing of it.
func (l *Lifecycle) claimRestart(rec state.Interpreter, gen int) (int, bool) {
	if l.deps.Elect == nil || l.deps.Node == nil {
		return gen, true
	}
	preq, _ := ParsePlaceRequest(rec.Kind, nil, "")
	preq.ID = rec.RequestID
	for try := 1; ; try++ {
		preq.Claim, preq.Gen, preq.Attempt = true, gen, l.nextAttempt()
		ctx, cancel := l.untilDone(orderTimeout)
		e := l.deps.Elect(ctx, preq)
		cancel()
		v := l.tally(e.Result.Bids)
		holder, held := holderOf(e.Result.Bids)
		why := ""
		switch {
		case held && holder.HoldsGen >= rec.Gen: // an older copy is the superseded one, not this
			l.logger.Info("not restarting an interpreter: a server runs its request", "request", rec.RequestID,
				"holder", holder.Holds, "on", holder.Node, "gen", holder.HoldsGen)
			return 0, false
		case !v.majority():
			why = fmt.Sprintf("heard from %d of %d servers", len(v.answered), v.total)
		case !v.granted():
			why = v.deferral()
		default:
			above, ok := aboveGen(e.Result.Bids)
			if !ok || above < gen {
				return gen, true
			}
			// A server saw a placement (or a claim) this host never did:
			// the restart goes above it, and claims what it starts.
			ctx, cancel := l.untilDone(orderTimeout)
			claimed, rwhy, rok := l.reclaim(ctx, preq, NextGen(above), true)
			cancel()
			if rok {
				return claimed, true
			}
			why = rwhy
		}
		ctx, cancel = l.untilDone(orderTimeout)
		l.releaseClaim(ctx, preq)
		cancel()
		if try == restartClaims {
			l.logger.Warn("not restarting an interpreter here: the servers did not grant it; its owner re-places it",
				"request", rec.RequestID, "why", why)
			return 0, false
		}
		select {
		case <-l.deps.Done:
			return 0, false
		case <-l.clock.After(retryJitter(restartClaimEvery)):
		}
		l.regMu.Lock()
		_, running := l.registry.ByRequestID(rec.RequestID)
		_, starting := l.inflight[rec.RequestID]
		l.regMu.Unlock()
		if running || starting {
			return 0, false
		}
	}
}

// restartLostAtStart starts again the on-failure interpreters that died
// while this agent was down, once it has joined the mesh, unless the mesh
// runs (or re-placed) them meanwhile.
func (l *Lifecycle) restartLostAtStart(members []gossip.Member, view []Instance) {
	l.regMu.Lock()
	lost := l.lostAtStart
	if len(lost) == 0 || !l.inMesh(members) {
		l.regMu.Unlock()
		return
	}
	l.lostAtStart = nil
	l.regMu.Unlock()
	var later []state.Interpreter
	for _, rec := range lost {
		// A live copy of an older generation does not count: it is the
		// one superseded (chaos seed 2200: a spawn's first server timed
		// out but started generation 0, its next attempt here was
		// answered with generation 1; back from a crash, this host left
		// generation 1 down for the older copy, which it then told to
		// stop as superseded, and nothing ran).
		newer := slices.ContainsFunc(view, func(in Instance) bool {
			return in.Tags.RequestID == rec.RequestID && in.Tags.Gen > rec.Gen ||
				in.Name != rec.Name && in.Tags.RequestID == rec.RequestID && in.Status == gossip.StatusAlive && in.Tags.Gen >= rec.Gen
		})
		if newer {
			continue
		}
		// This agent has just started: its view lacks what ended or
		// failed while it was down, and it remembers nothing. The servers
		// do: one that runs the request, or has seen a newer generation
		// of it (it was re-placed, and maybe ended since), means this
		// copy is superseded.
		holdsGen, known, majority := l.meshKnows(rec.RequestID, rec.Kind)
		switch {
		case holdsGen >= rec.Gen || known > rec.Gen:
			l.memory.placed(rec.RequestID, known, l.clock.Now())
			l.logger.Info("not restarting an interpreter that died while the agent was down: the mesh runs or has seen "+
				"a newer one of its request", "interpreter", rec.Name, "request", rec.RequestID, "gen", rec.Gen, "newest_gen", known)
			continue
		case !majority:
			later = append(later, rec) // ask again once most servers answer
			continue
		}
		l.restartHere(rec)
	}
	if len(later) > 0 {
		l.regMu.Lock()
		l.lostAtStart = append(l.lostAtStart, later...)
		l.regMu.Unlock()
	}
}

// meshKnows asks the servers, as an election does, what they know of
// request rid: the generation of the newest copy one runs (or is
// starting), the highest generation any has seen (NoGen: none for
// either), and whether a strict majority of the servers this agent knows
// answered.
func (l *Lifecycle) meshKnows(rid, kind string) (holdsGen, known int, majority bool) {
	ctx, cancel := l.untilDone(orderTimeout)
	defer cancel()
	preq, _ := ParsePlaceRequest(kind, nil, "")
	preq.ID = rid
	e := l.deps.Elect(ctx, preq)
	holdsGen = NoGen
	if h, ok := holderOf(e.Result.Bids); ok {
		holdsGen = h.HoldsGen
	}
	known = NoGen
	if g, ok := knownGen(e.Result.Bids); ok {
		known = g
	}
	q := ServerQuorum(l.deps.Node.Members())
	return holdsGen, known, 2*len(e.Result.Bids) > len(q.Alive)+len(q.Missing)
}

// restartLost starts again, here, the on-failure interpreters of this host
// that the view shows failed and that no supervisor of this agent keeps:
// they died with the host (the registry dropped them at the restart), or
// an agent restarted without its data dir never knew them. The mesh's
// owner re-places only the interpreters of failed hosts; those of a host
// that is back are the host's own to restart.
func (l *Lifecycle) restartLost(view []Instance) {
	newest := map[string]int{}
	live := map[string]bool{}
	for _, in := range view {
		rid := in.Tags.RequestID
		newest[rid] = max(newest[rid], in.Tags.Gen)
		if in.Status == gossip.StatusAlive || in.Status == gossip.StatusLeaving {
			live[rid] = true
		}
	}
	for _, in := range view {
		t := in.Tags
		if in.Host != l.cfg.Node || in.Status != gossip.StatusFailed || t.Restart != RestartOnFailure || live[t.RequestID] ||
			t.Gen != newest[t.RequestID] || t.End != "" || l.memory.genOf(t.RequestID) > t.Gen {
			continue
		}
		l.regMu.Lock()
		_, running := l.registry.ByRequestID(t.RequestID)
		_, starting := l.inflight[t.RequestID]
		_, abandoned := l.abandoned[in.Name]
		restarting := l.restarting[t.RequestID]
		l.regMu.Unlock()
		if running || starting || abandoned || restarting {
			continue
		}
		l.logger.Warn("an on-failure interpreter of this host is failed and no supervisor here keeps it; starting it again",
			"interpreter", in.Name, "request", t.RequestID)
		l.restartHere(state.Interpreter{Name: in.Name, Kind: t.Kind, RequestID: t.RequestID, Restart: t.Restart, Args: t.Args,
			Gen: t.Gen, Restarts: t.Restarts})
	}
}

// watchSupervisors notices supervisors that exited: those this agent
// re-adopted after a restart are not its children, so nothing else tells it
// when they exit.
func (l *Lifecycle) watchSupervisors() {
	lastSweep := l.clock.Now()
	for {
		select {
		case <-l.deps.Done:
			return
		case <-l.clock.After(time.Second):
		}
		if now := l.clock.Now(); now.Sub(lastSweep) >= l.sweepEvery() {
			lastSweep = now
			l.sweepDirs(now)
		}
		l.regMu.Lock()
		var gone []string
		for _, i := range l.registry.List() {
			if _, ours := l.supervisors[i.Name]; ours {
				continue // its exit is seen directly
			}
			if !l.procs.Running(i.SupervisorPID, i.Spec) {
				gone = append(gone, i.Name)
			}
		}
		l.regMu.Unlock()
		for _, name := range gone {
			l.supervisorGone(name)
		}
	}
}

// StopAll tells every interpreter of this server to stop (its supervisor
// stops it, SIGTERM then SIGKILL after the grace, and leaves) and returns
// how many it told.
func (l *Lifecycle) StopAll(why string) int {
	l.regMu.Lock()
	list := l.registry.List()
	l.regMu.Unlock()
	n := 0
	for _, i := range list {
		if l.procs.Terminate(i.SupervisorPID) == nil {
			n++
			l.logger.Info("stopping interpreter", "interpreter", i.Name, "why", why)
		}
	}
	return n
}

// sweepEvery is how often ended interpreters' directories are looked at.
func (l *Lifecycle) sweepEvery() time.Duration {
	return min(max(l.cfg.Reap/2, time.Second), time.Minute)
}

// sweepDirs removes the directories of interpreters that ended more than
// the reap window ago: the mesh has forgotten them, and their spec holds the
// gossip keys. A directory whose interpreter is registered (it runs) or that
// changed within the window (a start under way, an exit record still
// wanted by an asker's --wait) stays.
func (l *Lifecycle) sweepDirs(now time.Time) {
	root := filepath.Join(l.cfg.Dir, "interpreters")
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	keep := l.cfg.Reap
	if keep <= 0 {
		keep = time.Minute
	}
	l.regMu.Lock()
	running := map[string]bool{}
	for _, i := range l.registry.List() {
		running[i.Name] = true
	}
	l.regMu.Unlock()
	for _, e := range entries {
		if !e.IsDir() || running[e.Name()] {
			continue
		}
		dir := filepath.Join(root, e.Name())
		newest := time.Time{}
		for _, f := range []string{exitFile, "spec.json", "output.log", "supervisor.log"} {
			if st, err := os.Stat(filepath.Join(dir, f)); err == nil && st.ModTime().After(newest) {
				newest = st.ModTime()
			}
		}
		if st, err := os.Stat(dir); err == nil && st.ModTime().After(newest) {
			newest = st.ModTime()
		}
		if now.Sub(newest) < keep {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			l.logger.Warn("could not remove an ended interpreter's directory", "dir", dir, "err", err)
			continue
		}
		l.logger.Debug("removed an ended interpreter's directory", "dir", dir)
	}
}

// handleStopOrder answers the stop query: signal the supervisor, which
// stops the interpreter and leaves the mesh.
func (l *Lifecycle) handleStopOrder(q *gossip.Query) {
	var o stopOrder
	var ans stopAnswer
	if err := msgpack.Unmarshal(q.Payload, &o); err != nil {
		ans.Error = "cannot decode the stop order: " + err.Error()
	} else {
		ans = l.stopByOrder(o, q.From)
	}
	respond(q, ans, l.logger)
}

// stopByOrder carries out a stop order from the agent called from: of one
// interpreter by name, or a take-back of a spawn order.
func (l *Lifecycle) stopByOrder(o stopOrder, from string) stopAnswer {
	if o.Superseded > 0 {
		return l.stopSupersededBy(o, from)
	}
	l.regMu.Lock()
	i, ok := l.registry.Get(o.Name)
	if o.RequestID != "" {
		i, ok = l.registry.ByRequestID(o.RequestID)
		if o.TakeBack && ok && i.Gen != o.Gen && i.Ordered != o.Gen+1 {
			// It runs from another order (this server answered the
			// taken-back one with it, or it came first): it stays. What
			// the order started stays taken back though this host
			// restarted it since, one generation up.
			ok = false
		}
		now := l.clock.Now()
		for k, at := range l.takenBack {
			if now.Sub(at) > takeBackMemory {
				delete(l.takenBack, k)
			}
		}
		if st, starting := l.inflight[o.RequestID]; !ok && starting && (!o.TakeBack || st.gen == o.Gen) {
			// Its start is under way: stop it once it is up.
			l.logger.Info("taking back a spawn still starting", "request", o.RequestID, "gen", st.gen, "asker", from)
			l.takenBack[order{o.RequestID, st.gen}] = now
		}
		if o.TakeBack {
			l.takenBack[order{o.RequestID, o.Gen}] = now // the order, arriving late or again, starts nothing
		}
	}
	l.regMu.Unlock()
	switch {
	case !ok && o.RequestID != "":
		// Nothing was started for it here: that is what the asker wants.
	case !ok:
		return stopAnswer{Error: fmt.Sprintf("no interpreter %s runs on %s", o.Name, l.cfg.Node)}
	case l.procs.Terminate(i.SupervisorPID) != nil:
		return stopAnswer{Error: fmt.Sprintf("interpreter %s's supervisor (pid %d) is gone", i.Name, i.SupervisorPID)}
	default:
		l.logger.Info("stopping interpreter", "interpreter", i.Name, "pid", i.PID, "asker", from)
	}
	return stopAnswer{}
}

// stopSupersededBy stops this host's interpreter o names when its
// generation is older than o.Superseded, which the request's owner has
// seen: this agent may never have (it restarted, or the newer one lived
// and ended while a partition hid it).
func (l *Lifecycle) stopSupersededBy(o stopOrder, from string) stopAnswer {
	l.regMu.Lock()
	i, ok := l.registry.Get(o.Name)
	_, already := l.superseded[o.Name]
	if ok && i.Gen < o.Superseded && !already {
		l.superseded[o.Name] = o.Superseded
	}
	l.regMu.Unlock()
	switch {
	case !ok:
		l.tellUnlisted(o, from)
		return stopAnswer{} // gone already, or its supervisor is told
	case i.Gen >= o.Superseded:
		return stopAnswer{Error: fmt.Sprintf("%s is generation %d, not older than %d", o.Name, i.Gen, o.Superseded)}
	}
	l.memory.placed(i.RequestID, o.Superseded, l.clock.Now())
	if already {
		return stopAnswer{}
	}
	l.logger.Warn("interpreter-duplicate: stopping this host's interpreter, superseded by a newer generation of its request",
		"interpreter", i.Name, "request", i.RequestID, "gen", i.Gen, "newer_gen", o.Superseded, "told_by", from)
	markSuperseded(i.Spec, fmt.Sprintf("superseded by generation %d of request %s (told by %s)", o.Superseded, i.RequestID, from))
	if err := l.procs.Terminate(i.SupervisorPID); err != nil {
		return stopAnswer{Error: fmt.Sprintf("interpreter %s's supervisor (pid %d) is gone", i.Name, i.SupervisorPID)}
	}
	return stopAnswer{}
}

// tellUnlisted passes a superseded order on to the interpreter's own
// supervisor when the view shows it alive on this host though the
// registry does not list it: this agent restarted without its data dir,
// and the supervisor, which outlived it, joined the mesh again through
// it. Nothing else could stop it: before, it outlived the newer
// generation that superseded it (chaos seed 2109, the-answer-stands).
// In the background: the order's asker waits for this host's answer.
func (l *Lifecycle) tellUnlisted(o stopOrder, from string) {
	if l.deps.Node == nil {
		return
	}
	if _, view := l.meshView(); !slices.ContainsFunc(view, func(in Instance) bool {
		return in.Name == o.Name && in.Host == l.cfg.Node && in.Status == gossip.StatusAlive && in.Tags.Gen < o.Superseded
	}) {
		return
	}
	l.logger.Warn("interpreter-duplicate: telling an interpreter this host's registry does not list that a newer generation "+
		"of its request superseded it (the agent restarted without its data dir)", "interpreter", o.Name,
		"newer_gen", o.Superseded, "told_by", from)
	order, _ := msgpack.Marshal(stopOrder{Name: o.Name, Superseded: o.Superseded})
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		ctx, cancel := l.untilDone(orderTimeout)
		defer cancel()
		raw, err := l.askOne(ctx, o.Name, querySuperseded, order, orderTimeout)
		var ans stopAnswer
		if err == nil {
			err = msgpack.Unmarshal(raw, &ans)
		}
		if err == nil && ans.Error != "" {
			err = errors.New(ans.Error)
		}
		if err != nil {
			l.logger.Warn("could not tell an unlisted interpreter it is superseded", "interpreter", o.Name, "err", err)
		}
	}()
}

// handleExitOrder answers how one of this server's interpreters is doing:
// running, or how it ended (from its supervisor's exit record) with the
// first lines of its output.
func (l *Lifecycle) handleExitOrder(q *gossip.Query) {
	var o exitOrder
	var ans exitAnswer
	if err := msgpack.Unmarshal(q.Payload, &o); err == nil && o.Name != "" && !strings.ContainsAny(o.Name, "/\\") && o.Name != ".." {
		l.regMu.Lock()
		i, running := l.registry.Get(o.Name)
		l.regMu.Unlock()
		// The registry learns of a dead supervisor within a second; the
		// process table knows now.
		if running && !l.procs.Running(i.SupervisorPID, i.Spec) {
			running, ans.Lost = false, true
		}
		dir := filepath.Join(l.cfg.Dir, "interpreters", o.Name)
		if e, err := ReadExit(dir); err == nil {
			ans.Found, ans.How, ans.Status, ans.Code = true, e.How, e.Status, e.Code
			ans.Output = outputHead(filepath.Join(dir, "output.log"))
		} else {
			ans.Running = running
			if _, err := os.Stat(filepath.Join(dir, "spec.json")); !running && err == nil {
				ans.Lost = true // started here, gone without a record
			}
		}
	}
	respond(q, ans, l.logger)
}

// outputHead is the first few lines of an interpreter's output, bounded
// so that it fits in a query answer.
func outputHead(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, 400)
	n, _ := f.Read(buf)
	lines := strings.SplitN(string(buf[:n]), "\n", 6)
	if len(lines) > 5 {
		lines = lines[:5]
	}
	return strings.TrimSpace(strings.ToValidUTF8(strings.Join(lines, "\n"), "?"))
}
