package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
	"github.com/meshagent/agent/state"
)

// The queries a server answers for interpreters, addressed to it alone.
const (
	querySpawn = "spawn"
	queryStop  = "stop-interpreter"
)

const (
	// startTimeout bounds a server's start of one supervisor.
	startTimeout = 10 * time.Second
	// orderTimeout bounds the asker's wait for one server's answer.
	orderTimeout = 15 * time.Second
	// maxAttempts is how many servers one spawn tries, best bid first.
	maxAttempts = 3
	// reservationTTL is how long the asker counts a spawn against a
	// server whose tags do not show it yet.
	reservationTTL = 30 * time.Second
)

// spawnOrder is what the asker sends the elected server.
type spawnOrder struct {
	RequestID string   `msgpack:"rid"`
	Kind      string   `msgpack:"k"`
	Args      []string `msgpack:"a,omitempty"`
	Asker     string   `msgpack:"f"`
}

// spawnAnswer is the server's reply: where the interpreter runs, or why not.
type spawnAnswer struct {
	Name     string `msgpack:"n,omitempty"`
	PID      int    `msgpack:"p,omitempty"`
	Endpoint string `msgpack:"e,omitempty"`
	Existing bool   `msgpack:"x,omitempty"`
	Refusal  string `msgpack:"r,omitempty"`
}

type stopOrder struct {
	Name string `msgpack:"n"`
}

type stopAnswer struct {
	Error string `msgpack:"e,omitempty"`
}

// requestIDFor derives the request id: from the idempotency key when there
// is one, so that the same key always names the same request everywhere.
func requestIDFor(key string) string {
	if key == "" {
		return newRequestID()
	}
	sum := sha256.Sum256([]byte("agent-spawn-key\x00" + key))
	return "k" + hex.EncodeToString(sum[:8])
}

// interpreterName names the interpreter of a request: unique in the mesh
// because request ids are.
func interpreterName(kind, rid string) string { return kind + "-" + rid }

// ---- the server's side ----

func (a *Agent) registryPath() string { return filepath.Join(a.interpDir(), "interpreters.json") }

// interpDir holds the registry and one directory per interpreter.
func (a *Agent) interpDir() string {
	if a.cfg.DataDir != "" {
		return a.cfg.DataDir
	}
	return filepath.Join(os.TempDir(), "agent-"+a.cfg.NodeName)
}

// loadRegistry reads the registry and keeps the interpreters whose
// supervisor still runs: after a restart the agent re-adopts them.
func (a *Agent) loadRegistry() error {
	data, err := os.ReadFile(a.registryPath())
	if errors.Is(err, os.ErrNotExist) {
		a.registry = state.NewRegistry()
		return nil
	}
	if err != nil {
		return fmt.Errorf("read interpreter registry: %w", err)
	}
	reg, err := state.UnmarshalRegistry(data)
	if err != nil {
		return fmt.Errorf("%s: %w: move it aside to start with no interpreters", a.registryPath(), err)
	}
	dropped := reg.Retain(func(i state.Interpreter) bool { return isOurSupervisor(i.SupervisorPID, i.Spec) })
	a.registry = reg
	for _, i := range dropped {
		a.logger.Info("interpreter gone while the agent was down", "interpreter", i.Name, "pid", i.PID)
	}
	for _, i := range reg.List() {
		a.logger.Info("re-adopted running interpreter", "interpreter", i.Name, "pid", i.PID, "endpoint", i.Endpoint)
	}
	if len(dropped) > 0 {
		return a.saveRegistryLocked()
	}
	return nil
}

// saveRegistryLocked writes the registry; a.regMu must be held.
func (a *Agent) saveRegistryLocked() error {
	data, err := a.registry.Marshal()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.interpDir(), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(a.registryPath(), data, 0o600)
}

// runningInterpreters counts the live interpreters this server started.
func (a *Agent) runningInterpreters() int {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	if a.registry == nil {
		return 0
	}
	return a.registry.Len()
}

// startingInterpreters counts spawns accepted but not yet registered.
func (a *Agent) startingInterpreters() int {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	return len(a.inflight)
}

