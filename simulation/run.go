package simulation

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand"
	"os"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshagent/agent/gossip"
)

// RunConfig is one simulation run: a scenario on N nodes.
type RunConfig struct {
	Scenario string
	Nodes    int
	Seed     int64
	Profile  string // a gossip profile; empty is gossip.DefaultProfile
	// Loss, when not zero, replaces LossRate in the loss scenario.
	Loss float64
	// PartitionFor, when not zero, is how long the partition scenarios
	// keep the sides apart.
	PartitionFor time.Duration
	// NoHeal turns the nodes' heal prober off: serf and memberlist alone,
	// to compare with.
	NoHeal bool
	// Dilation stretches every timer of the run by this factor, so that a
	// large mesh is not starved of CPU (clock.go); the report is in
	// protocol time. 0 picks one by the plan (Plan.dilation); 1 is real time.
	Dilation float64
	// ExactCompression has memberlist compress every packet, as a real
	// node does. By default the nodes send uncompressed and the network
	// estimates the compressed bytes from a sample (compress.go): LZW is
	// most of a large simulation's CPU.
	ExactCompression bool
	// VirtualTime says the caller runs Run inside a testing/synctest
	// bubble (RunVirtual's child process, or a test: virtual.go):
	// the nodes' timers run on the bubble's clock, which jumps ahead
	// whenever every goroutine waits, so no node is ever late and time
	// needs no dilation (Dilation must be 0 or 1). The forming is not
	// paced by the process's CPU (ClusterConfig.VirtualTime). The report
	// says so, gives no timer lag, and leaves WallS to the caller: inside
	// the bubble the run cannot read the wall clock.
	VirtualTime bool
	// Prepare is passed to the cluster: it plugs a per-node responder (a
	// query handler) into every node before it joins.
	Prepare func(name string, n *gossip.Node) (stop func(), err error)
	// Progress, when set, is called about four times a second from the
	// run's goroutine.
	Progress func(Progress)
	// Logger receives the harness's messages; nil discards.
	Logger *slog.Logger
}

// Progress says how far a run is.
type Progress struct {
	Phase string // "converging", "draining", then "running"
	// Joined and Full, while converging: nodes joined, and nodes that see
	// every node alive.
	Joined, Full int
	// News, while converging and draining: gossip packets per node per
	// protocol second, which must fall under QuietNewsRate before the
	// schedule starts.
	News    float64
	Elapsed time.Duration // of the fault schedule while running, of the drain while draining (protocol time)
	Total   time.Duration // the schedule's length (protocol time)
	// Dilation is the run's time dilation: the schedule takes Dilation
	// times Total on the wall clock.
	Dilation float64
}

// FaultGrace is how long after a fault stops separating two nodes a
// suspicion or failure between them still counts as caused by it, not as
// false: a suspicion timer started during a partition may fire just after
// the heal.
const FaultGrace = 20 * time.Second

