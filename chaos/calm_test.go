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
