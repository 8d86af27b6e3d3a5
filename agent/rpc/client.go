package rpc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTimeout bounds dialling and each request when ClientConfig.Timeout
// is zero. It is serf's client default.
const DefaultTimeout = 10 * time.Second

// maxResponseBytes bounds one value read from the agent, so that a broken
// peer cannot make the client buffer without end.
const maxResponseBytes = 64 << 20

// streamBacklog is how many events or log lines wait for a slow callback
// before newer ones are dropped.
const streamBacklog = 4096

var (
	// ErrNoAgent means nothing answered at the RPC address.
	ErrNoAgent = errors.New("no agent listening")
	// ErrClosed means the connection to the agent is gone, or the client
	// was closed.
	ErrClosed = errors.New("rpc connection closed")
	// ErrTimeout means the agent did not answer within the client's
	// timeout.
	ErrTimeout = errors.New("no answer")
	// ErrNotRPC means the address answered in HTTP: it is an HTTP server
	// (the agent's own --http-addr, most likely), not the agent's RPC. The
	// error wraps it with the first line of the server's answer.
	ErrNotRPC = errors.New("it answers HTTP, not the agent's RPC")
	// ErrUnauthorized means the agent wants a token, or another one.
	ErrUnauthorized = errors.New("agent refused the rpc token")
)

// RemoteError is an error the agent reported for one command.
type RemoteError struct {
	Command string
	Message string // the agent's message, verbatim
}

// Error is the agent's message alone: the command's wire name means
// nothing to a user, and callers say which of their actions failed.
func (e *RemoteError) Error() string { return e.Message }

// Unwrap lets callers branch on ErrUnauthorized.
func (e *RemoteError) Unwrap() error {
	if e.Message == msgAuthRequired || e.Message == msgInvalidAuthToken {
		return ErrUnauthorized
	}
	return nil
}

// ClientConfig configures Dial.
type ClientConfig struct {
	// Token is sent with the auth command after the handshake when set.
	Token string
	// Timeout bounds dialling and each request (for a query, until its
	// first reply; the query then runs its own timeout). Zero means
	// DefaultTimeout.
	Timeout time.Duration
}

// StreamHandle names a running stream or monitor, for Stop.
type StreamHandle uint64

// StreamedEvent is one record of an event stream. Which fields are set
// depends on Event: member-* events carry Members; user events LTime, Name,
// Payload and Coalesce; query events ID, LTime, Name and Payload, and the ID
// is what Respond takes.
type StreamedEvent struct {
	Event    string
	ID       uint64
	LTime    uint64
	Name     string
	Payload  []byte
	Coalesce bool
	Members  []Member
}

// streamRecord decodes any of the three event record shapes.
type streamRecord struct {
	Event    string
	ID       uint64
	LTime    uint64
	Name     string
	Payload  []byte
	Coalesce bool
	Members  []wireMember
}

// Client is a connection to an agent's RPC. It is safe for concurrent use:
// one reader goroutine routes every response to its request by Seq.
type Client struct {
	nc      net.Conn
	timeout time.Duration
	seq     atomic.Uint64
	wmu     sync.Mutex

	mu      sync.Mutex
	waiters map[uint64]*waiter

	done       chan struct{}
	closeOnce  sync.Once
	err        error // why done was closed; written before the close
	readerDone chan struct{}
}

// waiter is one request waiting for its response header (and body).
// Streams, monitors and queries stay registered after that: every later
// header with their Seq carries one record.
type waiter struct {
	withBody bool
	reply    chan reply // buffered: the reader never waits for a caller
	onRecord func(raw []byte) (last bool)
	halt     *halt
	started  bool // reader goroutine only
}

type reply struct {
	msg  string
	body []byte
}

// halt stops a subscription's deliveries.
type halt struct {
	once sync.Once
	ch   chan struct{}
}

func newHalt() *halt { return &halt{ch: make(chan struct{})} }

func (h *halt) stop() { h.once.Do(func() { close(h.ch) }) }

func (h *halt) stopped() bool {
	select {
	case <-h.ch:
		return true
	default:
		return false
	}
}

// Dial connects to the agent at addr, performs the handshake, and
// authenticates when cfg.Token is set. When nothing answers, the error wraps
// ErrNoAgent and names addr.
func Dial(addr string, cfg ClientConfig) (*Client, error) {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", ErrNoAgent, addr, err)
	}
	c := newClient(nc, timeout)
	if err := c.call(cmdHandshake, handshakeRequest{Version: protocolVersion}, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if cfg.Token != "" {
		if err := c.call(cmdAuth, authRequest{AuthKey: cfg.Token}, nil); err != nil {
			c.Close()
			return nil, fmt.Errorf("authenticate: %w", err)
		}
	}
	return c, nil
}

func newClient(nc net.Conn, timeout time.Duration) *Client {
	c := &Client{
		nc:         nc,
		timeout:    timeout,
		waiters:    map[uint64]*waiter{},
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	go c.read()
	return c
}

// NotRPCError is ErrNotRPC with what the HTTP server said, when it said
// something (the agent's HTTP port names its RPC address).
type NotRPCError struct{ Said string }

func (e *NotRPCError) Error() string { return ErrNotRPC.Error() + ": " + e.Said }
func (e *NotRPCError) Unwrap() error { return ErrNotRPC }

// notRPC reads the start of an HTTP answer and returns ErrNotRPC with the
// first line of its body (the agent's HTTP port names its RPC address
// there).
func notRPC(r io.Reader) error {
	head, _ := io.ReadAll(io.LimitReader(r, 1024))
	if _, body, ok := strings.Cut(string(head), "\r\n\r\n"); ok {
		if line, _, _ := strings.Cut(body, "\n"); strings.TrimSpace(line) != "" {
			return &NotRPCError{Said: strings.TrimSpace(line)}
		}
	}
	return ErrNotRPC
}

// Close closes the connection. Streams and monitors end; calls in flight
// fail with ErrClosed. It is idempotent.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	<-c.readerDone
	return nil
}

// Done is closed when the connection is gone, whoever closed it.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection is gone (wrapping ErrClosed), or nil while
// it is up.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

func (c *Client) fail(err error) {
	c.closeOnce.Do(func() {
		if !errors.Is(err, ErrClosed) {
			err = fmt.Errorf("%w: %w", ErrClosed, err)
		}
		c.err = err
		close(c.done)
		_ = c.nc.Close()
	})
}

// read is the one reader: it routes each header to its waiter and reads
// the body the waiter's command says follows.
func (c *Client) read() {
	defer close(c.readerDone)
	// Every answer of an agent starts with a msgpack map; "HTTP/" is an
	// HTTP server's (the agent's HTTP port tells RPC clients so at once).
	br := bufio.NewReader(c.nc)
	if p, err := br.Peek(5); err == nil && string(p) == "HTTP/" {
		c.fail(notRPC(br))
		return
	}
	in := newBudgetReader(br)
	next := func() ([]byte, error) {
		in.reset(maxResponseBytes)
		return readValue(in)
	}
	for {
		raw, err := next()
		if err != nil {
			c.fail(err)
			return
		}
		var h responseHeader
		if err := unmarshal(raw, &h); err != nil {
			c.fail(fmt.Errorf("bad response header: %w", err))
			return
		}
		c.mu.Lock()
		w := c.waiters[h.Seq]
		c.mu.Unlock()
		if w == nil {
			// Nothing waits on it; serf's client ignores these too.
			continue
		}
		if w.started {
			body, err := next()
			if err != nil {
				c.fail(err)
				return
			}
			if w.onRecord(body) {
				c.forget(h.Seq)
			}
			continue
		}
		var body []byte
		if w.withBody && !headerOnly(h.Error) {
			if body, err = next(); err != nil {
				c.fail(err)
				return
			}
		}
		if w.onRecord != nil && h.Error == "" {
			w.started = true
		} else {
			c.forget(h.Seq)
		}
		w.reply <- reply{msg: h.Error, body: body}
	}
}

func (c *Client) forget(seq uint64) {
	c.mu.Lock()
	delete(c.waiters, seq)
	c.mu.Unlock()
}

// framing is how a command is framed; anything not built in is taken to
// be a registered command.
func framing(command string) commandSpec {
	if sp, ok := builtins[command]; ok {
		return sp
	}
	return registeredSpec
}

// start registers w and sends the request.
func (c *Client) start(command string, req any, w *waiter) (uint64, error) {
	spec := framing(command)
	w.withBody = spec.respBody
	w.reply = make(chan reply, 1)
	seq := c.seq.Add(1)
	frame, err := encodeFrame(requestHeader{Command: command, Seq: seq}, req, spec.reqBody)
	if err != nil {
		return 0, fmt.Errorf("encode %s request: %w", command, err)
	}
	c.mu.Lock()
	c.waiters[seq] = w
	c.mu.Unlock()

	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.Err(); err != nil {
		c.forget(seq)
		return 0, err
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := c.nc.Write(frame); err != nil {
		c.forget(seq)
		c.fail(err)
		return 0, c.Err()
	}
	return seq, nil
}

// await waits for the first response to w. On timeout w stays registered,
// so that its late response is still read in step and then dropped.
func (c *Client) await(command string, w *waiter, timeout time.Duration) (reply, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-w.reply:
		return r, nil
	case <-c.done:
		select {
		case r := <-w.reply:
			return r, nil
		default:
			return reply{}, c.Err()
		}
	case <-t.C:
		return reply{}, fmt.Errorf("%s: %w within %s", command, ErrTimeout, timeout)
	}
}

// call runs one request and decodes its response body into resp. For the
// commands that answer with a body even on error (join, the key commands),
// resp is filled as well as the error returned.
func (c *Client) call(command string, req, resp any) error {
	return c.callWithin(command, req, resp, c.timeout)
}

// callWithin is call with its own bound on the wait for the reply.
func (c *Client) callWithin(command string, req, resp any, timeout time.Duration) error {
	w := &waiter{}
	if _, err := c.start(command, req, w); err != nil {
		return err
	}
	r, err := c.await(command, w, timeout)
	if err != nil {
		return err
	}
	if resp != nil && r.body != nil {
		if err := unmarshal(r.body, resp); err != nil && r.msg == "" {
			return fmt.Errorf("decode %s response: %w", command, err)
		}
	}
	if r.msg != "" {
		return &RemoteError{Command: command, Message: r.msg}
	}
	return nil
}

// Call runs a command added to the agent with Server.Register: req is
// encoded as the request body (nil sends an empty one) and the response
// body is decoded into resp unless resp is nil.
func (c *Client) Call(command string, req, resp any) error {
	return c.CallWithin(command, req, resp, c.timeout)
}

// CallWithin is Call for a command that may legitimately take longer than
// the client's timeout (a spawn that waits for its interpreter, say).
func (c *Client) CallWithin(command string, req, resp any, timeout time.Duration) error {
	if _, ok := builtins[command]; ok {
		return fmt.Errorf("%q is a built-in command; use its method", command)
	}
	return c.callWithin(command, req, resp, timeout)
}

// Members returns every member the agent knows.
func (c *Client) Members() ([]Member, error) {
	var r membersResponse
	err := c.call(cmdMembers, nil, &r)
	return fromWire(r.Members), err
}

// MembersFiltered returns the members whose tags, status and name match the
// given regular expressions, anchored at both ends. Empty status and name
// match everything.
func (c *Client) MembersFiltered(tags map[string]string, status, name string) ([]Member, error) {
	var r membersResponse
	err := c.call(cmdMembersFiltered, membersFilteredRequest{Tags: tags, Status: status, Name: name}, &r)
	return fromWire(r.Members), err
}

// Join asks the agent to join the given gossip addresses and returns how
// many answered; a partial join returns both a count and an error.
func (c *Client) Join(addrs []string, replay bool) (int, error) {
	var r joinResponse
	err := c.call(cmdJoin, joinRequest{Existing: addrs, Replay: replay}, &r)
	return int(r.Num), err
}

// Leave asks the agent to leave the mesh gracefully and shut down.
func (c *Client) Leave() error {
	return c.call(cmdLeave, nil, nil)
}

// ForceLeave marks a failed node as left; prune also forgets it.
func (c *Client) ForceLeave(node string, prune bool) error {
	return c.call(cmdForceLeave, forceLeaveRequest{Node: node, Prune: prune}, nil)
}

// UpdateTags sets and deletes tags of the agent's node.
func (c *Client) UpdateTags(set map[string]string, remove []string) error {
	return c.call(cmdTags, tagsRequest{Tags: set, DeleteTags: remove}, nil)
}

// UserEvent broadcasts a user event.
func (c *Client) UserEvent(name string, payload []byte, coalesce bool) error {
	return c.call(cmdEvent, eventRequest{Name: name, Payload: payload, Coalesce: coalesce}, nil)
}

// Respond answers a query event received on a stream, by its ID.
func (c *Client) Respond(id uint64, payload []byte) error {
	return c.call(cmdRespond, respondRequest{ID: id, Payload: payload}, nil)
}

// InstallKey installs a gossip encryption key on every node. The response
// is filled even on error: Messages names the nodes that failed.
func (c *Client) InstallKey(key string) (KeyResponse, error) {
	return c.keys(cmdInstallKey, key)
}

// UseKey makes an installed key the primary one on every node.
func (c *Client) UseKey(key string) (KeyResponse, error) {
	return c.keys(cmdUseKey, key)
}

// RemoveKey removes a key from every node.
func (c *Client) RemoveKey(key string) (KeyResponse, error) {
	return c.keys(cmdRemoveKey, key)
}

// ListKeys lists the keys installed across the mesh with how many nodes
// hold each.
func (c *Client) ListKeys() (KeyResponse, error) {
	return c.keys(cmdListKeys, "")
}

func (c *Client) keys(command, key string) (KeyResponse, error) {
	var r KeyResponse
	var req any
	if framing(command).reqBody {
		req = keyRequest{Key: key}
	}
	err := c.call(command, req, &r)
	return r, err
}

// Stats returns the agent's statistics: section -> key -> value.
func (c *Client) Stats() (map[string]map[string]string, error) {
	var r map[string]map[string]string
	err := c.call(cmdStats, nil, &r)
	return r, err
}

// Coordinate returns a node's network coordinate; ok is false when the
// agent has none for it.
func (c *Client) Coordinate(node string) (coord Coordinate, ok bool, err error) {
	var r coordinateResponse
	if err := c.call(cmdGetCoordinate, coordinateRequest{Node: node}, &r); err != nil {
		return Coordinate{}, false, err
	}
	return r.Coord, r.Ok, nil
}

// Query runs a query and blocks until the agent reports it done. onAck and
// onResponse (either may be nil) run on the calling goroutine, in arrival
// order, and may call the client.
func (c *Client) Query(req QueryRequest, onAck func(from string), onResponse func(NodeResponse)) error {
	return c.QuerySent(req, nil, onAck, onResponse)
}

// QuerySent is Query with one more callback: sent (when not nil) runs once
// the agent has accepted the query and sent it to the mesh, before any ack
// or response; a query the agent refuses returns its error without it.
func (c *Client) QuerySent(req QueryRequest, sent func(), onAck func(from string), onResponse func(NodeResponse)) error {
	records := newInbox[queryRecord](0) // a query's answers are bounded by the mesh
	final := make(chan string, 1)
	w := &waiter{onRecord: func(raw []byte) bool {
		var rec queryRecord
		if err := unmarshal(raw, &rec); err != nil {
			final <- "bad query record: " + err.Error()
			return true
		}
		if rec.Type == queryRecordDone {
			final <- rec.Error
			return true
		}
		records.put(rec)
		return false
	}}
	if _, err := c.start(cmdQuery, req, w); err != nil {
		return err
	}
	r, err := c.await(cmdQuery, w, c.timeout)
	if err != nil {
		return err
	}
	if r.msg != "" {
		return &RemoteError{Command: cmdQuery, Message: r.msg}
	}
	if sent != nil {
		sent()
	}
	deliver := func() {
		for _, rec := range records.take() {
			switch {
			case rec.Type == queryRecordAck && onAck != nil:
				onAck(rec.From)
			case rec.Type == queryRecordResponse && onResponse != nil:
				onResponse(NodeResponse{From: rec.From, Payload: rec.Payload})
			}
		}
	}
	for {
		select {
		case <-records.ready:
			deliver()
		case msg := <-final:
			// The reader queued every record before done.
			deliver()
			if msg != "" {
				return &RemoteError{Command: cmdQuery, Message: msg}
			}
			return nil
		case <-c.done:
			return c.Err()
		}
	}
}

// Stream subscribes to the agent's events. filter is serf's: "*" (or ""),
// or a comma separated list of member-join, member-leave, member-failed,
// member-update, member-reap, user, user:NAME, query, query:NAME. fn runs on
// a goroutine of its own, one call at a time, and may call the client; if
// it falls more than a few thousand events behind, newer events are dropped.
// After Stop returns, fn is not called again (a call already running may
// finish).
func (c *Client) Stream(filter string, fn func(StreamedEvent)) (StreamHandle, error) {
	return subscribe(c, cmdStream, streamRequest{Type: filter}, fn, func(raw []byte) (StreamedEvent, bool) {
		var rec streamRecord
		if unmarshal(raw, &rec) != nil {
			return StreamedEvent{}, false
		}
		return StreamedEvent{
			Event: rec.Event, ID: rec.ID, LTime: rec.LTime, Name: rec.Name,
			Payload: rec.Payload, Coalesce: rec.Coalesce, Members: fromWire(rec.Members),
		}, true
	})
}

// Monitor subscribes to the agent's log lines at level or above: TRACE,
// DEBUG, INFO, WARN or ERR, as serf names them. fn runs as Stream's does.
func (c *Client) Monitor(level string, fn func(line string)) (StreamHandle, error) {
	return subscribe(c, cmdMonitor, monitorRequest{LogLevel: level}, fn, func(raw []byte) (string, bool) {
		var rec logRecord
		if unmarshal(raw, &rec) != nil {
			return "", false
		}
		return rec.Log, true
	})
}

// subscribe starts a stream or monitor whose records decode into T.
func subscribe[T any](c *Client, command string, req any, fn func(T), decode func([]byte) (T, bool)) (StreamHandle, error) {
	box := newInbox[T](streamBacklog)
	h := newHalt()
	w := &waiter{halt: h, onRecord: func(raw []byte) bool {
		if v, ok := decode(raw); ok && !h.stopped() {
			box.put(v)
		}
		return false // only Stop ends it
	}}
	seq, err := c.start(command, req, w)
	if err != nil {
		return 0, err
	}
	r, err := c.await(command, w, c.timeout)
	if err != nil {
		h.stop() // records that still come are read and dropped
		return 0, err
	}
	if r.msg != "" {
		return 0, &RemoteError{Command: command, Message: r.msg}
	}
	go func() {
		run := func() bool {
			for _, v := range box.take() {
				if h.stopped() {
					return false
				}
				fn(v)
			}
			return true
		}
		for {
			select {
			case <-h.ch:
				return
			case <-box.ready:
				if !run() {
					return
				}
			case <-c.done:
				run() // what arrived before the connection ended
				return
			}
		}
	}()
	return StreamHandle(seq), nil
}

// Stop ends a stream or monitor. Once the agent has answered, no record of
// it is in flight.
func (c *Client) Stop(h StreamHandle) error {
	seq := uint64(h)
	c.mu.Lock()
	w := c.waiters[seq]
	c.mu.Unlock()
	if w != nil && w.halt != nil {
		w.halt.stop()
	}
	err := c.call(cmdStop, stopRequest{Stop: seq}, nil)
	if err == nil {
		c.forget(seq)
	}
	return err
}

// inbox queues records from the reader for a consumer without ever making
// the reader wait. limit 0 means unbounded.
type inbox[T any] struct {
	mu    sync.Mutex
	items []T
	limit int
	ready chan struct{} // holds a token while items may be waiting
}

func newInbox[T any](limit int) *inbox[T] {
	return &inbox[T]{limit: limit, ready: make(chan struct{}, 1)}
}

func (q *inbox[T]) put(v T) {
	q.mu.Lock()
	if q.limit > 0 && len(q.items) >= q.limit {
		q.mu.Unlock()
		return
	}
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *inbox[T]) take() []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}
