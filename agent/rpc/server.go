// The protocol, as serf's agent defines it (cmd/serf/command/agent/ipc.go):
//
// A client opens a TCP connection and writes a stream of msgpack values;
// structs travel as maps keyed by field name. Every request is a header
// {Command, Seq} followed by a body when the command has one; every response
// is a header {Seq, Error} followed by a body when the command has one. For
// the commands that answer with a body, serf sends the body even when Error
// is set, and its client always reads one; builtins in protocol.go records
// which commands those are, and both our sides read that one table.
//
// The first command must be "handshake" with Version 1; anything else first
// is answered "Handshake required" and the connection is closed. When the
// server has a token, "auth" must come next: other commands are answered
// "Authentication required" (a bare header) until it succeeds.
//
// "stream", "monitor" and "query" answer with a bare header and then keep
// sending records, each a header carrying the request's Seq plus one body,
// on the same connection and interleaved with the replies to later requests.
// Writes are therefore serialised per connection. "stop" ends a stream or
// monitor by its Seq; a query ends itself with a "done" record.
//
// A command the server does not know is answered "Unsupported command" and
// the connection closed, since whether a body follows is unknown. Bytes that
// are not msgpack, a header that is not {Command, Seq}, or a request over
// the size limit close the connection without an answer. A body that is
// msgpack but does not fit its command is answered with an error in the
// command's framing, and the connection carries on.
//
// What we add, without breaking a stock serf client: commands registered
// with Server.Register (always one request body and one response body); an
// Error field on a query's done record, because our Backend reports a
// query's failure only when it ends, after the header has gone out (serf's
// client skips unknown fields); and limits a stock serf agent lacks (request
// size, nesting depth, connection count, time to authenticate).

package rpc

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ServerConfig tunes a Server. The zero value is usable.
type ServerConfig struct {
	// Token, when set, must be presented with the auth command before any
	// command other than handshake and auth is served.
	Token string
	// Logger receives the server's log lines; nil discards them.
	Logger *slog.Logger
	// MaxConns caps open client connections; a connection beyond it is
	// closed at once. Zero means 64.
	MaxConns int
	// OnCommand, when set, is called with the name of every command the
	// server dispatches (for metrics). It must not block.
	OnCommand func(command string)
	// MaxRequestBytes caps one request, header and body together; a larger
	// request closes its connection. Zero means 1 MiB.
	MaxRequestBytes int
}

const (
	defaultMaxConns        = 64
	defaultMaxRequestBytes = 1 << 20

	// authTimeout is how long a new connection may take to finish the
	// handshake (and auth, when a token is set), so that idle strangers
	// cannot hold every connection slot.
	authTimeout = 10 * time.Second
	// writeTimeout is how long one frame may take to reach a client; a
	// client slower than that is treated as gone.
	writeTimeout = 10 * time.Second
	// lingerTimeout bounds how long a connection we are closing after an
	// error reply is drained, so that the reply is not lost to a reset.
	lingerTimeout = time.Second
	lingerBytes   = 64 << 10

	// feedBuffer is how many events or log lines wait for one slow client
	// before newer ones are dropped.
	feedBuffer = 512
	// queryBuffer is how many acks and responses of one query wait for a
	// slow client before newer ones are dropped.
	queryBuffer = 1024
	// defaultQueryTTL is how long a streamed query's ID is kept when the
	// Backend gives no deadline.
	defaultQueryTTL = time.Minute
)

// Handler serves one command added with Server.Register. It runs on the
// connection's goroutine, so a slow handler delays only that connection's
// later requests; handlers for different connections run concurrently. A non-nil err is sent to the client as the response
// header's Error; otherwise resp is encoded as the response body.
type Handler func(body Body) (resp any, err error)

// Body is the request body of a registered command.
type Body struct {
	raw []byte
	ctx context.Context
}

// Context is done when the request's client goes away or the server
// closes: a handler that waits should stop waiting then.
func (b Body) Context() context.Context {
	if b.ctx == nil {
		return context.Background()
	}
	return b.ctx
}

// Decode decodes the request body into v, which must be a pointer.
func (b Body) Decode(v any) error {
	if err := unmarshal(b.raw, v); err != nil {
		return fmt.Errorf("decode request body: %w", err)
	}
	return nil
}

// Server serves serf's agent RPC protocol on a listener, driving a Backend.
// Serve runs it; Close stops it. Close may be called from any goroutine.
type Server struct {
	ln         net.Listener
	backend    Backend
	token      []byte
	log        *slog.Logger
	maxConns   int
	onCommand  func(string)
	maxRequest int
	// authTimeout and now are fixed at construction; tests shorten and
	// replace them before Serve.
	authTimeout time.Duration
	now         func() time.Time // query bookkeeping

	handlers map[string]Handler // filled before Serve, read-only after
	queries  pendingQueries

	// ctx is done when Close begins; every connection's context derives
	// from it.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	serving   bool
	closed    bool
	refusing  bool // a refused connection has been logged since the last free slot
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // one per connection
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// NewServer returns a server for l and b. It starts nothing.
func NewServer(l net.Listener, b Backend, cfg ServerConfig) *Server {
	s := &Server{
		ln:          l,
		backend:     b,
		token:       []byte(cfg.Token),
		log:         cfg.Logger,
		maxConns:    cfg.MaxConns,
		onCommand:   cfg.OnCommand,
		maxRequest:  cfg.MaxRequestBytes,
		authTimeout: authTimeout,
		now:         time.Now,
		handlers:    map[string]Handler{},
		conns:       map[*conn]struct{}{},
		done:        make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxConns <= 0 {
		s.maxConns = defaultMaxConns
	}
	if s.maxRequest <= 0 {
		s.maxRequest = defaultMaxRequestBytes
	}
	return s
}

// Register adds a command beyond serf's. Its requests carry exactly one body
// and its responses exactly one body (nil on error), framed like the
// built-in commands. Register must be called before Serve; it panics on an
// empty name, a built-in name, a name registered twice, or after Serve, all
// of which are programming errors.
func (s *Server) Register(command string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.serving:
		panic("rpc: Register called after Serve")
	case command == "" || h == nil:
		panic("rpc: Register needs a command name and a handler")
	}
	if _, ok := builtins[command]; ok {
		panic(fmt.Sprintf("rpc: command %q is built in", command))
	}
	if _, ok := s.handlers[command]; ok {
		panic(fmt.Sprintf("rpc: command %q registered twice", command))
	}
	s.handlers[command] = h
}

// Serve accepts connections until Close and serves each on its own
// goroutine. It returns nil after Close, or the listener's error when the
// listener fails by itself.
func (s *Server) Serve() error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("rpc server is already serving")
	}
	s.serving = true
	s.mu.Unlock()

	var backoff time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept rpc connections: %w", err)
			}
			// Running out of file descriptors passes; spinning on it
			// would only make it worse.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accepting an rpc connection failed; retrying", "err", err, "in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-s.done:
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		backoff = 0
		if c := s.track(nc); c != nil {
			go c.serve()
		}
	}
}

// Close stops accepting, closes every connection, ends every stream,
// monitor and query feed, cancels the context of every query and command
// in progress, and waits for the server's goroutines. A Handler that
// ignores its Body's context is waited for, so Close must not be called
// from inside a Backend method or a Handler. Close is idempotent and may
// be called from any goroutine.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		s.closed = true
		close(s.done)
		conns := slices.Collect(maps.Keys(s.conns))
		s.mu.Unlock()
		if s.ln != nil {
			if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				s.closeErr = fmt.Errorf("close rpc listener: %w", err)
			}
		}
		for _, c := range conns {
			c.shut()
		}
		s.wg.Wait()
	})
	return s.closeErr
}

// track admits a new connection, or closes it and returns nil when the
// server is closed or full. The caller must run serve on what it returns.
func (s *Server) track(nc net.Conn) *conn {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return nil
	}
	if len(s.conns) >= s.maxConns {
		first := !s.refusing
		s.refusing = true
		s.wg.Add(1)
		s.mu.Unlock()
		go func() { defer s.wg.Done(); s.refuseFull(nc) }()
		if first {
			s.log.Warn("too many rpc connections; refusing new ones", "max", s.maxConns, "remote", nc.RemoteAddr().String())
		}
		return nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	c := &conn{
		s:       s,
		ctx:     ctx,
		cancel:  cancel,
		nc:      nc,
		log:     s.log.With("remote", nc.RemoteAddr().String()),
		in:      newBudgetReader(nc),
		streams: map[uint64]*feed[Event]{},
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	return c
}

// refuseFull answers a connection the server has no room for: it reads the
// client's first request (the handshake) and replies with an error that
// says why, so the user sees more than a closed connection.
func (s *Server) refuseFull(nc net.Conn) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(2 * time.Second))
	in := newBudgetReader(nc)
	in.reset(4096)
	raw, err := readValue(in)
	if err != nil {
		return
	}
	var h requestHeader
	if unmarshal(raw, &h) != nil {
		return
	}
	if h.Command == "handshake" {
		if _, err := readValue(in); err != nil {
			return
		}
	}
	msg := fmt.Sprintf("too many RPC connections to this agent (limit %d): close idle clients or raise the limit", s.maxConns)
	if frame, err := encodeFrame(responseHeader{Seq: h.Seq, Error: msg}, nil, false); err == nil {
		nc.Write(frame)
	}
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.refusing = false
	s.mu.Unlock()
	s.wg.Done()
}

// spec returns the framing of a command and whether the server knows it.
func (s *Server) spec(command string) (commandSpec, bool) {
	if sp, ok := builtins[command]; ok {
		return sp, true
	}
	if _, ok := s.handlers[command]; ok {
		return registeredSpec, true
	}
	return commandSpec{}, false
}

// conn is one client connection. version, authed, streams and monitor are
// touched only by the serve goroutine.
type conn struct {
	s *Server
	// ctx is done once the client is gone (or the server closes): its
	// queries and commands in progress stop then.
	ctx    context.Context
	cancel context.CancelFunc
	nc     net.Conn
	log    *slog.Logger
	in     *budgetReader

	wmu     sync.Mutex // serialises frames: replies and records share the socket
	closing atomic.Bool

	version    int32
	authed     bool
	warnedAuth bool // a command before auth has been logged
	streams    map[uint64]*feed[Event]
	monitor    *feed[string]
	children   sync.WaitGroup // query goroutines
}

// endAfterReply ends a connection whose error reply has gone out: what the
// client sends next can no longer be framed.
type endAfterReply struct{ why string }

func (e endAfterReply) Error() string { return e.why }

func (c *conn) serve() {
	defer c.s.untrack(c)
	defer c.cleanup()

	_ = c.nc.SetReadDeadline(time.Now().Add(c.s.authTimeout))
	for {
		c.in.reset(c.s.maxRequest)
		raw, err := readValue(c.in)
		if err != nil {
			c.readFailed(err)
			return
		}
		var h requestHeader
		if err := unmarshal(raw, &h); err != nil {
			c.log.Warn("closing rpc connection: bad request header", "err", err)
			return
		}
		if err := c.handle(h); err != nil {
			var end endAfterReply
			switch {
			case c.closing.Load():
			case errors.As(err, &end):
				c.log.Warn("closing rpc connection", "reason", end.why)
				c.linger()
			default:
				c.log.Warn("closing rpc connection", "command", h.Command, "err", err)
			}
			return
		}
	}
}

// readFailed logs why reading a request failed, once, unless the client
// simply hung up between requests or we closed the connection ourselves.
func (c *conn) readFailed(err error) {
	var ne net.Error
	switch {
	case c.closing.Load():
	case c.in.used == 0 && (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)):
		c.log.Debug("rpc client disconnected")
	case errors.As(err, &ne) && ne.Timeout() && !c.ready():
		c.log.Warn("closing rpc connection: no handshake or auth in time", "limit", c.s.authTimeout)
	case errors.Is(err, errTooLarge):
		c.log.Warn("closing rpc connection: request too large", "limit", c.s.maxRequest)
	default:
		c.log.Warn("closing rpc connection: bad request", "err", err)
	}
}

// ready reports whether the connection has done all it must before it is
// served: the handshake, and auth when the server has a token.
func (c *conn) ready() bool {
	return c.version != 0 && (len(c.s.token) == 0 || c.authed)
}

// readBody reads one request body within the request's budget.
func (c *conn) readBody() ([]byte, error) {
	raw, err := readValue(c.in)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return nil, fmt.Errorf("request larger than %d bytes: %w", c.s.maxRequest, err)
		}
		return nil, fmt.Errorf("read request body: %w", err)
	}
	return raw, nil
}

// handle checks what must hold before any command, reads the body, and
// dispatches. A returned error closes the connection.
func (c *conn) handle(h requestHeader) error {
	spec, known := c.s.spec(h.Command)
	if c.version == 0 && h.Command != cmdHandshake {
		if err := c.reply(h.Seq, msgHandshakeRequired, nil, false); err != nil {
			return err
		}
		return endAfterReply{fmt.Sprintf("command %q before handshake", h.Command)}
	}
	if len(c.s.token) > 0 && !c.authed && h.Command != cmdHandshake && h.Command != cmdAuth {
		if known && spec.reqBody {
			if _, err := c.readBody(); err != nil { // keeps the stream in step
				return err
			}
		}
		if err := c.reply(h.Seq, msgAuthRequired, nil, false); err != nil {
			return err
		}
		if !known {
			return endAfterReply{fmt.Sprintf("unknown command %q before auth", h.Command)}
		}
		if !c.warnedAuth {
			c.warnedAuth = true
			c.log.Warn("refused rpc command before auth", "command", h.Command)
		}
		return nil
	}
	if !known {
		if err := c.reply(h.Seq, msgUnsupportedCommand, nil, false); err != nil {
			return err
		}
		return endAfterReply{fmt.Sprintf("unsupported command %q", h.Command)}
	}
	var raw []byte
	if spec.reqBody {
		var err error
		if raw, err = c.readBody(); err != nil {
			return err
		}
	}
	if c.s.onCommand != nil {
		c.s.onCommand(h.Command)
	}
	return c.dispatch(h.Command, h.Seq, spec, raw)
}

// dispatch serves one command whose body has been read whole. A body that
// does not decode into the command's request is answered with an error in
// the command's framing, and the connection carries on.
func (c *conn) dispatch(cmd string, seq uint64, spec commandSpec, raw []byte) error {
	b := c.s.backend
	decode := func(v any) error { return unmarshal(raw, v) }
	bad := func(err error) error {
		return c.reply(seq, fmt.Sprintf("bad %s request: %v", cmd, err), nil, spec.respBody)
	}

	switch cmd {
	case cmdHandshake:
		var req handshakeRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		msg := ""
		switch {
		case req.Version != protocolVersion:
			msg = msgUnsupportedVersion
		case c.version != 0:
			msg = msgDuplicateHandshake
		default:
			c.version = req.Version
			c.clearDeadlineIfReady()
		}
		return c.reply(seq, msg, nil, false)

	case cmdAuth:
		var req authRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		if subtle.ConstantTimeCompare([]byte(req.AuthKey), c.s.token) != 1 {
			// The connection stays, as with serf: its client would race
			// our close against reading this reply. Guessing stays bounded
			// by authTimeout per connection.
			c.log.Warn("rpc client presented a wrong token")
			return c.reply(seq, msgInvalidAuthToken, nil, false)
		}
		c.authed = true
		c.clearDeadlineIfReady()
		return c.reply(seq, "", nil, false)

	case cmdMembers:
		return c.reply(seq, "", membersResponse{Members: toWire(b.Members())}, true)

	case cmdMembersFiltered:
		var req membersFilteredRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		ms, err := filterMembers(b.Members(), req.Tags, req.Status, req.Name)
		if err != nil {
			// Serf drops the connection here; an answer in the
			// command's framing tells the user which filter is wrong.
			return c.reply(seq, err.Error(), nil, true)
		}
		return c.reply(seq, "", membersResponse{Members: toWire(ms)}, true)

	case cmdJoin:
		var req joinRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		n, err := b.Join(req.Existing, req.Replay)
		return c.reply(seq, errString(err), joinResponse{Num: int32(n)}, true)

	case cmdLeave:
		c.log.Info("graceful leave requested over rpc")
		err := b.Leave()
		if err != nil {
			c.log.Error("leave failed", "err", err)
		}
		return c.reply(seq, errString(err), nil, false)

	case cmdForceLeave:
		var req forceLeaveRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		return c.reply(seq, errString(b.ForceLeave(req.Node, req.Prune)), nil, false)

	case cmdTags:
		var req tagsRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		return c.reply(seq, errString(b.UpdateTags(req.Tags, req.DeleteTags)), nil, false)

	case cmdEvent:
		var req eventRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		return c.reply(seq, errString(b.UserEvent(req.Name, req.Payload, req.Coalesce)), nil, false)

	case cmdInstallKey, cmdUseKey, cmdRemoveKey, cmdListKeys:
		var req keyRequest
		if spec.reqBody {
			if err := decode(&req); err != nil {
				return bad(err)
			}
		}
		// The keyring operations are named as the commands are.
		resp, err := b.Keys(KeyOp(cmd), req.Key)
		return c.reply(seq, errString(err), resp, true)

	case cmdStats:
		return c.reply(seq, "", b.Stats(), true)

	case cmdGetCoordinate:
		var req coordinateRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		coord, ok := b.Coordinate(req.Node)
		if !ok {
			coord = Coordinate{}
		}
		return c.reply(seq, "", coordinateResponse{Coord: coord, Ok: ok}, true)

	case cmdStream:
		var req streamRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		filters, ok := parseEventFilter(req.Type)
		switch {
		case !ok:
			return c.reply(seq, msgInvalidFilter, nil, false)
		case c.streams[seq] != nil:
			return c.reply(seq, msgStreamExists, nil, false)
		}
		f, err := startFeed(c, seq, "events",
			func(e Event) error { return c.sendEvent(seq, e) },
			func(push func(Event)) func() {
				return b.SubscribeEvents(func(e Event) {
					if matchEvent(filters, e) {
						push(e)
					}
				})
			},
			func() error { return c.reply(seq, "", nil, false) })
		if err != nil {
			return err
		}
		c.streams[seq] = f
		return nil

	case cmdMonitor:
		var req monitorRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		level, ok := parseLogLevel(req.LogLevel)
		switch {
		case !ok:
			return c.reply(seq, "Unknown log level: "+strings.ToUpper(req.LogLevel), nil, false)
		case c.monitor != nil:
			return c.reply(seq, msgMonitorExists, nil, false)
		}
		f, err := startFeed(c, seq, "log lines",
			func(line string) error { return c.sendRecord(seq, logRecord{Log: line}) },
			func(push func(string)) func() { return b.SubscribeLogs(level, push) },
			func() error { return c.reply(seq, "", nil, false) })
		if err != nil {
			return err
		}
		c.monitor = f
		return nil

	case cmdStop:
		var req stopRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		// Each stop waits until its feed has written its last record, so
		// nothing with that Seq follows this reply.
		if c.monitor != nil && c.monitor.seq == req.Stop {
			c.monitor.stop()
			c.monitor = nil
		}
		if f := c.streams[req.Stop]; f != nil {
			f.stop()
			delete(c.streams, req.Stop)
		}
		return c.reply(seq, "", nil, false)

	case cmdQuery:
		var req queryRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		// A query that cannot go out is refused in the header, as serf
		// refuses it, so the client never says it was sent.
		if err := b.CheckQuery(req); err != nil {
			return c.reply(seq, err.Error(), nil, false)
		}
		if err := c.reply(seq, "", nil, false); err != nil {
			return err
		}
		c.runQuery(seq, req)
		return nil

	case cmdRespond:
		var req respondRequest
		if err := decode(&req); err != nil {
			return bad(err)
		}
		respond, ok := c.s.queries.take(req.ID, c.s.now())
		if !ok {
			return c.reply(seq, msgInvalidQueryID, nil, false)
		}
		return c.reply(seq, errString(respond(req.Payload)), nil, false)

	default: // registered: spec already proved it exists
		stopWatching := c.watchGone()
		resp, err := c.s.handlers[cmd](Body{raw: raw, ctx: c.ctx})
		stopWatching()
		if err != nil {
			return c.reply(seq, err.Error(), nil, true)
		}
		return c.reply(seq, "", resp, true)
	}
}

