package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET %s: %s %s", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func TestHTTPAPIAndLiveEvents(t *testing.T) {
	a := startAgent(t, "alpha", "127.0.0.1", func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	base := "http://" + a.HTTPAddr()

	// Subscribe to events before anything changes.
	resp, err := http.Get(base + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events content type %q", ct)
	}
	events := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			events <- sc.Text()
		}
		close(events)
	}()

	b := startAgent(t, "beta", "127.0.0.2", func(c *Config) { c.Join = []string{a.Node().Addr()} })
	waitSSE(t, events, "event: member-join", `"name":"beta"`)

	var members struct{ Members []MemberJSON }
	poll(t, "beta in /v1/members with its load", func() bool {
		getJSON(t, base+"/v1/members", &members)
		for _, m := range members.Members {
			if m.Name == "beta" && m.CPU != nil && m.Role == "server" && m.Interpreters != nil {
				return true
			}
		}
		return false
	})
	var self map[string]any
	getJSON(t, base+"/v1/agent/self", &self)
	if self["name"] != "alpha" || self["http"] != a.HTTPAddr() || self["encrypted"] != true {
		t.Fatalf("self %v", self)
	}
	var interps map[string][]any
	getJSON(t, base+"/v1/interpreters", &interps)
	if list, ok := interps["interpreters"]; !ok || len(list) != 0 {
		t.Fatalf("interpreters %v", interps)
	}
	var hist struct {
		Servers map[string][]loadPoint
	}
	poll(t, "both servers' load in the history", func() bool {
		getJSON(t, base+"/v1/history", &hist)
		return len(hist.Servers["alpha"]) > 0 && len(hist.Servers["beta"]) > 0
	})

	// A tag change on beta reaches alpha's stream as member-update.
	if err := b.updateUserTags(map[string]string{"rack": "r9"}, nil); err != nil {
		t.Fatal(err)
	}
	waitSSE(t, events, "event: member-update", `"rack":"r9"`)

	// Unknown paths fall to the dashboard, which serves its files.
	r2, err := http.Get(base + "/")
	if err != nil || r2.StatusCode != 200 || !strings.HasPrefix(r2.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("dashboard: %v %v", err, r2)
	}
	r2.Body.Close()
}

// waitSSE reads the stream until an event line and a data line with want.
func waitSSE(t *testing.T, events <-chan string, eventLine, want string) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	seenEvent := false
	for {
		select {
		case line, ok := <-events:
			if !ok {
				t.Fatal("event stream closed")
			}
			if line == eventLine {
				seenEvent = true
			} else if seenEvent && strings.HasPrefix(line, "data: ") && strings.Contains(line, want) {
				return
			} else if line == "" {
				seenEvent = false
			}
		case <-timeout:
			t.Fatalf("no %s with %s on the stream", eventLine, want)
		}
	}
}

// promLine is one sample line of the Prometheus text format.
var (
	promSample = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)?\})? (-?[0-9.eE+-]+|\+Inf|-Inf|NaN)$`)
	promType   = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$`)
	promHelp   = regexp.MustCompile(`^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*$`)
)