// handleSpawnOrder answers the spawn query: start the interpreter unless
// this request already started one or the server is full.
func (a *Agent) handleSpawnOrder(q *gossip.Query) {
	var o spawnOrder
	var ans spawnAnswer
	switch err := msgpack.Unmarshal(q.Payload, &o); {
	case err != nil:
		ans.Refusal = "cannot decode the spawn order: " + err.Error()
	case !a.allow(a.spawnLimit, q.From):
		ans.Refusal = fmt.Sprintf("rate limited: %s sent more than %g spawn orders a second (--spawn-rate-limit)", q.From, a.cfg.SpawnRate)
		a.logger.Warn("spawn order refused: rate limit", "asker", q.From)
	default:
		ans = a.startInterpreter(o)
	}
	data, err := msgpack.Marshal(ans)
	if err == nil {
		err = q.Respond(data)
	}
	if err != nil {
		a.logger.Warn("spawn answer not sent", "request", o.RequestID, "err", err)
	}
}

func (a *Agent) startInterpreter(o spawnOrder) spawnAnswer {
	kind, ok := a.kinds[o.Kind]
	if !ok {
		return spawnAnswer{Refusal: fmt.Sprintf("kind %q is not offered here (offered: %s)", o.Kind, strings.Join(kindNames(a.kinds), ", "))}
	}
	if err := kind.checkArgs(o.Args); err != nil {
		return spawnAnswer{Refusal: err.Error()}
	}
	select {
	case <-a.shutdownCh:
		return spawnAnswer{Refusal: "shutting down"}
	default:
	}

	a.regMu.Lock()
	for {
		if i, ok := a.registry.ByRequestID(o.RequestID); ok {
			a.regMu.Unlock()
			return spawnAnswer{Name: i.Name, PID: i.PID, Endpoint: i.Endpoint, Existing: true}
		}
		wait, busy := a.inflight[o.RequestID]
		if !busy {
			break
		}
		// The same order arrived twice (the asker re-sent it): wait for
		// the first start to finish and answer with its outcome.
		a.regMu.Unlock()
		<-wait
		a.regMu.Lock()
		if _, ok := a.registry.ByRequestID(o.RequestID); !ok {
			a.regMu.Unlock()
			return spawnAnswer{Refusal: "the first attempt to start this request failed; see the server's log"}
		}
	}
	running := a.registry.Len() + len(a.inflight)
	if a.cfg.Capacity > 0 && running >= a.cfg.Capacity {
		a.regMu.Unlock()
		return spawnAnswer{Refusal: fmt.Sprintf("at capacity: %d of %d interpreters", running, a.cfg.Capacity)}
	}
	if kind.Max > 0 {
		n := a.registry.CountKind(o.Kind)
		for _, k := range a.inflightKind {
			if k == o.Kind {
				n++
			}
		}
		if n >= kind.Max {
			a.regMu.Unlock()
			return spawnAnswer{Refusal: fmt.Sprintf("at the limit for kind %q: %d of %d", o.Kind, n, kind.Max)}
		}
	}
	done := make(chan struct{})
	a.inflight[o.RequestID] = done
	a.inflightKind[o.RequestID] = o.Kind
	a.regMu.Unlock()
	defer func() {
		a.regMu.Lock()
		delete(a.inflight, o.RequestID)
		delete(a.inflightKind, o.RequestID)
		a.regMu.Unlock()
		close(done)
	}()

	name := interpreterName(o.Kind, o.RequestID)
	ans, err := a.launch(kind, name, o)
	if err != nil {
		a.logger.Error("interpreter did not start", "interpreter", name, "kind", o.Kind, "asker", o.Asker, "err", err)
		return spawnAnswer{Refusal: "could not start: " + err.Error()}
	}
	a.logger.Info("interpreter started", "interpreter", name, "kind", o.Kind, "pid", ans.PID, "endpoint", ans.Endpoint, "asker", o.Asker)
	a.publishCounts()
	return ans
}

