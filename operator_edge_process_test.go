package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
)

// Issue 34: nothing an operator does by mistake hurts the agent. Each item
// runs the real binary: the command, its exit code and its message.

// cliCase is one command of an item's table: what runs, the exit code it
// must end with, and what its output (stdout and stderr) must hold.
type cliCase struct {
	name string
	args []string
	code int
	want []string
}

// runBounded runs the binary to its end, at most limit, and returns its
// combined output and exit code; -1 when it had to be killed.
func runBounded(t *testing.T, limit time.Duration, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
		return out.String(), cmd.ProcessState.ExitCode()
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		return out.String(), -1
	}
}

func checkCases(t *testing.T, limit time.Duration, cases []cliCase) {
	t.Helper()
	for _, tc := range cases {
		out, code := runBounded(t, limit, tc.args...)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d\n%s", tc.name, code, tc.code, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output does not hold %q:\n%s", tc.name, w, out)
			}
		}
	}
}

// TestNodeNamesAreNotPaths (item 1): a name holds only what the message
// promises, and a server without --data-dir is refused instead of falling
// back to a predictable directory under $TMPDIR.
func TestNodeNamesAreNotPaths(t *testing.T) {
	a := newTestAgent(t, 1)
	base := []string{"run", "--bind", a.gossip, "--rpc-addr", a.rpc, "--http-addr", a.http}
	name := "issue34-nodir-" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	checkCases(t, 10*time.Second, []cliCase{
		{"a name with ../", append(base, "--node", "x/../mydir/trav", "--data-dir", a.dataDir), 1,
			[]string{`node name "x/../mydir/trav" holds '/'`, "letters, digits, '-', '_' or '.'"}},
		{"a name with markup", append(base, "--node", "<b>x</b>", "--data-dir", a.dataDir), 1, []string{`holds '<'`}},
		{"a name of ..", append(base, "--node", "..", "--data-dir", a.dataDir), 1, []string{`node name ".." names a directory`}},
		{"a server with no data dir", append(base, "--node", name), 1, []string{"a server needs --data-dir", "e.g. --data-dir"}},
	})
	if _, err := os.Stat(filepath.Join(os.TempDir(), "agent-"+name)); err == nil {
		t.Errorf("the refused agent created %s", filepath.Join(os.TempDir(), "agent-"+name))
	}
	if _, err := os.Stat(filepath.Join(os.TempDir(), "mydir")); err == nil {
		t.Errorf("the refused agent created %s", filepath.Join(os.TempDir(), "mydir"))
	}
	if entries, _ := os.ReadDir(a.dataDir); len(entries) != 0 {
		t.Errorf("a refused agent wrote %d entries into the data dir", len(entries))
	}
}

// TestDataDirIsLocked (item 2): an agent started on the data dir of a
// running one exits as bad input, naming the dir and the holder's pid,
// before it reads or writes anything there: the first one's peers file
// stays as it was, and the mesh never sees the second.
func TestDataDirIsLocked(t *testing.T) {
	a1, a2 := newTestAgent(t, 1), newTestAgent(t, 2)
	a1.start(t)
	a2.start(t, "--join", a1.gossip)
	peersFile := filepath.Join(a1.dataDir, "peers.json")
	var before []byte
	waitFor(t, "node1 to record node2 in its peers file", 15*time.Second, func() bool {
		before, _ = os.ReadFile(peersFile)
		return strings.Contains(string(before), a2.gossip)
	})
	b := newTestAgent(t, 3)
	checkCases(t, 15*time.Second, []cliCase{
		{"a second agent on node1's data dir", []string{"run", "--node", "intruder", "--bind", b.gossip, "--rpc-addr", b.rpc,
			"--http-addr", b.http, "--data-dir", a1.dataDir, "--join", a2.gossip}, 1,
			[]string{fmt.Sprintf("data dir %s in use by pid %d", a1.dataDir, a1.p.cmd.Process.Pid), "--data-dir of its own"}},
	})
	if after, _ := os.ReadFile(peersFile); string(after) != string(before) {
		t.Errorf("node1's peers file changed:\n%s\nwas\n%s", after, before)
	}
	if _, ok := membersOf(t, a1)["intruder"]; ok {
		t.Errorf("the mesh saw the refused agent")
	}
	// Stopped, node1 frees its data dir for the next agent.
	a1.p.cmd.Process.Signal(syscall.SIGTERM)
	<-a1.p.done
	a1.start(t)
}

