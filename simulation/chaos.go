package simulation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshagent/agent/agent/interp"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/chaos"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
)

// The chaos scenario: whole agents (gossip, bidding, placement and
// agent/interp with its registry, supervisors, duplicate rule, restarts,
// drain and reap) on the simulated network, their interpreters an
// in-memory double (procs.go), playing a seeded chaos.Plan of faults and
// client operations. The run records a chaos.History (what was asked and
// answered, what the nemesis did, what the agents reported, and, every
// second, every process on every host and every agent's list) and hands
// it to chaos.Check. It runs in virtual time: a test's synctest bubble, or
// `agent simulate --scenario chaos`'s child process.

// ChaosConfig is one chaos run.
type ChaosConfig struct {
	Seed     int64
	Agents   int           // servers, one a host (at least 3)
	Duration time.Duration // the faults and operations; the settle and the final watch come after it
	// Faults restricts the nemesis (chaos.ParseFaultKinds); nil: all.
	Faults  []chaos.FaultKind
	Profile string // gossip profile; empty: the default
	// Settle is T_settle: how long after the last fault heals (and the
	// last operation answers) the rules must hold in full. Zero: 30 s.
	Settle time.Duration
	// Logger receives the agents' logs; nil discards them.
	Logger *slog.Logger
	// Dir is where the run makes the directory of its hosts' data dirs
	// (removed when the run ends); empty: diskDir().
	Dir string
}

// DefaultSettle is T_settle: within it of the last fault healing, the
// mesh is one again (heal in about a second, a failed member's detection
// in a few), duplicates are resolved and the reap has not yet forgotten
// anything it must not.
const DefaultSettle = 30 * time.Second

// chaosWatch is how long the run keeps observing after the settle: the
// rules must hold at every snapshot of it, not at one instant.
const chaosWatch = 10 * time.Second

// chaosReap is the interpreters' reap window in a chaos run: the agent's
// default (--interpreter-reap).
const chaosReap = time.Minute

// ChaosResult is one run: its history and what the checker found in it.
type ChaosResult struct {
	Seed       int64   `json:"seed"`
	Agents     int     `json:"agents"`
	SimulatedS float64 `json:"simulated_s"`
	Ops        int     `json:"ops"`
	Faults     int     `json:"faults"`
	// FaultKinds counts the faults by kind: what the run injected, kept
	// when the history is not.
	FaultKinds map[chaos.FaultKind]int `json:"fault_kinds"`
	Violations []chaos.Violation       `json:"violations"`
	History    chaos.History           `json:"history"`
	// SettleS is how long after the last heal every agent listed exactly
	// the processes that ran, one per request (-1: never within the run).
	SettleS float64 `json:"settle_s"`
}

// RunChaos plays one seeded chaos schedule on whole agents and checks its
// history. It must run in virtual time (a synctest bubble): its timers are
// the agents' own, and a run of minutes takes seconds there.
func RunChaos(ctx context.Context, cfg ChaosConfig) (*ChaosResult, error) {
	if cfg.Agents < 3 {
		return nil, fmt.Errorf("a chaos run of %d agents: give at least 3 (--nodes), so that a majority can outlive a fault", cfg.Agents)
	}
	if cfg.Duration <= 0 {
		return nil, fmt.Errorf("a chaos run of %v: give a positive duration, e.g. --duration 5m", cfg.Duration)
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	names := make([]string, cfg.Agents)
	for i := range names {
		names[i] = fmt.Sprintf("h%d", i+1)
	}
	plan, err := chaos.Schedule(chaos.Config{Seed: cfg.Seed, Agents: names, Duration: cfg.Duration, Faults: cfg.Faults})
	if err != nil {
		return nil, err
	}
	// A small mesh's garbage is short-lived: collect it less often.
	defer raiseGCPercent(400, 4*cfg.Agents)()
	w, err := newWorld(cfg, names)
	if err != nil {
		return nil, err
	}
	defer w.close()
	if err := w.formMesh(ctx); err != nil {
		return nil, err
	}
	w.play(ctx, plan)
	h := w.history()
	res := &ChaosResult{Seed: cfg.Seed, Agents: cfg.Agents, SimulatedS: round(h.End.Seconds()), Ops: len(h.Ops),
		Faults: len(h.Faults), FaultKinds: map[chaos.FaultKind]int{}, History: h, Violations: chaos.Check(h), SettleS: settleS(h)}
	for _, f := range h.Faults {
		res.FaultKinds[f.Kind]++
	}
	return res, nil
}

// world is a chaos run's hosts, agents and recorder.
type world struct {
	cfg    ChaosConfig
	net    *Network
	names  []string
	hosts  map[string]*simHost
	root   string // the agents' data dirs
	t0     time.Time
	logger *slog.Logger

	mu        sync.Mutex
	agents    map[string]*simAgent // running agents
	dataDirs  map[string]string
	ops       []chaos.Op
	faults    []chaos.Fault
	events    []chaos.Event
	snapshots []chaos.Snapshot
	calm      chaos.Calm // when the run is quiet, and its last heal
	flaps     map[*chaos.Fault]chan struct{}

	opWG sync.WaitGroup // client operations and flapping
	bg   sync.WaitGroup // agents' joins
}

// diskDir is where the simulated hosts keep their data dirs: in memory
// (/dev/shm) where the machine has it, so that the agents' fsyncs (their
// registry and exit records are written durably) cost no wall time; else
// the temporary directory.
func diskDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if f, err := os.CreateTemp("/dev/shm", "agent-chaos-probe-"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return "/dev/shm"
		}
	}
	return os.TempDir()
}

