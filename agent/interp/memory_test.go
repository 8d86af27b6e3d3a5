package interp

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
)

func TestNextGenIsAboveEveryKnownPlacement(t *testing.T) {
	for _, tc := range []struct {
		known, want int
	}{
		{NoGen, 0}, // never placed: the first generation
		{0, 1},     // the first placement is known, failed or alive
		{1, 2},
		{41, 42},
	} {
		if got := NextGen(tc.known); got != tc.want {
			t.Errorf("NextGen(%d) = %d, want %d", tc.known, got, tc.want)
		}
	}
}

// TestTheAnswerStandsWhateverOrderTheViewsMerge is the property behind
// "the answer stands": a request placed again and again, each placement
// taking NextGen of what its placer knew, and every placer having seen the
// placement before it. Whatever subset of those copies comes back alive,
// and in whatever order a node's view learns of them, the duplicate rule
// keeps the newest: the one the last answer named.
func TestTheAnswerStandsWhateverOrderTheViewsMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 2000 {
		m := newMemory()
		t0 := time.Unix(1000, 0)
		var copies []Instance
		for p := range 1 + rng.IntN(6) {
			gen := NextGen(m.genOf("r"))
			in := inst(InterpreterNameForTest(p), "r", gen, alive, gossip.Status("h"+string(rune('0'+rng.IntN(5)))), alive)
			copies = append(copies, in)
			// The next placer saw this one, alive or failed.
			seen := in
			if rng.IntN(2) == 0 {
				seen.Status, seen.HostStatus = failed, failed
			}
			m.observe([]Instance{seen}, t0.Add(time.Duration(p)*time.Minute))
		}
		newest := copies[len(copies)-1]
		// Some older copies come back, the newest among them, in any order.
		view := []Instance{newest}
		for _, c := range copies[:len(copies)-1] {
			if rng.IntN(2) == 0 {
				view = append(view, c)
			}
		}
		rng.Shuffle(len(view), func(i, j int) { view[i], view[j] = view[j], view[i] })
		if len(view) == 1 {
			continue
		}
		ds := Duplicates(view)
		if len(ds) != 1 || ds[0].Winner.Name != newest.Name {
			t.Fatalf("round %d: copies %v, view %v: duplicates %+v; want the newest, %s, to win", round, names(copies), names(view), ds, newest.Name)
		}
	}
}

func InterpreterNameForTest(i int) string { return "demo-r-" + string(rune('a'+i)) }

func names(view []Instance) []string {
	var out []string
	for _, in := range view {
		out = append(out, in.Name)
	}
	return out
}

// TestTheAnswerStandsAfterTheReapForgotTheStaleCopy: a partition outlasts
// the reap window, so the majority's member list no longer shows the
// minority's copy when a keyed spawn places the key again. The memory
// still knows its generation, so the new placement outranks it.
func TestTheAnswerStandsAfterTheReapForgotTheStaleCopy(t *testing.T) {
	m := newMemory()
	t0 := time.Unix(1000, 0)
	stale := inst("demo-r-1", "r", 0, alive, "h5", alive)
	stale.Tags.Restart = "" // no policy: nothing to re-place, only an order to keep
	m.observe([]Instance{stale}, t0)
	stale.Status, stale.HostStatus = failed, failed
	m.observe([]Instance{stale}, t0.Add(5*time.Second))
	m.observe(nil, t0.Add(2*time.Minute)) // reaped
	gen := NextGen(m.genOf("r"))
	if gen != 1 {
		t.Fatalf("the placement after the reap takes generation %d, want 1", gen)
	}
	fresh := inst("demo-r-2", "r", gen, alive, "h1", alive)
	stale.Status, stale.HostStatus = alive, alive // the heal
	ds := Duplicates([]Instance{stale, fresh})
	if len(ds) != 1 || ds[0].Winner.Name != fresh.Name {
		t.Fatalf("after the heal: %+v, want %s to win", ds, fresh.Name)
	}
	// A day without news forgets the request.
	m.observe(nil, t0.Add(genKeep+3*time.Minute))
	if g := m.genOf("r"); g != NoGen {
		t.Errorf("a day later the memory still holds generation %d", g)
	}
}

