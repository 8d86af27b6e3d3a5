package rpc

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// frames encodes values back to back, as a client writes them.
func frames(t testing.TB, vals ...any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	for _, v := range vals {
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func writeFrames(t testing.TB, w io.Writer, vals ...any) {
	t.Helper()
	if _, err := w.Write(frames(t, vals...)); err != nil {
		t.Fatal(err)
	}
}

// poll checks cond until it holds, failing the test after a bound.
func poll(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func waitLog(t testing.TB, logs *logRecorder, level slog.Level, substr string) {
	t.Helper()
	poll(t, "log line "+substr, func() bool { return logs.count(level, substr) > 0 })
}

// rawConn reads what the server writes, value by value.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	in *budgetReader
}

func newRawConn(t testing.TB, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, nc: nc, in: newBudgetReader(nc)}
}

func (r *rawConn) next() ([]byte, error) {
	r.in.reset(1 << 20)
	return readValue(r.in)
}

// expect reads one response header and checks its Error; with body it
// reads the body that follows.
func (r *rawConn) expect(msgPrefix string, body bool) {
	r.t.Helper()
	raw, err := r.next()
	if err != nil {
		r.t.Fatalf("reading the reply (want %q): %v", msgPrefix, err)
	}
	var h responseHeader
	if err := msgpack.Unmarshal(raw, &h); err != nil {
		r.t.Fatalf("reply header: %v", err)
	}
	if !strings.HasPrefix(h.Error, msgPrefix) || (msgPrefix == "" && h.Error != "") {
		r.t.Fatalf("reply error %q, want prefix %q", h.Error, msgPrefix)
	}
	if body {
		if _, err := r.next(); err != nil {
			r.t.Fatalf("reply body: %v", err)
		}
	}
}

// expectClosed checks that the server closed the connection.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	raw, err := r.next()
	if err == nil {
		r.t.Fatalf("connection still open; got % x", raw)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		r.t.Fatal("connection still open: read timed out")
	}
}

