package placement

import (
	"fmt"
	"slices"
	"time"
)

// Reservation is one interpreter this asker has sent to a node and does not
// yet see in the node's bids.
type Reservation struct {
	RequestID string
	Node      string
	// Seen is the node's Running+Pending in the bid it was elected from.
	Seen int
	// Ahead is how many of this ledger's reservations on Node were still
	// unseen when this one was made: the node must show those as well
	// before it shows this one.
	Ahead   int
	Expires time.Time
}

// Ledger is an asker's record of its recent reservations. Bids and tags are
// always a little stale, so without it a burst of requests from one asker
// would all see the same least loaded server; with it, each election counts
// the interpreters this asker has already sent but the servers do not yet
// show.
//
// The rule: a reservation counts against its node until a bid from that node
// shows Running+Pending > Seen+Ahead (the node now shows this interpreter
// and every one this asker sent before it), or until it expires. A
// reservation the node shows is forgotten at once, so an interpreter that
// later exits does not bring it back. A reservation dropped unseen (expired,
// released or evicted) lowers Ahead of the later ones on its node, since the
// node will never show it. Growth caused by another asker's interpreter
// settles ours early; that errs toward spreading less, and the server's own
// Pending count (which our accepted spawn raises at once) keeps it rare.
//
// The ledger holds a bounded number of reservations; the oldest is evicted first.
// It is not safe for concurrent use.
type Ledger struct {
	ttl  time.Duration
	size int
	res  []Reservation // oldest first
}

// NewLedger returns an empty ledger whose reservations live for ttl and
// which holds at most size of them.
func NewLedger(ttl time.Duration, size int) (*Ledger, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("reservation ttl %v must be positive, e.g. 30s", ttl)
	}
	if size <= 0 {
		return nil, fmt.Errorf("ledger size %d must be positive, e.g. 1024", size)
	}
	return &Ledger{ttl: ttl, size: size}, nil
}

// Reserve records that this asker has committed request requestID to the
// server that sent b (normally a candidate's Bid from Elect's Decision), and
// returns the reservation. An earlier reservation for the same request id is
// replaced: a request places one interpreter, wherever it ended up.
func (l *Ledger) Reserve(requestID string, b Bid, now time.Time) Reservation {
	l.Release(requestID)
	l.settle(map[string]int{b.Node: b.Running + b.Pending}, now)
	if len(l.res) >= l.size {
		l.dropUnseen(0)
	}
	r := Reservation{
		RequestID: requestID,
		Node:      b.Node,
		Seen:      b.Running + b.Pending,
		Ahead:     l.count(b.Node),
		Expires:   now.Add(l.ttl),
	}
	l.res = append(l.res, r)
	return r
}

// Release forgets the reservation for requestID, for a spawn the asker knows
// did not happen. It reports whether there was one.
func (l *Ledger) Release(requestID string) bool {
	for i, r := range l.res {
		if r.RequestID == requestID {
			l.dropUnseen(i)
			return true
		}
	}
	return false
}

// Reservations returns a copy of the reservations, oldest first.
func (l *Ledger) Reservations() []Reservation {
	return append([]Reservation(nil), l.res...)
}

// Len returns the number of reservations held.
func (l *Ledger) Len() int { return len(l.res) }

// settle forgets the reservations that observed (node -> Running+Pending
// from its bid) shows, and those expired at now.
func (l *Ledger) settle(observed map[string]int, now time.Time) {
	var unseen map[string]int // node -> reservations dropped unseen so far
	kept := l.res[:0]
	for _, r := range l.res {
		r.Ahead = max(0, r.Ahead-unseen[r.Node])
		if o, ok := observed[r.Node]; ok && o > r.Seen+r.Ahead {
			continue
		}
		if !now.Before(r.Expires) {
			if unseen == nil {
				unseen = make(map[string]int)
			}
			unseen[r.Node]++
			continue
		}
		kept = append(kept, r)
	}
	clear(l.res[len(kept):])
	l.res = kept
}

// dropUnseen removes reservation i, which its node never showed.
func (l *Ledger) dropUnseen(i int) {
	node := l.res[i].Node
	for j := i + 1; j < len(l.res); j++ {
		if l.res[j].Node == node {
			l.res[j].Ahead = max(0, l.res[j].Ahead-1)
		}
	}
	l.res = slices.Delete(l.res, i, i+1)
}

// count returns the reservations held against node.
func (l *Ledger) count(node string) int {
	n := 0
	for _, r := range l.res {
		if r.Node == node {
			n++
		}
	}
	return n
}

// outstanding returns node -> reservations held against it.
func (l *Ledger) outstanding() map[string]int {
	m := make(map[string]int)
	for _, r := range l.res {
		m[r.Node]++
	}
	return m
}
