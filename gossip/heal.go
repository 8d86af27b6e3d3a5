package gossip

import (
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/serf/serf"
)

// The heal prober brings a healed partition back together in about a
// second.
//
// Left alone, serf and memberlist reunite two sides only by luck: news
// gossiped to the dead (while there is news, and only for
// GossipToTheDeadTime), serf's reconnect (every 30 s, with probability
// failed/alive) or a push/pull (to live members only). Measured: 0.4 to
// 21 s after the network came back.
//
// So every node, every HealInterval (jittered by half either way), pings one
// member failed in its view for at least healMinAge, with probability
// healPingers/alive, alive counted in its own view. Each side of a partition therefore sends about healPingers pings per
// interval across the split, whatever its size: about 100 bytes each, a
// few bytes per node per second at 100 nodes, and nothing while no member
// is failed. A ping is memberlist's own UDP ping, addressed by name, so an
// address now used by another node does not answer. The first answer after
// the heal makes its pinger join the member (one push/pull); that exchange
// gives each end the other side's renewed incarnations (split.go: a node
// that saw the split renewed its own), or makes it refute the verdicts a
// node that had not renewed finds about itself, and gossip carries the
// rest. A pinger whose view already saw a failed member
// come back in the last two intervals does not join: someone has bridged
// the sides and another push/pull would only add bytes. A partition long
// enough that memberlist has already forgotten the dead but not yet
// stopped gossiping to them can need a second push/pull, which the next
// answered ping makes.
//
// A member back from failed (a restart, or the far side of a heal) is
// synced with by the few nodes whose rendezvous hash with it ranks highest
// in their view (healSyncers of them), not by every node that sees it come
// back: at 1,000 nodes that was 999 push/pulls of about 27 KB aimed at one
// node within a second, and memberlist refuses more than 128 at once. A
// few suffice for the mesh to agree: the member's own return is gossiped
// by itself (its refutation) to every node; what gossip cannot carry is
// the state of the side it comes from (members born or renewed there while
// apart), and one push/pull hands one node all of it, which that node then
// gossips as news, as memberlist does with whatever a merge changes. The
// syncers are a few for redundancy against a lost exchange; every node
// still syncs at most once per healFollowUp, so a heal of many members
// costs at most one push/pull per node, as before.
//
// A node that missed some revivals of a heal is alone in seeing those
// members failed; so for 30 s after a heal in its view (two or more failed
// members back at once), it pings its remaining failed members more often.
// A node whose failed members are few next to the heal it saw (at most a
// healStragglerShare of the members that came back) has likely missed
// their revival: it pings one every interval, as a straggler must, and
// only stragglers do. Otherwise (a few members back while others stay
// failed: two servers restarted while a third is down) its failed members
// are failed for everyone, and every node pinging every interval was O(N)
// pings an interval for 30 s: then the healPingers nodes whose rendezvous
// hash with the interval's number ranks highest among the members ping,
// one failed member each, and no one else.
//
// Members that left, were force-left or reaped are not failed, so they are
// never pinged; a failed member is pinged until serf reaps it
// (ReconnectTimeout), at most healPingers times per interval by the whole
// mesh.
const healPingers = 3

// HealSyncers is how many nodes push/pull with a member that comes back
// from failed: those whose rendezvous hash with it ranks highest among the
// members alive in their view.
const HealSyncers = 3

// healIntervalProbes is the default HealInterval in probe intervals: 1 s
// with fast, 2 s with lan. With 3 pings a side per interval, the first
// answer after the heal comes within about a quarter of it.
const healIntervalProbes = 2

// healMinAge is how long a member must have been failed in a node's view
// before the node pings it. A false failure (loss, a busy host) is refuted
// within seconds by the member itself; pinging and joining it would only
// add push/pulls, and under loss they feed more false verdicts. A
// partition lasts longer than that.
const healMinAge = 10 * time.Second