func TestBadInput(t *testing.T) {
	hs := func(seq uint64) []any {
		return []any{requestHeader{Command: cmdHandshake, Seq: seq}, handshakeRequest{Version: 1}}
	}
	cat := func(parts ...[]any) []any {
		var out []any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	type reply struct {
		msg  string // prefix of the expected Error
		body bool
	}
	nested := append(bytes.Repeat([]byte{0x91}, 100), 0xc0)
	cases := []struct {
		name     string
		token    string
		raw      []byte // sent as is, after vals
		vals     []any
		halfOpen bool // close our write side after sending
		replies  []reply
		closed   bool
		warns    int    // Warn records the server logs
		warnLike string // and one of them says this
	}{
		{name: "garbage", raw: []byte{0xc1, 0xff, 0x00}, closed: true, warns: 1, warnLike: "bad request"},
		{name: "http request", raw: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), closed: true, warns: 1, warnLike: "bad request header"},
		{name: "truncated header", raw: []byte{0x82, 0xa7, 'C', 'o', 'm'}, halfOpen: true, closed: true, warns: 1, warnLike: "bad request"},
		{name: "truncated body", vals: hs(1), raw: []byte{0x82, 0xa7, 'C', 'o', 'm', 'm', 'a', 'n', 'd', 0xa4, 'j', 'o', 'i', 'n', 0xa3, 'S', 'e', 'q', 0x02, 0xde}, halfOpen: true,
			replies: []reply{{"", false}}, closed: true, warns: 1, warnLike: "closing rpc connection"},
		{name: "oversize body", vals: cat(hs(1), []any{requestHeader{Command: cmdEvent, Seq: 2}, eventRequest{Name: "big", Payload: make([]byte, 8192)}}),
			replies: []reply{{"", false}}, closed: true, warns: 1, warnLike: "closing rpc connection"},
		{name: "oversize header", vals: []any{requestHeader{Command: strings.Repeat("x", 8192), Seq: 1}}, closed: true, warns: 1, warnLike: "request too large"},
		{name: "declared length beyond the data", raw: []byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0}, halfOpen: true, closed: true, warns: 1, warnLike: "bad request"},
		{name: "nesting too deep", raw: nested, closed: true, warns: 1, warnLike: "bad request"},
		{name: "header of wrong types", raw: frames(t, map[string]any{"Command": 5, "Seq": "x"}), closed: true, warns: 1, warnLike: "bad request header"},
		{name: "header is nil", raw: []byte{0xc0}, replies: []reply{{msgHandshakeRequired, false}}, closed: true, warns: 1, warnLike: "before handshake"},
		{name: "command before handshake", vals: []any{requestHeader{Command: cmdMembers, Seq: 1}},
			replies: []reply{{msgHandshakeRequired, false}}, closed: true, warns: 1, warnLike: "before handshake"},
		{name: "unknown command", vals: cat(hs(1), []any{requestHeader{Command: "rm-rf", Seq: 2}, map[string]int{"x": 1}}),
			replies: []reply{{"", false}, {msgUnsupportedCommand, false}}, closed: true, warns: 1, warnLike: "closing rpc connection"},
		{name: "wrong types in a body", vals: cat(hs(1), []any{requestHeader{Command: cmdJoin, Seq: 2}, map[string]any{"Existing": 42, "Replay": "yes"}}),
			replies: []reply{{"", false}, {"bad join request", true}}},
		{name: "body of the wrong shape", vals: cat(hs(1), []any{requestHeader{Command: cmdQuery, Seq: 2}, "a string"}),
			replies: []reply{{"", false}, {"bad query request", false}}},
		{name: "handshake body of wrong types", vals: []any{requestHeader{Command: cmdHandshake, Seq: 1}, map[string]any{"Version": "one"}},
			replies: []reply{{"bad handshake request", false}}},
		{name: "unsupported version", vals: []any{requestHeader{Command: cmdHandshake, Seq: 1}, handshakeRequest{Version: 2}},
			replies: []reply{{msgUnsupportedVersion, false}}},
		{name: "duplicate handshake", vals: cat(hs(1), hs(2)), replies: []reply{{"", false}, {msgDuplicateHandshake, false}}},
		{name: "bad event filter", vals: cat(hs(1), []any{requestHeader{Command: cmdStream, Seq: 2}, streamRequest{Type: "nope"}}),
			replies: []reply{{"", false}, {msgInvalidFilter, false}}},
		{name: "stream seq reused", vals: cat(hs(1), []any{
			requestHeader{Command: cmdStream, Seq: 2}, streamRequest{Type: "*"},
			requestHeader{Command: cmdStream, Seq: 2}, streamRequest{Type: "user"}}),
			replies: []reply{{"", false}, {"", false}, {msgStreamExists, false}}},
		{name: "stop of nothing", vals: cat(hs(1), []any{requestHeader{Command: cmdStop, Seq: 2}, stopRequest{Stop: 99}}),
			replies: []reply{{"", false}, {"", false}}},
		{name: "respond to nothing", vals: cat(hs(1), []any{requestHeader{Command: cmdRespond, Seq: 2}, respondRequest{ID: 7}}),
			replies: []reply{{"", false}, {msgInvalidQueryID, false}}},
		{name: "wrong token", token: "right", vals: cat(hs(1), []any{requestHeader{Command: cmdAuth, Seq: 2}, authRequest{AuthKey: "wrong"}}),
			replies: []reply{{"", false}, {msgInvalidAuthToken, false}}, warns: 1, warnLike: "wrong token"},
		{name: "command before auth", token: "right", vals: cat(hs(1), []any{
			requestHeader{Command: cmdMembersFiltered, Seq: 2}, membersFilteredRequest{Name: "x"},
			requestHeader{Command: cmdMembers, Seq: 3}}),
			replies: []reply{{"", false}, {msgAuthRequired, false}, {msgAuthRequired, false}}, warns: 1, warnLike: "before auth"},
		{name: "unknown command before auth", token: "right", vals: cat(hs(1), []any{requestHeader{Command: "rm-rf", Seq: 2}}),
			replies: []reply{{"", false}, {msgAuthRequired, false}}, closed: true, warns: 1, warnLike: "before auth"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, ServerConfig{Token: tc.token, MaxRequestBytes: 4096}, nil)
			r := newRawConn(t, ts.addr)
			var input []byte
			if len(tc.vals) > 0 {
				input = frames(t, tc.vals...)
			}
			input = append(input, tc.raw...)
			if _, err := r.nc.Write(input); err != nil {
				t.Fatal(err)
			}
			if tc.halfOpen {
				if err := r.nc.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			for _, want := range tc.replies {
				r.expect(want.msg, want.body)
			}
			if tc.closed {
				r.expectClosed()
			} else {
				// Still in step: a handshake (perhaps a duplicate), auth,
				// and members all answer in order.
				vals := hs(100)
				if tc.token != "" {
					vals = append(vals, requestHeader{Command: cmdAuth, Seq: 101}, authRequest{AuthKey: tc.token})
				}
				vals = append(vals, requestHeader{Command: cmdMembers, Seq: 102})
				writeFrames(t, r.nc, vals...)
				for range len(vals) / 2 {
					if _, err := r.next(); err != nil { // handshake / auth header
						t.Fatalf("connection broken: %v", err)
					}
				}
				r.expect("", true)
			}

			// The server is still up and serves a fresh client.
			c := dial(t, ts.addr, ClientConfig{Token: tc.token})
			if _, err := c.Members(); err != nil {
				t.Fatalf("fresh client: %v", err)
			}
			if tc.warns > 0 {
				waitLog(t, ts.logs, slog.LevelWarn, tc.warnLike)
			}
			if n := ts.logs.count(slog.LevelWarn, ""); n != tc.warns {
				t.Fatalf("%d warnings logged, want %d", n, tc.warns)
			}
		})
	}
}