// launch starts the supervisor of one interpreter and registers it.
func (a *Agent) launch(kind Kind, name string, o spawnOrder) (spawnAnswer, error) {
	ip := a.node.LocalMember().Addr.String()
	childPort, err := freePort(ip, false)
	if err != nil {
		return spawnAnswer{}, err
	}
	gossipPort, err := freePort(ip, true)
	if err != nil {
		return spawnAnswer{}, err
	}
	endpoint := net.JoinHostPort(ip, strconv.Itoa(childPort))
	dir := filepath.Join(a.interpDir(), "interpreters", name)
	spec := Spec{
		Name: name, Kind: kind.Name, Host: a.cfg.NodeName, RequestID: o.RequestID,
		Argv:      kind.argv(name, endpoint, strconv.Itoa(childPort), o.Args),
		Env:       childEnv(kind, name, endpoint, strconv.Itoa(childPort)),
		Dir:       kind.Dir,
		Endpoint:  endpoint,
		Gossip:    net.JoinHostPort(ip, strconv.Itoa(gossipPort)),
		Join:      []string{a.node.Addr()},
		Profile:   a.cfg.Profile,
		Keys:      a.node.LocalKeys(),
		OutputLog: filepath.Join(dir, "output.log"),
		StopGrace: 10 * time.Second,
		User:      kind.User, UID: kind.UID, GID: kind.GID,
	}
	s, err := launchSupervisor(a.self, dir, spec, startTimeout)
	if err != nil {
		return spawnAnswer{}, err
	}
	rec := state.Interpreter{Name: name, Kind: kind.Name, RequestID: o.RequestID, SupervisorPID: s.pid, PID: s.childPID,
		Endpoint: endpoint, Spec: filepath.Join(dir, "spec.json"), Started: a.clock.Now().UTC()}
	a.regMu.Lock()
	err = a.registry.Add(rec)
	if err == nil {
		a.supervisors[name] = s
		if serr := a.saveRegistryLocked(); serr != nil {
			a.logger.Error("interpreter registry not saved; a restart will not re-adopt it", "interpreter", name, "err", serr)
		}
	}
	a.regMu.Unlock()
	if err != nil {
		syscall.Kill(s.pid, syscall.SIGTERM)
		return spawnAnswer{}, err
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		select {
		case <-s.done:
			a.dropInterpreter(name, "its supervisor exited")
		case <-a.shutdownCh:
		}
	}()
	return spawnAnswer{Name: name, PID: s.childPID, Endpoint: endpoint}, nil
}

// dropInterpreter forgets an interpreter that stopped.
func (a *Agent) dropInterpreter(name, why string) {
	a.regMu.Lock()
	removed := a.registry.Remove(name)
	delete(a.supervisors, name)
	if removed {
		if err := a.saveRegistryLocked(); err != nil {
			a.logger.Error("interpreter registry not saved", "err", err)
		}
	}
	a.regMu.Unlock()
	if removed {
		a.logger.Info("interpreter gone", "interpreter", name, "why", why)
		a.publishCounts()
	}
}

// watchInterpreters drops interpreters whose supervisor is gone: those this
// agent re-adopted after a restart are not its children, so nothing else
// tells it when they exit.
func (a *Agent) watchInterpreters() {
	for {
		select {
		case <-a.shutdownCh:
			return
		case <-a.clock.After(time.Second):
		}
		a.regMu.Lock()
		var gone []string
		for _, i := range a.registry.List() {
			if _, ours := a.supervisors[i.Name]; ours {
				continue // its exit is seen directly
			}
			if !isOurSupervisor(i.SupervisorPID, i.Spec) {
				gone = append(gone, i.Name)
			}
		}
		a.regMu.Unlock()
		for _, name := range gone {
			a.dropInterpreter(name, "its supervisor is no longer running")
		}
	}
}

// publishCounts gossips a changed interpreter count as soon as the publish
// policy allows.
func (a *Agent) publishCounts() {
	if l, ok := a.currentLoad(); ok {
		a.observeLoad(l, a.clock.Now())
	}
}

