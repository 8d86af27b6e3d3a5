package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Tests of what spawn reports, on real agents over loopback: every answer
// is true. The fault tests (partitions, host crashes, name conflicts of
// supervisors) run in the test bed, scripts/testbed.

// writeKinds writes an interpreters file for a test's agents.
func writeKinds(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "interpreters.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSpawnReportsTheServerThatStarted: the best bid's server refuses the
// spawn order (its spawn rate is spent) and the next one starts the
// interpreter; spawn reports success on the second, with the first's
// refusal among the attempts, and exactly one interpreter runs.
func TestSpawnReportsTheServerThatStarted(t *testing.T) {
	var agents []*testAgent
	for i := 1; i <= 3; i++ {
		a := newTestAgent(t, i)
		// node1 is the least loaded, so it wins the election, but takes
		// no spawn order at all.
		args := []string{"--load-source", "fixed:cpu=50,mem=50", "--publish-min-interval", "500ms"}
		if i == 1 {
			args = []string{"--load-source", "fixed:cpu=5,mem=5", "--publish-min-interval", "500ms", "--spawn-rate-limit", "0.001",
				"--tag", "box=one"}
		}
		if i > 1 {
			args = append(args, "--join", agents[0].gossip)
		}
		agents = append(agents, a)
		stopInterpreters(t, a)
		a.start(t, args...)
	}
	waitFor(t, "three servers with load", 20*time.Second, func() bool {
		ms := membersOf(t, agents[0])
		for _, a := range agents {
			if ms[a.name].Status != "alive" || ms[a.name].Tags["cpu"] == "" {
				return false
			}
		}
		return true
	})
	// The one spawn order node1 takes from node3 for a long while.
	if s, errOut, code := spawnVia(t, agents[2], "--kind", "demo", "--constraint", "box=one"); code != 0 || s.Node != "node1" {
		t.Fatalf("the first spawn, aimed at node1: exit %d, %+v: %s", code, s, errOut)
	}
	s, errOut, code := spawnVia(t, agents[2], "--kind", "demo", "--wait")
	if code != 0 {
		t.Fatalf("spawn: exit %d: %s", code, errOut)
	}
	if s.Node == "node1" || s.Node == "" || s.Name == "" || s.Error != "" {
		t.Fatalf("spawn reported %+v; want success on node2 or node3 after node1 refused", s)
	}
	if got := echo(t, s.Endpoint, "hello"); got != "hello" {
		t.Fatalf("the reported endpoint %s echoed %q", s.Endpoint, got)
	}
	if len(s.Attempts) != 1 || !strings.Contains(s.Attempts[0], "node1: rate limited") {
		t.Errorf("the attempts do not show node1's refusal: %q", s.Attempts)
	}
	running := 0
	for _, a := range agents {
		running += len(supervisorsUnder(a.dataDir))
	}
	if running != 2 {
		t.Errorf("%d supervisors run after two spawns", running)
	}
}

// TestWaitReportsAnInterpreterThatDied: a kind whose program exits at once
// fails the spawn (with --wait and without) with exit code 8, its exit
// status and the first lines of its output; nothing of it keeps running.
func TestWaitReportsAnInterpreterThatDied(t *testing.T) {
	kinds := writeKinds(t, `{"crash": {"command": ["sh", "-c", "echo boom-output; exit 3"]}}`)
	agents := spawnCluster(t, "--interpreters", kinds)
	for _, wait := range []bool{true, false} {
		args := []string{"--kind", "crash"}
		if wait {
			args = append(args, "--wait")
		}
		s, errOut, code := spawnVia(t, agents[0], args...)
		if code != 8 || !strings.Contains(errOut, "exit status 3") || !strings.Contains(errOut, "boom-output") {
			t.Fatalf("spawn (wait %v) of a program that exits at once: exit %d, %+v\n%s", wait, code, s, errOut)
		}
		t.Logf("spawn (wait %v): exit %d: %s", wait, code, strings.TrimSpace(errOut))
	}
	// A supervisor that reported a death exits right after; bounded poll.
	waitFor(t, "no supervisor left running", 10*time.Second, func() bool {
		for _, a := range agents {
			if len(supervisorsUnder(a.dataDir)) > 0 {
				return false
			}
		}
		return true
	})
	if list := interpretersOf(t, agents[0]); len(list) != 0 {
		t.Errorf("the mesh lists interpreters that never started: %v", list)
	}
}

// TestRestartOnFailure: an interpreter whose program fails is restarted on
// its host by its supervisor, and `agent interpreters` shows the policy and
// the count; the member stays the same one.
func TestRestartOnFailure(t *testing.T) {
	kinds := writeKinds(t, `{"flaky": {"command": ["sh", "-c", "sleep 1; exit 1"], "restart": "on-failure"}}`)
	agents := spawnCluster(t, "--interpreters", kinds)
	s, errOut, code := spawnVia(t, agents[0], "--kind", "flaky", "--wait")
	if code != 0 {
		t.Fatalf("spawn: exit %d: %s", code, errOut)
	}
	waitFor(t, "a restart shown on every agent", 20*time.Second, func() bool {
		for _, a := range agents {
			out, _, _ := runCLI(t, "interpreters", "--rpc-addr", a.rpc, "--format", "json")
			if !strings.Contains(out, `"restart": "on-failure"`) || strings.Contains(out, `"restarts": 0`) {
				return false
			}
		}
		return true
	})
	if in := interpretersOf(t, agents[1])[s.Name]; in.Status != "alive" {
		t.Fatalf("the restarted interpreter %s is %+v", s.Name, in)
	}
	if _, errOut, code := spawnVia(t, agents[0], "--kind", "demo", "--restart", "always"); code != 1 ||
		!strings.Contains(errOut, `"always"`) || !strings.Contains(errOut, "on-failure") {
		t.Fatalf("an unknown restart policy: exit %d: %s", code, errOut)
	}
}

// TestDuplicateAgentNameExits: an agent started with the name of a member
// the mesh already has is told by the mesh that the name is taken; it
// exits non-zero at once, naming the name and the member that holds it,
// instead of serving a frozen view.
func TestDuplicateAgentNameExits(t *testing.T) {
	first, second := newTestAgent(t, 1), newTestAgent(t, 2)
	first.start(t)
	second.start(t, "--join", first.gossip)
	waitFor(t, "two members", 20*time.Second, statusEverywhere(t, []*testAgent{first}, second.name, "alive"))
	impostor := newTestAgent(t, 3)
	impostor.name = first.name
	impostor.start(t, "--join", second.gossip)
	select {
	case <-impostor.p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent with a taken name still runs after 30s")
	}
	if code := impostor.p.cmd.ProcessState.ExitCode(); code == 0 {
		t.Fatalf("the agent with a taken name exited 0")
	}
	log := impostor.p.log.String()
	if !strings.Contains(log, `"node1" is held by the member at `+first.ip) {
		t.Fatalf("its error does not name the name and the holder:\n%s", log)
	}
	if st := membersOf(t, second)[first.name]; st.Status != "alive" || st.Addr != first.ip {
		t.Fatalf("the real %s is %+v on %s", first.name, st, second.name)
	}
}

// TestPlaceHonoursAKindsMax: with every server at a kind's max, the dry run
// elects nobody (exit 3, each server's refusal named), as the spawn would.
func TestPlaceHonoursAKindsMax(t *testing.T) {
	kinds := writeKinds(t, `{"one": {"command": ["sh", "-c", "exec sleep 600"], "max": 1}}`)
	agents := spawnCluster(t, "--interpreters", kinds)
	for i := range agents {
		if _, errOut, code := spawnVia(t, agents[0], "--kind", "one", "--wait"); code != 0 {
			t.Fatalf("spawn %d: %s", i, errOut)
		}
	}
	out, _, code := runCLI(t, "place", "--rpc-addr", agents[1].rpc, "--kind", "one", "--format", "json")
	if code != 3 || strings.Contains(out, `"winner": "node`) || !strings.Contains(out, `at the limit for kind \"one\": 1 of 1`) {
		t.Fatalf("place with every server at the kind's max: exit %d\n%s", code, out)
	}
}

// TestListenersAreCheckedBeforeJoining: an agent whose RPC port is taken
// fails before it gossips, so the mesh never sees it.
func TestListenersAreCheckedBeforeJoining(t *testing.T) {
	first := newTestAgent(t, 1)
	first.start(t)
	second := newTestAgent(t, 2)
	out, code := runAgent(t, "run", "--node", "late", "--bind", second.gossip, "--rpc-addr", first.rpc,
		"--http-addr", second.http, "--data-dir", second.dataDir, "--join", first.gossip)
	if code == 0 || !strings.Contains(out, "rpc listen on "+first.rpc) {
		t.Fatalf("an agent on a taken RPC port: exit %d\n%s", code, out)
	}
	if _, ok := membersOf(t, first)["late"]; ok {
		t.Fatalf("the mesh saw the agent that could not serve RPC: %v", membersOf(t, first))
	}
}

// runAgent runs the binary to its end, bounded, and returns its output.
func runAgent(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("agent %v still runs after 20s:\n%s", args, out.String())
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// TestKindsThatCannotStartAreRefusedAtStart: an interpreters file whose
// kind names a missing program or directory stops `agent run` at once,
// naming the kind and the path, before it gossips or writes anything.
func TestKindsThatCannotStartAreRefusedAtStart(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"py": {"command": ["no-such-program-here"]}}`, `kind "py": program "no-such-program-here" is not on the PATH`},
		{`{"py": {"command": ["sh"], "dir": "/no/such/dir"}}`, `kind "py": dir "/no/such/dir" does not exist`},
	} {
		a := newTestAgent(t, 1)
		out, code := runAgent(t, "run", "--node", a.name, "--bind", a.gossip, "--rpc-addr", a.rpc, "--http-addr", a.http,
			"--data-dir", a.dataDir, "--interpreters", writeKinds(t, tc.body))
		if code != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("exit %d, want 1 naming %s:\n%s", code, tc.want, out)
		}
		if entries, _ := os.ReadDir(a.dataDir); len(entries) != 0 {
			t.Errorf("the refused agent left %d entries in its data dir", len(entries))
		}
	}
}
