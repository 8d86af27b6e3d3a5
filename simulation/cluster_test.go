package simulation

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meshagent/agent/gossip"
)

// The tests here run real gossip nodes in real time, so they assert what
// happens, never how fast: every wait is a bounded poll. They use the local
// profile, whose timers are the shortest of memberlist's.

func startTestCluster(t *testing.T, nodes int) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := StartCluster(ctx, ClusterConfig{Nodes: nodes, Profile: "local", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// failures records every member-failed verdict the nodes reach.
type failures struct {
	mu   sync.Mutex
	seen [][2]int
}

func (f *failures) statusChanged(_ time.Time, observer, target int, to gossip.Status) {
	if to == gossip.StatusFailed {
		f.mu.Lock()
		f.seen = append(f.seen, [2]int{observer, target})
		f.mu.Unlock()
	}
}
func (f *failures) suspected(time.Time, int, int) {}
func (f *failures) fullViews(time.Time, bool)     {}
func (f *failures) list() [][2]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][2]int(nil), f.seen...)
}

func TestPartitionEachSideSeesTheOtherFailedAndHealsToOneView(t *testing.T) {
	t.Parallel()
	c := startTestCluster(t, 10)
	rec := &failures{}
	var w watcher = rec
	c.watch.Store(&w)

	names := c.Names()
	start := time.Now()
	sides := [][]string{names[:6], names[6:]}
	if err := c.Network().Partition(sides...); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "each side sees the whole other side failed", func() bool {
		for s, side := range sides {
			for _, o := range side {
				for _, x := range sides[1-s] {
					if c.Status(o, x) != gossip.StatusFailed {
						return false
					}
				}
			}
		}
		return true
	})
	side := map[int]int{}
	for s, group := range sides {
		for _, name := range group {
			side[c.index[name]] = s
		}
	}
	for _, f := range rec.list() {
		if side[f[0]] == side[f[1]] {
			t.Errorf("%s saw %s, on its own side, failed", names[f[0]], names[f[1]])
		}
	}

	t.Logf("partition seen after %v", time.Since(start))
	if err := c.Network().Heal(); err != nil {
		t.Fatal(err)
	}
	defer func() { t.Logf("healed after %v", time.Since(start)) }()
	// serf retries failed members every 30 s: that bounds the heal.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.WaitAgreement(ctx); err != nil {
		t.Fatalf("after the heal: %v", err)
	}
	for _, o := range names {
		for _, m := range c.Node(o).Members() {
			if m.Status != gossip.StatusAlive {
				t.Errorf("after the heal %s lists %s as %s", o, m.Name, m.Status)
			}
		}
	}
}

func TestACrashedNodeIsFailedEverywhere(t *testing.T) {
	t.Parallel()
	c := startTestCluster(t, 8)
	names := c.Names()
	victim := names[3]
	if err := c.Network().Crash(victim); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, victim+" failed on every other node", func() bool {
		for _, o := range names {
			if o == victim {
				continue
			}
			failed := false
			for _, m := range c.Node(o).Members() {
				failed = failed || m.Name == victim && m.Status == gossip.StatusFailed
			}
			if !failed {
				return false
			}
		}
		return true
	})
	if !c.Agreed() {
		// The crashed node leaves the full view: the others agree again.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.WaitAgreement(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// The run uses fast, not local: local retransmits each message twice
// (RetransmitMult 2), so in 5 nodes a death verdict can miss an observer,
// whose own unconfirmed suspicion then lasts up to 6 × 3 s, past the
// schedule's 16 s after the crash (one run in four once the schedule began
// after the forming's gossip drained). fast's unconfirmed suspicion ends
// within 9 s.
func TestRunReportsACrashOnBothDetectors(t *testing.T) {
	t.Parallel()
	r, err := Run(context.Background(), RunConfig{Scenario: ScenarioCrash, Nodes: 5, Seed: 3, Profile: "fast"})
	if err != nil {
		t.Fatal(err)
	}
	if r.DetectionP99 == nil || r.Undetected != 0 {
		t.Errorf("gossip: detection p99 %v, %d observers never saw the crash", r.DetectionP99, r.Undetected)
	}
	if r.Baseline.DetectionP99 == nil {
		t.Error("the heartbeat monitor never saw the crash")
	}
	if r.FalseFailures != 0 || r.Baseline.FalseFailures != 0 {
		t.Errorf("false failures with no loss: gossip %d, baseline %d (%v)", r.FalseFailures, r.Baseline.FalseFailures, r.FalseFailureExamples)
	}
	if r.BytesPerNodePerS <= 0 || r.Baseline.BytesPerNodePerS <= 0 || len(r.Timeline) == 0 || len(r.Faults) != 1 {
		t.Errorf("empty figures: %+v", r)
	}
}

func TestAFormedMeshDrainsTheNewsOfItsForming(t *testing.T) {
	c := startTestCluster(t, 12)
	formed, ok := c.net.NewsPackets()
	if !ok || formed == 0 {
		t.Fatalf("forming 12 nodes sent %d gossip packets (readable: %v), want some", formed, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var rates []float64
	if _, err := drain(ctx, c, func(p Progress) { rates = append(rates, p.News) }); err != nil {
		t.Fatal(err)
	}
	if len(rates) < 2 || rates[len(rates)-1] >= QuietNewsRate || rates[len(rates)-2] >= QuietNewsRate {
		t.Fatalf("drain returned after rates %v, want the last two under %g", rates, QuietNewsRate)
	}
	// Quiet stays quiet: no news is made while no fault strikes.
	before, _ := c.net.NewsPackets()
	time.Sleep(2 * time.Second) // a window to count over, not a wait for gossip
	after, _ := c.net.NewsPackets()
	if rate := float64(after-before) / 12 / 2; rate >= QuietNewsRate {
		t.Errorf("a drained, idle mesh sends %.2f gossip packets a node a second, want under %g", rate, QuietNewsRate)
	}
}

func TestJoinsWaitWhileTheMeshGossipsHard(t *testing.T) {
	var sent atomic.Uint64
	p := startPacer(newClock(1), func() (uint64, bool) { return sent.Load(), true })
	defer p.stop()
	busy := make(chan struct{})
	go func() { // ten times the gate's rate, as a busy mesh's gossip
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-busy:
				return
			case <-tick.C:
				sent.Add(uint64(p.gate) / 10)
			}
		}
	}()
	eventually(t, 5*time.Second, "the pacer to see the gossip", func() bool { return p.news.Load() > p.gate })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := p.wait(ctx); err == nil {
		t.Fatalf("a join went ahead while the mesh sent %d gossip packets a second (gate %d)", p.news.Load(), p.gate)
	}
	close(busy)
	eventually(t, 5*time.Second, "the pacer to see the gossip stop", func() bool { return p.news.Load() == 0 })
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	if err := p.wait(ctx2); err != nil {
		t.Fatalf("a join still waited once the gossip stopped: %v", err)
	}
}

func TestAFormingThatStopsJoiningEndsWithAClearError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	formStalled(ctx, t, false, "dilation 1", "--dilation", "to 2")
	if ctx.Err() != nil {
		t.Errorf("the stall was not told before the caller's own deadline (%v)", time.Since(start))
	}
}