// Run starts a cluster, lets it converge, plays the scenario's fault
// schedule on it and on the heartbeat baseline at once, and reports what
// both saw. It takes about the plan's Length plus the convergence, times
// the dilation: memberlist's timers are real, stretched (clock.go).
func Run(ctx context.Context, cfg RunConfig) (*Report, error) {
	if err := checkDilation(cfg.Dilation); err != nil {
		return nil, err
	}
	if cfg.Profile == "" {
		cfg.Profile = gossip.DefaultProfile
	}
	plan, err := PlanScenario(cfg.Scenario, cfg.Profile, cfg.Nodes, cfg.Seed)
	if err != nil {
		return nil, err
	}
	if cfg.Loss != 0 {
		if err := plan.setLoss(cfg.Loss); err != nil {
			return nil, err
		}
	}
	if cfg.PartitionFor != 0 {
		if err := plan.setPartitionLength(cfg.PartitionFor); err != nil {
			return nil, err
		}
	}
	progress := cfg.Progress
	if progress == nil {
		progress = func(Progress) {}
	}
	if cfg.VirtualTime {
		if err := checkVirtualDilation(cfg.Dilation); err != nil {
			return nil, err
		}
		cfg.Dilation = 1
	}
	if cfg.Dilation == 0 {
		cfg.Dilation = plan.dilation()
	}
	start := time.Now()
	resetPeakRSS()
	mem := &memoryPeak{}
	mem.sample()

	ncfg := NetworkConfig{Seed: cfg.Seed, Dilation: cfg.Dilation, EstimateCompression: !cfg.ExactCompression}
	if cfg.VirtualTime {
		ncfg.Tick = virtualTick
	}
	net, err := NewNetwork(ncfg)
	if err != nil {
		return nil, err
	}
	defer net.Close()
	clk := net.clk
	progress(Progress{Phase: "converging", Total: plan.Length, Dilation: clk.factor()})
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	prepare := func(name string, n *gossip.Node) (func(), error) {
		serveBids(name, n, logger)
		if cfg.Prepare != nil {
			return cfg.Prepare(name, n)
		}
		return nil, nil
	}
	healInterval := time.Duration(0)
	if cfg.NoHeal {
		healInterval = -1
	}
	news := newsRate(net, cfg.Nodes)
	forming := func(joined, full int) {
		progress(Progress{Phase: "converging", Joined: joined, Full: full, News: news(), Total: plan.Length, Dilation: clk.factor()})
	}
	cluster, err := StartCluster(ctx, ClusterConfig{Nodes: cfg.Nodes, Profile: cfg.Profile, Seed: cfg.Seed,
		Network: net, Prepare: prepare, Logger: logger, HealInterval: healInterval, Forming: forming, VirtualTime: cfg.VirtualTime})
	if err != nil {
		return nil, err
	}
	defer cluster.Stop()
	converged := time.Since(start)
	base, err := startBaseline(net, cluster.Names(), cfg.Seed)
	if err != nil {
		return nil, err
	}
	defer base.close()
	// Joining keeps the CPU busy and leaves suspicions in flight; they must
	// not be counted against the first fault.
	drained, err := drain(ctx, cluster, func(p Progress) {
		p.Total, p.Dilation = plan.Length, clk.factor()
		progress(p)
	})
	if err != nil {
		return nil, err
	}
	if err := settle(ctx, cluster, net.estimating()); err != nil {
		return nil, err
	}
	mem.sample()

	rec := newRecorder(plan, cluster, base)
	cpu0, comp0 := processCPU(), net.est.compressCPU()
	ppWire0, ppCount0 := net.est.pushPulls()
	qFull0 := net.FullQueueDrops()
	rec.begin(clk.now())
	var w watcher = rec
	cluster.watch.Store(&w)
	base.mu.Lock()
	base.onChange = rec.baselineChanged
	base.mu.Unlock()
	net.watchFaults(rec.faultsChanged)

	sampler := make(chan struct{})
	lag := &timerLag{}
	meter := newMeter(cluster, rec.t0)
	renewals0 := cluster.healStats().Renewals
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		rec.meterLoop(sampler, meter)
	}()
	go func() {
		defer wg.Done()
		rec.sampleLoop(sampler, mem)
	}()
	go func() {
		defer wg.Done()
		lag.measure(sampler, clk)
	}()
	stopSampler := func() {
		if sampler != nil {
			close(sampler)
			wg.Wait()
			sampler = nil
		}
	}
	defer stopSampler()

	t0 := rec.t0
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var bursts sync.WaitGroup
	defer bursts.Wait()
	churnRNG := rand.New(rand.NewSource(cfg.Seed))
	next := 0
	for {
		elapsed := clk.now().Sub(t0)
		for next < len(plan.Faults) && plan.Faults[next].At <= elapsed {
			f := plan.Faults[next]
			next++
			if f.Kind == FaultBurst {
				bursts.Add(1)
				go func(tag string) {
					defer bursts.Done()
					rec.burst(ctx, f, tag)
				}(fmt.Sprintf("burst%d", next))
				continue
			}
			if isChurnFault(f.Kind) {
				if err := cluster.churnFault(f, churnRNG); err != nil {
					return nil, fmt.Errorf("apply %s %v: %w", f.Kind, append(f.Nodes, f.To...), err)
				}
				if f.Kind == FaultRestart {
					rec.applied(f, clk.now())
				}
				continue
			}
			if err := net.Apply(f); err != nil {
				return nil, fmt.Errorf("apply %s: %w", f.Label, err)
			}
			if f.Kind == FaultCrash {
				cluster.interpsCrashed(f.Nodes)
			}
			rec.applied(f, clk.now())
		}
		if elapsed >= plan.Length || rec.healedFor(plan, elapsed) {
			break
		}
		progress(Progress{Phase: "running", Elapsed: elapsed, Total: plan.Length, Dilation: clk.factor()})
		wait := plan.Length - elapsed
		if next < len(plan.Faults) {
			wait = min(wait, plan.Faults[next].At-elapsed)
		}
		timer := time.NewTimer(clk.wall(wait))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-tick.C:
		case <-timer.C:
		}
		timer.Stop()
	}
	end := clk.now()
	bursts.Wait()
	stopSampler()
	progress(Progress{Phase: "running", Elapsed: plan.Length, Total: plan.Length, Dilation: clk.factor()})
	mem.sample()

	r := rec.report(end)
	r.Churn = meter.record(plan)
	r.Churn.Renewals = cluster.healStats().Renewals - renewals0
	r.LengthS = round(end.Sub(t0).Seconds())
	r.EndedEarly = end.Sub(t0) < plan.Length
	r.Profile = cfg.Profile
	r.NoHeal = cfg.NoHeal
	r.Dilation = clk.factor()
	r.ConvergeS = round(clk.protoDur(converged).Seconds())
	r.DrainS = round(drained.Seconds())
	r.WallS = round(time.Since(start).Seconds())
	r.Baseline.WallS = r.WallS
	r.PeakGoMemMB = round(float64(mem.peak) / (1 << 20))
	r.PeakRSSMB = peakRSS()
	r.CPUS = round((processCPU() - cpu0).Seconds())
	r.FullQueueDropsForming = qFull0
	r.FullQueueDrops = net.FullQueueDrops() - qFull0
	if net.estimating() {
		r.CompressionEstimated = true
		r.CompressionRatio, _ = net.est.ratios()
		r.CompressionRatio = round(r.CompressionRatio)
		r.CompressCPUEstS = round((net.est.compressCPU() - comp0).Seconds())
		if w, n := net.est.pushPulls(); n > ppCount0 {
			r.PushPullBytes = math.Round(float64(w-ppWire0) / float64(n-ppCount0))
			if s := end.Sub(t0).Seconds() * float64(cfg.Nodes); s > 0 {
				r.PushPullsPerNodePerS = math.Round(float64(n-ppCount0)/s*1e4) / 1e4
			}
		}
	}
	if s := plan.Length.Seconds() * float64(cfg.Nodes); s > 0 {
		r.CPUMSPerNodePerS = round((r.CPUS + r.CompressCPUEstS) * 1000 / s)
	}
	r.TimerLagP99MS, r.TimerLagMaxMS = lag.figures()
	if cfg.VirtualTime {
		r.VirtualTime = true
		r.WallS, r.Baseline.WallS = 0, 0
		r.TimerLagP99MS, r.TimerLagMaxMS = 0, 0
	}
	return r, nil
}

// newsRate returns a function that tells the mesh's gossip packets per
// node per protocol second since its last call (0 where the packets cannot
// be read). It may be called from several goroutines.
func newsRate(net *Network, nodes int) func() float64 {
	var mu sync.Mutex
	last, _ := net.NewsPackets()
	lastAt := net.clk.now()
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		n, ok := net.NewsPackets()
		now := net.clk.now()
		d := now.Sub(lastAt).Seconds()
		if !ok || d <= 0 {
			return 0
		}
		rate := float64(n-last) / float64(nodes) / d
		last, lastAt = n, now
		return rate
	}
}

// timerLag measures how late a 50 ms timer fires during the run, in
// protocol time. The simulation runs on a shared machine: when the CPU is
// short, every node's timers fire late alike, probes time out, and the
// gossip looks worse than it is. The report carries the lag so that a
// reader can tell a slow detector from a starved machine; a lag of more
// than a few protocol milliseconds asks for a larger dilation.
type timerLag struct {
	mu   sync.Mutex
	lags []float64 // milliseconds
}

const lagPeriod = 50 * time.Millisecond

func (l *timerLag) measure(stop <-chan struct{}, clk clock) {
	timer := time.NewTimer(lagPeriod)
	defer timer.Stop()
	for {
		set := time.Now()
		timer.Reset(lagPeriod)
		select {
		case <-stop:
			return
		case <-timer.C:
			late := clk.protoDur(time.Since(set) - lagPeriod) // includes waiting for a CPU
			l.mu.Lock()
			l.lags = append(l.lags, float64(late)/float64(time.Millisecond))
			l.mu.Unlock()
		}
	}
}

func (l *timerLag) figures() (p99, worst float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v := percentile(l.lags, 99); v != nil {
		p99 = *v
	}
	if v := percentile(l.lags, 100); v != nil {
		worst = *v
	}
	return p99, worst
}

// QuietNewsRate is the rate of gossip packets (Network.NewsPackets), per
// node per protocol second, under which a mesh has gossiped the news of its
// forming. A node with news queued sends GossipNodes packets every
// GossipInterval (60 a second with fast, 15 with lan), so under 0.5 a node
// at most one node in thirty is still at it.
const QuietNewsRate = 0.5

// drainLimit bounds the wait for the news to drain, in protocol time.
const drainLimit = 5 * time.Minute

// drain waits until the mesh's gossip falls under QuietNewsRate for two
// protocol seconds in a row, at most drainLimit, and returns how long it
// took in protocol time. A mesh agrees on its members long before it has
// gossiped them: every node re-gossips each member it learns a few times
// (log10 of the mesh), the alive messages of a 1,000-node forming alone
// are about 16 million transmissions. A schedule started before they drain
// measures a busy mesh (600 nodes: 14 false failures). Where the packets
// cannot be read (memberlist compresses), it returns at once.
func drain(ctx context.Context, c *Cluster, progress func(Progress)) (time.Duration, error) {
	start := c.clk.now()
	last, ok := c.net.NewsPackets()
	if !ok {
		return 0, nil
	}
	tick := time.NewTicker(c.clk.wall(time.Second))
	defer tick.Stop()
	quiet := 0
	for quiet < 2 {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
		}
		n, ok := c.net.NewsPackets()
		if !ok {
			return c.clk.now().Sub(start), nil
		}
		rate := float64(n-last) / float64(len(c.names))
		last = n
		if rate < QuietNewsRate {
			quiet++
		} else {
			quiet = 0
		}
		waited := c.clk.now().Sub(start)
		progress(Progress{Phase: "draining", News: rate, Elapsed: waited})
		if waited >= drainLimit {
			c.log.Warn("the mesh still gossips its forming; starting anyway", "news_per_node_per_s", rate, "waited", waited)
			break
		}
	}
	return c.clk.now().Sub(start), nil
}

