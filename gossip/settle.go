package gossip

import (
	"math/rand/v2"
	"time"

	"github.com/hashicorp/serf/serf"
)

// joinFollowUps are when, after this node first sees another member, it
// exchanges its whole state once more with one random member it sees
// alive (memberlist's push/pull).
//
// A node that starts again starts its memberlist incarnation over. A
// member that still holds it as left or dead at a higher incarnation (an
// interpreter that watched its server leave, in a whole-cluster restart)
// passes that record on to the others after the node's join exchanged
// its state with them: they then hold it left and no longer gossip to it,
// so it never hears the news it must refute, sees none of the members it
// did not meet at its join, and stays apart until its next periodic
// push/pull (up to a minute; chaos seed 373, nothing-unlisted). A few
// exchanges in the first seconds bring it the news while it is fresh:
// it refutes, and the mesh takes it back.
//
// Only a node that starts from serf's snapshot (it was a member before)
// makes them. A push/pull with a member that is leaving at that moment
// can turn its leave into a failure in this node's view (serf takes the
// member's own status time from the exchange, and the leave intent that
// follows is no newer): a price worth paying only where the exchange is
// needed. A fresh node's join brings it everything.
var joinFollowUps = []time.Duration{time.Second, 3 * time.Second, 7 * time.Second, 15 * time.Second}

// joinPoll is how often a node that has no peer yet looks for one.
const joinPoll = 250 * time.Millisecond

// followUpJoin runs the exchanges of joinFollowUps, counted from the
// moment this node first sees another member alive: at most
// len(joinFollowUps) push/pulls per start, each with a random member, so
// a mesh restarting at once spreads them over every node. None once the
// node leaves: a push/pull then would announce it again. It is not one of
// the goroutines Shutdown waits for: an exchange under way when the node
// stops ends within memberlist's TCP timeout, and a leave must not wait
// for it.
func (n *Node) followUpJoin() {
	for n.serf.Memberlist().NumMembers() < 2 {
		select {
		case <-n.done:
			return
		case <-time.After(n.Dilate(joinPoll)):
		}
	}
	var waited time.Duration
	for _, at := range joinFollowUps {
		select {
		case <-n.done:
			return
		case <-time.After(n.Dilate(at - waited)):
		}
		waited = at
		if n.serf.State() != serf.SerfAlive {
			return // leaving, left or shut down
		}
		self := n.serf.LocalMember().Name
		var alive []serf.Member
		for _, m := range n.serf.Members() {
			if m.Name != self && m.Status == serf.StatusAlive {
				alive = append(alive, m)
			}
		}
		if len(alive) == 0 {
			continue
		}
		// An error (the member went away meanwhile) is no matter: the
		// next follow-up, or the periodic push/pull, tries another.
		_ = n.pushPull(peerOf(alive[rand.IntN(len(alive))]))
	}
}