// formStalled forms 5 nodes whose gossip, as the pacer reads it, runs far
// over the gate for good (the state a starved forming locks itself into),
// with a join stall of 2 s, and checks the forming's error: a stall that
// says how far the joins went, and each of want.
func formStalled(ctx context.Context, t *testing.T, virtual bool, want ...string) error {
	t.Helper()
	var sent atomic.Uint64
	busy := func() (uint64, bool) { return sent.Add(1 << 30), true }
	c, err := StartCluster(ctx, ClusterConfig{Nodes: 5, Profile: "local", Seed: 1, JoinStall: 2 * time.Second, news: busy,
		VirtualTime: virtual})
	if err == nil {
		c.Stop()
		t.Fatal("a forming whose joins never started returned a cluster")
	}
	if !errors.Is(err, ErrFormingStalled) {
		t.Fatalf("err = %v, want ErrFormingStalled", err)
	}
	t.Log(err)
	for _, w := range append([]string{"1 of 5 nodes joined", "none for 2s"}, want...) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	return err
}

func TestAnInterruptedFormingDoesNotWaitForAJoinInFlight(t *testing.T) {
	// Dilated 50, a join whose target never answers waits out memberlist's
	// TCP timeout 50 times over, for each of its three tries: many minutes.
	nw, err := NewNetwork(NetworkConfig{Seed: 1, Dilation: MaxDilation, EstimateCompression: true})
	if err != nil {
		t.Fatal(err)
	}
	defer nw.Close()
	var first string
	var joiner atomic.Pointer[Endpoint]
	prepare := func(name string, n *gossip.Node) (func(), error) {
		if first == "" {
			first = name
			return nil, nw.Pause(name) // its traffic is held: a push/pull to it gets no answer
		}
		joiner.Store(nw.lookup(n.Addr()))
		return nil, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := StartCluster(ctx, ClusterConfig{Nodes: 2, Seed: 1, Network: nw, Prepare: prepare})
		if c != nil {
			c.Stop()
		}
		done <- err
	}()
	// The join is in flight once the second node's push/pull is on the wire.
	inFlight := false
	for deadline := time.Now().Add(30 * time.Second); !inFlight && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ep := joiner.Load()
		inFlight = ep != nil && ep.Stats().StreamBytesSent > 0
	}
	if !inFlight {
		t.Fatal("the second node's join never sent its push/pull")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("30 s after the interrupt the forming still waited for its join (whose own timeout is 500 s)")
	}
}

func TestAJoinWatchTellsAStallOnlyAfterItsLimit(t *testing.T) {
	w := newJoinWatch(time.Minute)
	now := time.Now()
	if w.stalled(now.Add(59 * time.Second)) {
		t.Error("stalled 59 s after it began, limit a minute")
	}
	if !w.stalled(now.Add(61 * time.Second)) {
		t.Error("not stalled 61 s after it began, limit a minute")
	}
	w.joined(now.Add(30 * time.Second))
	if w.stalled(now.Add(61 * time.Second)) {
		t.Error("stalled 31 s after a join, limit a minute")
	}
}