// handleStopOrder answers the stop query: signal the supervisor, which
// stops the interpreter and leaves the mesh.
func (a *Agent) handleStopOrder(q *gossip.Query) {
	var o stopOrder
	var ans stopAnswer
	if err := msgpack.Unmarshal(q.Payload, &o); err != nil {
		ans.Error = "cannot decode the stop order: " + err.Error()
	} else {
		a.regMu.Lock()
		i, ok := a.registry.Get(o.Name)
		a.regMu.Unlock()
		switch {
		case !ok:
			ans.Error = fmt.Sprintf("no interpreter %s runs on %s", o.Name, a.cfg.NodeName)
		case syscall.Kill(i.SupervisorPID, syscall.SIGTERM) != nil:
			ans.Error = fmt.Sprintf("interpreter %s's supervisor (pid %d) is gone", o.Name, i.SupervisorPID)
		default:
			a.logger.Info("stopping interpreter", "interpreter", o.Name, "pid", i.PID)
		}
	}
	data, _ := msgpack.Marshal(ans)
	if err := q.Respond(data); err != nil {
		a.logger.Warn("stop answer not sent", "interpreter", o.Name, "err", err)
	}
}

// ---- the asker's side ----

// errOrderTooLarge is askOne's refusal of an order serf would refuse.
var errOrderTooLarge = fmt.Errorf("over serf's %d-byte query limit", gossip.QuerySizeLimit)

// orderParams addresses an order to one node, which acknowledges it.
func orderParams(node string, timeout time.Duration) gossip.QueryParams {
	return gossip.QueryParams{FilterNodes: []string{node}, RequestAck: true, Timeout: timeout}
}

// askOne sends a query to one node and returns its answer. A gossiped query
// can miss its one target, so when the target has not acknowledged it
// within a second the query is sent again; the orders are idempotent.
func (a *Agent) askOne(ctx context.Context, node, name string, payload []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if size := a.node.QuerySize(name, payload, orderParams(node, timeout)); size > gossip.QuerySizeLimit {
		return nil, fmt.Errorf("the %s order would be %d bytes, %w", name, size, errOrderTooLarge)
	}
	answers := make(chan []byte, 2)
	acked := make(chan struct{})
	var ackOnce sync.Once
	send := func() {
		a.node.Query(ctx, name, payload, orderParams(node, timeout),
			func(string) { ackOnce.Do(func() { close(acked) }) },
			func(_ string, p []byte) {
				select {
				case answers <- p:
				default:
				}
				cancel()
			})
	}
	go send()
	select {
	case p := <-answers:
		return p, nil
	case <-acked:
	case <-a.clock.After(time.Second):
		go send()
	case <-ctx.Done():
	}
	select {
	case p := <-answers:
		return p, nil
	case <-ctx.Done():
		select {
		case p := <-answers:
			return p, nil
		default:
		}
		return nil, fmt.Errorf("%s did not answer within %s", node, timeout)
	}
}

// findInterpreter looks for an alive interpreter of a request in the local
// member list.
func (a *Agent) findInterpreter(match func(gossip.Member, gossip.Tags) bool) (gossip.Member, gossip.Tags, bool) {
	for _, m := range a.node.Members() {
		t, _ := gossip.ParseTags(m.Tags)
		if t.Role == gossip.RoleInterpreter && match(m, t) {
			return m, t, true
		}
	}
	return gossip.Member{}, gossip.Tags{}, false
}

// handleSpawn is the spawn RPC command.
func (a *Agent) handleSpawn(body rpc.Body) (any, error) {
	var req rpc.SpawnRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad spawn request: %w", err)
	}
	return a.spawn(context.Background(), req), nil
}

func (a *Agent) spawn(ctx context.Context, req rpc.SpawnRequest) rpc.SpawnResponse {
	start := time.Now()
	resp := a.spawnOnce(ctx, req, start)
	a.metrics.spawnLatency.observe(time.Since(start))
	switch {
	case resp.Code != "":
		a.metrics.spawns.inc(strings.ReplaceAll(resp.Code, "-", "_"))
	case resp.Existing:
		a.metrics.spawns.inc("existing")
	default:
		a.metrics.spawns.inc("started")
	}
	return resp
}