// settle lets a converged mesh run quietly before the schedule starts,
// and waits until it agrees again. Where drain read the gossip (drained),
// its two quiet seconds were the quiet; where it could not (memberlist
// compresses), settle waits 5 s plus 5 ms a node instead. At 1,000 nodes
// that fixed wait was 10 protocol seconds, 50 s of wall time, after a
// drain that had already seen the mesh quiet.
func settle(ctx context.Context, c *Cluster, drained bool) error {
	if !drained {
		quiet := 5*time.Second + time.Duration(len(c.names))*5*time.Millisecond
		timer := time.NewTimer(c.clk.wall(quiet))
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
	}
	wctx, cancel := context.WithTimeout(ctx, c.clk.wall(30*time.Second))
	defer cancel()
	if err := c.WaitAgreement(wctx); err != nil {
		return fmt.Errorf("the mesh stopped agreeing while it settled: %w", err)
	}
	return nil
}

// recorder turns what the nodes, the monitor and the network report into
// the run's figures. Every instant it holds is in protocol time (clock.go).
// All its methods take its lock; they are called from the nodes' event
// goroutines, the monitor and the network.
type recorder struct {
	plan    Plan
	cluster *Cluster
	base    *baseline
	n       int

	mu       sync.Mutex
	t0       time.Time
	hosts    int
	monitor  int // host id of the monitor
	history  []snapshot
	crashAt  []time.Time // per node; zero while alive
	downAt   []time.Time // per node, its latest crash; kept after a restart
	upAt     []time.Time // per node, its latest restart
	faults   []FaultRecord
	healAt   time.Time
	healed   time.Time // gossip: every live node has one full view again
	bHealed  time.Time // baseline: the monitor holds every live node alive
	suspect  []time.Time
	seen     map[int][]time.Time // crashed node -> per observer, when it saw the failure
	bSeen    map[int]time.Time   // crashed node -> when the monitor failed it
	falseS   int
	falseF   int
	bFalseF  int
	examples []string

	traffic0, bTraffic0 TrafficStats
	samples             []Sample
	bursts              []BurstRecord

	// A partition: when it came, the fault state it made, per observer
	// when it first saw each node across it failed, per node when it first
	// saw every live node alive after the heal, and the traffic and heal
	// prober counters at the split, the heal and 10 s after it.
	partAt      time.Time
	partState   *faultState
	partSeen    []map[int]time.Time
	healSeen    []time.Time
	partTraffic TrafficStats
	healTraffic TrafficStats
	settled     *TrafficStats // healSettle after the heal
	partHeal    gossip.HealStats
	healHeal    gossip.HealStats
}

// healSettle is how long after a heal its own traffic (the push/pulls, the
// refutations) is counted apart from the steady state that follows.
const healSettle = 10 * time.Second

