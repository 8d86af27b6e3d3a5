package simulation

import (
	"io"
	"math"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/meshagent/agent/gossip"
)

// Streams stand in for memberlist's TCP connections. They obey the same
// faults as packets, the way TCP does: a lost segment is not an error but a
// retransmission later (an RTO of at least 200 ms, doubling), a connection
// attempt whose SYN is lost retries after 1 s, 2 s, 4 s…, and while a
// partition, cut, crash or pause stands between the two ends, bytes wait
// (until the reader's deadline) instead of flowing. A write never blocks.

const (
	minRTO = 200 * time.Millisecond // Linux's TCP_RTO_MIN
	synRTO = time.Second            // Linux's initial SYN retransmission timeout
)

// DialTimeout opens a stream to "ip:port".
func (e *Endpoint) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return e.DialAddressTimeout(gossip.Address{Addr: addr}, timeout)
}

// DialAddressTimeout opens a stream, retrying the handshake as TCP does
// until timeout. It blocks only its caller.
func (e *Endpoint) DialAddressTimeout(a gossip.Address, timeout time.Duration) (net.Conn, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Source: e.tcp, Err: err} }
	if e.closed.Load() {
		return nil, opErr(net.ErrClosed)
	}
	dst := e.net.lookup(a.Addr)
	if dst == nil {
		return nil, opErr(syscall.ECONNREFUSED)
	}
	attempt, rto := start, e.net.clk.wall(synRTO)
	for {
		f := e.net.faults.Load()
		src, to := e.host.id, dst.host.id
		if f.wired(src, to) && f.wired(to, src) {
			fwd, back := f.link(src, to), f.link(to, src)
			l1, j1 := e.host.draw()
			l2, j2 := e.host.draw()
			if l1 >= fwd.Loss && l2 >= back.Loss {
				connected := e.net.onTick(time.Now().Add(e.net.clk.wall(fwd.latency(j1) + back.latency(j2))))
				if connected.After(deadline) {
					e.sleepUntil(deadline)
					return nil, opErr(os.ErrDeadlineExceeded)
				}
				if !e.sleepUntil(connected) {
					return nil, opErr(net.ErrClosed)
				}
				return e.connect(dst, opErr)
			}
		}
		attempt = attempt.Add(rto)
		rto *= 2
		if !attempt.Before(deadline) {
			e.sleepUntil(deadline)
			return nil, opErr(os.ErrDeadlineExceeded)
		}
		if !e.sleepUntil(attempt) {
			return nil, opErr(net.ErrClosed)
		}
	}
}

// sleepUntil waits for t; false when the endpoint closed first.
func (e *Endpoint) sleepUntil(t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return !e.closed.Load()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-e.done:
		return false
	}
}

func (e *Endpoint) connect(dst *Endpoint, opErr func(error) error) (net.Conn, error) {
	if dst.closed.Load() {
		return nil, opErr(syscall.ECONNREFUSED)
	}
	ab := newPipe(e.net, e, dst)
	ba := newPipe(e.net, dst, e)
	client := newStreamConn(e, dst, ba, ab)
	server := newStreamConn(dst, e, ab, ba)
	if !e.track(client) || !dst.track(server) {
		client.Close()
		server.Close()
		return nil, opErr(syscall.ECONNREFUSED)
	}
	select {
	case dst.streamCh <- server:
		return client, nil
	default: // the listener's backlog is full
		client.Close()
		server.Close()
		return nil, opErr(syscall.ECONNREFUSED)
	}
}

func (e *Endpoint) track(c *streamConn) bool {
	e.connMu.Lock()
	defer e.connMu.Unlock()
	if e.closed.Load() {
		return false
	}
	e.conns[c] = struct{}{}
	return true
}

func (e *Endpoint) untrack(c *streamConn) {
	e.connMu.Lock()
	delete(e.conns, c)
	e.connMu.Unlock()
}

// pipe is one direction of a stream: chunks of bytes, each with the time it
// reaches the other end, kept in order.
type pipe struct {
	net      *Network
	from, to *Endpoint

	mu     sync.Mutex
	chunks [][]byte
	at     []time.Time
	last   time.Time
	fin    bool
	notify chan struct{}
}

