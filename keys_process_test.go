package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The rules for interpreters under faults that real agents on loopback can
// show: one key, one answer (two askers at once, an agent crash that
// leaves its interpreters running), a keyed spawn that differs refused, a
// supervisor crash that is no duplicate, orders to a gone host answered at
// once. The partition cases run in the test bed (scripts/testbed) and, with
// random faults, in the chaos checker.

// supervisorsFor counts, on every agent's host, the supervisors of the
// interpreters whose names hold rid: processes, not list rows.
func supervisorsFor(agents []*testAgent, rid string) int {
	n := 0
	for _, a := range agents {
		n += len(pidsWhere(func(args []string) bool {
			return len(args) > 3 && args[1] == "interpreter" && args[2] == "--spec" &&
				strings.HasPrefix(args[3], a.dataDir+"/") && strings.Contains(args[3], "-"+rid+"-")
		}))
	}
	return n
}

// supervisorLogs gathers the supervisor logs of rid's interpreters on
// every host, for a failure message: each copy says what it saw.
func supervisorLogs(agents []*testAgent, rid string) string {
	var b strings.Builder
	for _, a := range agents {
		logs, _ := filepath.Glob(filepath.Join(a.dataDir, "interpreters", "*-"+rid+"-*", "supervisor.log"))
		for _, l := range logs {
			data, _ := os.ReadFile(l)
			fmt.Fprintf(&b, "--- %s on %s:\n%s\n", filepath.Base(filepath.Dir(l)), a.name, data)
		}
	}
	return b.String()
}

func requestIDOf(name string) string {
	parts := strings.Split(name, "-")
	if len(parts) < 3 {
		return ""
	}
	return parts[len(parts)-2]
}

// TestOneKeyOneAnswerForTwoAskersAtOnce: two agents asked for one key at
// the same moment, and one right after the other returned, get the same
// interpreter, and one process runs for it on all hosts. Before the keyed
// spawns went through the key's coordinator, half of such pairs got two.
func TestOneKeyOneAnswerForTwoAskersAtOnce(t *testing.T) {
	agents := spawnCluster(t)
	for k := range 4 {
		key := fmt.Sprintf("pair-%d", k)
		var answers [2]spawnJSON
		var wg sync.WaitGroup
		for i, asker := range []*testAgent{agents[0], agents[2]} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, errOut, code := spawnVia(t, asker, "--kind", "demo", "--key", key, "--wait")
				if code != 0 {
					t.Errorf("key %s from %s: exit %d: %s", key, asker.name, code, errOut)
				}
				answers[i] = s
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		if answers[0].Name != answers[1].Name {
			t.Fatalf("key %s asked at once of node1 and node3: answers %s and %s", key, answers[0].Name, answers[1].Name)
		}
		// One asked right after the first returned.
		s, errOut, code := spawnVia(t, agents[1], "--kind", "demo", "--key", key, "--wait")
		if code != 0 || s.Name != answers[0].Name || !s.Existing {
			t.Fatalf("key %s asked again of node2: exit %d, %+v, want %s: %s", key, code, s, answers[0].Name, errOut)
		}
		if n := supervisorsFor(agents, requestIDOf(s.Name)); n != 1 {
			t.Fatalf("key %s: %d supervisors run on the hosts, want 1", key, n)
		}
	}
}