func (a *Agent) spawnOnce(ctx context.Context, req rpc.SpawnRequest, start time.Time) rpc.SpawnResponse {
	fail := func(resp rpc.SpawnResponse, code string, err error) rpc.SpawnResponse {
		resp.Code, resp.Error = code, err.Error()
		resp.TotalMS = ms(time.Since(start))
		return resp
	}
	rid := requestIDFor(req.Key)
	resp := rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}
	preq, err := parsePlaceRequest(req.Kind, req.Constraints, req.Policy)
	if err != nil {
		return fail(resp, rpc.SpawnBadRequest, err)
	}
	preq.ID = rid

	// Idempotency: an interpreter of this request already alive is the answer.
	if req.Key != "" {
		if m, t, ok := a.findInterpreter(func(m gossip.Member, t gossip.Tags) bool {
			return t.RequestID == rid && m.Status == gossip.StatusAlive
		}); ok {
			resp.Name, resp.Node, resp.Kind, resp.PID, resp.Endpoint, resp.Existing = m.Name, t.Host, t.Kind, t.PID, t.Endpoint, true
			resp.TotalMS = ms(time.Since(start))
			return resp
		}
	}

	e := a.elect(ctx, preq, 0, a.ledger)
	resp.DecisionMS = ms(e.elapsed)
	if e.err != nil {
		code := rpc.SpawnRefused
		switch {
		case errors.Is(e.err, bidding.ErrNoServers):
			code = rpc.SpawnNoServer
		case unknownKind(e):
			code = rpc.SpawnUnknownKind
			e.err = fmt.Errorf("no server offers kind %q; kinds offered: %s", req.Kind, strings.Join(offeredKinds(e), ", "))
		}
		return fail(resp, code, e.err)
	}

	order, _ := msgpack.Marshal(spawnOrder{RequestID: rid, Kind: req.Kind, Args: req.Args, Asker: a.cfg.NodeName})
	timeouts := 0
	var ans spawnAnswer
	for i, cand := range e.decision.Ranked {
		if i == maxAttempts {
			break
		}
		a.reserve(rid, cand.Bid)
		raw, err := a.askOne(ctx, cand.Bid.Node, querySpawn, order, orderTimeout)
		if errors.Is(err, errOrderTooLarge) {
			a.release(rid)
			return fail(resp, rpc.SpawnBadRequest, fmt.Errorf("%w: pass fewer or shorter arguments", err))
		}
		if err == nil {
			err = msgpack.Unmarshal(raw, &ans)
			if err == nil && ans.Refusal != "" {
				err = errors.New(ans.Refusal)
			}
		} else {
			timeouts++
		}
		if err == nil {
			resp.Node = cand.Bid.Node
			break
		}
		a.release(rid)
		resp.Attempts = append(resp.Attempts, cand.Bid.Node+": "+err.Error())
		a.logger.Warn("server did not start the interpreter; trying the next best", "server", cand.Bid.Node, "err", err)
	}
	if resp.Node == "" {
		code := rpc.SpawnRefused
		if timeouts == len(resp.Attempts) {
			code = rpc.SpawnTimeout
		}
		return fail(resp, code, fmt.Errorf("no server started the interpreter: %s", strings.Join(resp.Attempts, "; ")))
	}
	resp.Name, resp.PID, resp.Endpoint, resp.Existing = ans.Name, ans.PID, ans.Endpoint, ans.Existing

	if req.Wait {
		wait := req.Timeout
		if wait <= 0 {
			wait = rpc.DefaultSpawnWait
		}
		alive := func(s gossip.Status) bool { return s == gossip.StatusAlive }
		if _, err := a.waitMember(resp.Name, wait, alive, "it is not alive in "+a.cfg.NodeName+"'s member list"); err != nil {
			return fail(resp, rpc.SpawnTimeout, fmt.Errorf("%s started on %s, but %w", resp.Name, resp.Node, err))
		}
	}
	resp.TotalMS = ms(time.Since(start))
	return resp
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// unknownKind reports whether every server rejected the request for the kind.
func unknownKind(e election) bool {
	if len(e.decision.Rejected) == 0 {
		return false
	}
	for _, r := range e.decision.Rejected {
		if r.Rule != placement.RuleKind {
			return false
		}
	}
	return true
}