// healFollowUp is how long after a heal (healRevivals or more failed
// members back between two rounds) a node pings one of its remaining
// failed members every round.
const (
	healFollowUp = 30 * time.Second
	healRevivals = 2
	// healStragglerShare: a node following a heal of R members back
	// pings every interval while it still sees at most R/10 failed.
	healStragglerShare = 10
)

// HealStats counts the heal prober's work since the node started.
type HealStats struct {
	Pings   uint64 // pings sent to failed members
	Answers uint64 // pings a failed member answered
	Joins   uint64 // push/pulls started on an answer
	// Renewals counts the incarnations this node renewed on seeing a
	// split (split.go).
	Renewals uint64
}

// healer is one node's heal prober. Its counters are read concurrently.
type healer struct {
	n        *Node
	interval time.Duration
	minAge   time.Duration // a member is pinged once failed this long here
	followUp time.Duration // healFollowUp, dilated
	// splitWindow is the window, dilated, in which many failures make a
	// split (split.go).
	splitWindow time.Duration

	pings, answers, joins, renewals atomic.Uint64

	mu          sync.Mutex
	failed      map[string]failedMember // failed in this node's view, from serf's events
	back        []peer                  // failed at the previous round, alive since
	lastRound   time.Time
	lastRevival time.Time // a member failed at one round was alive at the next
	lastHeal    time.Time // several were: a heal, whose stragglers are followed up
	lastSync    time.Time // the last push/pull with a member that came back
	lastRenewal time.Time // the last renewal after a split
	lastFollow  int64     // the last follow-up interval in which this node pinged
	healSize    int       // members back at the rounds of the heal being followed up
	// interps are the interpreter members alive here: the split rule
	// counts servers only (split.go).
	interps map[string]struct{}
}

// failedMember is a member failed in this node's view, and since when.
type failedMember struct {
	p      peer
	since  time.Time
	interp bool // an interpreter member: the split rule does not count it
}

// peer is what the prober keeps of a member: enough to ping it and to
// join it by name. While a mesh is split every node holds the whole other
// side, so not the member's tags (a 400-node partition's prober held 8% of
// the process's live heap with whole serf.Members).
type peer struct {
	name string
	addr net.IP
	port uint16
}

func peerOf(m serf.Member) peer { return peer{name: m.Name, addr: m.Addr, port: m.Port} }

// startHeal starts the prober unless interval is negative; zero picks the
// profile's default.
func (n *Node) startHeal(interval time.Duration) {
	if interval < 0 {
		return
	}
	if interval == 0 {
		interval = healIntervalProbes * n.ml.ProbeInterval
	}
	n.heal = &healer{n: n, interval: interval, minAge: n.Dilate(healMinAge), followUp: n.Dilate(healFollowUp),
		splitWindow: n.Dilate(splitWindow), failed: make(map[string]failedMember), interps: make(map[string]struct{})}
	n.wg.Add(1)
	go n.heal.run()
}

func (h *healer) run() {
	defer h.n.wg.Done()
	for {
		// Jitter keeps the nodes of a mesh that started together from
		// pinging in step.
		wait := h.interval/2 + rand.N(h.interval)
		select {
		case <-h.n.done:
			return
		case <-time.After(wait):
		}
		h.round(time.Now())
	}
}

// round pings one failed member, with probability healPingers/alive, and
// joins it when it answers and nobody bridged the sides meanwhile.
func (h *healer) round(now time.Time) {
	h.renewOnSplit(now)
	target, ok, sync := h.pick(now)
	if sync != nil {
		// A heal: the other side's news of its own revival reached us,
		// but members born on that side during the split do not gossip
		// themselves; only a push/pull brings them. One per node per heal.
		h.joins.Add(1)
		h.n.logger.Debug("a heal: one push/pull with a member that came back", "member", sync.name)
		if err := h.n.pushPull(*sync); err != nil {
			h.n.logger.Debug("push/pull after a heal failed", "member", sync.name, "err", err)
		}
	}
	if !ok {
		return
	}
	addr := &net.UDPAddr{IP: target.addr, Port: int(target.port)}
	ml := h.n.serf.Memberlist()
	h.pings.Add(1)
	if _, err := ml.Ping(target.name, addr); err != nil {
		return
	}
	h.answers.Add(1)
	if !h.shouldJoin(target.name, time.Now()) {
		return
	}
	h.joins.Add(1)
	h.n.logger.Info("a failed member answers a ping; joining it", "member", target.name, "addr", addr.String())
	if err := h.n.pushPull(target); err != nil {
		h.n.logger.Debug("joining a failed member that answered failed", "member", target.name, "err", err)
	}
}

