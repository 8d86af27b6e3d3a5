package agent

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/checks"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

// TestCriticalCheckMovesPlacement: the least loaded server wins until its
// check fails; then it bids "unhealthy: disk", is never elected, and its
// hc tag says why in every view; once the check passes it wins again.
func TestCriticalCheckMovesPlacement(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	check := fmt.Sprintf(`{"name":"disk","type":"script","args":["/bin/sh","-c","test ! -e %s || exit 2"],"interval":"100ms",`+
		`"failures_before_critical":2,"successes_before_passing":2}`, broken)
	agents, cl := placeCluster(t, map[string]string{
		"s1": "fixed:cpu=10,mem=10",
		"s2": "fixed:cpu=50,mem=50",
	}, map[string]func(*Config){"s1": func(c *Config) { c.Checks = []string{check} }})
	winner := func() rpc.PlaceResponse {
		resp, err := cl.Place(rpc.PlaceRequest{Kind: "demo", Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var last rpc.PlaceResponse
	describe := func() string { return fmt.Sprintf("%+v", last) }
	poll(t, "s1, the least loaded, to win once its check passes", func() bool { last = winner(); return last.Winner == "s1" }, describe)

	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	poll(t, "placement to move to s2", func() bool { last = winner(); return last.Winner == "s2" }, describe)
	for _, b := range last.Bids {
		if b.Node == "s1" && b.Refusal != "unhealthy: disk" {
			t.Fatalf("s1's bid %+v, want the refusal unhealthy: disk", b)
		}
	}
	poll(t, "the hc tag in the asker's view", func() bool {
		for _, m := range agents["s1"].Node().Members() {
			if m.Name == "s1" {
				return m.Tags[gossip.TagChecks] == "disk"
			}
		}
		return false
	})
	for range 5 {
		if w := winner(); w.Winner != "s1" && w.Winner != "s2" || w.Winner == "s1" {
			t.Fatalf("while its check is critical s1 was elected (or nobody): %+v", w)
		}
	}
	// members (and the dashboard, and the event stream) show it.
	poll(t, "s2 to see s1 unhealthy", func() bool {
		for _, m := range agents["s2"].Node().Members() {
			if m.Name == "s1" {
				return memberJSON(m).Unhealthy == "disk"
			}
		}
		return false
	})
	// So does /metrics.
	families, err := agents["s1"].metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	critical := -1.0
	for _, f := range families {
		if f.GetName() == "agent_checks_critical" {
			critical = f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if critical != 1 {
		t.Fatalf("agent_checks_critical = %v, want 1", critical)
	}
	// Details over HTTP, as GET /v1/checks serves them.
	rec := httptest.NewRecorder()
	agents["s1"].httpChecks(rec, httptest.NewRequest("GET", "/v1/checks", nil))
	var details struct {
		Node   string
		Checks []checks.View
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &details); err != nil {
		t.Fatalf("/v1/checks: %v\n%s", err, rec.Body.String())
	}
	if len(details.Checks) != 1 || details.Checks[0].Name != "disk" || details.Checks[0].Status != checks.Critical ||
		!strings.Contains(details.Checks[0].Output, "exit status 2") {
		t.Fatalf("/v1/checks: %s", rec.Body.String())
	}

	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	poll(t, "s1 to win again once its check passes", func() bool { last = winner(); return last.Winner == "s1" }, describe)
	if _, ok := agents["s1"].Node().Tags()[gossip.TagChecks]; ok {
		t.Fatalf("hc tag still set: %v", agents["s1"].Node().Tags())
	}
}

// TestWorstCaseServerTagsWithChecksFit: the hc tag at its longest, with a
// drain and the worst-case server tags, stays under memberlist's cap.
func TestWorstCaseServerTagsWithChecksFit(t *testing.T) {
	extra := map[string]string{}
	for _, k := range []string{"dc", "zone", "rack", "env", "team", "gpu"} {
		extra[k] = strings.Repeat("x", 24)
	}
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("check-%02d-%s", i, strings.Repeat("y", 20)))
	}
	extra = withCheckTag(extra, names)
	if v := extra[gossip.TagChecks]; len(v) > checks.MaxTag || !strings.Contains(v, "+") {
		t.Fatalf("hc=%q: want at most %d bytes, counting the names that do not fit", v, checks.MaxTag)
	}
	tags := gossip.Tags{Role: gossip.RoleServer, Load: &gossip.Load{CPU: 100, Mem: 100},
		Interpreters: 99999, Capacity: 99999, Draining: true, Extra: extra}.Map()
	if n := gossip.EncodedTagSize(tags); n > gossip.MaxTagBytes {
		t.Fatalf("worst-case server tags with checks encode to %d bytes, over %d", n, gossip.MaxTagBytes)
	} else {
		t.Logf("worst-case server tags with checks: %d of %d bytes", n, gossip.MaxTagBytes)
	}
}