func newWorld(cfg ChaosConfig, names []string) (*world, error) {
	n, err := NewNetwork(NetworkConfig{Seed: cfg.Seed, Link: DefaultLink, Tick: virtualTick})
	if err != nil {
		return nil, err
	}
	base := cfg.Dir
	if base == "" {
		base = diskDir()
	}
	root, err := os.MkdirTemp(base, "agent-chaos-")
	if err != nil {
		n.Close()
		return nil, err
	}
	w := &world{cfg: cfg, net: n, names: names, hosts: map[string]*simHost{}, root: root, logger: cfg.Logger,
		agents: map[string]*simAgent{}, dataDirs: map[string]string{}, flaps: map[*chaos.Fault]chan struct{}{}}
	for _, name := range names {
		w.hosts[name] = newSimHost(name, n, cfg.Logger.With("host", name))
	}
	return w, nil
}

func (w *world) since() time.Duration { return time.Since(w.t0) }

// formMesh starts every agent and waits until each sees all alive.
func (w *world) formMesh(ctx context.Context) error {
	w.t0 = time.Now()
	for _, name := range w.names {
		if err := w.startAgent(name, true); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for !w.whole() {
		if time.Now().After(deadline) {
			return errors.New("the chaos run's mesh did not form within 60 s")
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Time is counted from a formed mesh.
	w.mu.Lock()
	w.t0 = time.Now()
	w.mu.Unlock()
	return nil
}

// whole reports whether every host's agent runs and sees every other alive.
func (w *world) whole() bool {
	w.mu.Lock()
	agents := make([]*simAgent, 0, len(w.agents))
	for _, a := range w.agents {
		agents = append(agents, a)
	}
	w.mu.Unlock()
	if len(agents) != len(w.names) {
		return false
	}
	for _, a := range agents {
		alive := 0
		for _, m := range a.node.Members() {
			if m.Status == gossip.StatusAlive && m.Tags[gossip.TagRole] == string(gossip.RoleServer) {
				alive++
			}
		}
		if alive != len(w.names) {
			return false
		}
	}
	return true
}

// play runs the plan's steps at their times, snapshots every second, and,
// once the plan is done, heals everything, waits for the operations to be
// answered, and watches the settle and chaosWatch.
func (w *world) play(ctx context.Context, plan chaos.Plan) {
	stopSnaps := make(chan struct{})
	snapsDone := make(chan struct{})
	go func() {
		defer close(snapsDone)
		for {
			select {
			case <-stopSnaps:
				return
			case <-time.After(time.Second):
			}
			w.snapshot()
		}
	}()
	for i := range plan.Steps {
		st := plan.Steps[i]
		if d := st.At - w.since(); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		began := time.Now()
		switch {
		case st.Request != nil:
			w.invoke(ctx, *st.Request)
		case st.Fault != nil && st.End:
			w.endFault(st.Fault)
		case st.Fault != nil:
			w.startFault(st.Fault)
		}
		if took := time.Since(began); took > time.Second {
			w.logger.Warn("a chaos step held up the schedule", "step", fmt.Sprintf("%+v", st), "took", took)
		}
	}
	if d := plan.Duration - w.since(); d > 0 {
		time.Sleep(d)
	}
	w.healAll()
	w.opWG.Wait()
	w.mu.Lock()
	w.calm.Settling(w.since())
	w.mu.Unlock()
	time.Sleep(w.cfg.Settle + chaosWatch)
	close(stopSnaps)
	<-snapsDone
	w.snapshot()
}

// history is what the run recorded.
func (w *world) history() chaos.History {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := chaos.History{Seed: w.cfg.Seed, Agents: slices.Clone(w.names), Settle: w.cfg.Settle, LastHeal: w.calm.LastHeal(),
		End: w.since(), Ops: slices.Clone(w.ops), Faults: slices.Clone(w.faults), Events: slices.Clone(w.events),
		Snapshots: slices.Clone(w.snapshots)}
	slices.SortStableFunc(h.Ops, func(a, b chaos.Op) int { return int(a.Invoked - b.Invoked) })
	return h
}

// snapshot records every process on every host and every agent's list.
func (w *world) snapshot() {
	s := chaos.Snapshot{At: w.since(), Lists: map[string][]chaos.Listed{}}
	for _, name := range w.names {
		for _, sup := range w.hosts[name].supervisors() {
			if sup.up() {
				s.Processes = append(s.Processes, chaos.Process{Name: sup.spec.Name, RID: sup.spec.RequestID, Host: name, Gen: sup.spec.Gen})
			}
		}
	}
	w.mu.Lock()
	agents := make([]*simAgent, 0, len(w.agents))
	for _, a := range w.agents {
		agents = append(agents, a)
	}
	quiet := w.calm.Quiet(w.since(), w.cfg.Settle) && len(w.agents) == len(w.names)
	w.mu.Unlock()
	for _, a := range agents {
		var list []chaos.Listed
		for _, v := range a.life.List(false) {
			if v.Status == string(gossip.StatusAlive) {
				list = append(list, chaos.Listed{Name: v.Name, RID: v.RequestID, Host: v.Host, Gen: v.Generation})
			}
		}
		s.Lists[a.name] = list
	}
	s.Quiet = quiet
	w.mu.Lock()
	w.snapshots = append(w.snapshots, s)
	w.mu.Unlock()
}

// invoke runs one client operation on its own goroutine, as a client would.
func (w *world) invoke(ctx context.Context, r chaos.Request) {
	w.mu.Lock()
	a := w.agents[r.Agent]
	w.calm.OpStarted()
	w.mu.Unlock()
	op := chaos.Op{ID: r.ID, Kind: r.Kind, Agent: r.Agent, Key: r.Key, Restart: r.Restart, Wait: r.Wait, Signal: r.Signal,
		Invoked: w.since()}
	done := func(op chaos.Op) {
		op.Completed = w.since()
		w.mu.Lock()
		w.ops = append(w.ops, op)
		w.calm.OpEnded()
		w.mu.Unlock()
	}
	if a == nil {
		// The agent is down: the client cannot connect, and nothing happens.
		op.Outcome, op.Code, op.Error = chaos.Fail, "unreachable", "the agent is not running"
		done(op)
		return
	}
	if r.Kind != chaos.OpSpawn {
		names := listedNames(a)
		if len(names) == 0 {
			w.mu.Lock()
			w.calm.OpEnded()
			w.mu.Unlock()
			return // nothing listed: the request is not sent
		}
		op.Name = names[r.Pick%len(names)]
	}
	w.opWG.Add(1)
	go func() {
		defer w.opWG.Done()
		ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		switch r.Kind {
		case chaos.OpSpawn:
			op = w.spawn(ctx, a, op)
		case chaos.OpStop:
			op = w.stop(ctx, a, op)
		case chaos.OpSignal:
			op = w.signal(ctx, a, op)
		}
		done(op)
	}()
}

func listedNames(a *simAgent) []string {
	var names []string
	for _, v := range a.life.List(false) {
		if v.Status == string(gossip.StatusAlive) {
			names = append(names, v.Name)
		}
	}
	slices.Sort(names)
	return names
}

func (w *world) spawn(ctx context.Context, a *simAgent, op chaos.Op) chaos.Op {
	resp := a.life.Spawn(ctx, rpc.SpawnRequest{Kind: interp.BuiltinKind, Key: op.Key, Restart: op.Restart, Wait: op.Wait,
		Timeout: 30 * time.Second})
	op.RID = resp.RequestID
	switch resp.Code {
	case "":
		op.Outcome, op.Name, op.Host, op.Gen, op.Existing = chaos.OK, resp.Name, resp.Node, resp.Generation, resp.Existing
		if op.Wait {
			// True if it ran at some moment between the question and the
			// answer: an operator's stop may race the answer.
			op.AliveAtAnswer = w.ranSince(resp.Name, w.t0.Add(op.Invoked))
		}
	case rpc.SpawnTimeout:
		op.Outcome, op.Code, op.Error = chaos.Info, resp.Code, resp.Error
	default:
		op.Outcome, op.Code, op.Error = chaos.Fail, resp.Code, resp.Error
	}
	return op
}

func (w *world) stop(ctx context.Context, a *simAgent, op chaos.Op) chaos.Op {
	op.RID = ridOf(op.Name)
	_, err := a.life.Stop(ctx, rpc.StopRequest{Name: op.Name})
	return withErr(op, err)
}

func (w *world) signal(ctx context.Context, a *simAgent, op chaos.Op) chaos.Op {
	op.RID = ridOf(op.Name)
	resp, err := a.life.Signal(ctx, rpc.SignalRequest{Name: op.Name, Signal: op.Signal})
	if err == nil && !resp.Delivered {
		err = errors.New(resp.Reason)
	}
	return withErr(op, err)
}

// withErr records an order's outcome: an order that timed out may still
// have been carried out.
func withErr(op chaos.Op, err error) chaos.Op {
	switch {
	case err == nil:
		op.Outcome = chaos.OK
	case strings.Contains(err.Error(), "did not answer") || strings.Contains(err.Error(), "still alive") ||
		strings.Contains(err.Error(), "shutting down"):
		op.Outcome, op.Error = chaos.Info, err.Error()
	default:
		op.Outcome, op.Error = chaos.Fail, err.Error()
	}
	return op
}

// ridOf is the request id in an interpreter's name (kind-rid-launch).
func ridOf(name string) string {
	parts := strings.Split(name, "-")
	if len(parts) < 3 {
		return ""
	}
	return parts[len(parts)-2]
}

// ranSince reports whether an interpreter called name runs on some host,
// or ended there after since.
func (w *world) ranSince(name string, since time.Time) bool {
	for _, h := range w.hosts {
		for _, s := range h.supervisors() {
			if s.spec.Name == name && s.up() {
				return true
			}
		}
		if at, ok := h.endedAt(name); ok && !at.Before(since) {
			return true
		}
	}
	return false
}

func (w *world) recordFault(f chaos.Fault) {
	f.At = w.since()
	w.mu.Lock()
	w.faults = append(w.faults, f)
	w.mu.Unlock()
}

// startFault applies a fault. Faults with an end count as in force until
// it; a crash is in force until its restart.
func (w *world) startFault(f *chaos.Fault) {
	w.recordFault(*f)
	switch f.Kind {
	case chaos.FaultPartition:
		w.net.Partition(f.Groups...)
	case chaos.FaultOneWay:
		w.net.Cut(f.From, f.To)
	case chaos.FaultFlap:
		stop := make(chan struct{})
		w.mu.Lock()
		w.flaps[f] = stop
		w.mu.Unlock()
		w.opWG.Add(1)
		go func() {
			defer w.opWG.Done()
			split := true
			for {
				if split {
					w.net.Partition(f.Groups...)
				} else {
					w.net.Heal()
				}
				split = !split
				select {
				case <-stop:
					return
				case <-time.After(f.Period):
				}
			}
		}()
	case chaos.FaultLoss:
		l := DefaultLink
		l.Loss = f.Rate
		w.net.SetDefaultLink(l)
	case chaos.FaultPause:
		w.net.Pause(f.Hosts[0])
	case chaos.FaultCrashHost:
		w.crashAgent(f.Hosts[0], false)
		w.hosts[f.Hosts[0]].killAll()
	case chaos.FaultCrashAgent:
		w.crashAgent(f.Hosts[0], false)
	case chaos.FaultCrashSupervisor:
		if sups := w.hosts[f.Hosts[0]].supervisors(); len(sups) > 0 {
			sups[f.Pick%len(sups)].kill()
		}
		return // instant: nothing stays in force
	case chaos.FaultRestartHost, chaos.FaultRestartAgent:
		w.startAgent(f.Hosts[0], f.KeepData)
		w.faultOver()
		return
	case chaos.FaultClusterRestart:
		var stopping sync.WaitGroup
		for _, name := range w.names {
			stopping.Go(func() { w.crashAgent(name, true) })
		}
		stopping.Wait()
		for _, name := range w.names {
			w.startAgent(name, true)
		}
		w.healed()
		return
	case chaos.FaultDrain:
		if a := w.agent(f.Hosts[0]); a != nil {
			a.draining.Store(true)
			if f.Stop {
				a.life.StopAll("drain")
			}
		}
		return // an operator's act, not a fault of the mesh
	case chaos.FaultUndrain:
		if a := w.agent(f.Hosts[0]); a != nil {
			a.draining.Store(false)
		}
		return
	}
	w.mu.Lock()
	w.calm.FaultStarted()
	w.mu.Unlock()
}

// endFault ends a fault at its Until.
func (w *world) endFault(f *chaos.Fault) {
	switch f.Kind {
	case chaos.FaultPartition, chaos.FaultOneWay:
		w.net.Heal()
	case chaos.FaultFlap:
		w.mu.Lock()
		stop := w.flaps[f]
		delete(w.flaps, f)
		w.mu.Unlock()
		if stop != nil {
			close(stop)
		}
		w.net.Heal()
	case chaos.FaultLoss:
		w.net.SetDefaultLink(DefaultLink)
	case chaos.FaultPause:
		w.net.Resume(f.Hosts[0])
	default:
		return
	}
	w.faultOver()
}

// faultOver counts one fault over.
func (w *world) faultOver() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calm.FaultEnded(w.since())
}

// healed marks now as the end of the last fault, with none counted.
func (w *world) healed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calm.Healed(w.since())
}

// healAll ends whatever is still in force at the end of the plan: the
// network healed, paused hosts resumed, crashed agents started again with
// their data.
func (w *world) healAll() {
	w.mu.Lock()
	for f, stop := range w.flaps {
		close(stop)
		delete(w.flaps, f)
	}
	w.mu.Unlock()
	w.net.Heal()
	w.net.SetDefaultLink(DefaultLink)
	for _, name := range w.names {
		w.net.Resume(name)
		if w.agent(name) == nil {
			w.startAgent(name, true)
		}
	}
	w.mu.Lock()
	w.calm.HealAll(w.since())
	w.mu.Unlock()
}

func (w *world) agent(name string) *simAgent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.agents[name]
}

