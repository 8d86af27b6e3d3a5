package gossip

import (
	"fmt"
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
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
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
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
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
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
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
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
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
// missed their revival) pings every interval: only stragglers do, and it
// is what brings them in within a second or two.
func TestAStragglerOfAHealPingsEveryInterval(t *testing.T) {
	all := []string{"a", "b", "c", "d"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	now := time.Now()
	h := healerFor(nodes["a"])
	h.lastHeal, h.healSize = now.Add(-time.Second), 20 // a heal of 20 members back
	h.failed["missed"] = failedMember{p: peer{name: "missed"}, since: now.Add(-time.Minute)}
	for interval := range 5 {
		if _, ok, _ := h.pick(now.Add(time.Duration(interval) * time.Second)); !ok {
			t.Errorf("interval %d: a straggler of a heal of 20 did not ping its one failed member", interval)
		}
	}
}