// A mesh that does not agree is described by who sees what: the error of a
// run that stopped agreeing names the node and the member, not only counts.
func TestDisagreementNamesTheViewsThatDiffer(t *testing.T) {
	names := []string{"node-0", "node-1", "node-2", "node-3"}
	c := &Cluster{names: names, counted: []bool{true, true, true, false}, live: 3}
	c.keys = []uint64{1, 2, 4, 8}
	c.expCount, c.expHash = 3, 1|2|4
	status := func(s ...gossip.Status) *view {
		v := &view{status: s}
		for i, st := range s {
			if st == gossip.StatusAlive {
				v.alive++
				v.hash ^= c.keys[i]
			}
		}
		return v
	}
	a, f := gossip.StatusAlive, gossip.StatusFailed
	c.views = []*view{
		status(a, a, a, f),  // full: node-3 crashed, and node-0 saw it fail
		status(a, a, "", a), // no node-2, and node-3 still alive
		status(a, f, a, a),  // node-1 failed
		status(a, a, a, a),  // crashed: its view does not count
	}
	got := c.disagreement()
	want := "node-1 sees node-2 not at all, node-3 alive, which crashed; node-2 sees node-1 failed, node-3 alive, which crashed"
	if got != want {
		t.Errorf("disagreement:\n%s\nwant:\n%s", got, want)
	}
}

// A repair round whose repairs wait on a shut news gate ends as soon as the
// mesh agrees by its own gossip, without repairing; with the gate open, its
// repairs run.
func TestARepairRoundEndsWhenTheMeshAgreesWhileItsRepairsWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		c := &Cluster{names: []string{"node-0", "node-1"}, counted: []bool{true, true}, live: 2,
			keys: []uint64{1, 2}, expCount: 2, expHash: 1 | 2, cfg: ClusterConfig{JoinParallel: 4}}
		c.views = []*view{{status: make([]gossip.Status, 2)}, {status: make([]gossip.Status, 2)}}
		c.setStatus(now, 0, 0, gossip.StatusAlive)
		c.setStatus(now, 0, 1, gossip.StatusAlive)
		c.setStatus(now, 1, 1, gossip.StatusAlive) // node-1 does not see node-0 yet

		var sent atomic.Uint64
		shut := startPacer(newClock(1), func() (uint64, bool) { return sent.Add(1 << 30), true })
		defer shut.stop()
		var joins atomic.Int32
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.repair(context.Background(), shut, []int{1}, func(int) { joins.Add(1) })
		}()
		time.Sleep(time.Minute)
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("the round ended while the views differed and its repair still waited on the gate")
		default:
		}
		c.setStatus(time.Now(), 1, 0, gossip.StatusAlive) // the gossip reaches node-1: one view
		time.Sleep(time.Second)
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Fatal("the round still waited a second after the mesh agreed")
		}
		if n := joins.Load(); n != 0 {
			t.Errorf("%d repairs ran through a shut gate", n)
		}

		c.setStatus(time.Now(), 1, 0, gossip.StatusFailed)
		open := startPacer(newClock(1), func() (uint64, bool) { return 0, true })
		defer open.stop()
		c.repair(context.Background(), open, []int{1}, func(int) {
			joins.Add(1)
			c.setStatus(time.Now(), 1, 0, gossip.StatusAlive)
		})
		if n := joins.Load(); n != 1 {
			t.Errorf("with the gate open, %d repairs ran, want 1", n)
		}
	})
}

func TestTheMemoryLimitGrowsWithTheMeshWithinItsBounds(t *testing.T) {
	const gib = 1 << 30
	none := int64(math.MaxInt64)
	for _, c := range []struct {
		nodes          int
		prev, physical int64
		want           int64
	}{
		{100, none, 0, memBase + 100*memPerNode},
		{1000, none, 0, memBase + 1000*memPerNode}, // 3.44 GiB
		{1137, none, 0, memBase + 1137*memPerNode},
		{1138, none, 0, 1138 * memPerLarge},
		{2000, none, 0, 2000 * memPerLarge}, // 6.64 GiB
		{2000, 4 * gib, 0, 4 * gib},         // GOMEMLIMIT or the caller's limit is lower
		{2000, none, 8 * gib, 4 * gib},      // half the machine
	} {
		if got := memoryLimit(c.nodes, c.prev, c.physical); got != c.want {
			t.Errorf("memoryLimit(%d, %d, %d) = %.2f GiB, want %.2f GiB", c.nodes, c.prev, c.physical,
				float64(got)/gib, float64(c.want)/gib)
		}
	}
	if got := float64(memoryLimit(2000, none, 0)) / gib; got < 6.6 || got > 6.7 {
		t.Errorf("at 2,000 nodes the limit is %.2f GiB, want 6.64", got)
	}
}
