package gossip

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
)

// Every node that holds the same members agrees on who ranks among the top
// k for a key: exactly k of them believe they do, whatever the mesh's size.
func TestExactlyTheTopKRankThemselvesAmongTheTop(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 100, 1000} {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("node-%d", i)
		}
		for _, key := range []string{"node-0", "node-7", "heal-follow-up/42"} {
			for _, k := range []int{1, HealSyncers} {
				top := 0
				for _, self := range names {
					if self != key && rankedAmongTop(key, self, names, k) {
						top++
					}
				}
				others := n
				if indexOf(names, key) >= 0 {
					others-- // the key itself never ranks
				}
				if want := min(k, others); top != want {
					t.Errorf("%d names, key %s, k %d: %d rank themselves among the top, want %d", n, key, k, top, want)
				}
			}
		}
	}
}

func indexOf(names []string, s string) int {
	for i, n := range names {
		if n == s {
			return i
		}
	}
	return -1
}

// A member that comes back from failed is synced with by HealSyncers nodes
// of the mesh, not by every node that sees it back.
func TestOnlyTheTopRankedNodesSyncWithAMemberThatComesBack(t *testing.T) {
	all := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFormed(t, nodes, all)
	now := time.Now()
	syncs := 0
	for _, name := range all {
		if name == "h" {
			continue
		}
		h := healerFor(nodes[name])
		h.lastRound = now.Add(-2 * time.Second)
		h.back = []peer{{name: "h", addr: net.IPv4(127, 0, 0, 1), port: 1}}
		if _, _, sync := h.pick(now); sync != nil {
			if sync.name != "h" {
				t.Errorf("%s syncs with %s, which did not come back", name, sync.name)
			}
			syncs++
		}
	}
	if syncs != HealSyncers {
		t.Errorf("%d nodes synced with the member that came back, want %d (HealSyncers)", syncs, HealSyncers)
	}
}

// In the 30 s after a heal the mesh pings its failed members every
// interval, but from at most healPingers nodes, not from every node.
func TestAfterAHealAtMostHealPingersPingAnInterval(t *testing.T) {
	all := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFormed(t, nodes, all)
	now := time.Now()
	healers := map[string]*healer{}
	for _, name := range all {
		h := healerFor(nodes[name])
		h.lastHeal = now.Add(-time.Second) // following a heal
		h.failed["gone"] = failedMember{p: peer{name: "gone"}, since: now.Add(-time.Minute)}
		healers[name] = h
	}
	for interval := range 5 {
		at := now.Add(time.Duration(interval) * time.Second)
		pingers := 0
		for _, name := range all {
			if _, ok, _ := healers[name].pick(at); ok {
				pingers++
			}
			// A second round in the same interval pings no more.
			if _, ok, _ := healers[name].pick(at.Add(time.Millisecond)); ok && at.Truncate(time.Second) == at.Add(time.Millisecond).Truncate(time.Second) {
				pingers++
			}
		}
		if pingers == 0 || pingers > healPingers {
			t.Errorf("interval %d: %d nodes pinged, want 1 to %d (healPingers)", interval, pingers, healPingers)
		}
	}
}

