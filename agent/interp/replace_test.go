package interp

import (
	"testing"
	"time"
)

var testReplaceBackoff = Backoff{Attempts: 3, Window: time.Minute, Delay: time.Second, MaxDelay: 4 * time.Second}

func orphanOf(rid string, gen int) Orphan {
	return Orphan{Last: inst("demo-"+rid, rid, gen, failed, "h5", failed), NextGen: gen + 1}
}

func mine(string) bool { return true }

func dueRIDs(r *replacer, orphans []Orphan, ours func(string) bool, now time.Time) []string {
	var out []string
	for _, o := range r.due(orphans, ours, now) {
		out = append(out, o.Last.Tags.RequestID)
	}
	return out
}

// TestReplacerPlacesOnceWhileItsViewLags: the owner placed generation 1 and
// its view has not heard of it yet, so the request still looks orphaned. It
// must not place it again then (the test bed once saw two re-placements of
// one request, 2.5 s apart), only when the grace has passed without news.
func TestReplacerPlacesOnceWhileItsViewLags(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := newReplacer(testReplaceBackoff, 30*time.Second)
	stale := []Orphan{orphanOf("r", 0)}
	if got := dueRIDs(r, stale, mine, t0); len(got) != 1 {
		t.Fatalf("first sight of the orphan: %v, want r", got)
	}
	if got := dueRIDs(r, stale, mine, t0.Add(time.Second)); len(got) != 0 {
		t.Fatalf("while the attempt is under way: %v", got)
	}
	r.done("r", 1, true, t0.Add(2*time.Second))
	for _, at := range []time.Duration{3 * time.Second, 5 * time.Second, 31 * time.Second} {
		if got := dueRIDs(r, stale, mine, t0.Add(at)); len(got) != 0 {
			t.Fatalf("at +%s, with generation 1 placed and not yet in the view: %v", at, got)
		}
	}
	if got := dueRIDs(r, stale, mine, t0.Add(33*time.Second)); len(got) != 1 {
		t.Fatalf("the grace passed and the view never showed generation 1: %v, want a new attempt", got)
	}
}

// TestReplacerPlacesTheNextGenerationAtOnce: once the view shows the
// re-placed interpreter failed with its host too, the next generation is
// due without waiting for the grace.
func TestReplacerPlacesTheNextGenerationAtOnce(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := newReplacer(testReplaceBackoff, 30*time.Second)
	r.due([]Orphan{orphanOf("r", 0)}, mine, t0)
	r.done("r", 1, true, t0)
	if got := dueRIDs(r, []Orphan{orphanOf("r", 1)}, mine, t0.Add(time.Second)); len(got) != 1 {
		t.Fatalf("generation 1 failed too: %v, want generation 2 placed", got)
	}
}

// TestReplacerBacksOffAfterFailures: a failed attempt is retried after
// the backoff's delay, doubling, and not at all once the window's attempts
// are spent.
func TestReplacerBacksOffAfterFailures(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := newReplacer(testReplaceBackoff, 30*time.Second)
	o := []Orphan{orphanOf("r", 0)}
	now := t0
	for i, wait := range []time.Duration{time.Second, 2 * time.Second} {
		if got := dueRIDs(r, o, mine, now); len(got) != 1 {
			t.Fatalf("attempt %d at +%s: %v", i+1, now.Sub(t0), got)
		}
		r.done("r", 1, false, now)
		if got := dueRIDs(r, o, mine, now.Add(wait-time.Millisecond)); len(got) != 0 {
			t.Fatalf("retry %d before its %s delay: %v", i+1, wait, got)
		}
		now = now.Add(wait)
	}
	if got := dueRIDs(r, o, mine, now); len(got) != 1 {
		t.Fatalf("third attempt: %v", got)
	}
	r.done("r", 1, false, now)
	if !r.spent("r", now) {
		t.Fatal("three failures of three allowed, and not spent")
	}
	if got := dueRIDs(r, o, mine, now.Add(10*time.Second)); len(got) != 0 {
		t.Fatalf("a fourth attempt within the window: %v", got)
	}
	if got := dueRIDs(r, o, mine, t0.Add(61*time.Second)); len(got) != 1 {
		t.Fatalf("after the first attempt left the window: %v", got)
	}
}

// TestReplacerSpendsNothingOnAnAttemptThatDidNotTry: an attempt that
// another agent's election of the request kept from placing spends none
// of the request's tries, however often: the owner looks again shortly.
func TestReplacerSpendsNothingOnAnAttemptThatDidNotTry(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := newReplacer(testReplaceBackoff, 30*time.Second)
	o := []Orphan{orphanOf("r", 0)}
	now := t0
	for i := range 10 {
		if got := dueRIDs(r, o, mine, now); len(got) != 1 {
			t.Fatalf("look %d at +%s: %v", i+1, now.Sub(t0), got)
		}
		r.done("r", notNow, false, now)
		if got := dueRIDs(r, o, mine, now.Add(notNowWait/2-time.Millisecond)); len(got) != 0 {
			t.Fatalf("look %d again before %s: %v", i+1, notNowWait/2, got)
		}
		now = now.Add(notNowWait * 3 / 2)
	}
	if r.spent("r", now) {
		t.Fatal("ten attempts that did not try spent the request's tries")
	}
}

// TestReplacerActsOnlyAsOwnerAndForgets: another server's orphan is left to
// it, and a request that is no orphan any more is forgotten once its
// attempts have left the window.
func TestReplacerActsOnlyAsOwnerAndForgets(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := newReplacer(testReplaceBackoff, 30*time.Second)
	notMine := func(rid string) bool { return rid == "mine" }
	if got := dueRIDs(r, []Orphan{orphanOf("theirs", 0), orphanOf("mine", 0)}, notMine, t0); len(got) != 1 || got[0] != "mine" {
		t.Fatalf("due %v, want only the request this node owns", got)
	}
	r.done("mine", 1, true, t0)
	r.due(nil, mine, t0.Add(time.Second))
	if len(r.reqs) != 1 {
		t.Fatalf("forgot a request whose attempt is within the window: %d kept", len(r.reqs))
	}
	r.due(nil, mine, t0.Add(time.Minute))
	if len(r.reqs) != 0 {
		t.Fatalf("%d requests kept after their attempts left the window", len(r.reqs))
	}
}
