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
// in their view (HealSyncers of them), not by every node that sees it come
// back: at 1,000 nodes that was 999 push/pulls of about 27 KB aimed at one
// node within a second, and memberlist refuses more than 128 at once. For
// one member back, a few suffice: its return is gossiped by itself (its
// refutation) to every node, and what gossip cannot carry, the state of
// the side it comes from (members born or renewed there while apart), one
// push/pull hands to a node, which gossips it on as news.
//
// A heal of many is another matter: each returning member is news that
// every node must hear, and a hundred returns at once outgrow the gossip
// (its packets carry a few each), so the nodes that no push/pull reached
// learnt the last of them seconds late: at 200 nodes, a 30 s partition
// took 5.0 s until every node agreed, against 1.9 s when every node synced
// (six seeds each). So once the heal a node follows has brought back at
// least a 1/healSyncShare of the members it holds, a node that is no top
// syncer syncs with one of the heal's returned members drawn at random.
// Each returning member then receives HealSyncers push/pulls plus, in
// expectation, fewer than healSyncShare more, whatever N; and every node
// syncs at most once per healFollowUp, so a heal costs at most one
// push/pull per node, as it did before the syncers.
//
// A node that missed some revivals of a heal is alone in seeing those
// members failed; so for 30 s after a heal in its view (two or more failed
// members back at once), the mesh pings its remaining failed members more
// often. A node whose failed members are few next to the heal it saw (at
// most a healStragglerShare of the members that came back) has likely
// missed their revival: it pings one every interval, each once, until it
// has pinged every one or healStragglerMisses pings went unanswered (an
// answer makes it join). So where members also died for good during the
// split, and every node holds them failed, each node wastes at most
// healStragglerMisses pings on them in a heal. Otherwise (a few members
// back while others stay failed: two servers restarted while a third is
// down), and once a straggler is done, its failed members are failed for
// everyone, and every node pinging every interval was O(N) pings an
// interval for 30 s: then the healPingers nodes whose rendezvous hash with
// the interval's number ranks highest among the members ping, one failed
// member each, and no one else.
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
	// healSyncShare: once a heal has brought back at least a quarter of
	// the members a node holds, it syncs with one of them even if it is
	// no top syncer (see the comment at the top).
	healSyncShare = 4
	// healStragglerShare: a node following a heal of R members back
	// pings every interval while it still sees at most R/10 failed.
	healStragglerShare = 10
	// healStragglerMisses: a straggler's pings that went unanswered in a
	// heal, after which it pings only in the follow-up's rotation.
	healStragglerMisses = 3
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
	// returned are the members back at the rounds of the heal being
	// followed up: a node that has not synced picks among them.
	returned []peer
	// strayPinged are the members this node pinged as a straggler of the
	// heal being followed up; strayMisses, how many of them did not answer.
	strayPinged map[string]struct{}
	strayMisses int
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
	h.answered(target.name)
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
	// us: this node syncs with one, at most once per healFollowUp.
	maySync := revived > 0 && (h.lastSync.IsZero() || now.Sub(h.lastSync) >= h.followUp)
	if revived >= healRevivals {
		if h.lastHeal.IsZero() || now.Sub(h.lastHeal) >= h.followUp {
			h.returned, h.strayPinged, h.strayMisses = h.returned[:0], nil, 0
		}
		h.lastHeal = now
	}
	following := !h.lastHeal.IsZero() && now.Sub(h.lastHeal) < h.followUp
	if following {
		h.returned = append(h.returned, back...)
	} else {
		h.returned = nil
	}
	// Only pick changes returned, and it replaces elements only at a
	// later round: this round may read them unlocked.
	returned := h.returned
	failed := len(h.failed)
	straggler := following && failed*healStragglerShare <= len(returned) && h.strayMisses < healStragglerMisses
	h.mu.Unlock()
	// Read outside h.mu: memberlist calls serf's event delegate with its
	// own lock held, and serf's event channel leads to observe.
	var names []string
	var sync *peer
	if maySync {
		names = h.memberNames()
		if sync = chooseSync(h.n.Name(), back, returned, names, rand.N[int]); sync != nil {
			h.mu.Lock()
			h.lastSync = now
			h.mu.Unlock()
		}
	}
	if failed == 0 {
		return peer{}, false, sync
	}
	if straggler {
		// It likely missed these revivals: a ping every interval, each
		// member once, until healStragglerMisses go unanswered; then, or
		// once each was pinged, the follow-up's rotation.
		if target, ok := h.drawStray(now); ok {
			return target, true, sync
		}
	}
	switch {
	case following:
		// The interval's pingers, the same in every view that holds the
		// same members: one ping per node an interval.
		if names == nil {
			names = h.memberNames()
		}
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

// chooseSync picks the member back from failed that self syncs with, if
// any (see the comment at the top): one of this round's back for which it
// ranks among the top HealSyncers in names (the members it holds alive);
// otherwise, once the heal it follows has brought back (returned) at
// least a 1/healSyncShare of them, one of those drawn at random (draw(n)
// is in [0, n)). So a member receives HealSyncers push/pulls when it comes
// back alone, and in a heal of R members of N at most HealSyncers + N/R
// expected, fewer than HealSyncers + healSyncShare.
func chooseSync(self string, back, returned []peer, names []string, draw func(int) int) *peer {
	for i := range back {
		if rankedAmongTop(back[i].name, self, names, HealSyncers) {
			return &back[i]
		}
	}
	if len(returned) == 0 || len(returned)*healSyncShare < len(names) {
		return nil
	}
	p := returned[draw(len(returned))]
	return &p
}

// drawFailed draws one of the members failed for minAge or longer, each as
// likely (reservoir sampling over the map).
func (h *healer) drawFailed(now time.Time) (peer, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.drawFailedLocked(now, nil)
}

// drawStray draws a straggler's ping: a member failed for minAge or
// longer that it has not pinged as a straggler of this heal. The ping
// counts as a miss until answered.
func (h *healer) drawStray(now time.Time) (peer, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	target, ok := h.drawFailedLocked(now, h.strayPinged)
	if ok {
		if h.strayPinged == nil {
			h.strayPinged = make(map[string]struct{})
		}
		h.strayPinged[target.name] = struct{}{}
		h.strayMisses++
	}
	return target, ok
}

// answered notes that a member pinged answered: a straggler's ping
// answered is no miss, and the member may be pinged again should the join
// not follow (another revival came just before).
func (h *healer) answered(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.strayPinged[name]; ok {
		delete(h.strayPinged, name)
		h.strayMisses--
	}
}

// drawFailedLocked draws among the members failed for minAge or longer and
// not in skip. h.mu is held.
func (h *healer) drawFailedLocked(now time.Time, skip map[string]struct{}) (peer, bool) {
	var target peer
	seen := 0
	for name, f := range h.failed {
		if now.Sub(f.since) < h.minAge {
			continue
		}
		if _, ok := skip[name]; ok {
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