// TestTheAnswerStandsAfterAnAgentCrash: the agent of a keyed interpreter's
// host is killed; its supervisor keeps running. A keyed spawn then places
// the key anew, one generation up, and that answer stands: the old copy
// sees the newer one and stops itself, so one process runs, the one the
// client was given last. Before, the old copy won half the ties on name
// and both ran while its agent stayed down.
func TestTheAnswerStandsAfterAnAgentCrash(t *testing.T) {
	agents := spawnCluster(t)
	for k := range 3 {
		key := fmt.Sprintf("crash-%d", k)
		first, errOut, code := spawnVia(t, agents[0], "--kind", "demo", "--key", key, "--wait")
		if code != 0 {
			t.Fatalf("spawn %s: exit %d: %s", key, code, errOut)
		}
		host, asker := agentNamed(agents, first.Node), agents[0]
		if host == asker {
			asker = agents[1]
		}
		host.kill9(t)
		waitFor(t, first.Node+" failed in "+asker.name+"'s view", 20*time.Second,
			statusEverywhere(t, []*testAgent{asker}, first.Node, "failed"))
		second, errOut, code := spawnVia(t, asker, "--kind", "demo", "--key", key, "--wait")
		if code != 0 || second.Name == first.Name || second.Node == first.Node {
			t.Fatalf("spawn %s after its host's agent died: exit %d, %+v: %s", key, code, second, errOut)
		}
		rid := requestIDOf(second.Name)
		if _, ok := waitUntil(30*time.Second, func() bool { return supervisorsFor(agents, rid) == 1 }); !ok {
			t.Fatalf("the old copy of %s (%s, generation %d) did not stop itself within 30 s of the new answer %s "+
				"(generation %d): %d supervisors run\n%s", key, first.Name, first.Generation, second.Name, second.Generation,
				supervisorsFor(agents, rid), supervisorLogs(agents, rid))
		}
		if got := echo(t, second.Endpoint, "still here"); got != "still here" {
			t.Fatalf("the interpreter of the last answer, %s, echoed %q", second.Name, got)
		}
		// Bring the host back for the next key.
		host.start(t, "--load-source", "fixed:cpu=30,mem=30", "--publish-min-interval", "500ms", "--join", agents[0].gossip)
		waitFor(t, host.name+" alive again", 20*time.Second, statusEverywhere(t, agents, host.name, "alive"))
		if n := supervisorsFor(agents, rid); n != 1 {
			t.Fatalf("key %s: %d supervisors after its old host's agent came back, want 1", key, n)
		}
	}
}

// TestAKeyedSpawnThatDiffersIsRefused: the same key with another kind or
// another restart policy is refused, naming the difference (exit 9), not
// answered "already running" with an interpreter of another kind.
func TestAKeyedSpawnThatDiffersIsRefused(t *testing.T) {
	kinds := writeKinds(t, `{"sleeper": {"command": ["sh", "-c", "exec sleep 600"]}}`)
	agents := spawnCluster(t, "--interpreters", kinds)
	s, errOut, code := spawnVia(t, agents[0], "--kind", "demo", "--key", "k1", "--wait")
	if code != 0 {
		t.Fatalf("spawn: exit %d: %s", code, errOut)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kind", "sleeper", "--key", "k1"}, `kind "demo", not "sleeper"`},
		{[]string{"--kind", "demo", "--key", "k1", "--restart", "on-failure"}, `restart policy "no", not "on-failure"`},
	} {
		for _, asker := range agents {
			got, errOut, code := spawnVia(t, asker, tc.args...)
			if code != 9 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "k1") {
				t.Errorf("spawn %v via %s: exit %d, %+v: %s; want exit 9 naming %s", tc.args, asker.name, code, got, errOut, tc.want)
			}
		}
	}
	same, errOut, code := spawnVia(t, agents[1], "--kind", "demo", "--key", "k1")
	if code != 0 || same.Name != s.Name {
		t.Fatalf("the same request again: exit %d, %+v: %s", code, same, errOut)
	}
}

// TestASupervisorCrashIsNoDuplicate: kill -9 of an on-failure interpreter's
// supervisor: its host starts it again, and no agent reports the dead one
// as a duplicate (log or metric).
func TestASupervisorCrashIsNoDuplicate(t *testing.T) {
	agents := spawnCluster(t)
	s, errOut, code := spawnVia(t, agents[0], "--kind", "demo", "--restart", "on-failure", "--wait")
	if code != 0 {
		t.Fatalf("spawn: exit %d: %s", code, errOut)
	}
	rid := requestIDOf(s.Name)
	host := agentNamed(agents, s.Node)
	old := supervisorsUnder(host.dataDir)
	if len(old) != 1 {
		t.Fatalf("%d supervisors on %s", len(old), host.name)
	}
	syscall.Kill(old[0], syscall.SIGKILL)
	var restarted string
	waitFor(t, "the request restarted on its host and listed everywhere", 30*time.Second, func() bool {
		for _, a := range agents {
			found := false
			for name, in := range interpretersOf(t, a) {
				if name != s.Name && requestIDOf(name) == rid && in.Status == "alive" {
					found, restarted = true, name
				}
			}
			if !found {
				return false
			}
		}
		return true
	})
	waitFor(t, "the dead supervisor's member seen failed everywhere", 30*time.Second, func() bool {
		for _, a := range agents {
			if in, ok := interpretersOf(t, a)[s.Name]; ok && in.Status == "alive" {
				return false
			}
		}
		return true
	})
	for _, a := range agents {
		if log := a.p.log.String(); strings.Contains(log, "interpreter-duplicate") {
			t.Errorf("%s reported a duplicate after a supervisor crash (restarted as %s):\n%s", a.name, restarted, grepLines(log, "duplicate"))
		}
		if m := metricsOf(t, a); strings.Contains(m, `agent_interpreter_events_total{type="duplicate"} `) &&
			!strings.Contains(m, `agent_interpreter_events_total{type="duplicate"} 0`+"\n") {
			t.Errorf("%s counts a duplicate: %s", a.name, grepLines(m, `{type="duplicate"}`))
		}
	}
	if n := supervisorsFor(agents, rid); n != 1 {
		t.Errorf("%d supervisors for the request, want 1", n)
	}
}