// startClient starts a client command that runs until it ends by itself or
// is killed; the test's cleanup kills it.
func startClient(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: &out, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-p.done })
	return p
}

func exited(p *proc) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// TestGoneClientsDoNotHoldTheAgent (item 3): twice --rpc-max-conns long
// queries, the extra ones refused; their clients killed, the agent frees
// their connections (members answers), and SIGTERM stops it within
// --leave-timeout even with a long query still connected.
func TestGoneClientsDoNotHoldTheAgent(t *testing.T) {
	const maxConns, leaveTimeout = 2, 4 * time.Second
	a := newTestAgent(t, 1)
	a.start(t, "--rpc-max-conns", fmt.Sprint(maxConns), "--leave-timeout", leaveTimeout.String())
	query := []string{"query", "long", "--timeout", "1h", "--rpc-addr", a.rpc}
	var clients []*proc
	for range 2 * maxConns {
		clients = append(clients, startClient(t, query...))
	}
	waitFor(t, "the clients over the limit to be refused", 10*time.Second, func() bool {
		n := 0
		for _, c := range clients {
			if exited(c) {
				n++
			}
		}
		return n == maxConns
	})
	for _, c := range clients {
		if exited(c) {
			if !strings.Contains(c.log.String(), "too many RPC connections") {
				t.Errorf("a refused client says:\n%s", c.log.String())
			}
			continue
		}
		c.cmd.Process.Signal(syscall.SIGINT) // Ctrl-C, as a user would
		<-c.done
	}
	waitFor(t, "members to answer once the clients are gone", 5*time.Second, func() bool {
		_, _, code := runCLI(t, "members", "--rpc-addr", a.rpc)
		return code == 0
	})
	held := startClient(t, query...)
	waitFor(t, "a long query to be running", 5*time.Second, func() bool {
		return strings.Contains(held.log.String(), "query long sent")
	})
	start := time.Now()
	a.p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.p.done:
	case <-time.After(leaveTimeout):
		t.Fatalf("SIGTERM with a query connected: the agent still runs after --leave-timeout %s", leaveTimeout)
	}
	if code := a.p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the agent exited %d after %s, want 0", code, time.Since(start))
	}
	if strings.Contains(a.p.log.String(), "level=ERROR") {
		t.Errorf("a clean stop logged an error")
	}
}

// drainJSON is `agent drain --format json`.
type drainJSON struct {
	Draining bool    `json:"draining"`
	Running  int     `json:"running"`
	StopAt   *string `json:"stop_at"`
	Kept     bool    `json:"stop_kept"`
	Replaced *string `json:"replaced_stop_at"`
}