// TestNothingLostWhenTheReapForgetsAnOrphan: an on-failure interpreter
// failed with its host while this side had no majority; the reap window
// passed, and the member list forgot it. The memory keeps the orphan, so
// once a majority is back the owner re-places it; a newer generation, or
// the same one back alive, resolves it.
func TestNothingLostWhenTheReapForgetsAnOrphan(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name      string
		resolving *Instance
	}{
		{"no news: still an orphan", nil},
		{"re-placed one generation up", ptr(inst("demo-r-2", "r", 1, alive, "h2", alive))},
		{"the same interpreter back alive", ptr(inst("demo-r-1", "r", 0, alive, "h5", alive))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemory()
			lost := inst("demo-r-1", "r", 0, failed, "h5", failed)
			m.observe([]Instance{lost}, t0)
			members := []gossip.Member{{Name: "h1", Status: alive}}
			// reaped: neither the interpreter nor its host is listed now
			view := m.withOrphans(nil, members)
			if os := Orphans(view); len(os) != 1 || os[0].Last.Name != lost.Name || os[0].NextGen != 1 {
				t.Fatalf("orphans after the reap: %+v, want %s at generation 1", os, lost.Name)
			}
			if tc.resolving == nil {
				return
			}
			m.observe([]Instance{*tc.resolving}, t0.Add(time.Minute))
			if os := Orphans(m.withOrphans(nil, members)); len(os) != 0 {
				t.Fatalf("orphans once resolved: %+v, want none", os)
			}
		})
	}
}

// TestNothingLostWhenAHostComesBackWithoutItsInterpreters: an on-failure
// interpreter died with its host, and the host came back within seconds
// without its data dir: it never learns of the interpreter (a fresh
// member hears nothing of members already failed) and never restarts
// it, and its host is alive, so the interpreter is no orphan of a failed
// host. The mesh re-places it once it stayed failed for stuckAfter, soon
// enough that the election and the start fit in T_settle (30 s). Before,
// stuckAfter was a minute, and the request ran nowhere for that long
// (chaos seeds 225 and 288: nothing-lost).
func TestNothingLostWhenAHostComesBackWithoutItsInterpreters(t *testing.T) {
	t0 := time.Unix(1000, 0)
	m := newMemory()
	lost := inst("demo-r-1", "r", 0, failed, "h5", failed)
	m.observe([]Instance{lost}, t0)
	back := []gossip.Member{{Name: "h1", Status: alive}, {Name: "h5", Status: alive}}
	if os := m.stuck(back, t0.Add(5*time.Second)); len(os) != 0 {
		t.Fatalf("5 s after the failure: %+v, want none yet (its host may restart it)", os)
	}
	os := m.stuck(back, t0.Add(20*time.Second))
	if len(os) != 1 || os[0].Last.Name != lost.Name || os[0].NextGen != 1 {
		t.Fatalf("20 s after the failure, its host alive: %+v, want %s to re-place at generation 1", os, lost.Name)
	}
}

func ptr[T any](v T) *T { return &v }

func TestRestartedByIsNoDuplicate(t *testing.T) {
	dead := inst("demo-r-1", "r", 0, alive, "h1", alive)
	restarted := inst("demo-r-2", "r", 1, alive, "h1", alive)
	restarted.Tags.Restarts = 1
	if !restartedBy(restarted, dead) {
		t.Error("a host's restart of its own dead supervisor's request counts as a duplicate")
	}
	elsewhere := restarted
	elsewhere.Host, elsewhere.Tags.Host = "h2", "h2"
	if restartedBy(elsewhere, dead) {
		t.Error("a copy on another host is not a restart")
	}
	if ds := Duplicates([]Instance{dead, restarted}); len(ds) != 1 || ds[0].Winner.Name != restarted.Name {
		t.Errorf("the restart must win over the dead one's member: %+v", ds)
	}
}

func TestHolderAndKnownGenFromBids(t *testing.T) {
	bids := []placement.Bid{
		{Node: "a"},
		{Node: "b", Holds: "demo-r-2", HoldsGen: 1, Known: true, KnownGen: 1},
		{Node: "c", Holds: "demo-r-1", HoldsGen: 0, Known: true, KnownGen: 3},
	}
	h, ok := holderOf(bids)
	if !ok || h.Node != "b" {
		t.Errorf("holder %v %v, want b (the newest generation)", h.Node, ok)
	}
	if g, ok := knownGen(bids); !ok || g != 3 {
		t.Errorf("known generation %d %v, want 3", g, ok)
	}
	if _, ok := knownGen(bids[:1]); ok {
		t.Error("a bid that saw nothing reports a generation")
	}
}

func TestKeyedAnswerFitsAQueryResponse(t *testing.T) {
	a := keyedAnswer{Name: strings.Repeat("n", 80), Node: "server-1", Code: rpc.SpawnRefused, Error: strings.Repeat("e", 3000),
		Attempts: []string{strings.Repeat("a", 500), strings.Repeat("b", 500)}}
	if data := encodeKeyedAnswer(a); len(data) > maxAnswerBytes {
		t.Fatalf("encoded answer is %d bytes, over %d", len(data), maxAnswerBytes)
	}
}