// Interpreter members failing with their host are not a split: only
// servers count.
func TestInterpretersFailingTogetherAreNoSplit(t *testing.T) {
	all := []string{"a", "b", "c", "d", "e"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFormed(t, nodes, all)
	h := healerFor(nodes["a"])
	h.splitWindow = splitWindow
	now := time.Now()
	var interps []serf.Member
	for i := range 4 {
		interps = append(interps, serf.Member{Name: fmt.Sprintf("interp-%d", i), Addr: net.IPv4(127, 0, 0, 1), Port: 1,
			Tags: map[string]string{TagRole: string(RoleInterpreter)}})
	}
	h.observe(serf.MemberEvent{Type: serf.EventMemberJoin, Members: interps}, now)
	h.observe(serf.MemberEvent{Type: serf.EventMemberFailed, Members: interps}, now)
	for range 5 {
		h.renewOnSplit(time.Now())
	}
	if r := h.renewals.Load(); r != 0 {
		t.Fatalf("four interpreters failing with their host renewed a's incarnation %d times, want none", r)
	}
	servers := []serf.Member{{Name: "x", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, {Name: "y", Addr: net.IPv4(127, 0, 0, 1), Port: 2}}
	h.observe(serf.MemberEvent{Type: serf.EventMemberFailed, Members: servers}, now)
	waitLong(t, "a to renew after two servers failed", 20*time.Second, func() bool {
		h.renewOnSplit(time.Now())
		return h.renewals.Load() == 1
	})
}

// A deaf node's tag changes are held, whoever makes them, and the newest
// is gossiped once it hears the mesh again: each would otherwise revive it
// everywhere until the others' probes failed it again.
func TestADeafNodeHoldsItsTagChangesUntilItHearsAgain(t *testing.T) {
	all := []string{"a", "b", "c", "d"}
	c, nodes := startCutMesh(t, 0, all...)
	waitFormed(t, nodes, all)
	d := nodes["d"]
	c.cut(all[:3], []string{"d"})
	waitLong(t, "d to find itself deaf", 20*time.Second, d.Deaf)
	for i, v := range []string{"1", "2", "3"} {
		tags := d.Tags()
		tags["turn"] = v
		if err := d.SetTags(tags); err != nil {
			t.Fatalf("change %d while deaf: %v", i, err)
		}
		if got := d.Tags()["turn"]; got != "" {
			t.Fatalf("change %d while deaf went out at once: d's own tags say turn=%q", i, got)
		}
	}
	waitLong(t, "d failed everywhere", 30*time.Second, func() bool { return sees(nodes, all[:3], []string{"d"}, StatusFailed) })
	c.heal()
	waitLong(t, "every node to see d's newest change after the repair", 30*time.Second, func() bool {
		for _, o := range all {
			for _, m := range nodes[o].Members() {
				if m.Name == "d" && (m.Status != StatusAlive || m.Tags["turn"] != "3") {
					return false
				}
			}
		}
		return true
	})
}

// The series serf names after user events and queries are folded; every
// other key passes as it is.
func TestFoldKeepsSerfsPerNameSeriesBounded(t *testing.T) {
	for _, tc := range []struct {
		key  []string
		want string
		ok   bool
	}{
		{[]string{"serf", "events", "deploy-42"}, "", false},
		{[]string{"serf", "events"}, "serf.events", true},
		{[]string{"serf", "queries", "place"}, "serf.queries", true},
		{[]string{"serf", "queries", "anything-a-user-names"}, "serf.queries", true},
		{[]string{"serf", "queue", "Event"}, "serf.queue.Event", true},
		{[]string{"serf", "member", "join"}, "serf.member.join", true},
		{[]string{"memberlist", "msg", "alive"}, "memberlist.msg.alive", true},
	} {
		got, ok := fold(tc.key)
		if ok != tc.ok || (ok && strings.Join(got, ".") != tc.want) {
			t.Errorf("fold(%v) = %v, %v; want %q, %v", tc.key, got, ok, tc.want, tc.ok)
		}
	}
}

// A node that still sees a few members failed after a heal of many (it
// missed their revival) pings every interval while they answer: only
// stragglers do, and it is what brings them in within a second or two.
func TestAStragglerOfAHealPingsEveryInterval(t *testing.T) {
	all := []string{"a", "b", "c", "d"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFormed(t, nodes, all)
	now := time.Now()
	h := healerFor(nodes["a"])
	h.lastHeal, h.returned = now.Add(-time.Second), fakePeers("back", 20) // a heal of 20 members back
	h.failed["missed"] = failedMember{p: peer{name: "missed"}, since: now.Add(-time.Minute)}
	for interval := range 5 {
		target, ok, _ := h.pick(now.Add(time.Duration(interval) * time.Second))
		if !ok {
			t.Fatalf("interval %d: a straggler of a heal of 20 did not ping its one failed member", interval)
		}
		h.answered(target.name) // it answers; the join is the round's
	}
}

func fakePeers(prefix string, n int) []peer {
	ps := make([]peer, n)
	for i := range ps {
		ps[i] = peer{name: fmt.Sprintf("%s-%d", prefix, i), addr: net.IPv4(127, 0, 0, 1), port: uint16(1 + i)}
	}
	return ps
}

// Where members also died for good during a split, every node holds them
// failed after the heal and takes itself for a straggler: each wastes at
// most healStragglerMisses pings on them, and after that the mesh pings
// from at most healPingers nodes an interval.
func TestFollowUpPingsStayBoundedWhenMembersDiedForGood(t *testing.T) {
	all := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFormed(t, nodes, all)
	now := time.Now()
	healers := map[string]*healer{}
	for _, name := range all {
		h := healerFor(nodes[name])
		h.lastHeal, h.returned = now.Add(-time.Second), fakePeers("back", 50) // a heal of 50 back
		// Five died for good: none answers.
		for _, p := range fakePeers("dead", 5) {
			h.failed[p.name] = failedMember{p: p, since: now.Add(-time.Minute)}
		}
		healers[name] = h
	}
	perNode := map[string]int{}
	for interval := range 20 {
		at := now.Add(time.Duration(interval) * time.Second)
		pingers := 0
		for _, name := range all {
			if _, ok, _ := healers[name].pick(at); ok {
				pingers++
				perNode[name]++
			}
		}
		if interval >= healStragglerMisses && pingers > healPingers {
			t.Errorf("interval %d: %d nodes pinged, want at most %d (healPingers) once the stragglers' misses are spent", interval, pingers, healPingers)
		}
		if interval < healStragglerMisses && pingers != len(all) {
			t.Errorf("interval %d: %d nodes pinged as stragglers, want all %d", interval, pingers, len(all))
		}
	}
	total := 0
	for _, n := range perNode {
		total += n
	}
	// Each node's misses, then the rotation: 20 - misses intervals of at
	// most healPingers pings.
	if limit := len(all)*healStragglerMisses + (20-healStragglerMisses)*healPingers; total > limit {
		t.Errorf("%d pings in 20 intervals, want at most %d", total, limit)
	}
}

// A heal of many is synced with by every node (each returning member gets
// HealSyncers push/pulls and a few more), a lone return by HealSyncers and
// two back together in a large mesh by HealSyncers each: whatever N, a
// returning member receives a small constant of push/pulls.
func TestEveryNodeSyncsInAHealOfManyAndNoMemberIsHerded(t *testing.T) {
	const n = 1000
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%d", i)
	}
	peers := make([]peer, n)
	for i, name := range names {
		peers[i] = peer{name: name}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	draw := func(k int) int { return rng.IntN(k) }

	// count runs rounds in which the members of sideB come back to the
	// nodes of sideA, perRound at a time (gossip brings them over
	// several rounds), each node syncing at most once.
	count := func(sideA, sideB []peer, perRound int) (synced int, most int) {
		got := map[string]int{}
		done := map[string]bool{}
		for start := 0; start < len(sideB); start += perRound {
			end := min(start+perRound, len(sideB))
			back, returned := sideB[start:end], sideB[:end]
			for _, self := range sideA {
				if done[self.name] {
					continue
				}
				if p := chooseSync(self.name, back, returned, names, draw); p != nil {
					done[self.name] = true
					got[p.name]++
				}
			}
		}
		for _, c := range got {
			most = max(most, c)
		}
		return len(done), most
	}

	// A 60/40 heal, the far side's returns arriving 10 a round.
	if synced, most := count(peers[:600], peers[600:], 10); synced != 600 || most > HealSyncers+2*healSyncShare {
		t.Errorf("heal of 400 at 600 nodes: %d nodes synced (want 600), the busiest member received %d push/pulls (want at most %d)",
			synced, most, HealSyncers+2*healSyncShare)
	}
	// One member back: its top HealSyncers sync, no one else.
	if synced, most := count(peers[:999], peers[999:], 1); synced != HealSyncers || most != HealSyncers {
		t.Errorf("one member back: %d nodes synced, the member received %d, want %d", synced, most, HealSyncers)
	}
	// Two back together are a heal, but a small one: the top syncers only.
	if synced, most := count(peers[:998], peers[998:], 2); synced > 2*HealSyncers || most != HealSyncers {
		t.Errorf("two members back: %d nodes synced (want at most %d), the busiest received %d (want %d)", synced, 2*HealSyncers, most, HealSyncers)
	}
}

// waitFormed waits until every node sees every other alive. Each joined
// the first one; a node that missed another's alive message under load (a
// CI run, beside the test bed and the simulation, had one not formed in
// 30 s) learns it at a push/pull, every 30 s: three rounds.
func waitFormed(t *testing.T, nodes map[string]*Node, all []string) {
	t.Helper()
	waitLong(t, "every node alive everywhere", 3*30*time.Second, func() bool { return sees(nodes, all, all, StatusAlive) })
}