// watchGone cancels the connection's context when its client hangs up
// while a registered command runs: the serve loop reads nothing then, so
// without it a handler waiting on Body.Context would learn of the hang-up
// only once it returned. It peeks, consuming nothing, so a request the
// client sends meanwhile is read as usual afterwards (and shows the client
// is still there). The returned stop ends the watch and must be called
// before the serve loop reads again.
func (c *conn) watchGone() (stop func()) {
	if c.in.r.Buffered() > 0 {
		return func() {} // the next request is here already: the client is too
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := c.in.r.Peek(1)
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) && !c.closing.Load() {
			c.log.Debug("rpc client gone during a command; cancelling it", "err", err)
			c.cancel()
		}
	}()
	return func() {
		_ = c.nc.SetReadDeadline(time.Now()) // ends the peek
		<-done
		_ = c.nc.SetReadDeadline(time.Time{}) // a served connection has no read deadline
	}
}

// clearDeadlineIfReady lifts the time limit on a connection once it has
// done its handshake and auth: a served connection may idle on a stream.
func (c *conn) clearDeadlineIfReady() {
	if c.ready() {
		_ = c.nc.SetReadDeadline(time.Time{})
	}
}

// reply sends one response. A body we cannot encode is our fault, not the
// client's; the client still gets an answer in the framing it expects.
func (c *conn) reply(seq uint64, msg string, body any, withBody bool) error {
	frame, err := encodeFrame(responseHeader{Seq: seq, Error: msg}, body, withBody)
	if err != nil {
		c.log.Error("encoding an rpc response failed", "seq", seq, "err", err)
		frame, err = encodeFrame(responseHeader{Seq: seq, Error: "encode response: " + err.Error()}, nil, withBody)
		if err != nil {
			return err
		}
	}
	return c.write(frame)
}

// sendRecord sends one record of a stream, monitor or query.
func (c *conn) sendRecord(seq uint64, rec any) error {
	frame, err := encodeFrame(responseHeader{Seq: seq}, rec, true)
	if err != nil {
		c.log.Error("encoding an rpc record failed", "seq", seq, "err", err)
		return nil // skip the record; the stream stays in step
	}
	return c.write(frame)
}

// write sends one whole frame. A failed write closes the connection, which
// ends the serve loop and every feed of this client.
func (c *conn) write(frame []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.nc.Write(frame); err != nil {
		if !c.closing.Load() {
			c.log.Debug("rpc client gone", "err", err)
		}
		c.shut()
		return fmt.Errorf("write rpc response: %w", err)
	}
	return nil
}

// sendEvent sends one event record shaped as serf shapes it.
func (c *conn) sendEvent(seq uint64, e Event) error {
	switch e.Type {
	case "user":
		return c.sendRecord(seq, userEventRecord{
			Event: e.Type, LTime: e.LTime, Name: e.Name, Payload: e.Payload, Coalesce: e.Coalesce,
		})
	case "query":
		now := c.s.now()
		deadline := e.Deadline
		if deadline.IsZero() {
			deadline = now.Add(defaultQueryTTL)
		}
		id := c.s.queries.add(e.Respond, deadline, now)
		return c.sendRecord(seq, queryEventRecord{
			Event: e.Type, ID: id, LTime: e.LTime, Name: e.Name, Payload: e.Payload,
		})
	default:
		return c.sendRecord(seq, memberEventRecord{Event: e.Type, Members: toWire(e.Members)})
	}
}

