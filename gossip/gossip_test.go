package gossip

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// startNode starts a node on a free loopback port with the local profile and
// stops it when the test ends.
func startNode(t *testing.T, name string, tags map[string]string) *Node {
	t.Helper()
	n, err := Start(Config{Name: name, BindAddr: "127.0.0.1", BindPort: freePort(t), Profile: "local", Tags: tags})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { n.Shutdown() })
	return n
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func statusOf(n *Node, name string) Status {
	for _, m := range n.Members() {
		if m.Name == name {
			return m.Status
		}
	}
	return StatusNone
}

func TestTwoNodesJoinSeeTagsAndLeave(t *testing.T) {
	a := startNode(t, "a", Tags{Role: RoleServer, Capacity: 4}.Map())
	b := startNode(t, "b", Tags{Role: RoleInterpreter, Kind: "demo", Host: "a", PID: 42}.Map())

	joined := make(chan string, 8)
	cancel := a.Subscribe(func(e Event) {
		if e.Type == EventMemberJoin {
			for _, m := range e.Members {
				joined <- m.Name
			}
		}
	})
	defer cancel()

	if n, err := b.Join([]string{a.Addr()}, false); err != nil || n != 1 {
		t.Fatalf("join: n=%d err=%v", n, err)
	}
	// a may also report its own join, which raced with Subscribe.
	for seen := ""; seen != "b"; {
		select {
		case seen = <-joined:
		case <-time.After(10 * time.Second):
			t.Fatal("no member-join event for b on a")
		}
	}
	var got Tags
	for _, m := range a.Members() {
		if m.Name == "b" {
			var err error
			if got, err = ParseTags(m.Tags); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got.Role != RoleInterpreter || got.Kind != "demo" || got.PID != 42 || got.Host != "a" {
		t.Fatalf("a sees b's tags as %+v", got)
	}

	if err := b.Leave(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see b left", func() bool { return statusOf(a, "b") == StatusLeft })
}

func TestQueryHandlerAnswers(t *testing.T) {
	a := startNode(t, "a", nil)
	b := startNode(t, "b", nil)
	b.HandleQuery("ping", func(q *Query) { q.Respond(append([]byte("pong:"), q.Payload...)) })
	a.HandleQuery("ping", func(q *Query) { q.Respond([]byte("pong-a")) })
	if _, err := a.Join([]string{b.Addr()}, false); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := a.Query(ctx, "ping", []byte("x"), QueryParams{Timeout: 5 * time.Second}, nil, func(from string, p []byte) {
		got[from] = string(p)
		if len(got) == 2 {
			cancel() // every member answered: stop early
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if got["b"] != "pong:x" || got["a"] != "pong-a" {
		t.Fatalf("answers %v", got)
	}
}

func TestTagSizeCapIsCheckedUpFront(t *testing.T) {
	worst := Tags{Role: RoleInterpreter, Kind: strings.Repeat("k", 32), Host: strings.Repeat("h", 64),
		RequestID: strings.Repeat("r", 36), Endpoint: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", PID: 4194304}.Map()
	if size := EncodedTagSize(worst); size > MaxTagBytes {
		t.Fatalf("worst-case interpreter tags encode to %d bytes, over %d", size, MaxTagBytes)
	}
	big := map[string]string{"role": "server", "notes": strings.Repeat("x", 600)}
	err := CheckTagSize(big)
	if !errors.Is(err, ErrTagsTooLarge) || !strings.Contains(err.Error(), "notes (605 bytes)") {
		t.Fatalf("err = %v, want ErrTagsTooLarge naming notes", err)
	}
	if _, err := Start(Config{Name: "x", BindAddr: "127.0.0.1", BindPort: freePort(t), Tags: big}); !errors.Is(err, ErrTagsTooLarge) {
		t.Fatalf("Start with oversize tags: %v", err)
	}
}

func TestTagsRoundTrip(t *testing.T) {
	in := Tags{Role: RoleServer, Load: &Load{CPU: 12.3, Mem: 45.6}, Interpreters: 3, Capacity: 8, Extra: map[string]string{"dc": "x"}}
	out, err := ParseTags(in.Map())
	if err != nil {
		t.Fatal(err)
	}
	if out.Role != in.Role || *out.Load != *in.Load || out.Interpreters != 3 || out.Capacity != 8 || out.Extra["dc"] != "x" {
		t.Fatalf("round trip: %+v", out)
	}
	bad, err := ParseTags(map[string]string{"role": "server", "cpu": "lots", "mem": "3", "ni": "-1"})
	if err == nil || !strings.Contains(err.Error(), `cpu="lots"`) || !strings.Contains(err.Error(), `ni="-1"`) {
		t.Fatalf("err = %v", err)
	}
	if bad.Load != nil || bad.Role != RoleServer {
		t.Fatalf("malformed load must stay nil: %+v", bad)
	}
}

func TestLibraryLogLinesKeepTheirLevel(t *testing.T) {
	for _, c := range []struct {
		line      string
		level     slog.Level
		component string
		msg       string
	}{
		{"[DEBUG] memberlist: Stream connection from=1.2.3.4", slog.LevelDebug, "memberlist", "Stream connection from=1.2.3.4"},
		{"[WARN] serf: event queue depth: 300", slog.LevelWarn, "serf", "event queue depth: 300"},
		{"[ERR] memberlist: failed to send", slog.LevelError, "memberlist", "failed to send"},
		{"plain line", slog.LevelInfo, "", "plain line"},
	} {
		level, comp, msg := parseLibraryLine(c.line)
		if level != c.level || comp != c.component || msg != c.msg {
			t.Errorf("%q -> %v %q %q", c.line, level, comp, msg)
		}
	}
}

func TestUnknownProfileListsValidOnes(t *testing.T) {
	err := CheckProfile("fastest")
	if !errors.Is(err, ErrUnknownProfile) || !strings.Contains(err.Error(), "lan, local, wan") {
		t.Fatalf("err = %v", err)
	}
}

func TestJoinWithTheWrongKeyFailsAndSaysWhy(t *testing.T) {
	key1, key2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a, err := Start(Config{Name: "a", BindAddr: "127.0.0.1", BindPort: freePort(t), Profile: "local", Keys: [][]byte{key1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Shutdown() })
	for name, keys := range map[string][][]byte{"wrong-key": {key2}, "no-key": nil} {
		b, err := Start(Config{Name: name, BindAddr: "127.0.0.1", BindPort: freePort(t), Profile: "local", Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		n, err := b.Join([]string{a.Addr()}, false)
		b.Shutdown()
		if n != 0 || !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), "--encrypt") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: joined %d, err %q", name, n, err)
		}
	}
	if len(a.Members()) != 1 {
		t.Fatalf("a node without the key got into the member list: %v", a.Members())
	}
}

// TestQuerySizeMatchesSerfsLimit pins QuerySize to serf's own check: the
// largest payload QuerySize allows is accepted by serf, and a query a few
// bytes larger (the widest clock and id QuerySize assumes) is refused.
func TestQuerySizeMatchesSerfsLimit(t *testing.T) {
	n := startNode(t, "asker-with-a-fairly-long-node-name", nil)
	p := QueryParams{
		FilterNodes: []string{"server-1", "server-22", "server-333"},
		FilterTags:  map[string]string{TagRole: "^server$"},
		Timeout:     time.Second,
	}
	payload := []byte{}
	for n.QuerySize("place", append(payload, 'x'), p) <= QuerySizeLimit {
		payload = append(payload, 'x')
	}
	if got := n.QuerySize("place", payload, p); got > QuerySizeLimit || got < QuerySizeLimit-2 {
		t.Fatalf("search ended at size %d, want just under %d", got, QuerySizeLimit)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // only serf's size check matters here, not the answers
	if err := n.Query(ctx, "place", payload, p, nil, nil); err != nil {
		t.Fatalf("serf refused a %d-byte query QuerySize allows: %v", n.QuerySize("place", payload, p), err)
	}
	over := append(payload, make([]byte, 24)...)
	err := n.Query(ctx, "place", over, p, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "exceeds limit") {
		t.Fatalf("a query 24 bytes past the limit: err %v, want serf's size refusal", err)
	}
}

func TestTimeScaleStretchesEveryTimer(t *testing.T) {
	base, err := profileConfig("fast")
	if err != nil {
		t.Fatal(err)
	}
	n, err := Start(Config{Name: "slow", BindAddr: "127.0.0.1", BindPort: freePort(t), Profile: "fast", TimeScale: 4,
		Reap: func(map[string]string) bool { return true }, ReapAfter: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown()
	for name, got := range map[string][2]time.Duration{
		"probe interval":          {n.ml.ProbeInterval, base.ProbeInterval},
		"probe timeout":           {n.ml.ProbeTimeout, base.ProbeTimeout},
		"gossip interval":         {n.GossipInterval(), base.GossipInterval},
		"push/pull interval":      {n.ml.PushPullInterval, base.PushPullInterval},
		"gossip to the dead":      {n.ml.GossipToTheDeadTime, base.GossipToTheDeadTime},
		"TCP timeout":             {n.ml.TCPTimeout, base.TCPTimeout},
		"the heal prober's round": {n.heal.interval, healIntervalProbes * base.ProbeInterval},
		"the heal prober's age":   {n.heal.minAge, healMinAge},
		"a dilated duration":      {n.Dilate(time.Second), time.Second},
	} {
		if got[0] != 4*got[1] {
			t.Errorf("%s: %v at time scale 4, want 4 × %v", name, got[0], got[1])
		}
	}
	if got := n.serf.Stats()["members"]; got != "1" {
		t.Errorf("a dilated node alone has %s members, want 1", got)
	}
	for _, bad := range []float64{0.5, -1} {
		_, err := Start(Config{Name: "bad", BindAddr: "127.0.0.1", BindPort: freePort(t), TimeScale: bad})
		if err == nil || !strings.Contains(err.Error(), "time scale") {
			t.Errorf("time scale %v: err %v, want one naming the time scale", bad, err)
		}
	}
}
