package simulation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshagent/agent/gossip"
)

// GossipPort is the port every simulated node gossips on.
const GossipPort = 7946

// ClusterConfig describes a simulated mesh.
type ClusterConfig struct {
	Nodes   int
	Profile string // a gossip profile; empty is gossip.DefaultProfile
	Seed    int64  // drives the joins, the fake loads and a new Network
	// Network carries the nodes; nil makes one from Seed with DefaultLink,
	// owned (and closed) by the cluster.
	Network *Network
	// Prepare runs on each node after it starts and before it joins: the
	// place to plug in a per-node query responder (HandleQuery). The stop it
	// returns runs before the node shuts down. Prepare is called from one
	// goroutine, node by node.
	Prepare func(name string, n *gossip.Node) (stop func(), err error)
	// JoinParallel is how many joins run at once (default 4). Each node
	// joins one node started before it, picked at random, so that no seed
	// carries every join.
	JoinParallel int
	// ConvergeTimeout bounds the wait for every node to see every other
	// alive (default 60 s plus 100 ms a node).
	ConvergeTimeout time.Duration
	// Logger receives the harness's own messages; nil discards. The nodes'
	// library logs are read for suspicions, not forwarded.
	Logger *slog.Logger
	// HealInterval is each node's gossip.Config.HealInterval: zero is the
	// profile's default, negative turns the heal prober off (serf alone).
	HealInterval time.Duration
	// Dilation stretches time (clock.go): 0 or 1 is real time. With a
	// Network, it must be 0 or the network's own; the cluster follows the
	// network's. ConvergeTimeout is in protocol time.
	Dilation float64
	// Forming, when set, is told how far the mesh is while it forms: how
	// many nodes have joined, and how many see every node alive. It is
	// called about once a second, from the joining goroutines and a
	// ticker, so that a wait shows.
	Forming func(joined, full int)
	// JoinStall ends the forming with ErrFormingStalled when no join has
	// finished for this long, in protocol time. The default is 60 s, a
	// thousand times what a join takes when the process keeps up; in
	// virtual time, where no process falls behind, a forming without joins
	// is the news gate waiting on the mesh's gossip, which a slow profile
	// drains slowly (lan at 950 nodes: more than a minute at its full
	// gossip rate), so the default there is drainLimit, the wait the run
	// gives the same gossip once the mesh has formed.
	JoinStall time.Duration
	// VirtualTime says the cluster runs inside a testing/synctest bubble
	// (RunConfig.VirtualTime): its clock waits for the work, so the
	// forming is not paced by the process's CPU (joinBudget), only by the
	// mesh's gossip (pacer: its timer is never late in a bubble).
	VirtualTime bool

	// news stands in for the network's count of gossip packets, for tests
	// of the pacing; nil is Network.NewsPackets.
	news func() (uint64, bool)
	// ExactCompression, for a cluster that makes its network, has
	// memberlist compress every packet, as a real node does; by default
	// the network estimates it (compress.go). With a Network, the
	// network's EstimateCompression decides.
	ExactCompression bool
}

// Cluster is N real gossip nodes over one simulated Network. It tracks what
// each node sees from the node's own member events. Its methods are safe
// for concurrent use; Stop ends it.
type Cluster struct {
	cfg    ClusterConfig
	net    *Network
	ownNet bool
	clk    clock // the network's
	log    *slog.Logger

	names  []string
	index  map[string]int
	hostID []int               // network host id of node i
	tags   []map[string]string // node i's tags, again after a restart

	// nodesMu guards the nodes and endpoints, which a restart replaces
	// (churn.go), and what the replaced ones counted.
	nodesMu        sync.RWMutex
	eps            []*Endpoint
	nodes          []*gossip.Node
	cancels        []func()
	stops          []func()
	retiredTraffic TrafficStats
	retiredHeal    gossip.HealStats

	// interps are the interpreter members of the churn scenario
	// (churn.go), by name.
	interpMu sync.Mutex
	interps  map[string]*interpMember
	interpWG sync.WaitGroup

	views []*view
	keys  []uint64 // per-node random key; a view's hash XORs its alive members' keys

	// tallyMu: readers are view updates, the writer is a crash changing
	// what a full view is.
	tallyMu  sync.RWMutex
	expHash  uint64
	expCount int
	counted  []bool // a live observer: its view takes part in "everyone agrees"
	live     int
	full     atomic.Int64 // counted observers whose view is full

	watch atomic.Pointer[watcher]

	releaseGC func()
	stopOnce  sync.Once
	formingAt atomic.Int64 // unix nanoseconds of the last Forming call
}

// memberlist compresses every packet it sends with a fresh LZW writer, a
// 64 KiB table allocated and cleared per packet. With Go's default GOGC of
// 100, a mesh of a few hundred nodes in one process spends most of its CPU
// collecting those tables, its timers fire late, probes time out, and the
// false suspicions feed more gossip: it never converges (300 nodes: no
// agreement after 90 s; with GOGC=400, agreed in 16 s). While a cluster
// whose nodes compress runs, the collector's target is raised to
// gcPercent, unless the GOGC environment variable chose one. Without
// compression (the default, compress.go) there is little garbage, and the
// default target keeps the heap near twice the live state instead of five
// times (400 nodes held 320 MB of it just after forming).
const gcPercent = 400

// A memory limit keeps the heap from growing past what the mesh needs: near
// it the collector works harder instead (a 1000-node mesh was killed at 24
// GiB without one). Each node keeps every other's state in memberlist and
// serf, 1 to 2 KB a pair (320 MB for 400 nodes, queued news included), so
// the limit is memoryLimit's.
var gcBoost struct {
	mu        sync.Mutex
	users     int
	prev      int
	prevLimit int64
}

const (
	memBase     = 1 << 30
	memPerNode  = 5 << 19       // 2.5 MiB
	memPerLarge = 34 << 20 / 10 // 3.4 MiB
)

// memoryLimit is the heap limit for a mesh of nodes: memBase plus memPerNode
// a node (3.44 GiB at 1,000 nodes), or memPerLarge a node where that is
// more (from 1,138 nodes on; 6.64 GiB at 2,000); never more than prev, the
// limit the process had, nor half the machine's memory (physical; 0 when
// unknown). The live state grows with the square of the nodes, and the
// memory a run may take (docs/scale.md: 4 GB at 1,000 nodes, 8 GB at
// 2,000) only with the nodes, so at 2,000 the first rule left the
// collector little room above the live heap: the crash of seed 1 took
// 3,700 s of CPU with a peak of 6.7 GB, and 3,118 s with 7.5 GB under
// memPerLarge. Its peak RSS rose 0.3 GiB above the limit, which is why
// memPerLarge stays under the 3.8 MiB a node of that budget.
func memoryLimit(nodes int, prev, physical int64) int64 {
	limit := min(prev, max(int64(memBase+nodes*memPerNode), int64(nodes)*memPerLarge))
	if physical > 0 {
		limit = min(limit, physical/2)
	}
	return limit
}

func raiseGCPercent(percent, nodes int) (release func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	gcBoost.mu.Lock()
	defer gcBoost.mu.Unlock()
	if gcBoost.users == 0 {
		gcBoost.prev = debug.SetGCPercent(percent)
		gcBoost.prevLimit = debug.SetMemoryLimit(-1)
		if os.Getenv("GOMEMLIMIT") == "" {
			debug.SetMemoryLimit(memoryLimit(nodes, gcBoost.prevLimit, physicalMemory()))
		}
	}
	gcBoost.users++
	var once sync.Once
	return func() {
		once.Do(func() {
			gcBoost.mu.Lock()
			defer gcBoost.mu.Unlock()
			if gcBoost.users--; gcBoost.users == 0 {
				debug.SetGCPercent(gcBoost.prev)
				debug.SetMemoryLimit(gcBoost.prevLimit)
			}
		})
	}
}

// watcher is told what the nodes see, in protocol time (clock.go); it runs
// on the nodes' event goroutines and must not block.
type watcher interface {
	statusChanged(at time.Time, observer, target int, to gossip.Status)
	suspected(at time.Time, observer, target int)
	fullViews(at time.Time, all bool)
}

// view is one node's member list as its events told it.
type view struct {
	mu     sync.Mutex
	status []gossip.Status
	alive  int
	hash   uint64
}