func offeredKinds(e election) []string {
	set := map[string]bool{}
	for _, b := range e.result.Bids {
		for _, k := range b.Kinds {
			set[k] = true
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (a *Agent) reserve(rid string, b placement.Bid) {
	a.ledgerMu.Lock()
	a.ledger.Reserve(rid, b, a.clock.Now())
	a.ledgerMu.Unlock()
}

func (a *Agent) release(rid string) {
	a.ledgerMu.Lock()
	a.ledger.Release(rid)
	a.ledgerMu.Unlock()
}

// handleInterpreters lists every interpreter in this agent's view.
func (a *Agent) handleInterpreters(rpc.Body) (any, error) {
	members := a.node.Members()
	status := map[string]string{}
	for _, m := range members {
		status[m.Name] = string(m.Status)
	}
	var out []rpc.InterpreterView
	for _, m := range members {
		t, _ := gossip.ParseTags(m.Tags)
		if t.Role != gossip.RoleInterpreter {
			continue
		}
		host := status[t.Host]
		if host == "" {
			host = "unknown"
		}
		out = append(out, rpc.InterpreterView{Name: m.Name, Kind: t.Kind, Host: t.Host, HostStatus: host,
			Status: string(m.Status), Endpoint: t.Endpoint, PID: t.PID, RequestID: t.RequestID})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return rpc.InterpretersResponse{Interpreters: out}, nil
}

// handleStopInterpreter stops an interpreter wherever it runs: the order
// goes to its host server, and the call returns once this agent sees the
// interpreter leave.
func (a *Agent) handleStopInterpreter(body rpc.Body) (any, error) {
	var req rpc.StopRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad stop request: %w", err)
	}
	m, t, ok := a.findInterpreter(func(m gossip.Member, _ gossip.Tags) bool { return m.Name == req.Name })
	if !ok {
		return nil, fmt.Errorf("no interpreter named %q in this agent's view: `agent interpreters` lists them", req.Name)
	}
	if m.Status != gossip.StatusAlive {
		return rpc.StopResponse{Name: m.Name, Host: t.Host, Status: string(m.Status)}, nil
	}
	order, _ := msgpack.Marshal(stopOrder{Name: req.Name})
	raw, err := a.askOne(context.Background(), t.Host, queryStop, order, orderTimeout)
	if err != nil {
		return nil, fmt.Errorf("stop %s: its server %w", req.Name, err)
	}
	var ans stopAnswer
	if err := msgpack.Unmarshal(raw, &ans); err != nil {
		return nil, fmt.Errorf("stop %s: %s answered garbage: %w", req.Name, t.Host, err)
	}
	if ans.Error != "" {
		return nil, fmt.Errorf("stop %s: %s", req.Name, ans.Error)
	}
	gone := func(s gossip.Status) bool { return s != gossip.StatusAlive && s != gossip.StatusLeaving }
	final, err := a.waitMember(req.Name, 20*time.Second, gone, "it was told to stop but is still alive")
	if err != nil {
		return nil, fmt.Errorf("stop %s: %w", req.Name, err)
	}
	return rpc.StopResponse{Name: req.Name, Host: t.Host, Status: string(final)}, nil
}

// waitMember returns name's status in this agent's member list (StatusNone
// when it is not listed) once done holds for it, looking again at every
// member event. After limit it fails with what it was waiting for.
func (a *Agent) waitMember(name string, limit time.Duration, done func(gossip.Status) bool, waitingFor string) (gossip.Status, error) {
	changed := make(chan struct{}, 1)
	cancel := a.node.Subscribe(func(gossip.Event) {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer cancel()
	timeout := a.clock.After(limit)
	for {
		status := gossip.StatusNone
		for _, m := range a.node.Members() {
			if m.Name == name {
				status = m.Status
			}
		}
		if done(status) {
			return status, nil
		}
		select {
		case <-changed:
		case <-timeout:
			return status, fmt.Errorf("%s after %s", waitingFor, limit)
		case <-a.shutdownCh:
			return status, errors.New("the agent is shutting down")
		}
	}
}
