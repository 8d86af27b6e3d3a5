package agent

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	serfclient "github.com/hashicorp/serf/client"

	"github.com/meshagent/agent/gossip"
)

// This suite drives real agents (real gossip on loopback, real RPC server)
// with serf's own, unmodified RPC client: every call that client offers
// must work against our agent as it does against serf's.

var (
	testKey1 = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	testKey2 = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 16))
)

// freeLoopbackAddr returns ip:port with a port free for gossip on ip.
func freeLoopbackAddr(t testing.TB, ip string) string {
	t.Helper()
	return net.JoinHostPort(ip, strconv.Itoa(freeGossipPort(t, ip)))
}

// freeGossipPort returns a port free for gossip on ip.
func freeGossipPort(t testing.TB, ip string) int {
	t.Helper()
	port, err := gossip.FreePort(ip)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// startAgent runs an agent in this process and stops it with the test.
func startAgent(t *testing.T, name, ip string, mutate func(*Config)) *Agent {
	t.Helper()
	return startAgentWith(t, name, ip, Deps{}, mutate)
}

// startAgentLogging is startAgent with its log also written to logs.
func startAgentLogging(t *testing.T, name, ip string, logs io.Writer, mutate func(*Config)) *Agent {
	t.Helper()
	return startAgentFull(t, name, ip, Deps{}, logs, mutate)
}

// startAgentWith is startAgent with chosen dependencies (a fake clock, say).
func startAgentWith(t *testing.T, name, ip string, deps Deps, mutate func(*Config)) *Agent {
	t.Helper()
	return startAgentFull(t, name, ip, deps, nil, mutate)
}

func startAgentFull(t *testing.T, name, ip string, deps Deps, extraLog io.Writer, mutate func(*Config)) *Agent {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.BindAddr = freeLoopbackAddr(t, ip)
	picked := cfg.BindAddr // the test's own choice, if mutate changes it, is kept
	cfg.RPCAddr = ip + ":0"
	cfg.Profile = "local"
	cfg.EncryptKey = testKey1
	cfg.DataDir = t.TempDir()
	cfg.Tags = map[string]string{"suite": "compat"}
	cfg.LoadSource = "fixed:cpu=10,mem=10"
	cfg.HTTPAddr = "" // tests that want the HTTP API ask for a port
	if mutate != nil {
		mutate(&cfg)
	}
	var logs bytes.Buffer
	var out io.Writer = &syncWriter{w: &logs}
	if extraLog != nil {
		out = io.MultiWriter(out, extraLog)
	}
	logger, stream, err := NewLogger(out, "debug", "text")
	if err != nil {
		t.Fatal(err)
	}
	deps.Logger, deps.Logs = logger, stream
	var a *Agent
	for attempt := 1; ; attempt++ {
		a, err = New(cfg, deps)
		if err != nil {
			t.Fatal(err)
		}
		err = a.Start()
		if err == nil {
			break
		}
		// The free port found may be taken before the bind by another
		// package's test running beside this one: take another.
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") || cfg.BindAddr != picked {
			t.Fatal(err)
		}
		a.Shutdown()
		cfg.BindAddr = freeLoopbackAddr(t, ip)
		picked = cfg.BindAddr
	}
	t.Cleanup(func() {
		a.Shutdown()
		if t.Failed() {
			t.Logf("log of %s:\n%s", name, logs.String())
		}
	})
	return a
}