// StartCluster starts the nodes, joins them and waits until every node
// sees every other alive. On error everything it started is stopped.
func StartCluster(ctx context.Context, cfg ClusterConfig) (*Cluster, error) {
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("a cluster of %d nodes: use at least 1", cfg.Nodes)
	}
	if cfg.Nodes > MaxNodes {
		return nil, fmt.Errorf("a cluster of %d nodes is more than one process simulates: use at most %d", cfg.Nodes, MaxNodes)
	}
	if cfg.Profile == "" {
		cfg.Profile = gossip.DefaultProfile
	}
	if err := gossip.CheckProfile(cfg.Profile); err != nil {
		return nil, err
	}
	if cfg.JoinParallel <= 0 {
		cfg.JoinParallel = 4
	}
	if cfg.JoinStall <= 0 {
		cfg.JoinStall = 60 * time.Second
		if cfg.VirtualTime {
			cfg.JoinStall = drainLimit
		}
	}
	if cfg.ConvergeTimeout <= 0 {
		cfg.ConvergeTimeout = 60*time.Second + time.Duration(cfg.Nodes)*100*time.Millisecond
	}
	exact := cfg.ExactCompression
	if cfg.Network != nil {
		exact = !cfg.Network.estimating()
	}
	percent := 100
	if exact {
		percent = gcPercent
	}
	c := &Cluster{cfg: cfg, net: cfg.Network, log: cfg.Logger, index: make(map[string]int), releaseGC: raiseGCPercent(percent, cfg.Nodes)}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.net == nil {
		n, err := NewNetwork(NetworkConfig{Seed: cfg.Seed, Dilation: cfg.Dilation, EstimateCompression: !cfg.ExactCompression})
		if err != nil {
			c.releaseGC()
			return nil, err
		}
		c.net, c.ownNet = n, true
	} else if cfg.Dilation != 0 && cfg.Dilation != c.net.Dilation() {
		c.releaseGC()
		return nil, fmt.Errorf("a cluster dilated %v on a network dilated %v: dilate the network, and leave the cluster's at 0",
			cfg.Dilation, c.net.Dilation())
	}
	c.clk = c.net.clk
	rng := rand.New(rand.NewSource(cfg.Seed))
	c.names = nodeNames(cfg.Nodes)
	c.keys = make([]uint64, cfg.Nodes)
	c.counted = make([]bool, cfg.Nodes)
	c.views = make([]*view, cfg.Nodes)
	c.hostID = make([]int, cfg.Nodes)
	for i, name := range c.names {
		c.index[name] = i
		c.hostID[i] = -1
		c.keys[i] = rng.Uint64()
		c.views[i] = &view{status: make([]gossip.Status, cfg.Nodes)}
		c.views[i].status[i], c.views[i].alive, c.views[i].hash = gossip.StatusAlive, 1, c.keys[i]
		c.expHash ^= c.keys[i]
		c.counted[i] = true
	}
	c.expCount, c.live = cfg.Nodes, cfg.Nodes
	c.net.watchFaults(c.faultsChanged)

	if err := c.start(rng); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.join(ctx, rng); err != nil {
		c.Stop()
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, c.clk.wall(cfg.ConvergeTimeout))
	defer cancel()
	abort := context.AfterFunc(wctx, c.closeEndpoints)
	err := c.converge(wctx, rng)
	if !abort() && err == nil {
		err = wctx.Err() // it ended as the mesh agreed: the endpoints are closing
	}
	if err != nil {
		c.Stop()
		if ctx.Err() != nil {
			return nil, ctx.Err() // stopped, not out of time
		}
		return nil, fmt.Errorf("the mesh of %d nodes did not converge within %v: %w", cfg.Nodes, cfg.ConvergeTimeout, err)
	}
	return c, nil
}

func (c *Cluster) start(rng *rand.Rand) error {
	c.tags = make([]map[string]string, len(c.names))
	for i, name := range c.names {
		ep, err := c.net.Attach(name, GossipPort)
		if err != nil {
			return err
		}
		c.eps = append(c.eps, ep)
		c.hostID[i] = ep.host.id

		load := &gossip.Load{CPU: math.Round(500+400*rng.Float64()) / 10, Mem: math.Round(200+600*rng.Float64()) / 10}
		c.tags[i] = gossip.Tags{Role: gossip.RoleServer, Load: load, Capacity: 8}.Map()
		node, cancel, stop, err := c.startNode(i, ep)
		if node != nil {
			c.nodes, c.cancels, c.stops = append(c.nodes, node), append(c.cancels, cancel), append(c.stops, stop)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// startNode starts node i's gossip on ep, subscribes the cluster to its
// events and prepares it. On an error after the node started, it returns
// the node too, for Stop to shut down.
func (c *Cluster) startNode(i int, ep *Endpoint) (*gossip.Node, func(), func(), error) {
	name := c.names[i]
	node, err := gossip.Start(gossip.Config{
		Name:      name,
		Transport: ep,
		Profile:   c.cfg.Profile,
		Tags:      c.tags[i],
		Logger:    slog.New(&suspicionLog{c: c, observer: i}),

		HealInterval: c.cfg.HealInterval,
		TimeScale:    c.clk.factor(),
		Uncompressed: c.net.estimating(),
	})
	if err != nil {
		ep.Shutdown()
		return nil, nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	cancel := node.Subscribe(func(e gossip.Event) { c.event(i, e) })
	stop := func() {}
	if c.cfg.Prepare != nil {
		s, err := c.cfg.Prepare(name, node)
		if err != nil {
			return node, cancel, stop, fmt.Errorf("prepare %s: %w", name, err)
		}
		if s != nil {
			stop = s
		}
	}
	return node, cancel, stop, nil
}

// join has node i join a node started before it, chosen at random, so
// that no seed carries every join. Joins are paced twice: by what they
// cost (joinBudget), and each waits until the process has CPU to spare
// (pacer), so that the gossip of earlier joins is handled before more
// arrives. When the process falls behind anyway, the nodes' probes time
// out, their false suspicions are news for every member, and that news
// keeps the pacer shut: no join for JoinStall ends the forming with
// ErrFormingStalled rather than leaving it to wait for ever.
func (c *Cluster) join(ctx context.Context, rng *rand.Rand) error {
	targets := make([][]int, len(c.names))
	for i := 1; i < len(c.names); i++ {
		for try := 0; try < 3; try++ {
			targets[i] = append(targets[i], rng.Intn(i))
		}
	}
	pace := startPacer(c.clk, c.newsSource())
	defer pace.stop()
	var budget *joinBudget // nil, open, in virtual time
	if !c.cfg.VirtualTime {
		budget = newJoinBudget()
	}
	var joined atomic.Int64
	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(jctx, c.closeEndpoints)()
	watch := newJoinWatch(c.clk.wall(c.cfg.JoinStall))
	stopWatch := everySecond(func(now time.Time) bool {
		n := int(joined.Load()) + 1
		c.forming(n)
		if !watch.stalled(now) {
			return true
		}
		cancel(c.stalled(n, pace.gate))
		return false
	})
	errs := make([]error, len(c.names))
	c.parallel(len(c.names)-1, func(k int) {
		i := k + 1
		if errs[i] = budget.take(jctx, i); errs[i] != nil {
			return
		}
		if errs[i] = pace.wait(jctx); errs[i] != nil {
			return
		}
		for _, t := range targets[i] {
			if _, errs[i] = c.nodes[i].Join([]string{c.eps[t].Addr()}, false); errs[i] == nil {
				watch.joined(time.Now())
				c.forming(int(joined.Add(1)) + 1)
				return
			}
		}
		errs[i] = fmt.Errorf("%s could not join: %w", c.names[i], errs[i])
	})
	stopWatch()
	if err := ctx.Err(); err != nil {
		return err // once, not once per node that was waiting its turn
	}
	if err := context.Cause(jctx); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// stalled is the error of a forming whose joins stopped with n joined.
// Dilated, the process fell behind; in virtual time it cannot, and it is
// the mesh's own gossip that held the news gate shut.
func (c *Cluster) stalled(n int, gate int64) error {
	if c.cfg.VirtualTime {
		return fmt.Errorf("%w: %d of %d nodes joined, none for %v (protocol time): in virtual time no node is late, so the mesh's own gossip held the joins, above the news gate (%d packets a second) all that time; with profile %s a mesh of %d nodes does not form this way (docs/scale.md): try fewer nodes, the fast profile, or the machine's clock, dilated (--time real)",
			ErrFormingStalled, n, len(c.names), c.cfg.JoinStall, gate, c.cfg.Profile, len(c.names))
	}
	return fmt.Errorf("%w: %d of %d nodes joined, none for %v (protocol time): the process cannot keep up with the gossip of %d nodes at dilation %g; raise the dilation (--dilation), for example to %g",
		ErrFormingStalled, n, len(c.names), c.cfg.JoinStall, len(c.names), c.clk.factor(), math.Min(MaxDilation, math.Ceil(c.clk.factor()*1.5)))
}

// closeEndpoints ends a forming that stopped early (interrupted, stalled,
// out of time) at once: a join or repair in flight waits for its push/pull
// up to memberlist's TCP timeout, dilated (10 s × 16 at 2,000 nodes, for
// each of a join's three tries), and a closed endpoint fails it now. The
// cluster is stopped next.
func (c *Cluster) closeEndpoints() {
	for _, ep := range c.eps {
		ep.Shutdown()
	}
}

func (c *Cluster) newsSource() func() (uint64, bool) {
	if c.cfg.news != nil {
		return c.cfg.news
	}
	return c.net.NewsPackets
}

// everySecond calls fn once a wall second, from its own goroutine, until
// fn returns false or the returned stop is called; stop waits for it.
func everySecond(fn func(now time.Time) bool) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				if !fn(now) {
					return
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// ErrFormingStalled is returned when the joins stop while a mesh forms
// (ClusterConfig.JoinStall).
var ErrFormingStalled = errors.New("the mesh stopped forming")

// joinWatch tells when the joins have stalled: none finished for stall
// (wall time) since the watch began or the last join.
type joinWatch struct {
	stall time.Duration
	last  atomic.Int64 // unix nanoseconds
}

func newJoinWatch(stall time.Duration) *joinWatch {
	w := &joinWatch{stall: stall}
	w.last.Store(time.Now().UnixNano())
	return w
}

func (w *joinWatch) joined(at time.Time) { w.last.Store(at.UnixNano()) }

func (w *joinWatch) stalled(now time.Time) bool {
	return now.Sub(time.Unix(0, w.last.Load())) > w.stall
}

// converge waits for one full view. memberlist retransmits a broadcast
// about log10 of the mesh size *as the sender knew it*, so news sent while
// the joins were still running may not reach everyone, and only push/pull
// (30 s or more) would repair it. So every few seconds without agreement,
// a few of the nodes that see the fewest members join one more random node:
// a push/pull that merges both views. Repairs are paced like joins; a storm
// of them would starve the timers it is meant to help. This is setup, not
// measurement.
func (c *Cluster) converge(ctx context.Context, rng *rand.Rand) error {
	pace := startPacer(c.clk, c.newsSource())
	defer pace.stop()
	// Progress every second, also while the repairs wait on the pacer.
	defer everySecond(func(time.Time) bool { c.forming(len(c.nodes)); return true })()
	perRound := max(4, len(c.nodes)/50)
	for {
		wctx, cancel := context.WithTimeout(ctx, c.clk.wall(2*time.Second))
		err := c.WaitAgreement(wctx)
		cancel()
		c.forming(len(c.nodes))
		if err == nil || ctx.Err() != nil {
			return err
		}
		type lag struct{ node, alive int }
		var lagging []lag
		for i := range c.nodes {
			if alive, _ := c.aliveCount(i); alive < len(c.nodes) {
				lagging = append(lagging, lag{i, alive})
			}
		}
		sort.Slice(lagging, func(a, b int) bool { return lagging[a].alive < lagging[b].alive })
		nodes := make([]int, min(len(lagging), perRound))
		for k := range nodes {
			nodes[k] = lagging[k].node
		}
		c.log.Debug("repairing views", "nodes", len(nodes))
		c.repair(ctx, pace, nodes, func(i int) {
			c.nodes[i].Join([]string{c.eps[rng2(rng, len(c.nodes))].Addr()}, false)
		})
	}
}

// repair has each of nodes join one more node (join), each once the pacer
// lets it, and returns when all have or when the mesh agrees, whichever
// comes first. The pacer can hold a round for a long time while the
// forming's gossip drains, and that gossip often completes the lagging
// views by itself. A round that waited for all its repairs hid the
// agreement until the gate opened: a 2,000-node forming had every view
// full for 3.8 minutes of wall time before its round's repairs went
// through and converge returned.
func (c *Cluster) repair(ctx context.Context, pace *pacer, nodes []int, join func(node int)) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if c.WaitAgreement(rctx) == nil {
			cancel()
		}
	}()
	c.parallel(len(nodes), func(k int) {
		if pace.wait(rctx) == nil {
			join(nodes[k])
		}
	})
	cancel()
	<-watched
}

var rngMu sync.Mutex

// physicalMemory is the machine's memory in bytes from /proc/meminfo
// (Linux), or 0 where it cannot tell.
func physicalMemory() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb int64
			if _, err := fmt.Sscan(rest, &kb); err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// rng2 draws from a rand shared by goroutines.
func rng2(rng *rand.Rand, n int) int {
	rngMu.Lock()
	defer rngMu.Unlock()
	return rng.Intn(n)
}

// pacer tells whether the process has CPU to spare: a 20 ms timer that
// fires more than pacerLag (in protocol time) late means the nodes' own
// timers do too; and the mesh's gossip (Network.NewsPackets) must be under
// newsGate packets a wall second per core.
type pacer struct {
	late  atomic.Int64 // nanoseconds, the latest measure
	news  atomic.Int64 // gossip packets a wall second, the latest measure
	ready atomic.Bool  // both have been measured once
	lag   time.Duration
	gate  int64
	done  chan struct{}
	wg    sync.WaitGroup
}

const pacerLag = 25 * time.Millisecond

// newsGate is how many gossip packets a wall second, per core, the mesh
// may be sending when a join starts. A join's cost comes later than the
// join: the newcomer re-gossips every member it learnt, and every member
// gossips the newcomer, for tens of protocol seconds; so neither the CPU
// nor the timers tell in time that the joins are outrunning the process,
// and at 1,000 nodes they were starved into a cascade of false suspicions
// that never settled. A gossip packet costs about 250 µs of CPU in all at
// 1,000 nodes (its ten messages sent, routed, decoded and collected), so
// 2,500 a second per core is about 60% of the process, the share the join
// budget allows (joinShare). At 2,000 a second per core the gate held the
// last 400 joins of a 1,000-node forming to about one a second: 246 to
// 276 s over five seeds, against 197 to 219 s at 2,500, with no false
// suspicion either way and 0.6 GB more at the peak (docs/scale.md).
const newsGate = 2500

func startPacer(clk clock, news func() (uint64, bool)) *pacer {
	p := &pacer{done: make(chan struct{}), lag: clk.wall(pacerLag), gate: newsGate * int64(runtime.GOMAXPROCS(0))}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		const period = 20 * time.Millisecond
		const newsEvery = 25 // periods: the news rate over half a second
		timer := time.NewTimer(period)
		defer timer.Stop()
		last, _ := news()
		lastAt := time.Now()
		for tick := 1; ; tick++ {
			set := time.Now()
			timer.Reset(period)
			select {
			case <-p.done:
				return
			case <-timer.C:
				p.late.Store(int64(time.Since(set) - period))
			}
			if tick == 1 || tick%newsEvery == 0 { // a first measure at once, then over half a second
				n, ok := news()
				if !ok {
					p.news.Store(0)
				} else {
					p.news.Store(int64(float64(n-last) / time.Since(lastAt).Seconds()))
					last, lastAt = n, time.Now()
				}
				p.ready.Store(true)
			}
		}
	}()
	return p
}

// wait returns once the pacer has measured, the process keeps time and the
// mesh's gossip is under the gate, or ctx ends.
func (p *pacer) wait(ctx context.Context) error {
	for !p.ready.Load() || time.Duration(p.late.Load()) > p.lag || p.news.Load() > p.gate {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return ctx.Err()
}

func (p *pacer) stop() {
	close(p.done)
	p.wg.Wait()
}

// forming tells ClusterConfig.Forming, at most once a second.
func (c *Cluster) forming(joined int) {
	if c.cfg.Forming == nil {
		return
	}
	now := time.Now().UnixNano()
	last := c.formingAt.Load()
	if now-last < int64(time.Second) || !c.formingAt.CompareAndSwap(last, now) {
		return
	}
	c.cfg.Forming(joined, int(c.full.Load()))
}

// joinBudget paces joins by their cost. The news of a join (memberlist's
// alive message and serf's join intent) is gossiped to every node already
// in, each of which retransmits it a few times, so the i-th join costs
// about i units of CPU, and the whole mesh about N²/2. A reactive pacer
// alone starts joins until the timers run late, by when seconds of their
// gossip are already owed: at 400 nodes that starved the probes into 1,800
// false suspicions while the mesh formed, whose refutations cost as much
// gossip again. So joins start at the rate that keeps the process's CPU,
// per unit as measured so far, under joinShare of its cores.
type joinBudget struct {
	mu      sync.Mutex
	cores   float64
	cpu0    time.Duration
	units   float64
	perUnit time.Duration
	next    time.Time
}

const (
	joinShare      = 0.6
	joinUnitGuess  = 60 * time.Microsecond // CPU per unit until measured
	joinUnitsToFit = 20_000                // units before the measure replaces the guess
)

func newJoinBudget() *joinBudget {
	return &joinBudget{cores: joinShare * float64(runtime.GOMAXPROCS(0)), cpu0: processCPU(),
		perUnit: joinUnitGuess, next: time.Now()}
}

// take waits for the i-th join's turn; a nil budget never waits.
func (b *joinBudget) take(ctx context.Context, i int) error {
	if b == nil {
		return ctx.Err()
	}
	b.mu.Lock()
	if b.units >= joinUnitsToFit {
		b.perUnit = time.Duration(float64(processCPU()-b.cpu0) / b.units)
	}
	now := time.Now()
	at := b.next
	if at.Before(now) {
		at = now
	}
	b.next = at.Add(time.Duration(float64(b.perUnit) * float64(i) / b.cores))
	b.units += float64(i)
	b.mu.Unlock()
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// parallel runs fn(0) … fn(n-1), JoinParallel at a time.
func (c *Cluster) parallel(n int, fn func(k int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < c.cfg.JoinParallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				fn(k)
			}
		}()
	}
	for k := 0; k < n; k++ {
		work <- k
	}
	close(work)
	wg.Wait()
}

// event applies a node's member event to its view.
func (c *Cluster) event(observer int, e gossip.Event) {
	var to gossip.Status
	switch e.Type {
	case gossip.EventMemberJoin, gossip.EventMemberUpdate:
		to = gossip.StatusAlive
	case gossip.EventMemberFailed:
		to = gossip.StatusFailed
	case gossip.EventMemberLeave:
		to = gossip.StatusLeft
	case gossip.EventMemberReap:
		to = gossip.StatusNone
	default:
		return
	}
	now := c.clk.now()
	w := c.watch.Load()
	for _, m := range e.Members {
		target, ok := c.index[m.Name]
		if !ok {
			continue
		}
		if c.setStatus(now, observer, target, to) && w != nil {
			(*w).statusChanged(now, observer, target, to)
		}
	}
}

// setStatus records a status change and keeps the count of full views.
func (c *Cluster) setStatus(at time.Time, observer, target int, to gossip.Status) bool {
	c.tallyMu.RLock()
	v := c.views[observer]
	v.mu.Lock()
	from := v.status[target]
	if from == to {
		v.mu.Unlock()
		c.tallyMu.RUnlock()
		return false
	}
	wasFull := v.alive == c.expCount && v.hash == c.expHash
	v.status[target] = to
	if from == gossip.StatusAlive {
		v.alive--
		v.hash ^= c.keys[target]
	}
	if to == gossip.StatusAlive {
		v.alive++
		v.hash ^= c.keys[target]
	}
	isFull := v.alive == c.expCount && v.hash == c.expHash
	v.mu.Unlock()
	notify, all := false, false
	if c.counted[observer] && wasFull != isFull {
		delta := int64(1)
		if !isFull {
			delta = -1
		}
		notify, all = true, c.full.Add(delta) == int64(c.live)
	}
	c.tallyMu.RUnlock()
	if w := c.watch.Load(); notify && w != nil {
		(*w).fullViews(at, all)
	}
	return true
}

// faultsChanged follows crashes: a crashed node neither counts as an
// observer nor belongs in anyone's full view. It runs with the network's
// lock held.
func (c *Cluster) faultsChanged(at time.Time, f *faultState) {
	c.tallyMu.Lock()
	changed := false
	for i, id := range c.hostID {
		if id >= 0 && f.isCrashed(id) && c.counted[i] {
			c.counted[i] = false
			c.live--
			c.expCount--
			c.expHash ^= c.keys[i]
			changed = true
		}
		// A host back from a crash (Restart): its new node observes again
		// and belongs in every full view.
		if id >= 0 && !f.isCrashed(id) && !c.counted[i] {
			c.counted[i] = true
			c.live++
			c.expCount++
			c.expHash ^= c.keys[i]
			changed = true
		}
	}
	if !changed {
		c.tallyMu.Unlock()
		return
	}
	var full int64
	for i, v := range c.views {
		if !c.counted[i] {
			continue
		}
		v.mu.Lock()
		if v.alive == c.expCount && v.hash == c.expHash {
			full++
		}
		v.mu.Unlock()
	}
	c.full.Store(full)
	all := full == int64(c.live)
	c.tallyMu.Unlock()
	if w := c.watch.Load(); w != nil {
		(*w).fullViews(at, all)
	}
}

// Agreed reports whether every live (not crashed) node sees exactly the
// live nodes alive: one full view.
func (c *Cluster) Agreed() bool {
	c.tallyMu.RLock()
	defer c.tallyMu.RUnlock()
	return c.full.Load() == int64(c.live)
}

// WaitAgreement waits until Agreed, or ctx ends.
func (c *Cluster) WaitAgreement(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !c.Agreed() {
		select {
		case <-ctx.Done():
			c.tallyMu.RLock()
			full, live := c.full.Load(), c.live
			c.tallyMu.RUnlock()
			return fmt.Errorf("%d of %d live nodes see every live node alive (%s): %w", full, live, c.disagreement(), ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// disagreement says how the views that are not full differ from the live
// set, for at most three observers and three members each: "node-17 sees
// node-402 failed, node-99 not at all".
func (c *Cluster) disagreement() string {
	const most = 3
	c.tallyMu.RLock()
	defer c.tallyMu.RUnlock()
	var out []string
	others := 0
	for i, v := range c.views {
		if !c.counted[i] {
			continue
		}
		v.mu.Lock()
		if v.alive == c.expCount && v.hash == c.expHash {
			v.mu.Unlock()
			continue
		}
		if len(out) == most {
			v.mu.Unlock()
			others++
			continue
		}
		var diffs []string
		more := 0
		for j, st := range v.status {
			var d string
			switch {
			case c.counted[j] && st == "":
				d = c.names[j] + " not at all"
			case c.counted[j] && st != gossip.StatusAlive:
				d = fmt.Sprintf("%s %s", c.names[j], st)
			case !c.counted[j] && st == gossip.StatusAlive:
				d = fmt.Sprintf("%s alive, which crashed", c.names[j])
			default:
				continue
			}
			if len(diffs) < most {
				diffs = append(diffs, d)
			} else {
				more++
			}
		}
		v.mu.Unlock()
		if more > 0 {
			diffs = append(diffs, fmt.Sprintf("and %d more", more))
		}
		out = append(out, c.names[i]+" sees "+strings.Join(diffs, ", "))
	}
	if others > 0 {
		out = append(out, fmt.Sprintf("%d more nodes disagree", others))
	}
	return strings.Join(out, "; ")
}

// Names lists the nodes in order: node-0 …
func (c *Cluster) Names() []string { return append([]string(nil), c.names...) }

// Node returns a node by name, or nil.
func (c *Cluster) Node(name string) *gossip.Node {
	c.nodesMu.RLock()
	defer c.nodesMu.RUnlock()
	if i, ok := c.index[name]; ok && i < len(c.nodes) {
		return c.nodes[i]
	}
	return nil
}

// Network is the network the nodes gossip over.
func (c *Cluster) Network() *Network { return c.net }

// Endpoint is a node's gossip endpoint, with its traffic counters.
func (c *Cluster) Endpoint(name string) *Endpoint {
	c.nodesMu.RLock()
	defer c.nodesMu.RUnlock()
	if i, ok := c.index[name]; ok && i < len(c.eps) {
		return c.eps[i]
	}
	return nil
}

// Status is how observer sees target, from observer's member events.
func (c *Cluster) Status(observer, target string) gossip.Status {
	o, ok1 := c.index[observer]
	t, ok2 := c.index[target]
	if !ok1 || !ok2 || o >= len(c.views) {
		return gossip.StatusNone
	}
	v := c.views[o]
	v.mu.Lock()
	defer v.mu.Unlock()
	if s := v.status[t]; s != "" {
		return s
	}
	return gossip.StatusNone
}

// fullView reports whether node i sees exactly the live nodes alive.
func (c *Cluster) fullView(i int) bool {
	c.tallyMu.RLock()
	defer c.tallyMu.RUnlock()
	v := c.views[i]
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.alive == c.expCount && v.hash == c.expHash
}

// healStats sums the nodes' heal prober counters.
func (c *Cluster) healStats() gossip.HealStats {
	c.nodesMu.RLock()
	defer c.nodesMu.RUnlock()
	s := c.retiredHeal
	for _, n := range c.nodes {
		h := n.HealStats()
		s.Pings, s.Answers, s.Joins, s.Renewals = s.Pings+h.Pings, s.Answers+h.Answers, s.Joins+h.Joins, s.Renewals+h.Renewals
	}
	return s
}

// traffic sums what every node's endpoints sent and received, the
// endpoints of nodes since restarted included.
func (c *Cluster) traffic() TrafficStats {
	c.nodesMu.RLock()
	defer c.nodesMu.RUnlock()
	s := c.retiredTraffic
	for _, ep := range c.eps {
		s = s.Add(ep.Stats())
	}
	return s
}

// aliveCount is how many members node i sees alive (itself included).
func (c *Cluster) aliveCount(i int) (int, uint64) {
	v := c.views[i]
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.alive, v.hash
}

// Stop shuts every node down (without leaving) and, when the cluster made
// its network, closes it. Every host is crashed first so that the nodes
// still running do not chase the ones already stopped. It is idempotent and
// waits for the nodes' goroutines.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		c.watch.Store(nil)
		c.net.change(func(f *faultState) error {
			for _, id := range c.hostID {
				if id >= 0 {
					f.crashed = setFlag(f.crashed, id, true)
				}
			}
			return nil
		})
		c.stopInterps()
		c.nodesMu.RLock()
		defer c.nodesMu.RUnlock()
		for _, cancel := range c.cancels {
			cancel()
		}
		for _, stop := range c.stops {
			stop()
		}
		work := make(chan *gossip.Node)
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := range work {
					n.Shutdown()
				}
			}()
		}
		for _, n := range c.nodes {
			work <- n
		}
		close(work)
		wg.Wait()
		for _, ep := range c.eps {
			ep.Shutdown()
		}
		if c.ownNet {
			c.net.Close()
		}
		c.releaseGC()
	})
}

// suspicionLog reads a node's library log for memberlist's own words when
// its probe of another node fails: "Suspect NODE has failed, no acks
// received". That line is the node starting a suspicion; nothing else is
// kept.
type suspicionLog struct {
	c        *Cluster
	observer int
}

const (
	suspectPrefix = "Suspect "
	suspectSuffix = " has failed, no acks received"
)

func (h *suspicionLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *suspicionLog) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	if !strings.HasPrefix(msg, suspectPrefix) || !strings.HasSuffix(msg, suspectSuffix) {
		return nil
	}
	target, ok := h.c.index[msg[len(suspectPrefix):len(msg)-len(suspectSuffix)]]
	if !ok {
		return nil
	}
	if w := h.c.watch.Load(); w != nil {
		(*w).suspected(h.c.clk.now(), h.observer, target)
	}
	return nil
}

func (h *suspicionLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *suspicionLog) WithGroup(string) slog.Handler      { return h }