func drainVia(t *testing.T, a *testAgent, args ...string) drainJSON {
	t.Helper()
	out, errOut, code := runCLI(t, append([]string{"drain", "--rpc-addr", a.rpc, "--format", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("drain %v: exit %d %s", args, code, errOut)
	}
	var d drainJSON
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("drain json: %v\n%s", err, out)
	}
	return d
}

// TestDrainKeepsItsDeadline (item 7, and issue 29's lost deadline): a
// drain again keeps a pending stop and says so, --stop replaces it naming
// the old one, --stop=false cancels it; JSON always shows the deadline.
// A deadline survives a restart of the agent and still stops the
// interpreters.
func TestDrainKeepsItsDeadline(t *testing.T) {
	a := newTestAgent(t, 1)
	stopInterpreters(t, a)
	a.start(t, "--load-source", "fixed:cpu=10,mem=10")
	waitFor(t, "the first load publication", 10*time.Second, func() bool { return membersOf(t, a)[a.name].Tags["cpu"] != "" })
	in, errOut, code := spawnVia(t, a, "--kind", "demo", "--wait")
	if code != 0 {
		t.Fatalf("spawn: %s", errOut)
	}
	first := drainVia(t, a, "--stop", "--deadline", "1h")
	if first.StopAt == nil || first.Running != 1 {
		t.Fatalf("drain --stop --deadline 1h: %+v", first)
	}
	again := drainVia(t, a)
	if again.StopAt == nil || *again.StopAt != *first.StopAt || !again.Kept {
		t.Fatalf("drain again: %+v, want the stop at %s kept", again, *first.StopAt)
	}
	out, _, _ := runCLI(t, "drain", "--rpc-addr", a.rpc)
	if !strings.Contains(out, "its 1 running interpreter still stop") || !strings.Contains(out, "as set before") {
		t.Fatalf("drain again says: %s", out)
	}
	later := drainVia(t, a, "--stop", "--deadline", "2h")
	if later.Replaced == nil || *later.Replaced != *first.StopAt || later.StopAt == nil || *later.StopAt == *first.StopAt {
		t.Fatalf("drain --stop --deadline 2h: %+v, want it to replace %s", later, *first.StopAt)
	}
	out, _, _ = runCLI(t, "drain", "--stop=false", "--rpc-addr", a.rpc)
	if !strings.Contains(out, "keep going") || !strings.Contains(out, "is cancelled") {
		t.Fatalf("drain --stop=false says: %s", out)
	}
	if d := drainVia(t, a); d.StopAt != nil || !d.Draining {
		t.Fatalf("after --stop=false: %+v", d)
	}

	drainVia(t, a, "--stop", "--deadline", "3s")
	a.p.cmd.Process.Signal(syscall.SIGTERM)
	<-a.p.done
	a.start(t)
	waitFor(t, "the restored deadline to stop the interpreter", 20*time.Second, func() bool {
		i, ok := interpretersOf(t, a)[in.Name]
		return ok && i.Status != "alive"
	})
}

// TestNoPublishingAfterLeave (item 8): a server whose load moves every
// second publishes nothing once its leave begins, and its clean stop logs
// no ERROR.
func TestNoPublishingAfterLeave(t *testing.T) {
	var steps []string
	for i := range 120 {
		steps = append(steps, fmt.Sprintf("%ds=%d/%d", i, 10+80*(i%2), 10+80*(i%2)))
	}
	a1, a2 := newTestAgent(t, 1), newTestAgent(t, 2)
	a1.start(t)
	a2.start(t, "--join", a1.gossip, "--load-source", "script:"+strings.Join(steps, ","), "--load-window", "1s",
		"--publish-min-interval", "100ms")
	waitFor(t, "node2 alive on node1", 10*time.Second, statusEverywhere(t, []*testAgent{a1}, a2.name, "alive"))
	waitFor(t, "node2 to publish its load a few times", 10*time.Second, func() bool {
		return strings.Count(a2.p.log.String(), "load published") >= 3
	})
	a2.p.cmd.Process.Signal(syscall.SIGTERM)
	<-a2.p.done
	log := a2.p.log.String()
	_, after, ok := strings.Cut(log, "leaving the mesh")
	if !ok {
		t.Fatalf("no leave in the log:\n%s", log)
	}
	if strings.Contains(after, "load published") {
		t.Errorf("load published after the leave began:\n%s", after)
	}
	if strings.Contains(log, "level=ERROR") {
		t.Errorf("a clean stop logged an ERROR:\n%s", after)
	}
	if code := a2.p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("a clean stop exited %d", code)
	}
}

