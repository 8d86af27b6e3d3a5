package interp

import (
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/state"
)

// TestAnInterpreterStopsOnceItsOwnerIsGoneForItsLease: a Jupyter server's
// host asked this server for a kernel with a 30 s owner lease, then died
// with its guard. The kernel stops once its owner has been failed for 30 s,
// and not before; an owner back within its lease starts the count over;
// an interpreter without a lease runs on whatever its asker does. Before,
// nothing stopped a kernel whose client's whole host died (issue 30).
func TestAnInterpreterStopsOnceItsOwnerIsGoneForItsLease(t *testing.T) {
	l, procs := serverWithFakeSupervisors(t)
	kernel := l.startInterpreter(spawnOrder{RequestID: "r1", Kind: BuiltinKind, Asker: "c1", Lease: 30 * time.Second})
	plain := l.startInterpreter(spawnOrder{RequestID: "r2", Kind: BuiltinKind, Asker: "c1"})
	if kernel.Refusal != "" || plain.Refusal != "" {
		t.Fatalf("not started: %+v, %+v", kernel, plain)
	}
	server := gossip.Member{Name: "s1", Status: gossip.StatusAlive, Tags: gossip.Tags{Role: gossip.RoleServer}.Map()}
	owner := func(st gossip.Status) []gossip.Member {
		return []gossip.Member{server, {Name: "c1", Status: st, Tags: gossip.Tags{Role: gossip.RoleServer}.Map()}}
	}
	clock := l.clock.(*state.FakeClock)
	look := func(st gossip.Status, after time.Duration) int {
		clock.Advance(after)
		l.stopOwnerless(owner(st))
		return len(procs.stops())
	}
	if n := look(gossip.StatusFailed, 0); n != 0 {
		t.Fatalf("stopped %d at the owner's failure; the lease runs first", n)
	}
	if n := look(gossip.StatusFailed, 20*time.Second); n != 0 {
		t.Fatalf("stopped %d 20 s into a 30 s lease", n)
	}
	if n := look(gossip.StatusAlive, time.Second); n != 0 {
		t.Fatalf("stopped %d with the owner back", n)
	}
	if n := look(gossip.StatusFailed, 0); n != 0 {
		t.Fatalf("stopped %d at the owner's second failure", n)
	}
	if n := look(gossip.StatusFailed, 20*time.Second); n != 0 {
		t.Fatalf("stopped %d 20 s after the owner's second failure: its return starts the lease over", n)
	}
	if n := look(gossip.StatusLeft, 10*time.Second); n != 1 {
		t.Fatalf("30 s after the owner's second failure, %d interpreters stopped, want the leased one", n)
	}
	if n := look(gossip.StatusLeft, time.Hour); n != 1 {
		t.Fatalf("an interpreter without a lease was stopped for its asker's absence (%d stops)", n)
	}
	l.regMu.Lock()
	_, stillListed := l.registry.Get(plain.Name)
	l.regMu.Unlock()
	if !stillListed {
		t.Errorf("%s, without a lease, is no longer registered", plain.Name)
	}
}