// observe keeps the prober's view of the failed members from serf's member
// events, so that a round costs nothing while no member is failed and, while
// some are, does not copy the whole member list: at 1,000 members that copy
// was a tenth of a mesh's CPU while it formed. dispatch calls it for every
// event, before the subscribers.
func (h *healer) observe(e serf.Event, now time.Time) {
	me, ok := e.(serf.MemberEvent)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range me.Members {
		interp := m.Tags[TagRole] == string(RoleInterpreter)
		switch me.Type {
		case serf.EventMemberFailed:
			delete(h.interps, m.Name)
			if _, ok := h.failed[m.Name]; !ok {
				h.failed[m.Name] = failedMember{p: peerOf(m), since: now, interp: interp}
			}
		case serf.EventMemberJoin, serf.EventMemberUpdate:
			if interp {
				h.interps[m.Name] = struct{}{}
			} else {
				delete(h.interps, m.Name)
			}
			f, ok := h.failed[m.Name]
			if !ok {
				continue
			}
			delete(h.failed, m.Name)
			// A member that failed and came back between two rounds (a
			// false failure refuted) is no revival: the rounds never saw
			// it failed.
			if !h.lastRound.IsZero() && !f.since.After(h.lastRound) {
				h.back = append(h.back, f.p)
			}
		case serf.EventMemberLeave, serf.EventMemberReap:
			delete(h.failed, m.Name)
			delete(h.interps, m.Name)
		}
	}
}

// pick notes revivals since the previous round and draws the member to
// ping, if any. It copies nothing while no member came back and no heal is
// being followed up: at 1,000 members, half of them failed, a slice of the
// candidates per round was a sixtieth of everything a partition's run
// allocated.
func (h *healer) pick(now time.Time) (peer, bool, *peer) {
	h.mu.Lock()
	back := h.back
	h.back, h.lastRound = nil, now
	revived := len(back)
	if revived > 0 {
		h.lastRevival = now
	}
	// A member back from failed may come from a side that lived on without
	// us: this node syncs with one it ranks among the top HealSyncers for,
	// at most once per healFollowUp.
	maySync := revived > 0 && (h.lastSync.IsZero() || now.Sub(h.lastSync) >= h.followUp)
	if revived >= healRevivals {
		if h.lastHeal.IsZero() || now.Sub(h.lastHeal) >= h.followUp {
			h.healSize = 0
		}
		h.lastHeal, h.healSize = now, h.healSize+revived
	}
	failed := len(h.failed)
	straggler := failed*healStragglerShare <= h.healSize
	// Right after a heal a few nodes can miss a member's revival (its news
	// ran out of retransmissions before reaching them). For a while after
	// a heal the mesh pings more often, but still at most healPingers
	// nodes an interval (see above). One member coming back (a restart, a
	// false failure refuted) is no heal and costs nothing more.
	following := !h.lastHeal.IsZero() && now.Sub(h.lastHeal) < h.followUp
	h.mu.Unlock()
	// Read outside h.mu: memberlist calls serf's event delegate with its
	// own lock held, and serf's event channel leads to observe.
	var names []string
	if maySync || (following && !straggler && failed > 0) {
		names = h.memberNames()
	}
	var sync *peer
	if maySync {
		self := h.n.Name()
		for i := range back {
			if rankedAmongTop(back[i].name, self, names, HealSyncers) {
				sync = &back[i]
				break
			}
		}
		if sync != nil {
			h.mu.Lock()
			h.lastSync = now
			h.mu.Unlock()
		}
	}
	if failed == 0 {
		return peer{}, false, sync
	}
	switch {
	case following && straggler:
		// It likely missed these revivals: a ping every interval.
	case following:
		// The interval's pingers, the same in every view that holds the
		// same members; one ping per node an interval.
		epoch := now.UnixNano() / int64(h.interval)
		h.mu.Lock()
		done := h.lastFollow == epoch
		h.mu.Unlock()
		if done || !rankedAmongTop(followKey(epoch), h.n.Name(), names, healPingers) {
			return peer{}, false, sync
		}
		h.mu.Lock()
		h.lastFollow = epoch
		h.mu.Unlock()
	default:
		alive := h.n.serf.Memberlist().NumMembers()
		if rand.Float64()*float64(max(alive, 1)) >= healPingers {
			return peer{}, false, sync
		}
	}
	target, ok := h.drawFailed(now)
	return target, ok, sync
}