// TestRejoinAfterALeave (item 9): restarted without --join after a
// graceful stop, an agent says why it stays alone and how to rejoin;
// with --rejoin it rejoins the members it knew, as serf's -rejoin.
func TestRejoinAfterALeave(t *testing.T) {
	a1, a2 := newTestAgent(t, 1), newTestAgent(t, 2)
	a1.start(t)
	a2.start(t, "--join", a1.gossip)
	waitFor(t, "node2 alive on node1", 10*time.Second, statusEverywhere(t, []*testAgent{a1}, a2.name, "alive"))
	stop := func() { a2.p.cmd.Process.Signal(syscall.SIGTERM); <-a2.p.done }
	stop()
	waitFor(t, "node2 left on node1", 10*time.Second, statusEverywhere(t, []*testAgent{a1}, a2.name, "left"))
	a2.start(t)
	waitFor(t, "the restarted agent to say how to rejoin", 5*time.Second, func() bool {
		return strings.Contains(a2.p.log.String(), "does not rejoin by itself: give --join ADDR, or --rejoin to rejoin the 1 member it knew")
	})
	if membersOf(t, a2)[a1.name].Status == "alive" {
		t.Fatalf("node2 rejoined after a leave without --rejoin")
	}
	stop()
	a2.start(t, "--rejoin")
	waitFor(t, "node2 rejoined with --rejoin", 15*time.Second, statusEverywhere(t, []*testAgent{a1}, a2.name, "alive"))
	checkCases(t, 10*time.Second, []cliCase{{"--rejoin with no data dir", []string{"run", "--node", "x", "--role", "interpreter", "--rejoin"}, 1,
		[]string{"--rejoin rejoins the members kept in --data-dir"}}})
}

// TestMonitorShowsUserEventsAndQueries (item 11): `agent monitor` at its
// default level (info) shows the user events and queries the agent
// receives, as serf's does.
func TestMonitorShowsUserEventsAndQueries(t *testing.T) {
	a := newTestAgent(t, 1)
	a.start(t)
	mon := startClient(t, "monitor", "--rpc-addr", a.rpc)
	waitFor(t, "monitor to show a user event", 10*time.Second, func() bool {
		runCLI(t, "event", "deploy34", "v1", "--rpc-addr", a.rpc)
		return strings.Contains(mon.log.String(), `msg="user event received" name=deploy34`)
	})
	waitFor(t, "monitor to show a query", 10*time.Second, func() bool {
		runCLI(t, "query", "ping34", "--timeout", "200ms", "--rpc-addr", a.rpc)
		return strings.Contains(mon.log.String(), `msg="query received" name=ping34 from=node1`)
	})
}

// TestSmallerMistakes (item 12): help topics, a mistyped command, queries
// the agent cannot send, help defaults, a long --kind, a taken gossip
// port, --version, --format JSON and --rpc-addr at the HTTP port.
func TestSmallerMistakes(t *testing.T) {
	a := newTestAgent(t, 1)
	a.start(t)
	rpcAddr := []string{"--rpc-addr", a.rpc}
	b := newTestAgent(t, 2)
	checkCases(t, 10*time.Second, []cliCase{
		{"agent help", []string{"help"}, 0, []string{"agent - gossip membership", "members"}},
		{"agent help members", []string{"help", "members"}, 0, []string{"agent members - list the members"}},
		{"a mistyped command", []string{"membrs"}, 1, []string{`unknown command "membrs": did you mean "members"?`, "agent --help"}},
		{"help for no such command", []string{"help", "nosuch"}, 1, []string{`unknown command "nosuch"`}},
		{"--format JSON", append([]string{"members", "--format", "JSON"}, rpcAddr...), 0, []string{`"members": [`}},
		{"a 2,000-character --kind", append([]string{"spawn", "--kind", strings.Repeat("k", 2000)}, rpcAddr...), 1,
			[]string{"is 2000 bytes long", "at most 32"}},
		{"a --kind with a slash", append([]string{"place", "--kind", "a/b"}, rpcAddr...), 1, []string{`holds '/'`}},
		{"the gossip port taken", []string{"run", "--node", "late", "--bind", a.gossip, "--rpc-addr", b.rpc, "--http-addr", b.http,
			"--data-dir", b.dataDir}, 1, []string{"address already in use (is another agent running? choose another --bind)"}},
		{"--rpc-addr at the HTTP port", []string{"members", "--rpc-addr", a.http}, 1,
			[]string{a.http + " answers HTTP, not the agent's RPC, and says: this is the agent's HTTP API; its RPC listens on " + a.rpc}},
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"query place", []string{"query", "place", "--timeout", "1s"}, `query name "place" is the agent's own`},
		{"an oversized query payload", []string{"query", "big", strings.Repeat("x", 2000), "--timeout", "1s"}, "over serf's 1024-byte limit"},
	} {
		out, errOut, code := runCLI(t, append(tc.args, rpcAddr...)...)
		if code != 1 || !strings.Contains(errOut, tc.want) || strings.Contains(out, "sent") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q: want exit 1, %q and nothing sent", tc.name, code, out, errOut, tc.want)
		}
	}
	start := time.Now()
	if _, _, code := runCLI(t, "members", "--rpc-addr", a.http); code != 1 || time.Since(start) > 2*time.Second {
		t.Errorf("--rpc-addr at the HTTP port: exit %d after %s", code, time.Since(start))
	}
	for _, cmd := range []string{"place", "query"} {
		help, _, _ := runCLI(t, cmd, "--help")
		flagLines := 0
		for _, line := range strings.Split(help, "\n") {
			// The flag's own line (the help's examples use the flag too).
			if strings.HasPrefix(strings.TrimSpace(line), "--timeout") {
				flagLines++
				if strings.Count(line, "(default:") != 1 {
					t.Errorf("%s --help: %q", cmd, line)
				}
			}
		}
		if flagLines != 1 {
			t.Errorf("%s --help has %d lines for --timeout, want 1:\n%s", cmd, flagLines, help)
		}
	}
	long, _, _ := runCLI(t, "--version")
	short, _, _ := runCLI(t, "version")
	if long != short || !strings.HasPrefix(long, "agent ") {
		t.Errorf("--version says %q, version says %q", long, short)
	}
}

// TestREADMEListsTheReservedTags (item 12): the README names every tag the
// agent reserves, and no other.
func TestREADMEListsTheReservedTags(t *testing.T) {
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "\nTags `role`")
	para, _, ok2 := strings.Cut(rest, "belong\nto the agent")
	if !ok || !ok2 {
		t.Fatal("no sentence listing the reserved tags in README.md")
	}
	listed := map[string]bool{"role": true}
	for _, part := range strings.Split(para, "`")[1:] {
		if !strings.ContainsAny(part, " ,;()\n") && part != "" {
			listed[part] = true
		}
	}
	for _, k := range gossip.ReservedTags() {
		if !listed[k] {
			t.Errorf("README does not list the reserved tag %q", k)
		}
		delete(listed, k)
	}
	for k := range listed {
		t.Errorf("README lists %q, which the agent does not reserve", k)
	}
}

// TestTagsSurviveARestart (item 12): tags changed with `agent tags` are
// kept in the data dir and applied over --tag at the next start, as serf's
// -tags-file keeps them: a tag set is there after a restart, a tag deleted
// stays deleted, and a --tag the user changed keeps the user's value.
func TestTagsSurviveARestart(t *testing.T) {
	a := newTestAgent(t, 1)
	restart := func() {
		t.Helper()
		a.p.cmd.Process.Signal(syscall.SIGTERM)
		<-a.p.done
		a.start(t, "--tag", "zone=a", "--tag", "rack=r1")
	}
	tagsOf := func() map[string]string { return membersOf(t, a)[a.name].Tags }
	tagsVia := func(args ...string) {
		t.Helper()
		if _, errOut, code := runCLI(t, append([]string{"tags", "--rpc-addr", a.rpc}, args...)...); code != 0 {
			t.Fatalf("tags %v: exit %d %s", args, code, errOut)
		}
	}
	a.start(t, "--tag", "zone=a", "--tag", "rack=r1")
	tagsVia("--set", "dc=east", "--set", "zone=b")
	restart()
	if got := tagsOf(); got["dc"] != "east" || got["zone"] != "b" || got["rack"] != "r1" {
		t.Fatalf("after a restart, tags %v: want dc=east and zone=b (set with agent tags) and rack=r1 (--tag)", got)
	}
	if !strings.Contains(a.p.log.String(), "--tag zone=a (set to b): changed with agent tags before the restart, which wins over --tag") {
		t.Errorf("the restart does not say which --tag it overrides:\n%s", a.p.log.String())
	}
	tagsVia("--delete", "dc", "--delete", "rack")
	restart()
	got := tagsOf()
	if _, ok := got["dc"]; ok {
		t.Errorf("after a restart, the deleted tag dc is back: %v", got)
	}
	if _, ok := got["rack"]; ok {
		t.Errorf("after a restart, the deleted --tag rack is back: %v", got)
	}
	if got["zone"] != "b" {
		t.Errorf("after a second restart, zone=%q, want b", got["zone"])
	}
	tagsVia("--set", "rack=r2")
	restart()
	if got := tagsOf(); got["rack"] != "r2" {
		t.Errorf("a deleted --tag set again: rack=%q after a restart, want r2", got["rack"])
	}
}

