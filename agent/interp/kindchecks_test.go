package interp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/checks"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/state"
)

// TestKindChecksRefusedAtLoadNamingKindAndCheck: a kind's check with an
// unknown type, a zero or negative interval, a script that does not
// exist, a ttl type or a port the kind lacks stops the load, and the
// error names the file's kind and the check.
func TestKindChecksRefusedAtLoadNamingKindAndCheck(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ check, want string }{
		"unknown type":      {`{"name":"alive","type":"smoke","interval":"5s"}`, `bad check "alive": type "smoke" is not known`},
		"zero interval":     {`{"name":"alive","type":"tcp","interval":"0s"}`, `bad check "alive": interval "0s" is not a positive duration`},
		"negative":          {`{"name":"alive","type":"tcp","interval":"-5s"}`, `bad check "alive": interval "-5s" is not a positive duration`},
		"no interval":       {`{"name":"alive","type":"tcp"}`, `bad check "alive": has no interval`},
		"missing script":    {`{"name":"hb","type":"script","args":["/no/such/check-kernel","{name}"],"interval":"5s"}`, `bad check "hb": script /no/such/check-kernel: no such file or directory`},
		"ttl":               {`{"name":"beat","type":"ttl","ttl":"5s"}`, `bad check "beat": a kind's check is script, http or tcp`},
		"unknown port":      {`{"name":"web","type":"http","http":"http://127.0.0.1:{port:web}/","interval":"5s"}`, `bad check "web" names {port:web}, but the kind has no port "web"`},
		"no connection":     {`{"name":"hb","type":"script","args":["/bin/sh","{connection_file}"],"interval":"5s"}`, `bad check "hb" names {connection_file}, but the kind writes none`},
		"send not for http": {`{"name":"web","type":"http","http":"http://{addr}/","send":"x","interval":"5s"}`, `bad check "web": send and expect belong to a tcp check`},
	} {
		t.Run(name, func(t *testing.T) {
			body := `{"kernel": {"command": ["sh", "{port}"], "checks": [` + tc.check + `]}}`
			_, err := LoadKinds(writeFile(t, dir, strings.ReplaceAll(name, " ", "-")+".json", body))
			if err == nil || !strings.Contains(err.Error(), `kind "kernel"`) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to name kind \"kernel\" and say %s", err, tc.want)
			}
		})
	}
	_, err := LoadKinds(writeFile(t, dir, "twice.json", `{"kernel": {"command": ["sh"], "checks": [
		{"name":"a","type":"tcp","interval":"5s"}, {"name":"a","type":"tcp","interval":"9s"}]}}`))
	if err == nil || !strings.Contains(err.Error(), `"a" is defined twice`) {
		t.Fatalf("two checks named a: %v", err)
	}
}

