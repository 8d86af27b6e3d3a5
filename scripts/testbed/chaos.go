package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshagent/agent/chaos"
)

// The chaos checker on real processes: a seeded chaos.Plan of faults and
// client operations played on five hosts with real agents, supervisors
// and interpreters. Network faults are nftables rules, a pause is SIGSTOP
// of every process of a host, crashes are kill -9; client operations are
// `agent` commands run in the hosts' namespaces. The run records a
// chaos.History as the simulation's driver does (simulation/chaos.go,
// whose semantics this mirrors): every process counted from /proc in
// every namespace, every agent's list, the agents' lifecycle events from
// their HTTP event streams, and hands it to chaos.Check.

// ChaosConfig is one test-bed chaos run.
type ChaosConfig struct {
	Seed     int64
	Duration time.Duration // the faults and operations; the settle and the watch come after it
	// Faults restricts the nemesis (chaos.ParseFaultKinds); nil: all.
	Faults []chaos.FaultKind
	Agent  string // path of the agent binary
	// Settle is T_settle: how long after the last fault heals (and the
	// last operation answers) the rules must hold in full. Zero:
	// DefaultSettle.
	Settle time.Duration
	// Logf narrates the run (the bed's actions, the steps played). Nil
	// is quiet. It may be called concurrently.
	Logf func(format string, args ...any)
}

// DefaultSettle is T_settle, as the simulation states it.
const DefaultSettle = 30 * time.Second

// chaosWatch is how long the run keeps observing after the settle.
const chaosWatch = 10 * time.Second

// chaosHosts is how many hosts (each a server agent) a run has.
const chaosHosts = 5

// opLimit bounds one client command: a spawn's election, start attempts
// and --wait (30 s) with room to spare.
const opLimit = 90 * time.Second

// ChaosResult is one run: its history and what the checker found in it.
type ChaosResult struct {
	Prefix     string                  `json:"prefix"` // the bed's names (see Testbed.Prefix), all removed by now
	Seed       int64                   `json:"seed"`
	Hosts      int                     `json:"hosts"`
	Duration   time.Duration           `json:"duration"`
	RecordedS  float64                 `json:"recorded_s"`
	Ops        int                     `json:"ops"`
	Faults     map[chaos.FaultKind]int `json:"faults"`
	Violations []chaos.Violation       `json:"violations"`
	// SettleS is how long after the last heal every agent listed exactly
	// the processes that ran, one per request (-1: never within the run).
	SettleS float64 `json:"settle_s"`
	// Orphans are interpreter processes that ran without a supervisor at
	// the end (a defect: no agent can list them), and Lasting those seen
	// so for a second or more during the run.
	Orphans        []Orphan      `json:"orphans,omitempty"`
	LastingOrphans []Orphan      `json:"lasting_orphans,omitempty"`
	WallS          float64       `json:"wall_s"`
	History        chaos.History `json:"history"`
}