// TestOrdersToAGoneHostAgentSayWhatToDoAtOnce: an interpreter whose host's
// agent left (the interpreter still runs) cannot be stopped or signalled
// through the mesh; both say so at once, naming the host and what to do,
// instead of waiting out the order's 15 s.
func TestOrdersToAGoneHostAgentSayWhatToDoAtOnce(t *testing.T) {
	agents := spawnCluster(t)
	s, errOut, code := spawnVia(t, agents[0], "--kind", "demo", "--wait")
	if code != 0 {
		t.Fatalf("spawn: exit %d: %s", code, errOut)
	}
	host, asker := agentNamed(agents, s.Node), agents[0]
	if host == asker {
		asker = agents[1]
	}
	host.p.cmd.Process.Signal(syscall.SIGTERM)
	<-host.p.done
	waitFor(t, host.name+" left in "+asker.name+"'s view", 20*time.Second, statusEverywhere(t, []*testAgent{asker}, host.name, "left"))
	for _, args := range [][]string{{"stop", s.Name}, {"signal", s.Name, "SIGINT"}} {
		_, errOut, code := runCLI(t, append([]string{args[0], "--rpc-addr", asker.rpc}, args[1:]...)...)
		if code == 0 || !strings.Contains(errOut, host.name+" has left the mesh") || !strings.Contains(errOut, "--data-dir") {
			t.Errorf("%v: exit %d: %s", args, code, errOut)
		}
	}
}

func agentNamed(agents []*testAgent, name string) *testAgent {
	for _, a := range agents {
		if a.name == name {
			return a
		}
	}
	return nil
}

func metricsOf(t *testing.T, a *testAgent) string {
	t.Helper()
	resp, err := http.Get("http://" + a.http + "/metrics")
	if err != nil {
		t.Fatalf("metrics of %s: %v", a.name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return string(data)
}

func grepLines(s, word string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, word) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestInPlaceRestartsAreCounted: a supervisor's restart of its failing
// child is an interpreter-restart event on its host (metric and log), not
// only a line in the supervisor's own log.
func TestInPlaceRestartsAreCounted(t *testing.T) {
	kinds := writeKinds(t, `{"flaky": {"command": ["sh", "-c", "sleep 1; exit 1"], "restart": "on-failure"}}`)
	agents := spawnCluster(t, "--interpreters", kinds)
	s, errOut, code := spawnVia(t, agents[0], "--kind", "flaky", "--wait")
	if code != 0 {
		t.Fatalf("spawn: exit %d: %s", code, errOut)
	}
	host := agentNamed(agents, s.Node)
	waitFor(t, "a restart counted on "+host.name, 30*time.Second, func() bool {
		m := metricsOf(t, host)
		return strings.Contains(m, `agent_interpreter_events_total{type="restart"} `) &&
			!strings.Contains(m, `agent_interpreter_events_total{type="restart"} 0`+"\n")
	})
	if log := host.p.log.String(); !strings.Contains(log, "interpreter-restart: its supervisor restarted it") {
		t.Errorf("%s's log does not say the interpreter restarted", host.name)
	}
}

// TestAStopThatWaitsSaysWhy: an interpreter that ignores SIGTERM is killed
// after its kind's grace; `agent stop` says what it waits for meanwhile.
func TestAStopThatWaitsSaysWhy(t *testing.T) {
	kinds := writeKinds(t, `{"stubborn": {"command": ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]}}`)
	agents := spawnCluster(t, "--interpreters", kinds)
	s, errOut, code := spawnVia(t, agents[0], "--kind", "stubborn", "--wait")
	if code != 0 {
		t.Fatalf("spawn: exit %d: %s", code, errOut)
	}
	out, errOut, code := runCLI(t, "stop", "--rpc-addr", agents[1].rpc, s.Name)
	if code != 0 || !strings.Contains(out, "stopped") || !strings.Contains(errOut, "SIGKILL follows after its kind's stop grace") {
		t.Fatalf("stop of an interpreter that ignores SIGTERM: exit %d, %q, %q", code, out, errOut)
	}
}
