package gossip

import (
	"time"
)

// A node renews its incarnation when it sees a split, so that the other
// side's death verdicts about it are stale by the time the sides meet.
//
// Across a partition each side fails the other, and each verdict carries
// the incarnation its side last heard from the member. memberlist applies a
// death verdict at the incarnation it holds, and relays it. So when a split
// heals while verdicts are still being gossiped (on a large mesh they are
// for tens of seconds after the last failure), a verdict about member m
// that reaches m's own side fails m there until m hears it and refutes:
// every member of that side sees m fail, although nothing between them
// broke. Measured before this rule: 10 nodes healed as soon as both sides
// had failed each other, one member failed by its whole side each time;
// 1,000 simulated nodes, 23,407 such failures (docs/scale.md).
//
// memberlist ignores a verdict older than the incarnation it holds. So a
// node that sees a split renews its own (memberlist's UpdateNode, with its
// tags unchanged: serf's SetTags does the same). Its side learns the new
// incarnation; the other side cannot hear it, so its verdicts stay at the
// old one; after the heal they are ignored, and the other side takes the
// renewed alive message as the member's return, with no refutation.
//
// A split, seen from one side, is many members failing at once: at least
// splitMin, and splitShare of the members, within splitWindow. A crash of
// a host or two in a large mesh is not one: every renewal is news for the
// whole side, 16 transmissions by every member at 1,000 nodes, which a
// split's own verdicts already outweigh (each failure is a suspicion, its
// confirmations and a verdict). A node renews at most once per
// splitWindow, and not while it takes itself for deaf: a deaf node's
// renewal would revive it everywhere, the others' probes would fail again,
// and it would fail once more (Deaf). It renews once its probes are
// answered again, if the failures are still recent.
//
// Only servers count (members that are not interpreters, foreign nodes
// included), failed and alive alike. An interpreter's fate is its host's:
// one host crash fails the host and every interpreter on it, which in a
// small mesh, or one dense with interpreters, crossed the share and had
// every node renew its incarnation for a single crash. A split cuts hosts,
// and the servers alone show it: each side fails at least splitShare of
// them. Interpreters also come and go all the time, each failure of theirs
// counted against a total they barely move.
//
// What it cannot undo: a heal before the renewal has reached the node's
// side (within a few gossip rounds of the renewal; the renewal comes within
// a heal round of the failures, or once the node is no longer deaf).
const (
	splitMin    = 2
	splitShare  = 0.1
	splitWindow = 30 * time.Second
)

// renewOnSplit renews this node's incarnation if, in its view, enough
// members failed within the window (see above). The prober calls it every
// round.
func (h *healer) renewOnSplit(now time.Time) {
	h.mu.Lock()
	if !h.lastRenewal.IsZero() && now.Sub(h.lastRenewal) < h.splitWindow {
		h.mu.Unlock()
		return
	}
	recent, failed := 0, 0
	for _, f := range h.failed {
		if f.interp {
			continue
		}
		failed++
		if now.Sub(f.since) < h.splitWindow {
			recent++
		}
	}
	interps := len(h.interps)
	h.mu.Unlock()
	if recent < splitMin {
		return
	}
	// Counted outside h.mu, as in pick.
	members := max(h.n.serf.Memberlist().NumMembers()-interps, 1) + failed
	if !isSplit(recent, members) || h.n.Deaf() {
		return
	}
	h.mu.Lock()
	h.lastRenewal = now
	h.mu.Unlock()
	h.n.logger.Info("many members failed at once, as across a split: renewing this node's incarnation so that the other side's verdicts about it are stale when the sides meet again",
		"failed", recent, "members", members)
	h.n.renew()
	h.renewals.Add(1)
}

// isSplit reports whether recent failures among members (servers alive or
// failed, this node included) look like a split.
func isSplit(recent, members int) bool {
	return recent >= splitMin && float64(recent) >= splitShare*float64(members)
}

// renew gossips this node alive at a new incarnation, with its tags as
// they are. memberlist queues the news before it waits for it to be sent;
// the renewal does not wait (a zero timeout would wait for ever), so the
// error, that the wait timed out, says nothing.
func (n *Node) renew() {
	n.tagLock <- struct{}{}
	defer func() { <-n.tagLock }()
	_ = n.serf.Memberlist().UpdateNode(time.Nanosecond)
}