// close stops everything the run started.
func (w *world) close() {
	for _, name := range w.names {
		w.crashAgent(name, false)
		w.hosts[name].killAll()
	}
	for _, h := range w.hosts {
		h.wg.Wait()
	}
	w.bg.Wait()
	w.net.Close()
	os.RemoveAll(w.root)
}

// simAgent is one host's agent: its member, its lifecycle, its bids and
// its elections, wired as agent/ wires them.
type simAgent struct {
	name     string
	node     *gossip.Node
	life     *interp.Lifecycle
	done     chan struct{}
	draining atomic.Bool
	joined   atomic.Bool

	ledgerMu sync.Mutex
	ledger   *placement.Ledger
}

// startAgent starts host's agent: with its data dir as before, or a new
// one (a host that lost its disk).
func (w *world) startAgent(host string, keepData bool) error {
	if w.agent(host) != nil {
		return nil
	}
	w.mu.Lock()
	dir := w.dataDirs[host]
	w.mu.Unlock()
	if dir == "" || !keepData {
		d, err := os.MkdirTemp(w.root, host+"-")
		if err != nil {
			return err
		}
		dir = d
		w.mu.Lock()
		w.dataDirs[host] = dir
		w.mu.Unlock()
	}
	ep, err := w.net.Attach(host, GossipPort)
	if err != nil {
		return err
	}
	tags := gossip.Tags{Role: gossip.RoleServer, Load: &gossip.Load{CPU: 30, Mem: 30}}.Map()
	logger := w.logger.With("agent", host)
	// serf's snapshot in the data dir, as the agent keeps it: a restart
	// with its disk goes on from its Lamport clocks, one without starts
	// them over.
	node, err := gossip.Start(gossip.Config{Name: host, Transport: ep, Profile: w.cfg.Profile, Tags: tags,
		Logger: gossipLogger(logger), Uncompressed: true, NoCoordinates: true, Reap: gossip.IsInterpreter, ReapAfter: chaosReap,
		SnapshotPath: filepath.Join(dir, "serf.snapshot")})
	if err != nil {
		ep.Shutdown()
		return err
	}
	ledger, _ := placement.NewLedger(30*time.Second, 4096)
	a := &simAgent{name: host, node: node, done: make(chan struct{}), ledger: ledger}
	a.life, err = interp.New(interp.Config{Node: host, Server: true, Dir: dir, Profile: w.cfg.Profile,
		Kinds: map[string]interp.Kind{interp.BuiltinKind: interp.Demo("agent")}, Self: "agent", StopGrace: 2 * time.Second,
		Reap: chaosReap},
		interp.Deps{Clock: realClock{}, Logger: logger, Done: a.done, Elect: a.elect, Reserve: a.reserve, Release: a.release,
			Emit: func(e interp.Event) { w.recordEvent(host, e) }, Draining: a.draining.Load, Processes: w.hosts[host],
			Joined: a.joined.Load})
	if err != nil {
		node.Shutdown()
		return err
	}
	if err := a.life.LoadRegistry(); err != nil {
		node.Shutdown()
		return err
	}
	bidding.Serve(node, func(asker string, req bidding.Request) placement.Bid {
		b := placement.Bid{Node: host, CPU: 30, Mem: 30, Healthy: true, Tags: node.Tags()}
		return a.life.Bid(asker, req, b)
	}, logger)
	a.life.Start(node)
	var peers []string
	for _, other := range w.names {
		if other != host {
			peers = append(peers, w.net.hostAddr(other, GossipPort))
		}
	}
	// Joining waits out each address that does not answer: in the
	// background, as the agent's own --join retries.
	addrs := append(peers, a.life.MemberAddrs()...)
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		// Until one answers, as the agent's retry does (its backoff
		// capped lower, for a run of minutes).
		for wait := time.Second; ; wait = min(2*wait, 8*time.Second) {
			n, err := node.Join(addrs, false)
			logger.Debug("join", "reached", n, "of", len(addrs), "err", err)
			if n > 0 {
				a.joined.Store(true)
				return
			}
			select {
			case <-a.done:
				return
			case <-time.After(wait):
			}
		}
	}()
	w.mu.Lock()
	w.agents[host] = a
	w.mu.Unlock()
	return nil
}