// TestKindChecksRenderedForEachInterpreter: a tcp check without a target
// probes the interpreter's endpoint; placeholders take the interpreter's
// name, named port and connection file, escaped for JSON.
func TestKindChecksRenderedForEachInterpreter(t *testing.T) {
	dir := t.TempDir()
	kinds, err := LoadKinds(writeFile(t, dir, "k.json", `{"kernel": {"command": ["sh", "{connection_file}"],
		"connection": "jupyter", "checks": [
		{"name": "alive", "type": "tcp", "interval": "2s", "send": "ping\n", "expect": "ping", "failures_before_critical": 3},
		{"name": "hb", "type": "tcp", "tcp": "127.0.0.1:{port:hb}", "interval": "5s"},
		{"name": "kernel", "type": "script", "args": ["/bin/sh", "-c", "test -r \"$0\"", "{connection_file}"], "interval": "10s"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: "kernel-1", Endpoint: "127.0.0.2:4100", ConnectionFile: `/data/a "b"/connection.json`,
		Env: []string{"AGENT_INTERPRETER_PORT_HB=4104", "AGENT_INTERPRETER_PORT_SHELL=4100"}}
	var got []checks.Definition
	for _, raw := range kinds["kernel"].checksFor(spec) {
		d, err := checks.Parse(string(raw))
		if err != nil {
			t.Fatalf("rendered check %s: %v", raw, err)
		}
		got = append(got, d)
	}
	if len(got) != 3 || got[0].TCP != "127.0.0.2:4100" || got[0].Send != "ping\n" || got[0].FailuresBeforeCritical != 3 ||
		got[1].TCP != "127.0.0.1:4104" || got[2].Args[3] != spec.ConnectionFile {
		t.Fatalf("rendered checks %+v", got)
	}
}

// scriptedProber answers each probe with the next of its results (the
// last repeats): a stand-in for the probe's I/O.
type scriptedProber struct {
	mu      sync.Mutex
	results []checks.Status
	calls   int
}

func (p *scriptedProber) Probe(ctx context.Context, d checks.Definition) checks.Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.results[min(p.calls, len(p.results)-1)]
	p.calls++
	return checks.Result{Status: r, Output: string(r)}
}

// runEpisodes runs one kind check (failures_before_critical 3,
// successes_before_passing 2) through a supervisor's checks on a fake
// clock, one result per interval, and returns after which result each
// critical episode began: when the supervisor restarts the interpreter.
func runEpisodes(t *testing.T, results []checks.Status) []int {
	t.Helper()
	clk := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	spec := Spec{OutputLog: filepath.Join(t.TempDir(), "output.log"), Checks: []json.RawMessage{
		json.RawMessage(`{"name":"alive","type":"tcp","tcp":"127.0.0.1:1","interval":"10s","timeout":"1s",` +
			`"failures_before_critical":3,"successes_before_passing":2}`)}}
	c, err := newSupervisorChecks(spec, clk, &scriptedProber{results: results})
	if err != nil {
		t.Fatal(err)
	}
	var taken atomic.Int64
	c.runner.OnResult(func() { c.write(); taken.Add(1) })
	c.runner.Start()
	defer c.runner.Stop()
	var began []int
	for i := range results {
		deadline := time.Now().Add(10 * time.Second)
		for taken.Load() < int64(i+1) || clk.Waiters() < 2 { // bounded poll: the result is in, the loop waits
			if time.Now().After(deadline) {
				t.Fatalf("result %d not taken", i+1)
			}
			time.Sleep(time.Millisecond)
		}
		select {
		case critical := <-c.changes:
			if len(c.episodes.next(critical)) > 0 {
				began = append(began, i+1)
			}
		default:
		}
		clk.Advance(10 * time.Second)
	}
	var views []checks.View
	data, err := os.ReadFile(c.file)
	if err != nil || json.Unmarshal(data, &views) != nil || len(views) != 1 || views[0].Name != "alive" {
		t.Fatalf("checks.json for the server: %s (%v)", data, err)
	}
	return began
}

// TestFlappingKindCheckRestartsOncePerEpisode: a check that flaps (fewer
// than 3 failures in a row) never begins a critical episode, so never
// restarts the interpreter; 3 in a row begin one, which lasts (one
// restart) until 2 passes in a row end it; the next 3 failures begin the
// second.
func TestFlappingKindCheckRestartsOncePerEpisode(t *testing.T) {
	P, F := checks.Passing, checks.Critical
	results := []checks.Status{
		P, F, F, P, F, P, F, F, P, F, P, // flaps: 11 results, never 3 failures in a row
		F, F, F, // 14: critical, the first episode
		F, F, P, F, P, F, // still critical: one pass at a time does not end it
		P, P, // 22: passing again
		F, F, F, // 25: the second episode
	}
	if got := runEpisodes(t, results); !slices.Equal(got, []int{14, 25}) {
		t.Fatalf("episodes (restarts) began after results %v, want [14 25]", got)
	}
}

// TestKindCheckThatNeverPassedRestartsNothing: an interpreter whose check
// never passes (it does not come up) is reported critical but begins no
// episode: a restart loop on a kernel that cannot start helps nobody.
func TestKindCheckThatNeverPassedRestartsNothing(t *testing.T) {
	F := checks.Critical
	if got := runEpisodes(t, []checks.Status{F, F, F, F, F, F}); len(got) != 0 {
		t.Fatalf("episodes began after results %v, want none", got)
	}
}

// TestWorstCaseInterpreterTagsWithChecksFit: an interpreter's tags with
// the longest values they take, a restart policy, counts and the hc tag at
// its longest stay under memberlist's cap, leaving room for its extra
// arguments (which share what is left).
func TestWorstCaseInterpreterTagsWithChecksFit(t *testing.T) {
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("%s%02d", strings.Repeat("c", checks.MaxName-2), i))
	}
	worst := gossip.Tags{Role: gossip.RoleInterpreter, Kind: strings.Repeat("k", 32), Host: strings.Repeat("h", 64),
		RequestID: strings.Repeat("r", 36), Endpoint: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", PID: 4194304,
		Restart: RestartOnFailure, Restarts: 9999, Gen: 9999, End: "gave up (signal: segmentation fault)",
		Critical: checks.TagValue(names, checks.MaxTag)}
	size := gossip.EncodedTagSize(worst.Map())
	if size > gossip.MaxTagBytes-128 {
		t.Fatalf("worst-case interpreter tags with hc encode to %d bytes: less than 128 of %d left for its arguments", size, gossip.MaxTagBytes)
	}
	t.Logf("worst-case interpreter tags with hc: %d of %d bytes", size, gossip.MaxTagBytes)
}