// RunChaos builds a bed of five hosts, plays the seeded schedule on it,
// checks the history and removes the bed, whatever happens. An error means
// the run could not be made (no bed, no mesh); violations are in the
// result.
func RunChaos(ctx context.Context, cfg ChaosConfig) (res *ChaosResult, err error) {
	if cfg.Duration <= 0 {
		return nil, fmt.Errorf("a chaos run of %s: give a positive duration, e.g. 3m", cfg.Duration)
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	names := make([]string, chaosHosts)
	for i := range names {
		names[i] = fmt.Sprintf("h%d", i+1)
	}
	plan, err := chaos.Schedule(chaos.Config{Seed: cfg.Seed, Agents: names, Duration: cfg.Duration, Faults: cfg.Faults})
	if err != nil {
		return nil, err
	}
	if err := Check(Filters); err != nil {
		return nil, err
	}
	wall := time.Now()
	bed, err := New(Config{Hosts: chaosHosts, Agent: cfg.Agent, Logf: cfg.Logf, Args: []string{"--http-addr", HTTPAddr}})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	d := newDriver(ctx, bed, cfg)
	defer func() {
		cancel()
		d.streams.Wait()
		err = errors.Join(err, bed.Close())
	}()
	if err := d.formMesh(); err != nil {
		return nil, err
	}
	d.play(plan)
	h := d.history()
	res = &ChaosResult{Prefix: bed.Prefix(), Seed: cfg.Seed, Hosts: chaosHosts, Duration: cfg.Duration, RecordedS: round(h.End.Seconds()),
		Ops: len(h.Ops), Faults: map[chaos.FaultKind]int{}, Violations: chaos.Check(h), SettleS: settleS(h), History: h}
	for _, f := range h.Faults {
		res.Faults[f.Kind]++
	}
	res.Orphans, res.LastingOrphans = d.seen.orphaned()
	res.WallS = round(time.Since(wall).Seconds())
	return res, ctx.Err()
}

// Report prints the run: seed, minutes, operations, faults by kind,
// T_settle observed and every violation with its slice.
func (r *ChaosResult) Report(w io.Writer) {
	fmt.Fprintf(w, "test-bed chaos: seed %d, %d hosts, %.1f minutes of faults and operations, %.1f minutes recorded, %.1f minutes of wall time\n",
		r.Seed, r.Hosts, r.Duration.Minutes(), r.RecordedS/60, r.WallS/60)
	outcomes := map[chaos.OpKind]map[chaos.Outcome]int{}
	for _, o := range r.History.Ops {
		if outcomes[o.Kind] == nil {
			outcomes[o.Kind] = map[chaos.Outcome]int{}
		}
		outcomes[o.Kind][o.Outcome]++
	}
	var ops []string
	for _, k := range []chaos.OpKind{chaos.OpSpawn, chaos.OpStop, chaos.OpSignal} {
		c := outcomes[k]
		ops = append(ops, fmt.Sprintf("%s %d (ok %d, fail %d, info %d)", k, c[chaos.OK]+c[chaos.Fail]+c[chaos.Info],
			c[chaos.OK], c[chaos.Fail], c[chaos.Info]))
	}
	fmt.Fprintf(w, "operations: %d: %s\n", r.Ops, strings.Join(ops, ", "))
	kinds := make([]string, 0, len(r.Faults))
	total := 0
	for k, n := range r.Faults {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
		total += n
	}
	sort.Strings(kinds)
	fmt.Fprintf(w, "faults: %d: %s\n", total, orNothing(strings.Join(kinds, ", ")))
	events := map[string]int{}
	for _, e := range r.History.Events {
		events[e.Type]++
	}
	var evs []string
	for t, n := range events {
		evs = append(evs, fmt.Sprintf("%s %d", t, n))
	}
	sort.Strings(evs)
	fmt.Fprintf(w, "events: %s\n", orNothing(strings.Join(evs, ", ")))
	if r.SettleS >= 0 {
		fmt.Fprintf(w, "settled %.1f s after the last heal (every agent lists exactly what runs, one per request); T_settle %s\n",
			r.SettleS, r.History.Settle)
	} else {
		fmt.Fprintf(w, "never settled after the last heal (every agent listing exactly what runs, one per request); T_settle %s\n",
			r.History.Settle)
	}
	for _, o := range r.LastingOrphans {
		fmt.Fprintf(w, "orphan interpreter (no supervisor) during the run: %s\n", o)
	}
	for _, o := range r.Orphans {
		fmt.Fprintf(w, "orphan interpreter (no supervisor) at the end: %s\n", o)
	}
	if len(r.Violations) == 0 {
		fmt.Fprintln(w, "violations: none")
		return
	}
	fmt.Fprintf(w, "violations: %d\n", len(r.Violations))
	for _, v := range r.Violations {
		fmt.Fprintf(w, "\nseed %d: %s\n", r.Seed, v.String())
	}
}

func orNothing(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func round(x float64) float64 { return math.Round(x*1000) / 1000 }

// driver plays a plan on a bed and records its history.
type driver struct {
	ctx   context.Context
	bed   *Testbed
	cfg   ChaosConfig
	hosts map[string]*Host
	names []string
	t0    time.Time

	mu        sync.Mutex
	ops       []chaos.Op
	faults    []chaos.Fault
	events    []chaos.Event
	snapshots []chaos.Snapshot
	calm      chaos.Calm // when the run is quiet, and its last heal
	paused    map[string]bool
	flaps     map[*chaos.Fault]chan struct{}
	lost      int // data dirs moved aside, for a restart without one

	seen      seenProcs
	listedGen map[string]int // interpreter name → generation an agent listed

	opWG    sync.WaitGroup // client operations and flapping
	streams sync.WaitGroup // event streams and the process watcher
}

func newDriver(ctx context.Context, bed *Testbed, cfg ChaosConfig) *driver {
	d := &driver{ctx: ctx, bed: bed, cfg: cfg, hosts: map[string]*Host{}, paused: map[string]bool{},
		flaps: map[*chaos.Fault]chan struct{}{}, listedGen: map[string]int{}, seen: newSeenProcs()}
	for _, h := range bed.Hosts {
		d.hosts[h.Name] = h
		d.names = append(d.names, h.Name)
	}
	return d
}

func (d *driver) logf(format string, args ...any) {
	if d.cfg.Logf != nil {
		d.cfg.Logf(format, args...)
	}
}

func (d *driver) since() time.Duration { return time.Since(d.t0) }

// others is every host but h: the --join addresses of a (re)start, as
// the simulation's agents join every peer.
func (d *driver) others(h *Host) []*Host {
	var out []*Host
	for _, o := range d.bed.Hosts {
		if o != h {
			out = append(out, o)
		}
	}
	return out
}

// formMesh starts every agent, follows their event streams, and waits
// until every agent sees all five servers alive with their load published
// (a server bids only then).
func (d *driver) formMesh() error {
	d.t0 = time.Now()
	for _, h := range d.bed.Hosts {
		d.streams.Add(1)
		go func() {
			defer d.streams.Done()
			h.StreamEvents(d.ctx, func(e LifecycleEvent) { d.recordEvent(h.Name, e) })
		}()
	}
	for i, h := range d.bed.Hosts {
		if err := d.bed.Start(h, d.bed.Hosts[:min(i, 1)]); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for !d.whole() {
		if time.Now().After(deadline) {
			return errors.New("the chaos run's mesh did not form within 60 s")
		}
		if err := d.ctx.Err(); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Time is counted from a formed mesh.
	d.mu.Lock()
	d.t0 = time.Now()
	d.mu.Unlock()
	return nil
}

// whole reports whether every agent sees every server alive with its load.
func (d *driver) whole() bool {
	for _, h := range d.bed.Hosts {
		ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
		ms, err := h.Members(ctx)
		cancel()
		if err != nil {
			return false
		}
		for _, o := range d.bed.Hosts {
			if m := ms[o.Name]; m.Status != "alive" || m.Tags["cpu"] == "" {
				return false
			}
		}
	}
	return true
}

// sleepUntil sleeps until the run's offset at, or until the run ends.
func (d *driver) sleepUntil(at time.Duration) {
	if wait := at - d.since(); wait > 0 {
		select {
		case <-d.ctx.Done():
		case <-time.After(wait):
		}
	}
}

// play runs the plan's steps at their times, watches the processes and
// snapshots every second, and, once the plan is done, heals everything,
// waits for the operations to be answered, and watches the settle and
// chaosWatch.
func (d *driver) play(plan chaos.Plan) {
	stop := make(chan struct{})
	var watchers sync.WaitGroup
	watchers.Add(2)
	go func() {
		defer watchers.Done()
		d.every(time.Second, stop, func() { d.snapshot() })
	}()
	go func() {
		// Between snapshots, so that AliveAtAnswer sees a process that
		// lived only a moment.
		defer watchers.Done()
		d.every(250*time.Millisecond, stop, func() { d.observe() })
	}()
	for i := range plan.Steps {
		st := plan.Steps[i]
		d.sleepUntil(st.At)
		if d.ctx.Err() != nil {
			break
		}
		began := time.Now()
		switch {
		case st.Request != nil:
			d.invoke(*st.Request)
		case st.Fault != nil && st.End:
			d.endFault(st.Fault)
		case st.Fault != nil:
			d.startFault(st.Fault)
		}
		if took := time.Since(began); took > time.Second {
			d.logf("chaos: a step held up the schedule for %.1fs: %s", took.Seconds(), describeStep(st))
		}
	}
	d.sleepUntil(plan.Duration)
	d.healAll()
	d.opWG.Wait()
	d.mu.Lock()
	d.calm.Settling(d.since())
	d.mu.Unlock()
	d.logf("chaos: plan done, every fault healed and every operation answered at %.1fs; watching the settle (%s) and %s more",
		d.since().Seconds(), d.cfg.Settle, chaosWatch)
	select {
	case <-d.ctx.Done():
	case <-time.After(d.cfg.Settle + chaosWatch):
	}
	close(stop)
	watchers.Wait()
	d.snapshot()
}

func describeStep(st chaos.Step) string {
	switch {
	case st.Request != nil:
		return fmt.Sprintf("op %d %s at %s", st.Request.ID, st.Request.Kind, st.Request.Agent)
	case st.End:
		return fmt.Sprintf("end of %s", st.Fault.Kind)
	}
	return fmt.Sprintf("%s %s", st.Fault.Kind, strings.Join(st.Fault.Hosts, " "))
}

func (d *driver) every(period time.Duration, stop <-chan struct{}, fn func()) {
	for {
		select {
		case <-stop:
			return
		case <-d.ctx.Done():
			return
		case <-time.After(period):
		}
		fn()
	}
}

// history is what the run recorded, each op's generation filled in from
// what the run saw of the interpreter it named (the spawn's JSON output
// has no generation).
func (d *driver) history() chaos.History {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := chaos.History{Seed: d.cfg.Seed, Agents: slices.Clone(d.names), Settle: d.cfg.Settle, LastHeal: d.calm.LastHeal(),
		End: d.since(), Ops: slices.Clone(d.ops), Faults: slices.Clone(d.faults), Events: slices.Clone(d.events),
		Snapshots: slices.Clone(d.snapshots)}
	gens := map[string]int{}
	for name, g := range d.listedGen {
		gens[name] = g
	}
	for _, e := range h.Events {
		if e.Type == "interpreter-replaced" || e.Type == "interpreter-restart" {
			gens[e.Name] = e.Gen
		}
	}
	for name, p := range d.seen.known() {
		gens[name] = p.Gen // the spec: the ground truth
	}
	for i, o := range h.Ops {
		if o.Kind == chaos.OpSpawn && o.Outcome == chaos.OK {
			h.Ops[i].Gen = gens[o.Name]
		}
	}
	slices.SortStableFunc(h.Ops, func(a, b chaos.Op) int { return int(a.Invoked - b.Invoked) })
	return h
}

// observe scans every namespace for supervisors and returns them as
// processes, remembering when each was seen.
func (d *driver) observe() ([]chaos.Process, map[string][]supervisorProc) {
	procs, err := d.bed.ScanProcesses()
	if err != nil {
		d.logf("chaos: scanning the hosts' processes: %v", err)
		return nil, nil
	}
	return d.seen.record(procs, d.since())
}

// snapshot records every process on every host and every agent's list.
func (d *driver) snapshot() {
	// Running waits while the bed starts an agent: not under d.mu.
	running := map[string]bool{}
	all := true
	for _, h := range d.bed.Hosts {
		running[h.Name] = h.Running()
		all = all && running[h.Name]
	}
	d.mu.Lock()
	for name := range d.paused {
		running[name] = false
	}
	quiet := d.calm.Quiet(d.since(), d.cfg.Settle) && all
	d.mu.Unlock()
	s := chaos.Snapshot{Lists: map[string][]chaos.Listed{}, Quiet: quiet}
	s.At = d.since()
	s.Processes, _ = d.observe()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range d.bed.Hosts {
		if !running[h.Name] {
			continue
		}
		wg.Go(func() {
			list, err := d.list(h, 3*time.Second)
			if err != nil {
				if quiet {
					d.logf("chaos: %s did not list its interpreters for a quiet snapshot: %v", h.Name, err)
				}
				return
			}
			mu.Lock()
			s.Lists[h.Name] = list
			mu.Unlock()
		})
	}
	wg.Wait()
	d.mu.Lock()
	for _, list := range s.Lists {
		for _, l := range list {
			d.listedGen[l.Name] = l.Gen
		}
	}
	d.snapshots = append(d.snapshots, s)
	d.mu.Unlock()
}

// listedInterpreter is one row of `agent interpreters --format json`.
type listedInterpreter struct {
	Name       string `json:"name"`
	Host       string `json:"host"`
	Status     string `json:"status"`
	RequestID  string `json:"request_id"`
	Generation int    `json:"generation"`
}

// list is what h's agent lists alive, sorted by name.
func (d *driver) list(h *Host, limit time.Duration) ([]chaos.Listed, error) {
	ctx, cancel := context.WithTimeout(d.ctx, limit)
	defer cancel()
	res, err := h.CLI(ctx, "interpreters", "--format", "json")
	if err != nil {
		return nil, err
	}
	if res.Code != 0 {
		return nil, fmt.Errorf("exit code %d: %s", res.Code, strings.TrimSpace(res.Stderr))
	}
	var out struct{ Interpreters []listedInterpreter }
	if err := json.Unmarshal([]byte(res.Stdout), &out); err != nil {
		return nil, fmt.Errorf("agent interpreters: %w: %s", err, res.Stdout)
	}
	list := []chaos.Listed{}
	for _, in := range out.Interpreters {
		if in.Status == "alive" {
			list = append(list, chaos.Listed{Name: in.Name, RID: in.RequestID, Host: in.Host, Gen: in.Generation})
		}
	}
	slices.SortFunc(list, func(a, b chaos.Listed) int { return strings.Compare(a.Name, b.Name) })
	return list, nil
}

func (d *driver) recordEvent(agent string, e LifecycleEvent) {
	switch e.Type {
	case "interpreter-gave-up", "interpreter-replaced", "interpreter-duplicate", "interpreter-restart", "interpreter-stopped":
	default:
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.t0.IsZero() || e.At.Before(d.t0) {
		return // before the mesh formed: nothing of the run's yet
	}
	d.events = append(d.events, chaos.Event{At: e.At.Sub(d.t0), Agent: agent, Type: e.Type, Name: e.Interpreter,
		RID: e.RequestID, Host: e.Host, Gen: e.Gen})
}

// invoke runs one client operation on its own goroutine, as a client would.
func (d *driver) invoke(r chaos.Request) {
	h := d.hosts[r.Agent]
	d.mu.Lock()
	d.calm.OpStarted()
	d.mu.Unlock()
	op := chaos.Op{ID: r.ID, Kind: r.Kind, Agent: r.Agent, Key: r.Key, Restart: r.Restart, Wait: r.Wait, Signal: r.Signal,
		Invoked: d.since()}
	d.opWG.Go(func() {
		ctx, cancel := context.WithTimeout(d.ctx, opLimit)
		defer cancel()
		var sent bool
		switch r.Kind {
		case chaos.OpSpawn:
			op, sent = d.spawn(ctx, h, op), true
		default:
			op, sent = d.order(ctx, h, r, op)
		}
		op.Completed = d.since()
		d.mu.Lock()
		if sent {
			d.ops = append(d.ops, op)
		}
		d.calm.OpEnded()
		d.mu.Unlock()
	})
}

// unreachable is the CLI's message when no agent listens: nothing was
// asked, so nothing happened.
const unreachable = "no agent answers at"

// outcome judges a client command: exit 0 is OK; a timeout (exit 6), a
// CLI killed with its host, or an answer lost with the agent (or one that
// says it may still happen) is unknown; anything else failed.
func outcome(res Result, err error) (chaos.Outcome, string) {
	msg := strings.TrimSpace(res.Stderr)
	switch {
	case err != nil:
		return chaos.Info, err.Error()
	case res.Code == 0:
		return chaos.OK, ""
	case res.Code == 6 || res.Code < 0:
		return chaos.Info, orNothing(msg)
	case strings.Contains(msg, unreachable):
		return chaos.Fail, msg
	}
	// The agent's own words for an order that may still be carried out
	// (as the simulation's driver reads them), and the RPC client's for a
	// connection lost mid-call.
	for _, s := range []string{"did not answer", "still alive", "shutting down", "no answer", "rpc connection closed"} {
		if strings.Contains(msg, s) {
			return chaos.Info, msg
		}
	}
	return chaos.Fail, msg
}

func (d *driver) spawn(ctx context.Context, h *Host, op chaos.Op) chaos.Op {
	args := []string{"spawn", "--kind", "demo", "--format", "json"}
	if op.Key != "" {
		args = append(args, "--key", op.Key)
	}
	if op.Restart != "" {
		args = append(args, "--restart", op.Restart)
	}
	if op.Wait {
		args = append(args, "--wait")
	}
	res, err := h.CLI(ctx, args...)
	var out struct {
		Name      string `json:"name"`
		Node      string `json:"node"`
		RequestID string `json:"request_id"`
		Existing  bool   `json:"existing"`
		Code      string `json:"code"`
		Error     string `json:"error"`
	}
	json.Unmarshal([]byte(res.Stdout), &out)
	op.RID = out.RequestID
	op.Outcome, op.Error = outcome(res, err)
	switch op.Outcome {
	case chaos.OK:
		op.Name, op.Host, op.Existing = out.Name, out.Node, out.Existing
		if op.Wait {
			// True if it ran at some moment between the question and the
			// answer: an operator's stop may race the answer.
			d.observe()
			op.AliveAtAnswer = d.seen.since(op.Name, op.Invoked)
		}
	default:
		op.Code = out.Code
		if op.Code == "" && err == nil {
			op.Code = fmt.Sprintf("exit %d", res.Code)
		}
	}
	return op
}

// order sends a stop or a signal to the interpreter the request picks
// from what h's agent lists now; false when it lists none (or cannot
// list), so that nothing is sent.
func (d *driver) order(ctx context.Context, h *Host, r chaos.Request, op chaos.Op) (chaos.Op, bool) {
	list, err := d.list(h, 5*time.Second)
	if err != nil {
		if strings.Contains(err.Error(), unreachable) {
			// The agent is down: the client cannot connect, and nothing happens.
			op.Outcome, op.Code, op.Error = chaos.Fail, "unreachable", err.Error()
			return op, true
		}
		return op, false
	}
	if len(list) == 0 {
		return op, false
	}
	pick := list[r.Pick%len(list)]
	op.Name, op.RID = pick.Name, pick.RID
	args := []string{"stop", op.Name}
	if r.Kind == chaos.OpSignal {
		args = []string{"signal", op.Name, op.Signal}
	}
	res, err := h.CLI(ctx, args...)
	op.Outcome, op.Error = outcome(res, err)
	if op.Outcome != chaos.OK && err == nil {
		op.Code = fmt.Sprintf("exit %d", res.Code)
	}
	return op, true
}

func (d *driver) hostsNamed(names []string) []*Host {
	out := make([]*Host, 0, len(names))
	for _, n := range names {
		out = append(out, d.hosts[n])
	}
	return out
}

func (d *driver) groups(f *chaos.Fault) [][]*Host {
	out := make([][]*Host, 0, len(f.Groups))
	for _, g := range f.Groups {
		out = append(out, d.hostsNamed(g))
	}
	return out
}

func (d *driver) recordFault(f chaos.Fault) {
	f.At = d.since()
	d.mu.Lock()
	d.faults = append(d.faults, f)
	d.mu.Unlock()
}

// failed logs a fault the bed could not apply: the run goes on, and the
// history still says the fault was meant.
func (d *driver) failed(f *chaos.Fault, err error) {
	if err != nil {
		d.logf("chaos: %s %s: %v", f.Kind, strings.Join(f.Hosts, " "), err)
	}
}

// lossPerHook is the loss each host's input and output rule applies for a
// packet between two hosts to be lost at rate: it crosses two rules.
func lossPerHook(rate float64) float64 { return math.Round((1-math.Sqrt(1-rate))*10000) / 10000 }

// startFault applies a fault. Faults with an end count as in force until
// it; a crash is in force until its restart.
func (d *driver) startFault(f *chaos.Fault) {
	d.recordFault(*f)
	var h *Host
	if len(f.Hosts) > 0 {
		h = d.hosts[f.Hosts[0]]
	}
	switch f.Kind {
	case chaos.FaultPartition:
		d.failed(f, d.bed.Partition(d.groups(f)...))
	case chaos.FaultOneWay:
		d.failed(f, d.bed.Cut(d.hostsNamed(f.From), d.hostsNamed(f.To)))
	case chaos.FaultFlap:
		stop := make(chan struct{})
		d.mu.Lock()
		d.flaps[f] = stop
		d.mu.Unlock()
		d.opWG.Go(func() {
			split := true
			for {
				if split {
					d.failed(f, d.bed.Partition(d.groups(f)...))
				} else {
					d.failed(f, d.bed.Heal())
				}
				split = !split
				select {
				case <-stop:
					return
				case <-d.ctx.Done():
					return
				case <-time.After(f.Period):
				}
			}
		})
	case chaos.FaultLoss:
		for _, o := range d.bed.Hosts {
			d.failed(f, d.bed.Loss(o, lossPerHook(f.Rate)))
		}
	case chaos.FaultPause:
		d.mu.Lock()
		d.paused[h.Name] = true
		d.mu.Unlock()
		d.failed(f, d.bed.SignalAll(h, syscall.SIGSTOP))
	case chaos.FaultCrashHost:
		d.failed(f, h.Crash())
	case chaos.FaultCrashAgent:
		d.failed(f, h.Kill())
	case chaos.FaultCrashSupervisor:
		_, sups := d.observe()
		if list := sups[h.Name]; len(list) > 0 {
			s := list[f.Pick%len(list)]
			d.logf("chaos: %s: supervisor of %s (pid %d) killed (SIGKILL)", h.Name, s.Name, s.PID)
			d.failed(f, syscall.Kill(s.PID, syscall.SIGKILL))
		} else {
			d.logf("chaos: %s: no supervisor runs there to kill", h.Name)
		}
		return // instant: nothing stays in force
	case chaos.FaultRestartHost, chaos.FaultRestartAgent:
		d.failed(f, d.startAgent(h, f.KeepData))
		d.faultOver()
		return
	case chaos.FaultClusterRestart:
		d.logf("chaos: cluster restart: every agent leaves and starts again with its data; supervisors keep running")
		var wg sync.WaitGroup
		for _, o := range d.bed.Hosts {
			if o.Running() {
				wg.Go(func() { d.failed(f, o.Terminate(15*time.Second)) })
			}
		}
		wg.Wait()
		for _, o := range d.bed.Hosts {
			wg.Go(func() { d.failed(f, d.startAgent(o, true)) })
		}
		wg.Wait()
		d.healed()
		return
	case chaos.FaultDrain:
		args := []string{"drain", "--format", "json"}
		if f.Stop {
			args = append(args, "--stop")
		}
		d.logf("chaos: %s: agent %s", h.Name, strings.Join(args, " "))
		d.failed(f, d.command(h, args...))
		return // an operator's act, not a fault of the mesh
	case chaos.FaultUndrain:
		d.logf("chaos: %s: agent drain --undo", h.Name)
		d.failed(f, d.command(h, "drain", "--undo", "--format", "json"))
		return
	}
	d.mu.Lock()
	d.calm.FaultStarted()
	d.mu.Unlock()
}

// command runs an operator's command on h, bounded.
func (d *driver) command(h *Host, args ...string) error {
	ctx, cancel := context.WithTimeout(d.ctx, 20*time.Second)
	defer cancel()
	res, err := h.CLI(ctx, args...)
	if err != nil {
		return err
	}
	if res.Code != 0 {
		return fmt.Errorf("agent %s: exit code %d: %s", strings.Join(args, " "), res.Code, strings.TrimSpace(res.Stderr))
	}
	return nil
}

// startAgent starts h's agent again, joining every other host: with its
// data dir as before, or with a new empty one (a host that lost its
// disk). The old one is moved aside, not removed: supervisors that
// outlived the agent keep their files in it.
func (d *driver) startAgent(h *Host, keepData bool) error {
	if h.Running() {
		return nil
	}
	if !keepData {
		d.mu.Lock()
		d.lost++
		aside := fmt.Sprintf("%s.lost-%d", h.DataDir, d.lost)
		d.mu.Unlock()
		if err := os.Rename(h.DataDir, aside); err != nil {
			return err
		}
		d.seen.moved(h.DataDir, aside)
		if err := os.MkdirAll(h.DataDir, 0o755); err != nil {
			return err
		}
		d.logf("chaos: %s: data dir moved aside to %s; the agent starts without it", h.Name, filepath.Base(aside))
	}
	return d.bed.Start(h, d.others(h))
}

// endFault ends a fault at its Until.
func (d *driver) endFault(f *chaos.Fault) {
	switch f.Kind {
	case chaos.FaultPartition, chaos.FaultOneWay:
		d.failed(f, d.bed.Heal())
	case chaos.FaultFlap:
		d.mu.Lock()
		stop := d.flaps[f]
		delete(d.flaps, f)
		d.mu.Unlock()
		if stop != nil {
			close(stop)
		}
		d.failed(f, d.bed.Heal())
	case chaos.FaultLoss:
		for _, o := range d.bed.Hosts {
			d.failed(f, d.bed.Loss(o, 0))
		}
	case chaos.FaultPause:
		d.failed(f, d.bed.SignalAll(d.hosts[f.Hosts[0]], syscall.SIGCONT))
		d.mu.Lock()
		delete(d.paused, f.Hosts[0])
		d.mu.Unlock()
	default:
		return
	}
	d.faultOver()
}

// faultOver counts one fault over.
func (d *driver) faultOver() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calm.FaultEnded(d.since())
}

// healed marks now as the end of the last fault, with none counted.
func (d *driver) healed() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calm.Healed(d.since())
}

// healAll ends whatever is still in force at the end of the plan: the
// network healed, paused hosts resumed, crashed agents started again with
// their data.
func (d *driver) healAll() {
	d.mu.Lock()
	for f, stop := range d.flaps {
		close(stop)
		delete(d.flaps, f)
	}
	paused := d.paused
	d.paused = map[string]bool{}
	d.mu.Unlock()
	heal := &chaos.Fault{Kind: "heal-all"}
	d.failed(heal, d.bed.Heal())
	for _, h := range d.bed.Hosts {
		d.failed(heal, d.bed.Loss(h, 0))
		if paused[h.Name] {
			d.failed(heal, d.bed.SignalAll(h, syscall.SIGCONT))
		}
		if !h.Running() {
			d.failed(heal, d.startAgent(h, true))
		}
	}
	d.mu.Lock()
	d.calm.HealAll(d.since())
	d.mu.Unlock()
}

// supervisorProc is one supervisor found running.
type supervisorProc struct {
	chaos.Process
	PID int
}

// seenProcs remembers the supervisors the scans found: each one's spec
// (read once, by pid and spec path) and when each interpreter was last
// seen. Safe for concurrent use.
type seenProcs struct {
	mu    sync.Mutex
	specs map[string]chaos.Process // by "pid spec-path"
	last  map[string]time.Duration // interpreter name → last seen
	names map[string]chaos.Process // interpreter name → its process
	aside map[string]string        // data dir → where it was moved
	// orphans are interpreter processes (the demo kind's echo-server)
	// whose parent is no supervisor: by "host pid", and those of the
	// latest scan.
	orphans     map[string]*Orphan
	lastOrphans []Orphan
}

// Orphan is an interpreter process running without its supervisor: no
// member stands for it, so no agent can list it.
type Orphan struct {
	Host  string        `json:"host"`
	PID   int           `json:"pid"`
	Argv  []string      `json:"argv"`
	First time.Duration `json:"first"` // first seen
	Last  time.Duration `json:"last"`  // last seen
}

func (o Orphan) String() string {
	return fmt.Sprintf("pid %d on %s (%s), seen from %.1fs to %.1fs", o.PID, o.Host, strings.Join(o.Argv, " "),
		o.First.Seconds(), o.Last.Seconds())
}

func newSeenProcs() seenProcs {
	return seenProcs{specs: map[string]chaos.Process{}, last: map[string]time.Duration{}, names: map[string]chaos.Process{},
		aside: map[string]string{}, orphans: map[string]*Orphan{}}
}

func (s *seenProcs) moved(from, to string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.aside[from] = to
}

// record turns one scan into processes: the live supervisors, by host.
func (s *seenProcs) record(procs map[string][]NSProcess, at time.Duration) ([]chaos.Process, map[string][]supervisorProc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []chaos.Process
	byHost := map[string][]supervisorProc{}
	for host, ps := range procs {
		for _, p := range ps {
			path := p.SupervisorSpec()
			if path == "" || !p.Alive() {
				continue
			}
			key := fmt.Sprintf("%d %s", p.PID, path)
			proc, ok := s.specs[key]
			if !ok {
				proc = s.readSpec(path, host)
				s.specs[key] = proc
			}
			out = append(out, proc)
			byHost[host] = append(byHost[host], supervisorProc{Process: proc, PID: p.PID})
			s.last[proc.Name] = at
			s.names[proc.Name] = proc
		}
	}
	s.lastOrphans = nil
	for host, ps := range procs {
		sup := map[int]bool{}
		for _, p := range byHost[host] {
			sup[p.PID] = true
		}
		for _, p := range ps {
			if len(p.Argv) < 2 || p.Argv[1] != "echo-server" || !p.Alive() || sup[p.PPID] {
				continue
			}
			key := fmt.Sprintf("%s %d", host, p.PID)
			o := s.orphans[key]
			if o == nil {
				o = &Orphan{Host: host, PID: p.PID, Argv: p.Argv, First: at}
				s.orphans[key] = o
			}
			o.Last = at
			s.lastOrphans = append(s.lastOrphans, *o)
		}
	}
	slices.SortFunc(out, func(a, b chaos.Process) int { return strings.Compare(a.Host+" "+a.Name, b.Host+" "+b.Name) })
	for _, list := range byHost {
		// As the simulation's Pick: by name, then pid.
		slices.SortFunc(list, func(a, b supervisorProc) int {
			if c := strings.Compare(a.Name, b.Name); c != 0 {
				return c
			}
			return a.PID - b.PID
		})
	}
	return out, byHost
}

// readSpec reads a supervisor's spec.json (from where its data dir was
// moved, if it was); failing that, the name is the spec's directory and
// the request id is in the name.
func (s *seenProcs) readSpec(path, host string) chaos.Process {
	var spec struct {
		Name string `json:"name"`
		RID  string `json:"rid"`
		Gen  int    `json:"gen"`
	}
	paths := []string{path}
	for from, to := range s.aside {
		if rest, ok := strings.CutPrefix(path, from+string(filepath.Separator)); ok {
			paths = append(paths, filepath.Join(to, rest))
		}
	}
	for _, p := range paths {
		if data, err := os.ReadFile(p); err == nil && json.Unmarshal(data, &spec) == nil && spec.Name != "" {
			return chaos.Process{Name: spec.Name, RID: spec.RID, Host: host, Gen: spec.Gen}
		}
	}
	name := filepath.Base(filepath.Dir(path))
	return chaos.Process{Name: name, RID: ridOf(name), Host: host}
}

// since reports whether interpreter name was seen running at or after at.
func (s *seenProcs) since(name string, at time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	last, ok := s.last[name]
	return ok && last >= at
}

// orphaned lists the orphans of the latest scan, and every orphan seen
// in scans at least a second apart.
func (s *seenProcs) orphaned() (latest, lasting []Orphan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.orphans {
		if o.Last-o.First >= time.Second {
			lasting = append(lasting, *o)
		}
	}
	slices.SortFunc(lasting, func(a, b Orphan) int { return int(a.First - b.First) })
	return slices.Clone(s.lastOrphans), lasting
}

// known is every interpreter seen, by name.
func (s *seenProcs) known() map[string]chaos.Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]chaos.Process, len(s.names))
	for k, v := range s.names {
		out[k] = v
	}
	return out
}

// ridOf is the request id in an interpreter's name (kind-rid-launch).
func ridOf(name string) string {
	parts := strings.Split(name, "-")
	if len(parts) < 3 {
		return ""
	}
	return parts[len(parts)-2]
}

// settleS is T_settle as the history shows it, in seconds (-1: never).
func settleS(h chaos.History) float64 {
	d, ok := h.SettledAfter()
	if !ok {
		return -1
	}
	return round(d.Seconds())
}