// crashAgent ends host's agent: on the spot (a crash: no leave), or
// gracefully (leave). Its supervisors keep running either way.
func (w *world) crashAgent(host string, graceful bool) {
	w.mu.Lock()
	a := w.agents[host]
	delete(w.agents, host)
	w.mu.Unlock()
	if a == nil {
		return
	}
	if graceful {
		a.node.Leave()
	}
	close(a.done)
	a.node.Shutdown()
	a.life.Wait()
}

func (w *world) recordEvent(host string, e interp.Event) {
	switch e.Type {
	case interp.EventGaveUp, interp.EventReplaced, interp.EventDuplicate, interp.EventRestarted, interp.EventStopped:
	default:
		return
	}
	ev := chaos.Event{At: w.since(), Agent: host, Type: e.Type, Name: e.Interpreter, RID: e.RequestID, Host: e.Host, Gen: e.Gen}
	w.mu.Lock()
	w.events = append(w.events, ev)
	w.mu.Unlock()
}

// elect is the agent's election: bids from every server, then Elect with
// this asker's ledger.
func (a *simAgent) elect(ctx context.Context, req placement.Request) interp.Election {
	start := time.Now()
	var e interp.Election
	e.Result, e.Err = bidding.Collect(ctx, a.node, bidding.Request{ID: req.ID, Kind: req.Kind, Claim: bidding.ClaimOf(req), Attempt: req.Attempt}, 0)
	if e.Err == nil {
		a.ledgerMu.Lock()
		e.Decision, e.Err = placement.Elect(req, e.Result.Bids, a.ledger, time.Now())
		a.ledgerMu.Unlock()
	}
	e.Elapsed = time.Since(start)
	return e
}

func (a *simAgent) reserve(rid string, b placement.Bid) {
	a.ledgerMu.Lock()
	a.ledger.Reserve(rid, b, time.Now())
	a.ledgerMu.Unlock()
}

func (a *simAgent) release(rid string) {
	a.ledgerMu.Lock()
	a.ledger.Release(rid)
	a.ledgerMu.Unlock()
}

// realClock is the clock of the bubble the run is in.
type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// settleS is T_settle as the history shows it, in seconds (-1: never).
func settleS(h chaos.History) float64 {
	d, ok := h.SettledAfter()
	if !ok {
		return -1
	}
	return round(d.Seconds())
}

// ChaosGossipLogEnv, set to 1 beside ChaosLogEnv, adds each agent's serf
// and memberlist log to it: what a member heard, refuted and gave up.
const ChaosGossipLogEnv = "AGENT_CHAOS_LOG_GOSSIP"

func gossipLogger(l *slog.Logger) *slog.Logger {
	if os.Getenv(ChaosGossipLogEnv) == "1" {
		return l.With("gossip", true)
	}
	return slog.New(slog.DiscardHandler)
}