// TestGoneClientsCancelSpawnAndPlace (item 3, for spawn and place): a
// spawn --wait or a place waiting for the bid of a server that does not
// answer (paused, still alive in the view, --place-timeout 10m) ends when
// its client is killed: the agent answers members at once at
// --rpc-max-conns 1, and SIGTERM stops it within --leave-timeout.
func TestGoneClientsCancelSpawnAndPlace(t *testing.T) {
	const leaveTimeout = 4 * time.Second
	a1, a2 := newTestAgent(t, 1), newTestAgent(t, 2)
	stopInterpreters(t, a1, a2)
	a1.start(t, "--rpc-max-conns", "1", "--place-timeout", "10m", "--leave-timeout", leaveTimeout.String())
	a2.start(t, "--join", a1.gossip)
	t.Cleanup(func() { a2.p.cmd.Process.Signal(syscall.SIGCONT) }) // before the kill of a2's cleanup
	// waiting starts a client of args while node2 is paused, and returns
	// once node1 is waiting for node2's bid.
	waiting := func(args ...string) *proc {
		t.Helper()
		waitFor(t, "node2 alive on node1", 15*time.Second, statusEverywhere(t, []*testAgent{a1}, a2.name, "alive"))
		asked := strings.Count(a1.p.log.String(), `msg="asking the servers for bids"`)
		a2.p.cmd.Process.Signal(syscall.SIGSTOP)
		client := startClient(t, append(args, "--rpc-addr", a1.rpc)...)
		waitFor(t, args[0]+" to ask for bids", 5*time.Second, func() bool {
			return strings.Count(a1.p.log.String(), `msg="asking the servers for bids"`) > asked
		})
		return client
	}
	for _, args := range [][]string{{"spawn", "--kind", "demo", "--wait"}, {"place", "--kind", "demo"}} {
		client := waiting(args...)
		if exited(client) {
			t.Fatalf("%s ended without waiting for the paused server:\n%s", args[0], client.log.String())
		}
		client.cmd.Process.Kill()
		<-client.done
		waitFor(t, "members to answer once the "+args[0]+" client is killed", 5*time.Second, func() bool {
			_, _, code := runCLI(t, "members", "--rpc-addr", a1.rpc)
			return code == 0
		})
		a2.p.cmd.Process.Signal(syscall.SIGCONT)
	}
	client := waiting("spawn", "--kind", "demo", "--wait")
	start := time.Now()
	a1.p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a1.p.done:
	case <-time.After(leaveTimeout):
		t.Fatalf("SIGTERM with a spawn waiting: the agent still runs after --leave-timeout %s", leaveTimeout)
	}
	if code := a1.p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the agent exited %d after %s, want 0", code, time.Since(start))
	}
	for _, line := range strings.Split(a1.p.log.String(), "\n") {
		// memberlist's failed pings of the paused node2 aside
		if strings.Contains(line, "level=ERROR") && !strings.Contains(line, "component=memberlist") {
			t.Errorf("a clean stop logged an error: %s", line)
		}
	}
	<-client.done
}