// burst runs a burst of placements and records it with the sides as the
// network stood when it began.
func (r *recorder) burst(ctx context.Context, f Fault, tag string) {
	at := r.cluster.clk.now()
	net := r.cluster.net
	fs := net.faults.Load()
	results := r.cluster.burst(ctx, tag, f.Nodes)
	side := func(node string) int {
		if i, ok := r.cluster.index[node]; ok {
			return fs.side(r.cluster.hostID[i])
		}
		return -2
	}
	var names []string
	for _, g := range r.plan.Groups {
		names = append(names, g.Name)
	}
	if fs.group == nil {
		names = nil
	}
	rs := make([]sideResult, len(results))
	for i, res := range results {
		rs[i] = sideResult{side: side(res.asker), winnerSide: side(res.winner), placementResult: res}
		if node, ok := r.cluster.index[res.asker]; ok {
			rs[i].monitor = fs.reachable(r.cluster.hostID[node], r.monitor, r.hosts)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append(r.faults, FaultRecord{AtS: round(r.since(at)), Kind: string(f.Kind), Label: f.Label})
	r.bursts = append(r.bursts, summariseBurst(round(r.since(at)), f.Label, rs, names))
}

type snapshot struct {
	at time.Time
	f  *faultState
}

func newRecorder(plan Plan, c *Cluster, b *baseline) *recorder {
	return &recorder{plan: plan, cluster: c, base: b, n: len(c.names),
		crashAt: make([]time.Time, len(c.names)), downAt: make([]time.Time, len(c.names)), upAt: make([]time.Time, len(c.names)), suspect: make([]time.Time, len(c.names)),
		seen: make(map[int][]time.Time), bSeen: make(map[int]time.Time)}
}

func (r *recorder) begin(t0 time.Time) {
	net := r.cluster.net
	net.mu.Lock()
	r.hosts = len(net.hosts)
	r.monitor = net.byName[MonitorHost].id
	r.history = []snapshot{{at: t0, f: net.faults.Load()}}
	net.mu.Unlock()
	r.t0 = t0
	r.traffic0 = r.gossipTraffic()
	r.bTraffic0 = r.base.stats()
}

func (r *recorder) gossipTraffic() TrafficStats { return r.cluster.traffic() }

func (r *recorder) since(t time.Time) float64 { return t.Sub(r.t0).Seconds() }

// healedFor reports whether the schedule may end early: every node has
// seen every live node alive since the last heal, at least plan.HealedFor
// ago (see Plan.HealedFor).
func (r *recorder) healedFor(plan Plan, elapsed time.Duration) bool {
	at, ok := plan.healAt()
	if !ok || plan.HealedFor <= 0 || elapsed < at+plan.HealedFor {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.healed.IsZero() && len(r.bursts) == countBursts(plan, at+plan.HealedFor)
}

// countBursts is how many bursts the plan starts before d.
func countBursts(plan Plan, d time.Duration) int {
	n := 0
	for _, f := range plan.Faults {
		if f.Kind == FaultBurst && f.At < d {
			n++
		}
	}
	return n
}

// wire is the gossip's bytes on the wire in s, estimated when the nodes
// send uncompressed (compress.go).
func (r *recorder) wire(s TrafficStats) float64 { return r.cluster.net.WireBytes(s) }

// faultsChanged keeps the fault history and notes crashes; it runs under
// the network's lock.
func (r *recorder) faultsChanged(at time.Time, f *faultState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.history = append(r.history, snapshot{at: at, f: f})
	for i, id := range r.cluster.hostID {
		if f.isCrashed(id) && r.crashAt[i].IsZero() {
			r.crashAt[i], r.downAt[i] = at, at
			r.seen[i] = make([]time.Time, r.n)
		}
		if !f.isCrashed(id) && !r.crashAt[i].IsZero() {
			// Restarted: a failure of it from now on is false, once the
			// crash is FaultGrace behind (separated).
			r.crashAt[i], r.upAt[i] = time.Time{}, at
		}
	}
}

func (r *recorder) applied(f Fault, at time.Time) {
	traffic, hs := r.gossipTraffic(), r.cluster.healStats()
	var full []bool
	heal := f.Kind == FaultHeal || f.Kind == FaultResume
	if heal {
		full = make([]bool, r.n)
		for i := range full {
			full[i] = r.cluster.fullView(i)
		}
	}
	r.mu.Lock()
	r.faults = append(r.faults, FaultRecord{AtS: round(r.since(at)), Kind: string(f.Kind), Label: f.Label})
	if f.Kind == FaultPartition && r.partSeen == nil {
		r.partAt, r.partState = at, r.history[len(r.history)-1].f
		r.partSeen = make([]map[int]time.Time, r.n)
		r.partTraffic, r.partHeal = traffic, hs
	}
	if heal {
		r.healAt, r.healed, r.bHealed = at, time.Time{}, time.Time{}
		r.healTraffic, r.healHeal, r.settled = traffic, hs, nil
		r.healSeen = make([]time.Time, r.n)
		for i, ok := range full {
			if ok {
				r.healSeen[i] = at
			}
		}
	}
	r.mu.Unlock()
	if !heal {
		return
	}
	if r.cluster.Agreed() {
		r.fullViews(at, true)
	}
	r.base.mu.Lock()
	alive := r.base.alive
	r.base.mu.Unlock()
	r.mu.Lock()
	if alive == r.liveLocked() && r.bHealed.IsZero() {
		r.bHealed = at
	}
	r.mu.Unlock()
}

func (r *recorder) liveLocked() int {
	live := 0
	for _, t := range r.crashAt {
		if t.IsZero() {
			live++
		}
	}
	return live
}

// stateAt is the fault state in force at t.
func (r *recorder) stateAt(t time.Time) *faultState {
	f := r.history[0].f
	for _, s := range r.history {
		if s.at.After(t) {
			break
		}
		f = s.f
	}
	return f
}

// separated reports whether a fault stood between two hosts at any time
// within FaultGrace before at: then a suspicion or failure between them is
// the fault's doing, not a false one.
func (r *recorder) separated(a, b int, at time.Time) bool {
	from := at.Add(-FaultGrace)
	for i, s := range r.history {
		active := !s.at.After(at) && (i+1 == len(r.history) || r.history[i+1].at.After(from))
		if active && !s.f.reachable(a, b, r.hosts) {
			return true
		}
	}
	return false
}

// observing reports whether a node's own view means something now: it is
// neither crashed nor paused (a paused node's timers run on in the
// simulation, unlike under SIGSTOP, so what it concludes is an artefact).
func (r *recorder) observing(node int, at time.Time) bool {
	f := r.stateAt(at)
	id := r.cluster.hostID[node]
	return !f.isCrashed(id) && !f.isPaused(id)
}

func (r *recorder) statusChanged(at time.Time, observer, target int, to gossip.Status) {
	if to == gossip.StatusAlive {
		if r.cluster.fullView(observer) {
			r.sawAll(at, observer)
		}
		return
	}
	if to != gossip.StatusFailed {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if at.Before(r.t0) || !r.observing(observer, at) {
		return
	}
	if r.partSeen != nil && (r.healAt.IsZero() || at.Before(r.healAt)) &&
		!r.partState.reachable(r.cluster.hostID[observer], r.cluster.hostID[target], r.hosts) {
		if r.partSeen[observer] == nil {
			r.partSeen[observer] = make(map[int]time.Time)
		}
		if _, ok := r.partSeen[observer][target]; !ok {
			r.partSeen[observer][target] = at
		}
	}
	if c := r.crashAt[target]; !c.IsZero() && !at.Before(c) {
		if seen := r.seen[target]; seen[observer].IsZero() {
			seen[observer] = at
		}
		return
	}
	if !r.separated(r.cluster.hostID[observer], r.cluster.hostID[target], at) {
		r.falseF++
		if len(r.examples) < 10 {
			r.examples = append(r.examples, fmt.Sprintf("%.1f s: %s saw %s failed",
				r.since(at), r.cluster.names[observer], r.cluster.names[target]))
		}
	}
}

// sawAll notes when a node first sees every live node alive after the heal.
func (r *recorder) sawAll(at time.Time, observer int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.healSeen != nil && r.healSeen[observer].IsZero() && !at.Before(r.healAt) {
		r.healSeen[observer] = at
	}
}

func (r *recorder) suspected(at time.Time, observer, target int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at.Before(r.t0) || !r.observing(observer, at) {
		return
	}
	if c := r.crashAt[target]; !c.IsZero() && !at.Before(c) {
		if r.suspect[target].IsZero() {
			r.suspect[target] = at
		}
		return
	}
	if !r.separated(r.cluster.hostID[observer], r.cluster.hostID[target], at) {
		r.falseS++
	}
}

func (r *recorder) fullViews(at time.Time, all bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if all && !r.healAt.IsZero() && r.healed.IsZero() && !at.Before(r.healAt) {
		r.healed = at
	}
}

// baselineChanged runs under the monitor's lock.
func (r *recorder) baselineChanged(at time.Time, node int, failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at.Before(r.t0) {
		return
	}
	if !failed {
		if !r.healAt.IsZero() && r.bHealed.IsZero() && !at.Before(r.healAt) && r.base.alive == r.liveLocked() {
			r.bHealed = at
		}
		return
	}
	if c := r.crashAt[node]; !c.IsZero() && !at.Before(c) {
		if _, ok := r.bSeen[node]; !ok {
			r.bSeen[node] = at
		}
		return
	}
	if !r.separated(r.monitor, r.cluster.hostID[node], at) {
		r.bFalseF++
	}
}

// meterLoop reads every node's traffic each protocol second until stop
// closes.
func (r *recorder) meterLoop(stop <-chan struct{}, m *meter) {
	clk := r.cluster.clk
	tick := time.NewTicker(clk.wall(time.Second))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			r.mu.Lock()
			crashed := append([]time.Time(nil), r.crashAt...)
			r.mu.Unlock()
			m.tick(clk.proto(now), func(i int) bool { return crashed[i].IsZero() })
		}
	}
}

// sampleLoop records what every node sees, a few times a second (once a
// second past 200 nodes), until stop closes.
func (r *recorder) sampleLoop(stop <-chan struct{}, mem *memoryPeak) {
	every := 250 * time.Millisecond
	if r.n > 200 {
		every = time.Second
	}
	clk := r.cluster.clk
	tick := time.NewTicker(clk.wall(every))
	defer tick.Stop()
	r.sample(clk.now())
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			r.sample(clk.proto(now))
			mem.sample()
		}
	}
}