func TestReadValueCodes(t *testing.T) {
	// Every msgpack type readValue must walk, each followed by a marker
	// that must be left unread.
	vals := []any{
		nil, true, false, 0, 127, -1, -32, -33, 200, 70000, 1 << 40, int8(-100), int16(-30000), int32(-1 << 30), int64(-1 << 40),
		float32(1.5), 2.5, "", "short", strings.Repeat("m", 200), strings.Repeat("l", 70000),
		[]byte{}, []byte{1}, make([]byte, 300), make([]byte, 70000),
		[]int{}, []int{1, 2, 3}, make([]int, 20), make([]int, 70000),
		map[string]int{}, map[string]int{"a": 1}, func() map[int]int {
			m := map[int]int{}
			for i := range 20 {
				m[i] = i
			}
			return m
		}(),
		time.Unix(1, 0), time.Unix(1<<40, 5),
		map[string]any{"nested": []any{map[string]any{"x": []byte{1}}}},
	}
	for _, v := range vals {
		data := frames(t, v, "END")
		in := newBudgetReader(bytes.NewReader(data))
		in.reset(len(data))
		got, err := readValue(in)
		if err != nil {
			t.Fatalf("%T: %v", v, err)
		}
		want := data[:len(data)-len(frames(t, "END"))]
		if !bytes.Equal(got, want) {
			t.Fatalf("%T: read %d bytes, want %d", v, len(got), len(want))
		}
		rest, err := readValue(in)
		if err != nil || !bytes.Equal(rest, frames(t, "END")) {
			t.Fatalf("%T: marker after it = % x, %v", v, rest, err)
		}
	}
	// Every ext size, including those msgpack/v5 does not produce for us.
	for _, ext := range [][]byte{
		{0xd4, 1, 0}, {0xd5, 1, 0, 0}, {0xd6, 1, 0, 0, 0, 0}, {0xd7, 1, 0, 0, 0, 0, 0, 0, 0, 0},
		append([]byte{0xd8, 1}, make([]byte, 16)...), {0xc7, 2, 1, 0, 0}, {0xc8, 0, 1, 1, 0}, {0xc9, 0, 0, 0, 1, 1, 0},
	} {
		in := newBudgetReader(bytes.NewReader(append(ext, 0xc0)))
		in.reset(1 << 10)
		got, err := readValue(in)
		if err != nil || !bytes.Equal(got, ext) {
			t.Fatalf("ext % x: got % x, %v", ext, got, err)
		}
	}
	if _, err := readValue(newBudgetReaderWith(nil, 10)); !errors.Is(err, io.EOF) {
		t.Fatalf("empty input = %v, want io.EOF", err)
	}
	if _, err := readValue(newBudgetReaderWith([]byte{0x92, 0x01}, 10)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut input = %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := readValue(newBudgetReaderWith(frames(t, make([]byte, 100)), 50)); !errors.Is(err, errTooLarge) {
		t.Fatalf("over budget = %v, want errTooLarge", err)
	}
}

func newBudgetReaderWith(data []byte, budget int) *budgetReader {
	b := newBudgetReader(bytes.NewReader(data))
	b.reset(budget)
	return b
}

// A connection that does not finish its handshake and auth in time is
// dropped, so strangers cannot hold every slot.
func TestUnauthenticatedConnectionsTimeOut(t *testing.T) {
	ts := startServer(t, ServerConfig{Token: "right"}, func(s *Server) { s.authTimeout = 50 * time.Millisecond })

	idle := newRawConn(t, ts.addr)
	idle.expectClosed()
	waitLog(t, ts.logs, slog.LevelWarn, "no handshake or auth in time")

	// Handshake alone is not enough when a token is set.
	half := newRawConn(t, ts.addr)
	writeFrames(t, half.nc, requestHeader{Command: cmdHandshake, Seq: 1}, handshakeRequest{Version: 1})
	half.expect("", false)
	half.expectClosed()

	// Once authenticated, a connection may idle.
	c := dial(t, ts.addr, ClientConfig{Token: "right"})
	ok := newRawConn(t, ts.addr)
	writeFrames(t, ok.nc,
		requestHeader{Command: cmdHandshake, Seq: 1}, handshakeRequest{Version: 1},
		requestHeader{Command: cmdAuth, Seq: 2}, authRequest{AuthKey: "right"})
	ok.expect("", false)
	ok.expect("", false)
	_ = ok.nc.SetReadDeadline(time.Now().Add(4 * ts.authTimeout))
	if _, err := ok.next(); !isTimeout(err) {
		t.Fatalf("authenticated idle connection: %v, want our own read timeout", err)
	}
	if _, err := c.Members(); err != nil {
		t.Fatal(err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
