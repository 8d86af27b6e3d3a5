package rpc

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeBackend stands in for the agent, which is I/O (gossip, keyring,
// logging) as far as this package is concerned. It records every call and
// answers with what the test put in it.
type fakeBackend struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change

	members []Member

	joinAddrs  []string
	joinReplay bool
	joinN      int
	joinErr    error

	leaves   int
	leaveErr error

	forceLeaves []string // "node" or "node prune"
	forceErr    error

	tagsSet     map[string]string
	tagsRemoved []string
	tagsErr     error

	userEvents []Event
	eventErr   error

	keyCalls []string // "op key"
	keyResp  KeyResponse
	keyErr   error

	stats  map[string]map[string]string
	coords map[string]Coordinate

	queries []QueryRequest
	// query runs a query; nil answers at once with nothing.
	query func(ctx context.Context, req QueryRequest, onAck func(string), onResponse func(NodeResponse)) error
	// checkQuery, when set, refuses queries before they go out.
	checkQuery func(QueryRequest) error

	nextSub   int
	eventSubs map[int]func(Event)
	logSubs   map[int]logSub
	// onSubscribe, when set, runs after each SubscribeEvents with the new
	// subscriber, on the subscribing goroutine.
	onSubscribe func(fn func(Event))
}

type logSub struct {
	level slog.Level
	fn    func(string)
}

func newFake() *fakeBackend {
	return &fakeBackend{
		changed:   make(chan struct{}),
		eventSubs: map[int]func(Event){},
		logSubs:   map[int]logSub{},
	}
}

// touch wakes waitFor; the caller holds mu.
func (f *fakeBackend) touch() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// waitFor waits until cond (called with mu held) holds, waking on every
// change of the fake; it fails the test after a generous bound.
func (f *fakeBackend) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		f.mu.Lock()
		ok := cond()
		ch := f.changed
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (f *fakeBackend) Members() []Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Member(nil), f.members...)
}

func (f *fakeBackend) Join(addrs []string, replay bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.joinAddrs, f.joinReplay = addrs, replay
	f.touch()
	return f.joinN, f.joinErr
}

func (f *fakeBackend) Leave() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leaves++
	f.touch()
	return f.leaveErr
}

func (f *fakeBackend) ForceLeave(node string, prune bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if prune {
		node += " prune"
	}
	f.forceLeaves = append(f.forceLeaves, node)
	f.touch()
	return f.forceErr
}

func (f *fakeBackend) UpdateTags(set map[string]string, remove []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tagsSet, f.tagsRemoved = set, remove
	f.touch()
	return f.tagsErr
}

func (f *fakeBackend) UserEvent(name string, payload []byte, coalesce bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.userEvents = append(f.userEvents, Event{Type: "user", Name: name, Payload: payload, Coalesce: coalesce})
	f.touch()
	return f.eventErr
}

func (f *fakeBackend) CheckQuery(req QueryRequest) error {
	f.mu.Lock()
	check := f.checkQuery
	f.mu.Unlock()
	if check == nil {
		return nil
	}
	return check(req)
}

func (f *fakeBackend) Query(ctx context.Context, req QueryRequest, onAck func(string), onResponse func(NodeResponse)) error {
	f.mu.Lock()
	f.queries = append(f.queries, req)
	run := f.query
	f.touch()
	f.mu.Unlock()
	if run == nil {
		return nil
	}
	return run(ctx, req, onAck, onResponse)
}

func (f *fakeBackend) Keys(op KeyOp, key string) (KeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keyCalls = append(f.keyCalls, string(op)+" "+key)
	f.touch()
	return f.keyResp, f.keyErr
}

func (f *fakeBackend) Stats() map[string]map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

func (f *fakeBackend) Coordinate(node string) (Coordinate, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.coords[node]
	return c, ok
}

func (f *fakeBackend) SubscribeEvents(fn func(Event)) func() {
	f.mu.Lock()
	id := f.nextSub
	f.nextSub++
	f.eventSubs[id] = fn
	f.touch()
	hook := f.onSubscribe
	f.mu.Unlock()
	if hook != nil {
		hook(fn)
	}
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.eventSubs, id)
		f.touch()
	}
}

func (f *fakeBackend) SubscribeLogs(level slog.Level, fn func(string)) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := f.nextSub
	f.nextSub++
	f.logSubs[id] = logSub{level: level, fn: fn}
	f.touch()
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.logSubs, id)
		f.touch()
	}
}

// emit delivers an event to every subscriber, as the agent would, on the
// caller's goroutine.
func (f *fakeBackend) emit(e Event) {
	f.mu.Lock()
	subs := make([]func(Event), 0, len(f.eventSubs))
	for _, fn := range f.eventSubs {
		subs = append(subs, fn)
	}
	f.mu.Unlock()
	for _, fn := range subs {
		fn(e)
	}
}

// log delivers a log line to the subscribers whose level admits it.
func (f *fakeBackend) log(level slog.Level, line string) {
	f.mu.Lock()
	var subs []func(string)
	for _, s := range f.logSubs {
		if level >= s.level {
			subs = append(subs, s.fn)
		}
	}
	f.mu.Unlock()
	for _, fn := range subs {
		fn(line)
	}
}

// eventSubscribers and logSubscribers are for waitFor conditions, which
// run with mu held.
func (f *fakeBackend) eventSubscribers() int { return len(f.eventSubs) }
func (f *fakeBackend) logSubscribers() int   { return len(f.logSubs) }

// logRecorder is a slog.Handler that keeps every record, for tests that
// assert what the server logged.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec)
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// count returns how many records at level or above contain substr in
// their message or attributes.
func (r *logRecorder) count(level slog.Level, substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.records {
		text := rec.Message
		rec.Attrs(func(a slog.Attr) bool {
			text += " " + a.String()
			return true
		})
		if rec.Level >= level && strings.Contains(text, substr) {
			n++
		}
	}
	return n
}

// testServer is a server on a loopback listener with a fake backend.
type testServer struct {
	*Server
	addr string
	fake *fakeBackend
	logs *logRecorder
}

// startServer starts a server and stops it when the test ends, checking
// that Serve then returned nil. setup, when given, runs before Serve.
func startServer(t testing.TB, cfg ServerConfig, setup func(*Server)) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := newFake()
	logs := &logRecorder{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(logs)
	}
	s := NewServer(ln, fake, cfg)
	if setup != nil {
		setup(s) // before Serve: registrations, test clocks
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve returned %v after Close, want nil", err)
		}
	})
	return &testServer{Server: s, addr: ln.Addr().String(), fake: fake, logs: logs}
}

// dial connects the package's own client and closes it with the test.
func dial(t testing.TB, addr string, cfg ClientConfig) *Client {
	t.Helper()
	c, err := Dial(addr, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv waits for one value on ch, failing the test after a bound.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

var errBoom = errors.New("boom")
