package testbed

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshagent/agent/chaos"
)

// TestChaosOutcome: how a client command's end becomes an op's outcome,
// as the simulation's driver judges the same answers.
func TestChaosOutcome(t *testing.T) {
	cases := []struct {
		name string
		res  Result
		err  error
		want chaos.Outcome
	}{
		{"exit 0", Result{Code: 0}, nil, chaos.OK},
		{"timeout, exit 6", Result{Code: 6, Stderr: "Error: no server answered"}, nil, chaos.Info},
		{"killed with its host", Result{Code: -1}, nil, chaos.Info},
		{"out of time", Result{}, context.DeadlineExceeded, chaos.Info},
		{"no agent to ask", Result{Code: 1, Stderr: "Error: no agent answers at 127.0.0.1:7373: is `agent run` started?"}, nil, chaos.Fail},
		{"agent gone mid-call", Result{Code: 1, Stderr: "Error: spawn: rpc connection closed: EOF"}, nil, chaos.Info},
		{"client gave up waiting", Result{Code: 1, Stderr: "Error: spawn: no answer within 45s"}, nil, chaos.Info},
		{"server did not answer a stop", Result{Code: 1, Stderr: "Error: stop demo-x: its server h5 did not answer within 10s"}, nil, chaos.Info},
		{"minority, exit 7", Result{Code: 7, Stderr: "Error: h2 sees 2 of 5 known servers alive"}, nil, chaos.Fail},
		{"refused signal", Result{Code: 1, Stderr: "Error: cannot signal demo-x: its host's agent h4 is failed"}, nil, chaos.Fail},
	}
	for _, c := range cases {
		if got, _ := outcome(c.res, c.err); got != c.want {
			t.Errorf("%s: outcome %s, want %s", c.name, got, c.want)
		}
	}
}

// TestChaosLossPerHook: a packet between two hosts crosses the sender's
// output rule and the receiver's input rule; together they lose the rate
// the schedule asked for.
func TestChaosLossPerHook(t *testing.T) {
	for _, rate := range []float64{0.05, 0.1, 0.3} {
		p := lossPerHook(rate)
		if got := 1 - (1-p)*(1-p); math.Abs(got-rate) > 0.001 {
			t.Errorf("rate %g: %g a hook loses %g a packet", rate, p, got)
		}
	}
}

// TestChaosSeenProcs: a scan's supervisors become processes from their
// specs (or, when a spec is gone, from the name in its path), zombies do
// not count, supervisors are picked by name, and an interpreter whose
// parent is no supervisor is an orphan.
func TestChaosSeenProcs(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "interpreters", "demo-k1-aaaa", "spec.json")
	if err := os.MkdirAll(filepath.Dir(spec), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spec, []byte(`{"name":"demo-k1-aaaa","rid":"k1","gen":3}`), 0o644); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(dir, "interpreters", "demo-r2-bbbb", "spec.json")
	sup := func(pid int, path string, state byte) NSProcess {
		return NSProcess{PID: pid, PPID: 1, State: state, Argv: []string{"/bin/agent", "interpreter", "--spec", path}}
	}
	child := func(pid, ppid int) NSProcess {
		return NSProcess{PID: pid, PPID: ppid, State: 'S', Argv: []string{"/bin/agent", "echo-server", "--addr", "10.231.0.1:1"}}
	}
	s := newSeenProcs()
	procs, byHost := s.record(map[string][]NSProcess{
		"h1": {sup(10, spec, 'S'), child(11, 10), sup(20, gone, 'T'), child(21, 99), sup(30, gone, 'Z')},
	}, 5*time.Second)
	want := []chaos.Process{{Name: "demo-k1-aaaa", RID: "k1", Host: "h1", Gen: 3}, {Name: "demo-r2-bbbb", RID: "r2", Host: "h1"}}
	if fmt.Sprint(procs) != fmt.Sprint(want) {
		t.Errorf("processes %v, want %v", procs, want)
	}
	if got := byHost["h1"]; len(got) != 2 || got[0].PID != 10 || got[1].PID != 20 {
		t.Errorf("supervisors by name %v, want pids 10 and 20", got)
	}
	latest, _ := s.orphaned()
	if len(latest) != 1 || latest[0].PID != 21 {
		t.Errorf("orphans %v, want pid 21 alone", latest)
	}
	if !s.since("demo-k1-aaaa", 5*time.Second) || s.since("demo-k1-aaaa", 6*time.Second) {
		t.Error("demo-k1-aaaa: seen at 5s only")
	}
}