func (r *recorder) sample(now time.Time) {
	r.mu.Lock()
	settle := !r.healAt.IsZero() && r.settled == nil && now.Sub(r.healAt) >= healSettle
	r.mu.Unlock()
	if settle {
		t := r.gossipTraffic()
		r.mu.Lock()
		r.settled = &t
		r.mu.Unlock()
	}
	alive := make([]int, r.n)
	hashes := make(map[uint64]bool)
	r.mu.Lock()
	crashed := append([]time.Time(nil), r.crashAt...)
	r.mu.Unlock()
	for i := range alive {
		if !crashed[i].IsZero() {
			alive[i] = -1
			continue
		}
		a, h := r.cluster.aliveCount(i)
		alive[i] = a
		hashes[h] = true
	}
	s := Sample{T: round(now.Sub(r.t0).Seconds()), Views: len(hashes), Monitor: r.base.aliveCount(), alive: alive}
	r.mu.Lock()
	r.samples = append(r.samples, s)
	r.mu.Unlock()
}

// report computes the figures at the end of the run.
func (r *recorder) report(end time.Time) *Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := &Report{Nodes: r.n, Scenario: r.plan.Scenario, Seed: r.plan.Seed,
		Faults: r.faults, FalseFailureExamples: r.examples, Timeline: r.samples, LengthS: round(r.plan.Length.Seconds()),
		Placements: r.bursts}
	for _, g := range r.plan.Groups {
		rep.Groups = append(rep.Groups, GroupRecord{Name: g.Name, Nodes: len(g.Nodes), members: r.indexes(g.Nodes)})
	}
	for i := range rep.Timeline {
		rep.Timeline[i].Groups = groupStats(rep.Timeline[i].alive, rep.Groups)
	}

	// Detection: every (crashed node, live observer) pair.
	var pairs, bPairs, firsts []float64
	for target, seen := range r.seen {
		crash := r.downAt[target]
		for obs, at := range seen {
			if obs == target || !r.crashAt[obs].IsZero() || r.downAtTime(obs, crash) {
				continue
			}
			if at.IsZero() {
				pairs = append(pairs, math.Inf(1))
				rep.Undetected++
			} else {
				pairs = append(pairs, at.Sub(crash).Seconds())
			}
		}
		if at, ok := r.bSeen[target]; ok {
			bPairs = append(bPairs, at.Sub(crash).Seconds())
		} else {
			bPairs = append(bPairs, math.Inf(1))
			rep.Baseline.Undetected++
		}
		if !r.suspect[target].IsZero() {
			firsts = append(firsts, r.suspect[target].Sub(crash).Seconds())
		}
	}
	rep.DetectionP50, rep.DetectionP99, rep.DetectionAll = percentile(pairs, 50), percentile(pairs, 99), percentile(pairs, 100)
	rep.Baseline.DetectionP50, rep.Baseline.DetectionP99, rep.Baseline.DetectionAll =
		percentile(bPairs, 50), percentile(bPairs, 99), percentile(bPairs, 100)
	rep.FirstSuspicion = percentile(firsts, 50)
	if r.partSeen != nil {
		rep.Partition = r.partitionRecord(end)
		if len(pairs) == 0 {
			rep.DetectionP50, rep.DetectionP99, rep.DetectionAll, rep.Undetected = r.partitionDetection()
		}
	}
	falseS := r.falseS
	rep.FalseSuspicions = &falseS
	rep.FalseFailures, rep.Baseline.FalseFailures = r.falseF, r.bFalseF
	if !r.healAt.IsZero() {
		if !r.healed.IsZero() {
			rep.HealS = ptr(round(r.healed.Sub(r.healAt).Seconds()))
		}
		if !r.bHealed.IsZero() {
			rep.Baseline.HealS = ptr(round(r.bHealed.Sub(r.healAt).Seconds()))
		}
	}

	// Traffic: what the live nodes sent, per second that they were alive.
	var nodeSeconds float64
	for _, c := range r.crashAt {
		until := end
		if !c.IsZero() {
			until = c
		}
		nodeSeconds += until.Sub(r.t0).Seconds()
	}
	g := r.gossipTraffic()
	b := r.base.stats()
	if nodeSeconds > 0 {
		rep.BytesPerNodePerS = round((r.wire(g) - r.wire(r.traffic0)) / nodeSeconds)
		rep.PacketsPerNodePerS = round(float64(g.PacketsSent-r.traffic0.PacketsSent) / nodeSeconds)
		rep.Baseline.BytesPerNodePerS = round(float64(b.BytesSent-r.bTraffic0.BytesSent) / nodeSeconds)
		rep.Baseline.PacketsPerNodePerS = round(float64(b.PacketsSent-r.bTraffic0.PacketsSent) / nodeSeconds)
	}
	for _, s := range r.samples {
		rep.MaxViews = max(rep.MaxViews, s.Views)
	}
	rep.Baseline.MaxViews = 1
	return rep
}