// runQuery runs one query on its own goroutine and streams its acks and
// responses through a bounded buffer, so a slow client never holds up the
// Backend; "done" is always sent last, after everything buffered.
func (c *conn) runQuery(seq uint64, req QueryRequest) {
	records := make(chan queryRecord, queryBuffer)
	var dropped atomic.Uint64
	push := func(r queryRecord) {
		select {
		case records <- r:
		default:
			dropped.Add(1)
		}
	}
	finished := make(chan error, 1)

	c.children.Add(2)
	go func() {
		defer c.children.Done()
		finished <- c.s.backend.Query(c.ctx, req,
			func(from string) { push(queryRecord{Type: queryRecordAck, From: from}) },
			func(r NodeResponse) {
				push(queryRecord{Type: queryRecordResponse, From: r.From, Payload: r.Payload})
			})
	}()
	go func() {
		defer c.children.Done()
		for {
			select {
			case r := <-records:
				if c.sendRecord(seq, r) != nil {
					return
				}
			case err := <-finished:
				// Every callback has returned, so all that is left is
				// in the buffer.
				for drained := false; !drained; {
					select {
					case r := <-records:
						if c.sendRecord(seq, r) != nil {
							return
						}
					default:
						drained = true
					}
				}
				if n := dropped.Load(); n > 0 {
					c.log.Warn("rpc client read a query too slowly; dropped records", "seq", seq, "dropped", n)
				}
				done := queryRecord{Type: queryRecordDone}
				if err != nil {
					done.Error = err.Error()
				}
				_ = c.sendRecord(seq, done)
				return
			}
		}
	}()
}

// shut closes the socket; the serve loop and the feeds then end.
func (c *conn) shut() {
	c.closing.Store(true)
	_ = c.nc.Close()
}

// linger closes a connection after an error reply: it sends FIN, then reads
// and discards what the client still sends for a moment. Closing with
// unread input would send a reset, which can destroy the reply before the
// client reads it.
func (c *conn) linger() {
	c.closing.Store(true)
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		_ = c.nc.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.Copy(io.Discard, io.LimitReader(c.nc, lingerBytes))
	}
	_ = c.nc.Close()
}

// cleanup ends everything the connection started and waits for it.
func (c *conn) cleanup() {
	c.shut()
	c.cancel()
	for seq, f := range c.streams {
		f.stop()
		delete(c.streams, seq)
	}
	if c.monitor != nil {
		c.monitor.stop()
		c.monitor = nil
	}
	c.children.Wait()
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// filterMembers keeps the members whose tags, status and name match the
// given regular expressions, each anchored at both ends as serf anchors
// them. An empty status or name matches everything; a filtered tag that a
// member lacks is matched against "".
func filterMembers(ms []Member, tags map[string]string, status, name string) ([]Member, error) {
	tagRes := make(map[string]*regexp.Regexp, len(tags))
	for tag, expr := range tags {
		re, err := anchored(fmt.Sprintf("tag %q", tag), expr)
		if err != nil {
			return nil, err
		}
		tagRes[tag] = re
	}
	var statusRe, nameRe *regexp.Regexp
	var err error
	if status != "" {
		if statusRe, err = anchored("status", status); err != nil {
			return nil, err
		}
	}
	if name != "" {
		if nameRe, err = anchored("name", name); err != nil {
			return nil, err
		}
	}

	out := make([]Member, 0, len(ms))
next:
	for _, m := range ms {
		for tag, re := range tagRes {
			if !re.MatchString(m.Tags[tag]) {
				continue next
			}
		}
		if statusRe != nil && !statusRe.MatchString(m.Status) {
			continue
		}
		if nameRe != nil && !nameRe.MatchString(m.Name) {
			continue
		}
		out = append(out, m)
	}
	return out, nil
}

// anchored compiles ^(?:expr)$. The group keeps an alternation whole, where
// serf's plain ^expr$ would anchor only its ends; expr is first compiled by
// itself so that a stray parenthesis cannot escape the group.
func anchored(what, expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("bad %s filter %q: %w", what, expr, err)
	}
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		return nil, fmt.Errorf("bad %s filter %q: %w", what, expr, err)
	}
	return re, nil
}

// parseLogLevel maps serf's level names to slog levels. Serf's TRACE is
// finer than DEBUG; slog has nothing finer, so both mean debug.
func parseLogLevel(s string) (slog.Level, bool) {
	switch strings.ToUpper(s) {
	case "TRACE", "DEBUG":
		return slog.LevelDebug, true
	case "INFO":
		return slog.LevelInfo, true
	case "WARN":
		return slog.LevelWarn, true
	case "ERR", "ERROR":
		return slog.LevelError, true
	}
	return 0, false
}