// drawFailed draws one of the members failed for minAge or longer, each as
// likely (reservoir sampling over the map).
func (h *healer) drawFailed(now time.Time) (peer, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var target peer
	seen := 0
	for _, f := range h.failed {
		if now.Sub(f.since) < h.minAge {
			continue
		}
		if seen++; rand.N(seen) == 0 {
			target = f.p
		}
	}
	return target, seen > 0
}

// followKey is the rendezvous key of a follow-up interval.
func followKey(epoch int64) string { return "heal-follow-up/" + strconv.FormatInt(epoch, 10) }

// memberNames lists the members memberlist holds alive or suspect, this
// node included.
func (h *healer) memberNames() []string {
	nodes := h.n.serf.Memberlist().Members()
	names := make([]string, len(nodes))
	for i, m := range nodes {
		names[i] = m.Name
	}
	return names
}

// shouldJoin reports whether an answered ping is still worth a push/pull:
// the member is still failed here and no failed member came back lately.
func (h *healer) shouldJoin(name string, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.lastRevival.IsZero() && now.Sub(h.lastRevival) < 2*h.interval {
		return false
	}
	_, failed := h.failed[name]
	return failed
}

// HealStats returns the heal prober's counters; zero when it is off.
func (n *Node) HealStats() HealStats {
	if n.heal == nil {
		return HealStats{}
	}
	return HealStats{Pings: n.heal.pings.Load(), Answers: n.heal.answers.Load(), Joins: n.heal.joins.Load(),
		Renewals: n.heal.renewals.Load()}
}

// deafScore is the Lifeguard health score from which a node takes itself
// to be unheard. A probe that nobody answers, not even with the nacks of
// the indirect probes, adds one per missing nack (up to IndirectChecks, 3);
// a probe answered takes 1 away. But a healthy node probing a dead member
// also misses every nack, once: an intermediary nacks ProbeTimeout after
// the indirect ping, which went out ProbeTimeout after the probe, so the
// nacks arrive just after the probe's deadline (ProbeInterval, twice
// ProbeTimeout in every profile). Its score jumps to 3; the next probes'
// intervals are stretched by the score, their nacks come in time, and it
// goes back down. With 3 as the mark every healthy node of a mesh of five
// or more held its load updates for about 5 s after any crash (seen in
// the test bed's logs). A deaf node hears no nack and no ack: 3, then 6
// one stretched probe interval later. So 4 separates the two, 2 s later
// than 3 did with fast.
const deafScore = 4

// Deaf reports whether this node's own probes go unanswered, by
// memberlist's health score (Lifeguard's local awareness). A deaf node
// should not gossip changes about itself, such as tag updates: each one is
// a new incarnation that revives it everywhere, the others' probes fail
// again, and the mesh sees it fail once more, a flap per update. It stays
// deaf until its probes are answered again, which needs a member it
// believes alive: after a long deafness, a heal join.
func (n *Node) Deaf() bool { return n.HealthScore() >= deafScore }

// HealthScore is memberlist's health score: 0 is healthy, up to 7 when
// this node's probes go unanswered.
func (n *Node) HealthScore() int { return n.serf.Memberlist().GetHealthScore() }
