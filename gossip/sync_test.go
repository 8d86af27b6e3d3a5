package gossip

import (
	"strings"
	"testing"
)

// TestSyncBringsWhatGossipMissed: a node that heard none of the gossip of
// a newcomer's join (every packet to it lost) does not list the newcomer;
// one Sync with a member that does, and it lists it at once.
func TestSyncBringsWhatGossipMissed(t *testing.T) {
	all := []string{"a", "b", "c"}
	c, nodes := startCutMesh(t, -1, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })

	c.deafen("a")
	d, err := Start(Config{Name: "d", Profile: "fast", Transport: c.transport("d"), HealInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	nodes["d"] = d // stopped with the others
	if _, err := d.Join([]string{nodes["b"].Addr()}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c to hear of d by gossip", func() bool { return statusOf(nodes["c"], "d") == StatusAlive })
	if st := statusOf(nodes["a"], "d"); st != StatusNone {
		t.Fatalf("a, deaf to packets, lists d as %q before the sync", st)
	}

	if err := nodes["a"].Sync("b"); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(nodes["a"], "d"); st != StatusAlive {
		t.Fatalf("after a sync with b, a lists d as %q, want alive", st)
	}
	if err := nodes["a"].Sync("nobody"); err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("sync with an unknown member: %v, want an error naming it", err)
	}
}