// downAtTime reports whether node i was crashed at t (it may have been
// restarted since); r.mu is held.
func (r *recorder) downAtTime(i int, t time.Time) bool {
	d := r.downAt[i]
	if d.IsZero() || d.After(t) {
		return false
	}
	return r.upAt[i].Before(d) || r.upAt[i].After(t)
}

// partitionDetection ranks, over the live nodes, the time from the split
// until the node saw every node across it failed, and counts the pairs
// across the split where the observer had not by the heal; r.mu is held.
func (r *recorder) partitionDetection() (p50, p99, all *float64, unseen int) {
	var per []float64
	for obs := range r.n {
		if !r.crashAt[obs].IsZero() {
			continue
		}
		worst := 0.0
		for tgt := range r.n {
			if tgt == obs || !r.crashAt[tgt].IsZero() ||
				r.partState.reachable(r.cluster.hostID[obs], r.cluster.hostID[tgt], r.hosts) {
				continue
			}
			at, ok := r.partSeen[obs][tgt]
			if !ok {
				worst = math.Inf(1)
				unseen++
				continue
			}
			worst = max(worst, at.Sub(r.partAt).Seconds())
		}
		per = append(per, worst)
	}
	return percentile(per, 50), percentile(per, 99), percentile(per, 100), unseen
}