func serfClient(t *testing.T, a *Agent, token string) *serfclient.RPCClient {
	t.Helper()
	c, err := serfclient.ClientFromConfig(&serfclient.Config{Addr: a.RPCAddr(), AuthKey: token, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("serf client to %s: %v", a.RPCAddr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// poll waits, in bounded steps, until cond holds; on timeout it reports what
// it saw last, through the optional describe.
func poll(t *testing.T, what string, cond func() bool, describe ...func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			seen := ""
			for _, d := range describe {
				seen += " (last seen: " + d() + ")"
			}
			t.Fatalf("timed out waiting for %s%s", what, seen)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func memberStatus(t *testing.T, c *serfclient.RPCClient, name string) string {
	ms, err := c.Members()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == name {
			return m.Status
		}
	}
	return "none"
}

func TestSerfClientAgainstRealAgents(t *testing.T) {
	a := startAgent(t, "alpha", "127.0.0.1", func(c *Config) { c.RPCToken = "s3cret" })
	b := startAgent(t, "beta", "127.0.0.2", nil)
	ca := serfClient(t, a, "s3cret")
	cb := serfClient(t, b, "")

	// Auth: a wrong token is refused with serf's own message.
	if _, err := serfclient.ClientFromConfig(&serfclient.Config{Addr: a.RPCAddr(), AuthKey: "wrong", Timeout: 5 * time.Second}); err == nil ||
		!strings.Contains(err.Error(), "Invalid authentication token") {
		t.Fatalf("wrong token: %v", err)
	}

	// Stream member and user events on beta before anything happens.
	events := make(chan map[string]interface{}, 64)
	streamHandle, err := cb.Stream("member-join,user:deploy", events)
	if err != nil {
		t.Fatal(err)
	}

	// Join.
	n, err := cb.Join([]string{a.Node().Addr()}, false)
	if err != nil || n != 1 {
		t.Fatalf("join: %d %v", n, err)
	}
	waitEvent(t, events, func(e map[string]interface{}) bool {
		return e["Event"] == "member-join" && strings.Contains(fmt.Sprint(e["Members"]), "alpha")
	})

	// Members and MembersFiltered.
	ms, err := ca.Members()
	if err != nil || len(ms) != 2 {
		t.Fatalf("members: %v %v", ms, err)
	}
	for _, m := range ms {
		if m.Status != "alive" || m.Tags["role"] != "server" || m.Tags["suite"] != "compat" || m.Port == 0 || m.Addr == nil ||
			m.ProtocolCur == 0 || m.DelegateCur == 0 {
			t.Fatalf("member %+v", m)
		}
	}
	f, err := ca.MembersFiltered(map[string]string{"suite": "comp.*"}, "alive", "be.*")
	if err != nil || len(f) != 1 || f[0].Name != "beta" {
		t.Fatalf("filtered: %+v %v", f, err)
	}

	// UpdateTags, seen by the other agent.
	if err := cb.UpdateTags(map[string]string{"rack": "r7"}, []string{"suite"}); err != nil {
		t.Fatal(err)
	}
	poll(t, "alpha to see beta's new tags", func() bool {
		ms, _ := ca.MembersFiltered(map[string]string{"rack": "r7"}, "", "beta")
		return len(ms) == 1 && ms[0].Tags["suite"] == ""
	})
	if err := cb.UpdateTags(map[string]string{"role": "interpreter"}, nil); err == nil {
		t.Fatal("a reserved tag was changed over RPC")
	}

	// UserEvent from alpha reaches beta's stream.
	if err := ca.UserEvent("deploy", []byte("v42"), false); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, func(e map[string]interface{}) bool {
		return e["Event"] == "user" && e["Name"] == "deploy" && bytes.Equal(asBytes(e["Payload"]), []byte("v42"))
	})
	if err := cb.Stop(streamHandle); err != nil {
		t.Fatal(err)
	}

	// Query from alpha; beta answers through a serf-client stream with Respond.
	queries := make(chan map[string]interface{}, 8)
	qh, err := cb.Stream("query:ping", queries)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for q := range queries {
			if id, ok := q["ID"]; ok {
				cb.Respond(asUint(id), append([]byte("pong "), asBytes(q["Payload"])...))
			}
		}
	}()
	acks, resps := make(chan string, 8), make(chan serfclient.NodeResponse, 8)
	err = ca.Query(&serfclient.QueryParam{Name: "ping", Payload: []byte("x"), RequestAck: true,
		FilterNodes: []string{"beta"}, Timeout: 3 * time.Second, AckCh: acks, RespCh: resps})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-resps:
		if r.From != "beta" || string(r.Payload) != "pong x" {
			t.Fatalf("response %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no query response from beta")
	}
	if got := <-acks; got != "beta" {
		t.Fatalf("ack from %q", got)
	}
	cb.Stop(qh)

	// Monitor: beta's log reaches the serf client at the asked level. serf's
	// client closes its channel in Stop while its reader may still deliver
	// a line (a race in the client itself), so the test asks for WARN and
	// provokes exactly one warning: a quiet stream when Stop runs.
	logs := make(chan string, 256)
	mh, err := cb.Monitor("WARN", logs)
	if err != nil {
		t.Fatal(err)
	}
	if garbage, err := net.Dial("tcp", b.RPCAddr()); err == nil {
		garbage.Write([]byte("not msgpack at all\n"))
		garbage.Close()
	}
	select {
	case line := <-logs:
		if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "closing rpc connection") {
			t.Fatalf("monitor line %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no log line from monitor")
	}
	cb.Stop(mh)

	// Keys: install, use, list, remove across both agents.
	for _, step := range []struct {
		name string
		run  func() (map[string]string, error)
	}{
		{"install", func() (map[string]string, error) { return ca.InstallKey(testKey2) }},
		{"use", func() (map[string]string, error) { return ca.UseKey(testKey2) }},
		{"remove old", func() (map[string]string, error) { return cb.RemoveKey(testKey1) }},
	} {
		if msgs, err := step.run(); err != nil {
			t.Fatalf("%s: %v %v", step.name, err, msgs)
		}
	}
	keys, num, msgs, err := ca.ListKeys()
	if err != nil || num != 2 || keys[testKey2] != 2 || len(keys) != 1 {
		t.Fatalf("list keys: %v %d %v %v", keys, num, msgs, err)
	}
	if _, err := ca.RemoveKey(testKey2); err == nil {
		t.Fatal("removing the primary key succeeded")
	}

	// Stats and coordinates.
	stats, err := ca.Stats()
	if err != nil || stats["agent"]["name"] != "alpha" || stats["serf"]["members"] != "2" || stats["serf"]["encrypted"] != "true" {
		t.Fatalf("stats %v %v", stats, err)
	}
	poll(t, "a coordinate for beta", func() bool {
		c, err := ca.GetCoordinate("beta")
		return err == nil && c != nil && len(c.Vec) > 0
	})
	if c, err := ca.GetCoordinate("nobody"); err != nil || c != nil {
		t.Fatalf("coordinate of an unknown node: %v %v", c, err)
	}

	// Leave: beta leaves gracefully; alpha sees it left, then forgets it
	// when pruned.
	if err := cb.Leave(); err != nil {
		t.Fatal(err)
	}
	<-b.LeftCh()
	b.Shutdown()
	poll(t, "alpha to see beta left", func() bool { return memberStatus(t, ca, "beta") == "left" })
	if err := ca.ForceLeavePrune("beta"); err != nil {
		t.Fatal(err)
	}
	poll(t, "beta pruned", func() bool { return memberStatus(t, ca, "beta") == "none" })
}

func TestSerfClientForceLeaveOfFailedAgent(t *testing.T) {
	a := startAgent(t, "alpha", "127.0.0.1", nil)
	b := startAgent(t, "beta", "127.0.0.2", func(c *Config) { c.Join = []string{a.Node().Addr()} })
	ca := serfClient(t, a, "")
	poll(t, "beta to join", func() bool { return memberStatus(t, ca, "beta") == "alive" })
	b.Shutdown() // no leave: alpha must detect the failure
	poll(t, "beta failed on alpha", func() bool { return memberStatus(t, ca, "beta") == "failed" })
	if err := ca.ForceLeave("beta"); err != nil {
		t.Fatal(err)
	}
	poll(t, "beta left after force-leave", func() bool { return memberStatus(t, ca, "beta") == "left" })
}

func waitEvent(t *testing.T, ch chan map[string]interface{}, match func(map[string]interface{}) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-ch:
			if match(e) {
				return
			}
		case <-timeout:
			t.Fatal("expected event did not arrive")
		}
	}
}

func asBytes(v interface{}) []byte {
	switch v := v.(type) {
	case []byte:
		return v
	case string:
		return []byte(v)
	}
	return nil
}

func asUint(v interface{}) uint64 {
	switch v := v.(type) {
	case uint64:
		return v
	case int64:
		return uint64(v)
	case uint8:
		return uint64(v)
	case uint16:
		return uint64(v)
	case uint32:
		return uint64(v)
	case int:
		return uint64(v)
	}
	return 0
}

// syncWriter serialises writes from the agent's goroutines into a buffer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// syncBuffer is a buffer safe to write from the agent and read from a test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