// TestMetricsParseAsPrometheusText checks every line of /metrics against the
// text exposition format, that each series' family is declared once before
// its samples, and that serf's, memberlist's and the agent's figures are there.
func TestMetricsParseAsPrometheusText(t *testing.T) {
	a := startAgent(t, "alpha", "127.0.0.1", func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	startAgent(t, "beta", "127.0.0.2", func(c *Config) { c.Join = []string{a.Node().Addr()} })
	poll(t, "two members", func() bool { return len(a.Node().Members()) == 2 })
	if r, err := http.Get("http://" + a.HTTPAddr() + "/v1/members"); err == nil {
		r.Body.Close()
	}
	cl, err := rpc.Dial(a.RPCAddr(), rpc.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cl.Members()
	cl.Close()
	resp, err := http.Get("http://" + a.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("content type %q", ct)
	}
	types := map[string]string{}
	seen := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		n++
		switch {
		case strings.HasPrefix(line, "# TYPE"):
			m := promType.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("bad TYPE line %d: %q", n, line)
			}
			if _, dup := types[m[1]]; dup {
				t.Fatalf("family %s declared twice (line %d)", m[1], n)
			}
			types[m[1]] = m[2]
		case strings.HasPrefix(line, "# HELP"):
			if !promHelp.MatchString(line) {
				t.Fatalf("bad HELP line %d: %q", n, line)
			}
		default:
			m := promSample.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("line %d is not a Prometheus sample: %q", n, line)
			}
			name := m[1]
			family := name
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if base := strings.TrimSuffix(name, suffix); base != name && (types[base] == "histogram" || types[base] == "summary") {
					family = base
				}
			}
			if types[family] == "" {
				t.Fatalf("sample %s (line %d) before its # TYPE", name, n)
			}
			seen[family] = true
		}
	}
	for _, want := range []string{"agent_rpc_requests_total", "agent_http_requests_total", "agent_tag_updates_total",
		"agent_members", "agent_spawn_seconds", "agent_interpreters", "agent_interpreter_events_total",
		// serf's and memberlist's through go-metrics' Prometheus sink
		"memberlist_msg_alive", "serf_member_join",
		// the Go and process collectors every Prometheus dashboard expects
		"go_goroutines", "go_memstats_alloc_bytes", "process_resident_memory_bytes", "process_cpu_seconds_total"} {
		if !seen[want] {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestEventHandlersGetJoinAndFailure: a handler sees a join and a failure
// with serf's variables and the members on stdin; a hanging one is killed.
func TestEventHandlersGetJoinAndFailure(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "events")
	script := fmt.Sprintf(`{ echo "event=$SERF_EVENT self=$SERF_SELF_NAME role=$SERF_SELF_ROLE tag=$SERF_TAG_TEAM"; cat; echo ---; } >> %s`, out)
	var logs syncBuffer
	a := startAgentLogging(t, "alpha", "127.0.0.1", &logs, func(c *Config) {
		c.Tags = map[string]string{"team": "blue"}
		c.EventHandlers = []string{"member-join,member-failed=" + script, "member-join=sleep 30"}
		c.EventHandlerTimeout = 500 * time.Millisecond
	})
	b := startAgent(t, "beta", "127.0.0.2", func(c *Config) { c.Join = []string{a.Node().Addr()} })
	read := func() string { data, _ := os.ReadFile(out); return string(data) }
	poll(t, "the join handler", func() bool {
		return strings.Contains(read(), "event=member-join") && strings.Contains(read(), "beta\t127.0.0.2\tserver\t")
	})
	if !strings.Contains(read(), "self=alpha role=server tag=blue") {
		t.Fatalf("handler variables:\n%s", read())
	}
	poll(t, "the hanging handler to be killed", func() bool { return strings.Contains(logs.String(), "timed out and was killed") })
	b.Shutdown() // no leave: alpha must see a failure
	poll(t, "the failure handler", func() bool {
		return strings.Contains(read(), "event=member-failed") && strings.Contains(read()[strings.Index(read(), "event=member-failed"):], "beta\t")
	})
}

func TestParseEventHandler(t *testing.T) {
	for _, tc := range []struct {
		in      string
		filters string
		script  string
		err     string
	}{
		{in: "/usr/bin/handle", filters: "*", script: "/usr/bin/handle"},
		{in: "member-join=/x", filters: "member-join", script: "/x"},
		{in: "member-leave,member-failed=/x arg=1", filters: "member-leave,member-failed", script: "/x arg=1"},
		{in: "user:deploy=/d", filters: "user:deploy", script: "/d"},
		{in: "query:load=uptime", filters: "query:load", script: "uptime"},
		{in: "FOO=bar /x", filters: "*", script: "FOO=bar /x"},
		{in: "member-jion=/x", err: `"member-jion" is not an event filter`},
		{in: "member-join=", err: "no script"},
		{in: "  ", err: "empty"},
		{in: "=", err: "starts with '='"},
		{in: " =/x", err: "starts with '='"},
	} {
		h, err := ParseEventHandler(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		var fs []string
		for _, f := range h.Filters {
			if f.Name != "" {
				fs = append(fs, f.Type+":"+f.Name)
			} else {
				fs = append(fs, f.Type)
			}
		}
		if err != nil || strings.Join(fs, ",") != tc.filters || h.Script != tc.script {
			t.Errorf("%q: %v %q %q", tc.in, err, fs, h.Script)
		}
	}
}

// TestHandlerInputIsOneLinePerMember: a foreign member's tags (our agents
// refuse such tags, a plain serf agent does not) cannot forge a member line
// on a handler's stdin.
func TestHandlerInputIsOneLinePerMember(t *testing.T) {
	in := handlerInput(gossip.Event{Type: gossip.EventMemberJoin, Members: []gossip.Member{
		{Name: "serf1", Addr: net.ParseIP("10.0.0.9"), Tags: map[string]string{"nl": "a\nFAKE\t1.2.3.4\tserver\tx=y"}},
		{Name: "ok", Addr: net.ParseIP("10.0.0.8"), Tags: map[string]string{"role": "server", "dc": "a,b"}},
	}})
	want := "serf1\t10.0.0.9\t\tnl=\"a\\nFAKE\\t1.2.3.4\\tserver\\tx=y\"\nok\t10.0.0.8\tserver\tdc=a,b,role=server\n"
	if string(in) != want {
		t.Fatalf("stdin:\n%q\nwant\n%q", in, want)
	}
}
