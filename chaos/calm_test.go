package chaos

import (
	"testing"
	"time"
)

func TestCalmIsQuietOnlyAfterTheSettleWithNothingInForce(t *testing.T) {
	s := func(n int) time.Duration { return time.Duration(n) * time.Second }
	settle := s(30)
	var c Calm
	if !c.Quiet(s(30), settle) || c.Quiet(s(29), settle) {
		t.Fatal("a run with no fault is quiet once the settle has passed since its start, not before")
	}
	c.FaultStarted()
	c.FaultStarted()
	c.FaultEnded(s(40))
	if c.Quiet(s(100), settle) || c.LastHeal() != 0 {
		t.Fatalf("one of two faults is still in force: quiet %v, last heal %v", c.Quiet(s(100), settle), c.LastHeal())
	}
	c.FaultEnded(s(50))
	if c.LastHeal() != s(50) || c.Quiet(s(79), settle) || !c.Quiet(s(80), settle) {
		t.Fatalf("both over at 50 s: last heal %v, quiet at 79 s %v, at 80 s %v", c.LastHeal(), c.Quiet(s(79), settle), c.Quiet(s(80), settle))
	}
	c.OpStarted()
	if c.Quiet(s(200), settle) {
		t.Fatal("quiet with an operation awaiting its answer")
	}
	c.OpEnded()
	c.Settling(s(210))
	if c.Quiet(s(239), settle) || !c.Quiet(s(240), settle) || c.LastHeal() != s(50) {
		t.Fatal("the settle restarts when the last operation is answered, and that is no heal")
	}
	c.FaultStarted()
	c.HealAll(s(300))
	if c.LastHeal() != s(300) || !c.Quiet(s(330), settle) {
		t.Fatal("HealAll ends every fault")
	}
	c.FaultStarted()
	c.Healed(s(400))
	if c.LastHeal() != s(300) {
		t.Fatal("Healed with a fault in force is no heal")
	}
}

func TestSettledAfterIsTheFirstSnapshotWithOneListedProcessPerRequest(t *testing.T) {
	p := func(name, rid string) Process { return Process{Name: name, RID: rid, Host: "h1"} }
	l := func(name, rid string) Listed { return Listed{Name: name, RID: rid, Host: "h1"} }
	h := History{Agents: []string{"h1", "h2"}, LastHeal: 10 * time.Second, Snapshots: []Snapshot{
		{At: 9 * time.Second, Processes: []Process{p("a", "r")}, Lists: map[string][]Listed{"h1": {l("a", "r")}, "h2": {l("a", "r")}}},
		{At: 11 * time.Second, Processes: []Process{p("a", "r"), p("b", "r")}, Lists: map[string][]Listed{"h1": {l("a", "r"), l("b", "r")}, "h2": {l("a", "r"), l("b", "r")}}},
		{At: 12 * time.Second, Processes: []Process{p("a", "r")}, Lists: map[string][]Listed{"h1": {l("a", "r")}}},
		{At: 13 * time.Second, Processes: []Process{p("a", "r")}, Lists: map[string][]Listed{"h1": {l("a", "r")}, "h2": {}}},
		{At: 14 * time.Second, Processes: []Process{p("a", "r")}, Lists: map[string][]Listed{"h1": {l("a", "r")}, "h2": {l("a", "r")}}},
	}}
	if d, ok := h.SettledAfter(); !ok || d != 4*time.Second {
		t.Fatalf("settled after %v (%v), want 4s: before the heal, two per request, a list missing, one agent listing nothing do not count", d, ok)
	}
	h.Snapshots = h.Snapshots[:4]
	if _, ok := h.SettledAfter(); ok {
		t.Fatal("settled with no snapshot that shows it")
	}
}
