package rpc

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// feed carries what a Backend subscription produces (events or log lines)
// to one client. The Backend's callback only ever does a non-blocking send
// into a bounded buffer, so a slow or dead client costs the Backend nothing:
// when the buffer is full the item is dropped and counted. One goroutine per
// feed writes the records.
type feed[T any] struct {
	c      *conn
	seq    uint64
	what   string // what is dropped, for the log
	send   func(T) error
	cancel func()

	items   chan T
	quit    chan struct{}
	done    chan struct{}
	stopped atomic.Bool
	dropped atomic.Uint64
}

// startFeed starts the writer, then subscribes. subscribe receives the
// non-blocking push to hand to the Backend and returns its cancel.
//
// ack is the reply to the command: it is sent after the subscription and
// before the first record, so that nothing that happens once the client
// holds its handle is missed, and no record precedes the reply. When ack
// fails the feed is stopped and the error returned.
func startFeed[T any](c *conn, seq uint64, what string, send func(T) error, subscribe func(push func(T)) (cancel func()),
	ack func() error) (*feed[T], error) {
	f := &feed[T]{
		c:     c,
		seq:   seq,
		what:  what,
		send:  send,
		items: make(chan T, feedBuffer),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	f.cancel = subscribe(f.push) // pushes wait in items until run starts
	if err := ack(); err != nil {
		f.stopped.Store(true)
		f.cancel()
		return nil, err
	}
	go f.run()
	return f, nil
}

// push is what the Backend calls. It never blocks. It logs the first drop
// from a goroutine of its own: the Backend may be inside its logger when it
// feeds a log monitor, and logging from here would re-enter it.
func (f *feed[T]) push(v T) {
	if f.stopped.Load() {
		return
	}
	select {
	case f.items <- v:
	default:
		if f.dropped.Add(1) == 1 {
			go f.c.log.Warn("rpc client reads too slowly; dropping "+f.what, "seq", f.seq)
		}
	}
}

func (f *feed[T]) run() {
	defer close(f.done)
	for {
		select {
		case <-f.quit:
			return
		case v := <-f.items:
			if f.stopped.Load() {
				return
			}
			if f.send(v) != nil {
				return // the write closed the connection; cleanup stops us
			}
		}
	}
}

// stop unsubscribes and waits until the writer has finished its last
// record. It is called only from the connection's serve goroutine.
func (f *feed[T]) stop() {
	f.stopped.Store(true)
	if f.cancel != nil {
		f.cancel()
	}
	close(f.quit)
	<-f.done
	if n := f.dropped.Load(); n > 0 {
		f.c.log.Info("rpc feed ended", "seq", f.seq, "dropped", n, "what", f.what)
	}
}

// eventFilter is one element of a stream's filter, as serf parses it:
// "*", an event type, or "user:NAME" / "query:NAME".
type eventFilter struct {
	event string
	name  string // user and query only; empty matches every name
}

// parseEventFilter parses serf's comma separated filter; "" means "*".
func parseEventFilter(s string) ([]eventFilter, bool) {
	if s == "" {
		s = "*"
	}
	var fs []eventFilter
	for _, part := range strings.Split(s, ",") {
		f := eventFilter{event: part}
		if name, ok := strings.CutPrefix(part, "user:"); ok {
			f = eventFilter{event: "user", name: name}
		} else if name, ok := strings.CutPrefix(part, "query:"); ok {
			f = eventFilter{event: "query", name: name}
		}
		switch f.event {
		case "*", "member-join", "member-leave", "member-failed", "member-update", "member-reap", "user", "query":
		default:
			return nil, false
		}
		fs = append(fs, f)
	}
	return fs, true
}

func matchEvent(fs []eventFilter, e Event) bool {
	for _, f := range fs {
		if f.event == "*" || (f.event == e.Type && (f.name == "" || f.name == e.Name)) {
			return true
		}
	}
	return false
}

// pendingQueries maps the IDs handed to stream clients for query events to
// the query's Respond, until the query's deadline. IDs are unique per
// server, so a client may answer from any connection.
type pendingQueries struct {
	mu      sync.Mutex
	last    uint64
	byID    map[uint64]pendingQuery
	sweepAt int
}

type pendingQuery struct {
	respond  func(payload []byte) error
	deadline time.Time
}

// add returns a new ID for a query event. A query that cannot be answered
// (no Respond, or past its deadline) still gets an ID, as in serf; respond
// then reports it unknown.
func (p *pendingQueries) add(respond func([]byte) error, deadline, now time.Time) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last++
	if respond == nil || !now.Before(deadline) {
		return p.last
	}
	if p.byID == nil {
		p.byID = map[uint64]pendingQuery{}
	}
	// Expired entries are swept when the map has doubled since the last
	// sweep: amortised constant work, and no timer per query.
	if len(p.byID) >= p.sweepAt {
		for id, q := range p.byID {
			if !now.Before(q.deadline) {
				delete(p.byID, id)
			}
		}
		p.sweepAt = max(64, 2*len(p.byID))
	}
	p.byID[p.last] = pendingQuery{respond: respond, deadline: deadline}
	return p.last
}

// take removes and returns the Respond of a live query.
func (p *pendingQueries) take(id uint64, now time.Time) (func([]byte) error, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	q, ok := p.byID[id]
	delete(p.byID, id)
	if !ok || !now.Before(q.deadline) {
		return nil, false
	}
	return q.respond, true
}