// partitionRecord is the heal per node and the traffic around the split;
// r.mu is held.
func (r *recorder) partitionRecord(end time.Time) *PartitionRecord {
	rec := &PartitionRecord{}
	n := float64(r.liveLocked())
	rate := func(from, to TrafficStats, d time.Duration) float64 {
		if d <= 0 || n == 0 {
			return 0
		}
		return round((r.wire(to) - r.wire(from)) / n / d.Seconds())
	}
	now := r.gossipTraffic()
	hs := r.cluster.healStats()
	rec.BytesBefore = rate(r.traffic0, r.partTraffic, r.partAt.Sub(r.t0))
	if r.healAt.IsZero() {
		rec.HeldS = round(end.Sub(r.partAt).Seconds())
		rec.BytesDuring = rate(r.partTraffic, now, end.Sub(r.partAt))
		rec.HealPingsDuring, rec.HealJoinsDuring = hs.Pings-r.partHeal.Pings, hs.Joins-r.partHeal.Joins
		return rec
	}
	rec.HeldS = round(r.healAt.Sub(r.partAt).Seconds())
	rec.BytesDuring = rate(r.partTraffic, r.healTraffic, r.healAt.Sub(r.partAt))
	rec.HealPingsDuring, rec.HealJoinsDuring = r.healHeal.Pings-r.partHeal.Pings, r.healHeal.Joins-r.partHeal.Joins
	rec.HealJoinsAfter = hs.Joins - r.healHeal.Joins
	rec.PushPullBytesAfter = now.StreamWireBytes - r.healTraffic.StreamWireBytes
	if r.settled != nil {
		rec.BytesHealing = rate(r.healTraffic, *r.settled, healSettle)
		rec.BytesAfter = rate(*r.settled, now, end.Sub(r.healAt.Add(healSettle)))
	}
	var per []float64
	for i, at := range r.healSeen {
		if !r.crashAt[i].IsZero() {
			continue
		}
		if at.IsZero() {
			per = append(per, math.Inf(1))
		} else {
			per = append(per, at.Sub(r.healAt).Seconds())
		}
	}
	rec.HealP50, rec.HealP99 = percentile(per, 50), percentile(per, 99)
	return rec
}

func (r *recorder) indexes(names []string) []int {
	out := make([]int, 0, len(names))
	for _, n := range names {
		if i, ok := r.cluster.index[n]; ok {
			out = append(out, i)
		}
	}
	return out
}

// percentile is the nearest-rank percentile; nil when there is nothing to
// rank or the rank lands on a pair that was never detected.
func percentile(v []float64, p float64) *float64 {
	if len(v) == 0 {
		return nil
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	rank := int(math.Ceil(p/100*float64(len(s)))) - 1
	rank = min(max(rank, 0), len(s)-1)
	if math.IsInf(s[rank], 1) {
		return nil
	}
	return ptr(round(s[rank]))
}

func ptr[T any](v T) *T { return &v }

func round(v float64) float64 { return math.Round(v*100) / 100 }

// memoryPeak follows the Go runtime's memory (mapped and not returned to
// the system), sampled during the run.
type memoryPeak struct {
	mu   sync.Mutex
	peak uint64
}

func (m *memoryPeak) sample() {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return
	}
	v := s[0].Value.Uint64() - s[1].Value.Uint64()
	m.mu.Lock()
	m.peak = max(m.peak, v)
	m.mu.Unlock()
}

// resetPeakRSS restarts the kernel's count of the process's peak resident
// set (Linux), so that peakRSS measures this run. Elsewhere it does nothing.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSS is the process's peak resident set in MiB (VmHWM), or nil where
// /proc does not tell.
func peakRSS() *float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				return nil
			}
			kb, err := strconv.ParseFloat(fields[0], 64)
			if err != nil {
				return nil
			}
			return ptr(round(kb / 1024))
		}
	}
	return nil
}

// processCPU is the CPU time (user and system) the process has used, or 0
// where the system does not tell.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
