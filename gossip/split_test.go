package gossip

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// falseFailures records, from the moment arm is called, every member-failed
// event in which a node fails a member of its own side.
type falseFailures struct {
	mu    sync.Mutex
	armed bool
	seen  []string
}

func watchOwnSides(nodes map[string]*Node, sides ...[]string) *falseFailures {
	f := &falseFailures{}
	for _, side := range sides {
		for _, name := range side {
			own := side
			nodes[name].Subscribe(func(e Event) {
				if e.Type != EventMemberFailed {
					return
				}
				f.mu.Lock()
				defer f.mu.Unlock()
				for _, m := range e.Members {
					if f.armed && slices.Contains(own, m.Name) {
						f.seen = append(f.seen, name+" failed "+m.Name)
					}
				}
			})
		}
	}
	return f
}

func (f *falseFailures) arm() {
	f.mu.Lock()
	f.armed = true
	f.mu.Unlock()
}

func (f *falseFailures) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

func TestAHealedSplitFailsNobodyOnItsOwnSide(t *testing.T) {
	all := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	left, right := all[:6], all[6:]
	c, nodes := startCutMesh(t, 0, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	ff := watchOwnSides(nodes, left, right)

	c.hold()
	c.cut(left, right)
	c.cut(right, left)
	waitLong(t, "each side to see the other failed", 30*time.Second, func() bool {
		return sees(nodes, left, right, StatusFailed) && sees(nodes, right, left, StatusFailed)
	})
	// Each node renews its incarnation on seeing the split. The heal comes
	// once all have, and brings every packet the cut dropped, the death
	// verdicts among them, late: on a large mesh a heal meets verdicts
	// still being gossiped for tens of seconds after the last failure.
	waitLong(t, "every node to renew its incarnation", 20*time.Second, func() bool {
		for _, n := range nodes {
			if n.HealStats().Renewals == 0 {
				return false
			}
		}
		return true
	})
	// Gossip brings a renewal to the node's side within a few rounds, but
	// now and then misses one member of a small side (two thirds of its
	// transmissions go to the failed side, gossiped to the dead): a push/
	// pull between every two nodes of a side makes sure each knows the
	// others' renewals, so that only the rule is tested.
	for _, side := range [][]string{left, right} {
		for _, a := range side {
			for _, b := range side {
				if a != b {
					if err := nodes[a].Sync(b); err != nil {
						t.Fatalf("%s syncs with %s: %v", a, b, err)
					}
				}
			}
		}
	}
	ff.arm()
	c.heal()
	if n := c.replay(); n == 0 {
		t.Fatal("the cut held no packet to deliver late")
	}
	waitLong(t, "one view after the heal", 30*time.Second, func() bool { return sees(nodes, all, all, StatusAlive) })
	if got := ff.list(); len(got) > 0 {
		t.Errorf("after the heal, %d failures of a member by its own side: %v", len(got), got)
	}
}

func TestIsSplit(t *testing.T) {
	for _, c := range []struct {
		recent, members int
		want            bool
	}{
		{1, 5, false},     // a host crashed in a test bed
		{2, 5, true},      // a 3/2 split, seen from the 3
		{3, 5, true},      // the same split, seen from the 2
		{3, 100, false},   // the crash scenario's three crashes
		{10, 100, true},   // a tenth of the mesh
		{99, 1000, false}, // a rack of a large mesh
		{400, 1000, true}, // a 60/40 split, seen from the 60
	} {
		if got := isSplit(c.recent, c.members); got != c.want {
			t.Errorf("isSplit(%d failed of %d members) = %v, want %v", c.recent, c.members, got, c.want)
		}
	}
}

func TestOneCrashRenewsNothingTwoDo(t *testing.T) {
	all := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	c, nodes := startCutMesh(t, -1, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	h := healerFor(nodes["a"])
	h.splitWindow = splitWindow
	cutOff := func(name string) {
		t.Helper()
		c.cut(without(all, name), []string{name})
		c.cut([]string{name}, without(all, name))
		waitLong(t, name+" failed in a's prober", 30*time.Second, func() bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			_, ok := h.failed[name]
			return ok
		})
	}

	cutOff("j")
	for range 20 {
		h.renewOnSplit(time.Now())
	}
	if !h.lastRenewal.IsZero() {
		t.Fatalf("one member of ten failed, and a renewed its incarnation")
	}

	cutOff("i")
	// a renews once it does not take itself for deaf: probing a dead member
	// can raise its health score for a moment.
	waitLong(t, "a to renew after two of ten failed", 20*time.Second, func() bool {
		h.renewOnSplit(time.Now())
		return h.renewals.Load() == 1
	})
	for range 20 {
		h.renewOnSplit(time.Now())
	}
	if r := h.renewals.Load(); r != 1 {
		t.Errorf("a renewed %d times within one window, want once", r)
	}
}

// without returns names without drop.
func without(names []string, drop string) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == drop })
}
