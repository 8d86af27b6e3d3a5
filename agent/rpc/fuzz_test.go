package rpc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// scriptConn is a net.Conn whose input is a fixed script and whose output
// is kept: the fuzz target drives one connection's read, decode and
// dispatch path without sockets or timing.
type scriptConn struct {
	in     *bytes.Reader
	mu     sync.Mutex
	out    bytes.Buffer
	closed bool
}

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	return c.in.Read(p)
}

func (c *scriptConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(p)
}

func (c *scriptConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *scriptConn) LocalAddr() net.Addr              { return scriptAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return scriptAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
func (scriptAddr) Network() string                     { return "script" }
func (scriptAddr) String() string                      { return "script" }

type scriptAddr struct{}

func fuzzSeeds(t testing.TB) [][]byte {
	hs := []any{requestHeader{Command: cmdHandshake, Seq: 1}, handshakeRequest{Version: 1}}
	auth := []any{requestHeader{Command: cmdAuth, Seq: 2}, authRequest{AuthKey: "tok"}}
	with := func(rest ...any) []byte {
		vals := append(append(append([]any{}, hs...), auth...), rest...)
		return frames(t, vals...)
	}
	return [][]byte{
		frames(t, hs...),
		frames(t, append(hs, requestHeader{Command: cmdMembers, Seq: 2})...),
		frames(t, append(hs, requestHeader{Command: cmdAuth, Seq: 2}, authRequest{AuthKey: "nope"})...),
		with(requestHeader{Command: cmdMembers, Seq: 3},
			requestHeader{Command: cmdMembersFiltered, Seq: 4}, membersFilteredRequest{Tags: map[string]string{"role": "s.*"}, Status: "alive", Name: "s1"},
			requestHeader{Command: cmdJoin, Seq: 5}, joinRequest{Existing: []string{"a:1"}, Replay: true},
			requestHeader{Command: cmdEvent, Seq: 6}, eventRequest{Name: "deploy", Payload: []byte{1}, Coalesce: true},
			requestHeader{Command: cmdForceLeave, Seq: 7}, forceLeaveRequest{Node: "x", Prune: true},
			requestHeader{Command: cmdTags, Seq: 8}, tagsRequest{Tags: map[string]string{"a": "b"}, DeleteTags: []string{"c"}},
			requestHeader{Command: cmdStats, Seq: 9},
			requestHeader{Command: cmdGetCoordinate, Seq: 10}, coordinateRequest{Node: "s1"},
			requestHeader{Command: cmdListKeys, Seq: 11},
			requestHeader{Command: cmdInstallKey, Seq: 12}, keyRequest{Key: "k"},
			requestHeader{Command: cmdLeave, Seq: 13}),
		with(requestHeader{Command: cmdStream, Seq: 3}, streamRequest{Type: "*"},
			requestHeader{Command: cmdMonitor, Seq: 4}, monitorRequest{LogLevel: "debug"},
			requestHeader{Command: cmdRespond, Seq: 5}, respondRequest{ID: 1, Payload: []byte("pong")},
			requestHeader{Command: cmdStop, Seq: 6}, stopRequest{Stop: 3},
			requestHeader{Command: cmdStop, Seq: 7}, stopRequest{Stop: 4}),
		with(requestHeader{Command: cmdQuery, Seq: 3}, QueryRequest{Name: "place", Timeout: time.Second, RequestAck: true}),
		with(requestHeader{Command: "echo", Seq: 3}, map[string]any{"a": []any{1, "b", nil}}),
		with(requestHeader{Command: "nonesuch", Seq: 3}),
		{0xc1},
		{0xdd, 0xff, 0xff, 0xff, 0xff},
	}
}

// FuzzServerInput feeds arbitrary bytes to one connection. The server must
// not panic or hang, must end the connection when the input ends, and must
// write only whole msgpack values.
func FuzzServerInput(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fake := newFake()
		fake.members = sampleMembers()
		fake.query = func(_ context.Context, _ QueryRequest, onAck func(string), onResponse func(NodeResponse)) error {
			onAck("s1")
			onResponse(NodeResponse{From: "s1", Payload: []byte("ok")})
			return errors.New("partial")
		}
		fake.onSubscribe = func(fn func(Event)) {
			fn(Event{Type: "member-join", Members: sampleMembers()[:1]})
			fn(Event{Type: "query", Name: "ping", Deadline: time.Now().Add(time.Minute), Respond: func([]byte) error { return nil }})
		}
		s := NewServer(nil, fake, ServerConfig{Token: "tok", MaxRequestBytes: 4096, Logger: slog.New(slog.DiscardHandler)})
		s.Register("echo", func(b Body) (any, error) {
			var v any
			if err := b.Decode(&v); err != nil {
				return nil, err
			}
			return v, nil
		})

		conn := &scriptConn{in: bytes.NewReader(data)}
		c := s.track(conn)
		finished := make(chan struct{})
		go func() {
			defer close(finished)
			c.serve() // returns when the script runs out, or earlier
			if err := s.Close(); err != nil {
				t.Error(err)
			}
		}()
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
			buf := make([]byte, 1<<20)
			t.Fatalf("server hung on % x\n%s", data, buf[:runtime.Stack(buf, true)])
		}

		conn.mu.Lock()
		out := append([]byte(nil), conn.out.Bytes()...)
		conn.mu.Unlock()
		in := newBudgetReader(bytes.NewReader(out))
		for {
			in.reset(len(out) + 1)
			if _, err := readValue(in); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("server wrote a broken value: %v\n% x", err, out)
				}
				break
			}
		}
	})
}
