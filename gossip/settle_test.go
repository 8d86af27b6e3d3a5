package gossip

import (
	"path/filepath"
	"testing"
	"time"
)

// TestARestartedNodeTheMeshHoldsLeftRejoinsWithinSeconds: a whole-cluster
// restart as serf lives it. Servers a and b leave; an interpreter, i,
// which runs on, holds both left. Both start again on their addresses
// (memberlist starts their incarnations over) and b joins a. Then a
// joins i and learns from it that b left, at an incarnation b's new one
// does not beat: a now holds b left and no longer gossips to it, and b
// never hears the news it must refute. Before the follow-up exchanges,
// b stayed apart until its periodic push/pull (30 s with lan: chaos seed
// 373, where a server listed no interpreter for 50 s). Now b's first
// follow-up, a second after its join, brings it the news; it refutes,
// and a and i take it back.
func TestARestartedNodeTheMeshHoldsLeftRejoinsWithinSeconds(t *testing.T) {
	dir := t.TempDir() // serf's snapshots: a and b start again from theirs, as an agent with its data dir does
	start := func(name string, port int, tags map[string]string) *Node {
		t.Helper()
		n, err := Start(Config{Name: name, BindAddr: "127.0.0.1", BindPort: port, Profile: "lan", Tags: tags, HealInterval: -1,
			SnapshotPath: filepath.Join(dir, name+".snapshot")})
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		t.Cleanup(func() { n.Shutdown() })
		return n
	}
	server := Tags{Role: RoleServer}.Map()
	pa, pb := freePort(t), freePort(t)
	i := start("i", freePort(t), Tags{Role: RoleInterpreter, Kind: "demo", Host: "a", PID: 42}.Map())
	a := start("a", pa, server)
	b := start("b", pb, server)
	for _, n := range []*Node{a, b} {
		if _, err := n.Join([]string{i.Addr()}, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "i to list a and b alive", func() bool { return statusOf(i, "a") == StatusAlive && statusOf(i, "b") == StatusAlive })
	for _, n := range []*Node{a, b} {
		if err := n.Leave(); err != nil {
			t.Fatal(err)
		}
		n.Shutdown()
	}
	waitFor(t, "i to hold a and b left", func() bool { return statusOf(i, "a") == StatusLeft && statusOf(i, "b") == StatusLeft })

	a = start("a", pa, server)
	b = start("b", pb, server)
	if _, err := b.Join([]string{a.Addr()}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Join([]string{i.Addr()}, false); err != nil {
		t.Fatal(err)
	}
	// The bound is well under lan's 30 s push/pull, and leaves the
	// follow-ups (1 s, then 3 s after b met a) room on a loaded machine.
	deadline := time.Now().Add(6 * time.Second)
	for !(statusOf(a, "b") == StatusAlive && statusOf(i, "b") == StatusAlive && statusOf(b, "i") == StatusAlive) {
		if time.Now().After(deadline) {
			t.Fatalf("6 s after the joins: a lists b %q, i lists b %q, b lists i %q; want alive everywhere",
				statusOf(a, "b"), statusOf(i, "b"), statusOf(b, "i"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
