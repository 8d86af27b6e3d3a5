package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func sampleMembers() []Member {
	return []Member{
		{
			Name: "s1", Addr: net.IPv4(10, 0, 0, 1).To4(), Port: 7946,
			Tags:        map[string]string{"role": "server", "cpu": "12.5"},
			Status:      "alive",
			ProtocolMin: 1, ProtocolMax: 5, ProtocolCur: 2, DelegateMin: 2, DelegateMax: 5, DelegateCur: 4,
		},
		{
			Name: "s2", Addr: net.IPv4(10, 0, 0, 2), Port: 65535, // 16-byte form
			Tags: map[string]string{"role": "server"}, Status: "failed",
		},
		{
			Name: "i1", Addr: net.ParseIP("fd00::1"), Port: 1,
			Tags: map[string]string{"role": "interpreter", "kind": "demo"}, Status: "left",
		},
	}
}

func TestClientMembersRoundTrip(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	ts.fake.members = sampleMembers()
	c := dial(t, ts.addr, ClientConfig{})

	got, err := c.Members()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, sampleMembers()) {
		t.Fatalf("members:\n got %#v\nwant %#v", got, sampleMembers())
	}
}

func TestClientMembersFiltered(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	ts.fake.members = sampleMembers()
	c := dial(t, ts.addr, ClientConfig{})

	cases := []struct {
		name         string
		tags         map[string]string
		status, node string
		want         []string
		wantErr      string
	}{
		{name: "everything", want: []string{"s1", "s2", "i1"}},
		{name: "tag", tags: map[string]string{"role": "server"}, want: []string{"s1", "s2"}},
		{name: "tag is anchored", tags: map[string]string{"role": "serv"}, want: []string{}},
		{name: "tag regex", tags: map[string]string{"role": "inter.*"}, want: []string{"i1"}},
		{name: "missing tag matches empty", tags: map[string]string{"kind": ""}, want: []string{"s1", "s2"}},
		{name: "status", status: "alive|left", want: []string{"s1", "i1"}},
		{name: "alternation stays anchored", node: "s|i1", want: []string{"i1"}},
		{name: "name", node: "s.", want: []string{"s1", "s2"}},
		{name: "all three", tags: map[string]string{"role": "server"}, status: "failed", node: "s2", want: []string{"s2"}},
		{name: "bad tag regex", tags: map[string]string{"role": "("}, wantErr: `bad tag "role" filter "("`},
		{name: "bad status regex", status: "[", wantErr: `bad status filter "["`},
		{name: "bad name regex", node: "a)(b", wantErr: `bad name filter "a)(b"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.MembersFiltered(tc.tags, tc.status, tc.node)
			if tc.wantErr != "" {
				var re *RemoteError
				if !errors.As(err, &re) || !strings.Contains(re.Message, tc.wantErr) {
					t.Fatalf("err = %v, want a RemoteError containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			names := []string{}
			for _, m := range got {
				names = append(names, m.Name)
			}
			if !reflect.DeepEqual(names, tc.want) {
				t.Fatalf("got %v, want %v", names, tc.want)
			}
		})
	}
	// The connection survived the errors.
	if _, err := c.Members(); err != nil {
		t.Fatalf("members after filter errors: %v", err)
	}
}

func TestClientCommandsReachBackend(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	c := dial(t, ts.addr, ClientConfig{})

	f.joinN = 2
	n, err := c.Join([]string{"10.0.0.1:7946", "10.0.0.2:7946"}, true)
	if err != nil || n != 2 {
		t.Fatalf("Join = %d, %v", n, err)
	}
	if !reflect.DeepEqual(f.joinAddrs, []string{"10.0.0.1:7946", "10.0.0.2:7946"}) || !f.joinReplay {
		t.Fatalf("backend saw join %v replay=%v", f.joinAddrs, f.joinReplay)
	}

	// A partial join: the count and the error both come back.
	f.mu.Lock()
	f.joinN, f.joinErr = 1, errors.New("10.0.0.2:7946: connection refused")
	f.mu.Unlock()
	n, err = c.Join([]string{"a", "b"}, false)
	var re *RemoteError
	if n != 1 || !errors.As(err, &re) || re.Command != "join" || re.Message != "10.0.0.2:7946: connection refused" {
		t.Fatalf("partial Join = %d, %v", n, err)
	}

	if err := c.ForceLeave("dead", false); err != nil {
		t.Fatal(err)
	}
	if err := c.ForceLeave("gone", true); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.forceLeaves, []string{"dead", "gone prune"}) {
		t.Fatalf("force leaves %v", f.forceLeaves)
	}

	if err := c.UpdateTags(map[string]string{"zone": "a"}, []string{"old"}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.tagsSet, map[string]string{"zone": "a"}) || !reflect.DeepEqual(f.tagsRemoved, []string{"old"}) {
		t.Fatalf("tags set %v removed %v", f.tagsSet, f.tagsRemoved)
	}
	f.mu.Lock()
	f.tagsErr = errors.New(`tag "role" is set by the agent itself`)
	f.mu.Unlock()
	if err := c.UpdateTags(map[string]string{"role": "x"}, nil); !errors.As(err, &re) || !strings.Contains(re.Message, `tag "role"`) {
		t.Fatalf("UpdateTags error = %v", err)
	}

	payload := []byte{0, 1, 2, 0xff}
	if err := c.UserEvent("deploy", payload, true); err != nil {
		t.Fatal(err)
	}
	if e := f.userEvents[0]; e.Name != "deploy" || !reflect.DeepEqual(e.Payload, payload) || !e.Coalesce {
		t.Fatalf("user event %+v", e)
	}

	f.stats = map[string]map[string]string{"agent": {"name": "s1"}, "serf": {"members": "3"}}
	stats, err := c.Stats()
	if err != nil || !reflect.DeepEqual(stats, f.stats) {
		t.Fatalf("Stats = %v, %v", stats, err)
	}

	f.coords = map[string]Coordinate{"s1": {Vec: []float64{0.5, -1.25, 3}, Error: 0.2, Adjustment: 0.01, Height: 1e-5}}
	coord, ok, err := c.Coordinate("s1")
	if err != nil || !ok || !reflect.DeepEqual(coord, f.coords["s1"]) {
		t.Fatalf("Coordinate(s1) = %+v, %v, %v", coord, ok, err)
	}
	if _, ok, err := c.Coordinate("nobody"); err != nil || ok {
		t.Fatalf("Coordinate(nobody) ok=%v err=%v", ok, err)
	}

	if err := c.Leave(); err != nil || f.leaves != 1 {
		t.Fatalf("Leave = %v, backend leaves %d", err, f.leaves)
	}
}

func TestClientKeys(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	c := dial(t, ts.addr, ClientConfig{})

	f.keyResp = KeyResponse{Keys: map[string]int{"k1": 3, "k2": 1}, NumNodes: 3, NumResp: 3}
	r, err := c.ListKeys()
	if err != nil || !reflect.DeepEqual(r, f.keyResp) {
		t.Fatalf("ListKeys = %+v, %v", r, err)
	}
	for _, call := range []func(string) (KeyResponse, error){c.InstallKey, c.UseKey, c.RemoveKey} {
		if _, err := call("k3"); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"list-keys ", "install-key k3", "use-key k3", "remove-key k3"}
	if !reflect.DeepEqual(f.keyCalls, want) {
		t.Fatalf("key calls %q, want %q", f.keyCalls, want)
	}

	// A failed operation still reports which nodes failed.
	f.keyResp = KeyResponse{Messages: map[string]string{"s2": "key not installed"}, NumNodes: 3, NumErr: 1, NumResp: 3}
	f.keyErr = errors.New("1/3 nodes reported failure")
	r, err = c.UseKey("k9")
	var re *RemoteError
	if !errors.As(err, &re) || re.Message != "1/3 nodes reported failure" || !reflect.DeepEqual(r, f.keyResp) {
		t.Fatalf("UseKey = %+v, %v", r, err)
	}
}

func TestClientQuery(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	f.query = func(_ context.Context, req QueryRequest, onAck func(string), onResponse func(NodeResponse)) error {
		onAck("s1")
		onResponse(NodeResponse{From: "s1", Payload: []byte("bid-1")})
		onAck("s2")
		onResponse(NodeResponse{From: "s2", Payload: nil})
		return nil
	}
	c := dial(t, ts.addr, ClientConfig{})

	req := QueryRequest{
		FilterNodes: []string{"s1", "s2"}, FilterTags: map[string]string{"role": "server"},
		RequestAck: true, RelayFactor: 2, Timeout: 1500 * time.Millisecond,
		Name: "place", Payload: []byte{1, 2, 3},
	}
	var got []string
	err := c.Query(req,
		func(from string) { got = append(got, "ack "+from) },
		func(r NodeResponse) { got = append(got, fmt.Sprintf("response %s %q", r.From, r.Payload)) })
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ack s1", `response s1 "bid-1"`, "ack s2", `response s2 ""`}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("records %q, want %q", got, want)
	}
	if !reflect.DeepEqual(f.queries[0], req) {
		t.Fatalf("backend saw %+v, want %+v", f.queries[0], req)
	}

	// A query that fails after its header went out reports the failure.
	f.mu.Lock()
	f.query = func(context.Context, QueryRequest, func(string), func(NodeResponse)) error { return errBoom }
	f.mu.Unlock()
	err = c.Query(QueryRequest{Name: "x"}, nil, nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Message != "boom" {
		t.Fatalf("failing query = %v", err)
	}
}

// A callback may call the client while the query runs, and responses keep
// flowing while it does.
func TestClientQueryCallbackMayCallClient(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	f.members = sampleMembers()
	f.query = func(_ context.Context, _ QueryRequest, _ func(string), onResponse func(NodeResponse)) error {
		for i := range 50 {
			onResponse(NodeResponse{From: fmt.Sprint("n", i)})
		}
		return nil
	}
	c := dial(t, ts.addr, ClientConfig{})
	n := 0
	err := c.Query(QueryRequest{Name: "q"}, nil, func(NodeResponse) {
		if _, err := c.Members(); err != nil {
			t.Errorf("Members inside callback: %v", err)
		}
		n++
	})
	if err != nil || n != 50 {
		t.Fatalf("Query = %v with %d responses", err, n)
	}
}

func TestClientStream(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	c := dial(t, ts.addr, ClientConfig{})

	events := make(chan StreamedEvent, 16)
	h, err := c.Stream("member-join,user:deploy,query", func(e StreamedEvent) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "subscription", func() bool { return f.eventSubscribers() == 1 })

	var answered []byte
	f.emit(Event{Type: "member-leave", Members: sampleMembers()[:1]}) // filtered out
	f.emit(Event{Type: "user", Name: "other", LTime: 1})              // filtered out
	f.emit(Event{Type: "member-join", Members: sampleMembers()})
	f.emit(Event{Type: "user", Name: "deploy", LTime: 300, Payload: []byte("v2"), Coalesce: true})
	f.emit(Event{Type: "query", Name: "ping", LTime: 7, Payload: []byte("?"),
		Deadline: time.Now().Add(time.Hour),
		Respond:  func(p []byte) error { answered = p; return nil }})

	join := recv(t, events, "member-join")
	if join.Event != "member-join" || !reflect.DeepEqual(join.Members, sampleMembers()) {
		t.Fatalf("member event %+v", join)
	}
	user := recv(t, events, "user event")
	if user.Event != "user" || user.Name != "deploy" || user.LTime != 300 || string(user.Payload) != "v2" || !user.Coalesce {
		t.Fatalf("user event %+v", user)
	}
	q := recv(t, events, "query event")
	if q.Event != "query" || q.Name != "ping" || q.LTime != 7 || string(q.Payload) != "?" || q.ID == 0 {
		t.Fatalf("query event %+v", q)
	}

	if err := c.Respond(q.ID, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if string(answered) != "pong" {
		t.Fatalf("backend got response %q", answered)
	}
	// An ID answers once.
	var re *RemoteError
	if err := c.Respond(q.ID, []byte("again")); !errors.As(err, &re) || re.Message != msgInvalidQueryID {
		t.Fatalf("second Respond = %v", err)
	}
	if err := c.Respond(12345, nil); !errors.As(err, &re) || re.Message != msgInvalidQueryID {
		t.Fatalf("Respond(unknown) = %v", err)
	}

	if err := c.Stop(h); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "unsubscribe", func() bool { return f.eventSubscribers() == 0 })
	f.emit(Event{Type: "member-join"}) // nobody is subscribed; nothing may arrive
	if _, err := c.Members(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-events:
		t.Fatalf("event after Stop: %+v", e)
	default:
	}
}

func TestClientStreamErrors(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	c := dial(t, ts.addr, ClientConfig{})
	var re *RemoteError
	for _, filter := range []string{"member-joined", "user,bogus", ",", "*,"} {
		if _, err := c.Stream(filter, func(StreamedEvent) {}); !errors.As(err, &re) || re.Message != msgInvalidFilter {
			t.Errorf("Stream(%q) = %v, want %q", filter, err, msgInvalidFilter)
		}
	}
	for _, filter := range []string{"", "*", "user:", "query:place", "member-join,member-leave,member-failed,member-update,member-reap"} {
		h, err := c.Stream(filter, func(StreamedEvent) {})
		if err != nil {
			t.Errorf("Stream(%q) = %v", filter, err)
			continue
		}
		if err := c.Stop(h); err != nil {
			t.Fatal(err)
		}
	}
}

func TestQueryIDExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	ts := startServer(t, ServerConfig{}, func(s *Server) {
		s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	})
	f := ts.fake
	c := dial(t, ts.addr, ClientConfig{})

	events := make(chan StreamedEvent, 4)
	if _, err := c.Stream("query", func(e StreamedEvent) { events <- e }); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "subscription", func() bool { return f.eventSubscribers() == 1 })
	respond := func([]byte) error { return nil }
	f.emit(Event{Type: "query", Name: "a", Deadline: now.Add(time.Second), Respond: respond})
	f.emit(Event{Type: "query", Name: "b", Respond: respond}) // no deadline: the default
	a, b := recv(t, events, "query a"), recv(t, events, "query b")

	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	var re *RemoteError
	if err := c.Respond(a.ID, nil); !errors.As(err, &re) || re.Message != msgInvalidQueryID {
		t.Fatalf("Respond after deadline = %v", err)
	}
	if err := c.Respond(b.ID, nil); err != nil {
		t.Fatalf("Respond within the default = %v", err)
	}
}

func TestPendingQueriesSweep(t *testing.T) {
	var p pendingQueries
	now := time.Unix(0, 0)
	ok := func([]byte) error { return nil }
	for range 1000 {
		p.add(ok, now.Add(time.Second), now)
	}
	now = now.Add(time.Minute)
	var live []uint64
	for range 100 {
		live = append(live, p.add(ok, now.Add(time.Second), now))
	}
	// The expired thousand went in the sweep the growth triggered.
	if n := len(p.byID); n != 100 {
		t.Fatalf("%d entries after the sweep, want the 100 live ones", n)
	}
	for _, id := range live {
		if _, found := p.take(id, now); !found {
			t.Fatalf("live query %d lost in the sweep", id)
		}
	}
	if id := p.add(nil, now.Add(time.Second), now); id == 0 {
		t.Fatal("a query without Respond still gets an ID")
	}
	if _, found := p.take(live[len(live)-1]+1, now); found {
		t.Fatal("a query without Respond is answerable")
	}
}

func TestClientMonitor(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	c := dial(t, ts.addr, ClientConfig{})

	var re *RemoteError
	if _, err := c.Monitor("loud", func(string) {}); !errors.As(err, &re) || re.Message != "Unknown log level: LOUD" {
		t.Fatalf("Monitor(loud) = %v", err)
	}

	lines := make(chan string, 8)
	h, err := c.Monitor("warn", func(l string) { lines <- l })
	if err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "one log subscription at WARN", func() bool {
		atWarn := 0
		for _, s := range f.logSubs {
			if s.level == slog.LevelWarn {
				atWarn++
			}
		}
		return len(f.logSubs) == 1 && atWarn == 1
	})
	if _, err := c.Monitor("DEBUG", func(string) {}); !errors.As(err, &re) || re.Message != msgMonitorExists {
		t.Fatalf("second Monitor = %v", err)
	}
	f.log(slog.LevelInfo, "quiet")
	f.log(slog.LevelWarn, "disk nearly full")
	f.log(slog.LevelError, "disk full")
	if got := recv(t, lines, "first line"); got != "disk nearly full" {
		t.Fatalf("line %q", got)
	}
	if got := recv(t, lines, "second line"); got != "disk full" {
		t.Fatalf("line %q", got)
	}
	if err := c.Stop(h); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "log unsubscribe", func() bool { return f.logSubscribers() == 0 })
	// A new monitor may start once the old one stopped.
	if _, err := c.Monitor("TRACE", func(string) {}); err != nil {
		t.Fatal(err)
	}
}

func TestParseLogLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{
		"TRACE": slog.LevelDebug, "debug": slog.LevelDebug, "INFO": slog.LevelInfo,
		"Warn": slog.LevelWarn, "ERR": slog.LevelError, "error": slog.LevelError,
	} {
		if got, ok := parseLogLevel(in); !ok || got != want {
			t.Errorf("parseLogLevel(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "WARNING", "FATAL", "3"} {
		if _, ok := parseLogLevel(in); ok {
			t.Errorf("parseLogLevel(%q) accepted", in)
		}
	}
}

type spawnRequest struct {
	Kind string
	Args []string
}

type spawnResponse struct {
	Node string
	PID  int
}

func TestRegisteredCommand(t *testing.T) {
	ts := startServer(t, ServerConfig{}, func(s *Server) {
		s.Register("spawn", func(b Body) (any, error) {
			var req spawnRequest
			if err := b.Decode(&req); err != nil {
				return nil, err
			}
			if req.Kind == "" {
				return nil, errors.New("kind is required; pass --kind")
			}
			return spawnResponse{Node: "s1:" + req.Kind + ":" + strings.Join(req.Args, "+"), PID: 4242}, nil
		})
		s.Register("info", func(b Body) (any, error) { return map[string]string{"v": "1"}, nil })
	})
	c := dial(t, ts.addr, ClientConfig{})

	var resp spawnResponse
	if err := c.Call("spawn", spawnRequest{Kind: "demo", Args: []string{"-x", "y"}}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp != (spawnResponse{Node: "s1:demo:-x+y", PID: 4242}) {
		t.Fatalf("spawn response %+v", resp)
	}
	var re *RemoteError
	if err := c.Call("spawn", spawnRequest{}, &resp); !errors.As(err, &re) || re.Message != "kind is required; pass --kind" {
		t.Fatalf("spawn error = %v", err)
	}
	if err := c.Call("spawn", "not a struct", &resp); !errors.As(err, &re) || !strings.Contains(re.Message, "decode request body") {
		t.Fatalf("spawn with a bad body = %v", err)
	}
	var info map[string]string
	if err := c.Call("info", nil, &info); err != nil || info["v"] != "1" {
		t.Fatalf("info = %v, %v", info, err)
	}
	if err := c.Call("members", nil, nil); err == nil {
		t.Fatal("Call accepted a built-in command")
	}
	// An unknown command ends the connection: its body cannot be framed.
	if err := c.Call("nonesuch", nil, nil); !errors.As(err, &re) || re.Message != msgUnsupportedCommand {
		t.Fatalf("unknown command = %v", err)
	}
	recv(t, c.Done(), "connection close after an unknown command")
	if _, err := c.Members(); !errors.Is(err, ErrClosed) {
		t.Fatalf("call on a closed connection = %v, want ErrClosed", err)
	}
}

func TestRegisterMisuse(t *testing.T) {
	s := NewServer(nil, newFake(), ServerConfig{})
	mustPanic := func(name string, fn func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", name)
			}
		}()
		fn()
	}
	h := func(Body) (any, error) { return nil, nil }
	s.Register("spawn", h)
	mustPanic("duplicate", func() { s.Register("spawn", h) })
	mustPanic("built-in", func() { s.Register("members", h) })
	mustPanic("empty", func() { s.Register("", h) })
	mustPanic("nil handler", func() { s.Register("x", nil) })
}

func TestAuth(t *testing.T) {
	ts := startServer(t, ServerConfig{Token: "s3cret"}, nil)
	ts.fake.members = sampleMembers()

	c := dial(t, ts.addr, ClientConfig{Token: "s3cret"})
	if ms, err := c.Members(); err != nil || len(ms) != 3 {
		t.Fatalf("Members with the token = %d, %v", len(ms), err)
	}

	_, err := Dial(ts.addr, ClientConfig{Token: "guess"})
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), msgInvalidAuthToken) {
		t.Fatalf("Dial with a wrong token = %v", err)
	}

	// Without a token the handshake works but nothing else does, and the
	// connection stays in step.
	anon := dial(t, ts.addr, ClientConfig{})
	for range 2 {
		if _, err := anon.MembersFiltered(map[string]string{"role": ".*"}, "", ""); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("MembersFiltered without a token = %v", err)
		}
		if _, err := anon.Stream("*", func(StreamedEvent) {}); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("Stream without a token = %v", err)
		}
	}
	if err := anon.call(cmdAuth, authRequest{AuthKey: "s3cret"}, nil); err != nil {
		t.Fatalf("late auth = %v", err)
	}
	if _, err := anon.Members(); err != nil {
		t.Fatalf("Members after a late auth = %v", err)
	}
}

func TestDialNoAgent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(addr, ClientConfig{Timeout: 2 * time.Second})
	if !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("Dial(%s) = %v, want ErrNoAgent naming the address", addr, err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	ts.fake.members = sampleMembers()
	c := dial(t, ts.addr, ClientConfig{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				if i%2 == 0 {
					if ms, err := c.Members(); err != nil || len(ms) != 3 {
						t.Errorf("Members = %d, %v", len(ms), err)
						return
					}
				} else if err := c.UserEvent("e", []byte{byte(i)}, false); err != nil {
					t.Errorf("UserEvent = %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A client that never reads must not hold up the Backend: the events meant
// for it are dropped, and the server says so once.
func TestSlowClientNeverBlocksBackend(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake

	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	writeFrames(t, nc,
		requestHeader{Command: cmdHandshake, Seq: 1}, handshakeRequest{Version: 1},
		requestHeader{Command: cmdStream, Seq: 2}, streamRequest{Type: "*"})
	f.waitFor(t, "subscription", func() bool { return f.eventSubscribers() == 1 })

	// Far more than socket buffers and the feed buffer hold; the client
	// reads nothing.
	big := Event{Type: "user", Name: "flood", Payload: make([]byte, 4096)}
	done := make(chan struct{})
	go func() {
		for range 20000 {
			f.emit(big)
		}
		close(done)
	}()
	recv(t, done, "the backend to finish emitting")
	waitLog(t, ts.logs, slog.LevelWarn, "dropping events")
	if n := ts.logs.count(slog.LevelWarn, "dropping events"); n != 1 {
		t.Fatalf("logged the drop %d times, want once", n)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := newFake()
	release := make(chan struct{})
	f.query = func(context.Context, QueryRequest, func(string), func(NodeResponse)) error { <-release; return nil }
	s := NewServer(ln, f, ServerConfig{})
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()

	c, err := Dial(ln.Addr().String(), ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Stream("*", func(StreamedEvent) {}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Monitor("INFO", func(string) {}); err != nil {
		t.Fatal(err)
	}
	queried := make(chan error, 1)
	go func() { queried <- c.Query(QueryRequest{Name: "slow"}, nil, nil) }()
	f.waitFor(t, "subscriptions and query", func() bool {
		return f.eventSubscribers() == 1 && f.logSubscribers() == 1 && len(f.queries) == 1
	})

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// Close waits for the query inside the Backend, and nothing else.
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a query was still in the backend", err)
	case <-c.Done():
	}
	close(release)
	if err := recv(t, closed, "Close"); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := recv(t, served, "Serve to return"); err != nil {
		t.Fatalf("Serve = %v after Close", err)
	}
	f.waitFor(t, "no subscriptions after Close", func() bool { return f.eventSubscribers() == 0 && f.logSubscribers() == 0 })
	if err := recv(t, queried, "Query to fail"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Query across Close = %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := s.Serve(); err == nil {
		t.Fatal("second Serve returned nil")
	}
}

func TestMaxConns(t *testing.T) {
	ts := startServer(t, ServerConfig{MaxConns: 1}, nil)
	first, err := Dial(ts.addr, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Beyond the limit the client is told why, not just disconnected.
	if _, err := Dial(ts.addr, ClientConfig{}); err == nil || !strings.Contains(err.Error(), "too many RPC connections") ||
		!strings.Contains(err.Error(), "limit 1") {
		t.Fatalf("Dial beyond MaxConns = %v, want an error naming the limit", err)
	}
	first.Close()
	// The slot frees once the server has seen the close.
	poll(t, "the first connection to end", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return len(ts.conns) == 0
	})
	c, err := Dial(ts.addr, ClientConfig{})
	if err != nil {
		t.Fatalf("Dial after the first client left: %v", err)
	}
	c.Close()
	if n := ts.logs.count(slog.LevelWarn, "too many rpc connections"); n < 1 {
		t.Fatal("refusal not logged")
	}
}