func newPipe(n *Network, from, to *Endpoint) *pipe {
	return &pipe{net: n, from: from, to: to, notify: make(chan struct{}, 1)}
}

func (p *pipe) poke() {
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *pipe) write(b []byte) {
	now := time.Now()
	f := p.net.faults.Load()
	if f.isCrashed(p.from.host.id) {
		return // a crashed host sends nothing
	}
	l := f.link(p.from.host.id, p.to.host.id)
	loss, jitter := p.from.host.draw()
	arrival := now.Add(p.net.clk.wall(l.latency(jitter)))
	for rto := p.net.clk.wall(minRTO); loss < l.Loss && rto <= p.net.clk.wall(64*minRTO); rto *= 2 {
		arrival = arrival.Add(rto)
		loss, _ = p.from.host.draw()
	}
	arrival = p.net.onTick(arrival)
	p.from.c.bytesSent.Add(uint64(len(b)))
	p.from.c.streamSent.Add(uint64(len(b)))
	w := uint64(math.Round(p.net.est.stream(b)))
	p.from.c.wireSent.Add(w)
	p.from.c.streamWire.Add(w)
	if len(b) > 0 && b[0] == mlPushPull {
		p.to.c.pushPullsRecv.Add(1)
	}
	p.mu.Lock()
	if arrival.Before(p.last) {
		arrival = p.last
	}
	p.last = arrival
	p.chunks = append(p.chunks, append([]byte(nil), b...))
	p.at = append(p.at, arrival)
	p.mu.Unlock()
	p.poke()
}

func (p *pipe) close() {
	p.mu.Lock()
	p.fin = true
	p.mu.Unlock()
	p.poke()
}

// streamConn is one end of a stream. Reads honour deadlines; writes never
// block.
type streamConn struct {
	local, remote *Endpoint
	in, out       *pipe

	mu       sync.Mutex
	deadline time.Time
	kick     chan struct{} // the deadline changed

	closeOnce sync.Once
	closed    chan struct{}
}

var _ net.Conn = (*streamConn)(nil)

func newStreamConn(local, remote *Endpoint, in, out *pipe) *streamConn {
	return &streamConn{local: local, remote: remote, in: in, out: out,
		kick: make(chan struct{}, 1), closed: make(chan struct{})}
}

func (c *streamConn) Read(b []byte) (int, error) {
	for {
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		default:
		}
		changed := *c.in.net.changed.Load()
		f := c.in.net.faults.Load()
		flows := f.flows(c.in.from.host.id, c.in.to.host.id)
		now := time.Now()
		wait := time.Duration(-1)

		p := c.in
		p.mu.Lock()
		switch {
		case len(p.chunks) > 0 && flows && !p.at[0].After(now):
			n := copy(b, p.chunks[0])
			if p.chunks[0] = p.chunks[0][n:]; len(p.chunks[0]) == 0 {
				p.chunks[0] = nil
				p.chunks, p.at = p.chunks[1:], p.at[1:]
			}
			p.mu.Unlock()
			c.local.c.bytesRecv.Add(uint64(n))
			return n, nil
		case len(p.chunks) > 0 && flows:
			wait = p.at[0].Sub(now)
		case len(p.chunks) == 0 && p.fin && flows:
			p.mu.Unlock()
			return 0, io.EOF
		}
		p.mu.Unlock()

		c.mu.Lock()
		deadline := c.deadline
		c.mu.Unlock()
		if !deadline.IsZero() {
			left := deadline.Sub(now)
			if left <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			if wait < 0 || left < wait {
				wait = left
			}
		}
		var timer *time.Timer
		var expired <-chan time.Time
		if wait >= 0 {
			timer = time.NewTimer(wait)
			expired = timer.C
		}
		select {
		case <-p.notify:
		case <-changed:
		case <-expired:
		case <-c.kick:
		case <-c.closed:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

func (c *streamConn) Write(b []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	c.out.write(b)
	return len(b), nil
}

// Close sends the end of the stream to the other side and fails this
// side's reads. It is idempotent.
func (c *streamConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.out.close()
		c.local.untrack(c)
	})
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local.tcp }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote.tcp }

func (c *streamConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *streamConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

// SetWriteDeadline is accepted and has no effect: writes never block.
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }
