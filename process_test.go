package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
)

// agentBin is the binary built once for every process test.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "agent-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "agent")
	if out, err := exec.Command("go", "build", "-o", agentBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build agent: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one agent process started by a test; the test's cleanup stops it.
type proc struct {
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{}
}

// lockedBuffer collects a process's output, written by exec's copying
// goroutine and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testAgent is where one agent of a test cluster lives.
type testAgent struct {
	name, ip    string
	gossip, rpc string
	http        string
	dataDir     string
	rpcToken    string // a token file the agent's RPC requires, if any
	p           *proc
}

func freeLoopbackPort(t testing.TB, ip string) int {
	t.Helper()
	port, err := gossip.FreePort(ip)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func newTestAgent(t testing.TB, i int) *testAgent {
	ip := fmt.Sprintf("127.0.0.%d", i)
	return &testAgent{
		name:    fmt.Sprintf("node%d", i),
		ip:      ip,
		gossip:  fmt.Sprintf("%s:%d", ip, freeLoopbackPort(t, ip)),
		rpc:     fmt.Sprintf("%s:%d", ip, freeLoopbackPort(t, ip)),
		http:    fmt.Sprintf("%s:%d", ip, freeLoopbackPort(t, ip)),
		dataDir: t.TempDir(),
	}
}

// start runs `agent run` for a, with extra arguments, and registers its stop.
func (a *testAgent) start(t testing.TB, extra ...string) {
	t.Helper()
	args := append([]string{"run", "--node", a.name, "--bind", a.gossip, "--rpc-addr", a.rpc, "--http-addr", a.http,
		"--data-dir", a.dataDir, "--tag", "test=" + t.Name(), "--log-level", "debug"}, extra...)
	cmd := exec.Command(agentBin, args...)
	var log lockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: &log, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	a.p = p
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("log of %s:\n%s", a.name, log.String())
		}
	})
	waitFor(t, a.name+" to answer RPC", 10*time.Second, func() bool {
		args := []string{"info", "--rpc-addr", a.rpc}
		if a.rpcToken != "" {
			args = append(args, "--rpc-token-file", a.rpcToken)
		}
		_, _, code := runCLI(t, args...)
		return code == 0
	})
}

func (a *testAgent) kill9(t testing.TB) {
	t.Helper()
	a.p.cmd.Process.Signal(syscall.SIGKILL)
	<-a.p.done
}

// runCLI runs the agent binary as a client and returns stdout, stderr, exit code.
func runCLI(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	return runCLIEnv(t, nil, args...)
}

type memberJSON struct {
	Name   string            `json:"name"`
	Addr   string            `json:"addr"`
	Port   int               `json:"port"`
	Status string            `json:"status"`
	Tags   map[string]string `json:"tags"`
	Role   string            `json:"role"`
}

func membersOf(t testing.TB, a *testAgent) map[string]memberJSON {
	t.Helper()
	out, _, code := runCLI(t, "members", "--rpc-addr", a.rpc, "--format", "json")
	if code != 0 {
		return nil
	}
	var resp struct{ Members []memberJSON }
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("members json: %v\n%s", err, out)
	}
	got := map[string]memberJSON{}
	for _, m := range resp.Members {
		got[m.Name] = m
	}
	return got
}

// waitFor polls cond until it holds; a bounded poll, not a sleep for gossip.
func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

func statusEverywhere(t testing.TB, observers []*testAgent, node, status string) func() bool {
	return func() bool {
		for _, o := range observers {
			if membersOf(t, o)[node].Status != status {
				return false
			}
		}
		return true
	}
}

// TestThreeAgentsLifecycle: three real agents on 127.0.0.1-3 see each other
// with their tags; kill -9 shows failed; a restart from the data dir with no
// --join is alive again everywhere; leave shows left.
func TestThreeAgentsLifecycle(t *testing.T) {
	a1, a2, a3 := newTestAgent(t, 1), newTestAgent(t, 2), newTestAgent(t, 3)
	a1.start(t)
	a2.start(t, "--join", a1.gossip)
	a3.start(t, "--join", a1.gossip, "--role", "interpreter")
	all := []*testAgent{a1, a2, a3}

	waitFor(t, "three alive members on every agent", 15*time.Second, func() bool {
		for _, o := range all {
			ms := membersOf(t, o)
			if len(ms) != 3 {
				return false
			}
			for _, m := range ms {
				if m.Status != "alive" {
					return false
				}
			}
		}
		return true
	})
	for _, o := range all {
		ms := membersOf(t, o)
		for _, a := range all {
			m := ms[a.name]
			wantRole := "server"
			if a == a3 {
				wantRole = "interpreter"
			}
			if m.Tags["role"] != wantRole || m.Tags["test"] != t.Name() || fmt.Sprintf("%s:%d", m.Addr, m.Port) != a.gossip {
				t.Fatalf("%s sees %s as %+v", o.name, a.name, m)
			}
		}
	}

	a3.kill9(t)
	took := waitFor(t, "node3 failed on node1 and node2", 30*time.Second, statusEverywhere(t, []*testAgent{a1, a2}, a3.name, "failed"))
	t.Logf("kill -9 to failed on every other agent: %s", took.Round(10*time.Millisecond))

	a3.start(t, "--role", "interpreter") // same data dir, no --join
	waitFor(t, "restarted node3 alive again everywhere", 30*time.Second, func() bool {
		return statusEverywhere(t, all, a3.name, "alive")() &&
			membersOf(t, a3)[a1.name].Status == "alive" && membersOf(t, a3)[a2.name].Status == "alive"
	})

	out, errOut, code := runCLI(t, "leave", "--rpc-addr", a3.rpc)
	if code != 0 {
		t.Fatalf("leave: code %d: %s %s", code, out, errOut)
	}
	select {
	case <-a3.p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("node3 did not exit after leave")
	}
	waitFor(t, "node3 left on node1 and node2", 15*time.Second, statusEverywhere(t, []*testAgent{a1, a2}, a3.name, "left"))
}

func TestMembersFiltersAndExitCodes(t *testing.T) {
	a1, a2 := newTestAgent(t, 1), newTestAgent(t, 2)
	a1.start(t, "--tag", "dc=east")
	a2.start(t, "--join", a1.gossip, "--tag", "dc=west")
	waitFor(t, "two members", 15*time.Second, func() bool { return len(membersOf(t, a1)) == 2 })

	out, _, code := runCLI(t, "members", "--rpc-addr", a1.rpc)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "NODE") {
		t.Fatalf("table (code %d):\n%s", code, out)
	}
	for _, col := range []string{"NODE", "ADDRESS", "STATUS", "ROLE", "CPU", "MEM", "INTERP", "TAGS"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header %q lacks %s", lines[0], col)
		}
	}
	out, _, code = runCLI(t, "members", "--rpc-addr", a1.rpc, "--tag", "dc=we.*", "--format", "json")
	if code != 0 || !strings.Contains(out, `"node2"`) || strings.Contains(out, `"node1"`) {
		t.Fatalf("--tag dc=we.* (code %d): %s", code, out)
	}
	out, _, code = runCLI(t, "members", "--rpc-addr", a1.rpc, "--tag", "dc=we") // anchored: no match
	if code != 2 {
		t.Fatalf("anchored tag filter matched: code %d\n%s", code, out)
	}
	if _, _, code = runCLI(t, "members", "--rpc-addr", a1.rpc, "--name", "node1", "--status", "alive", "--role", "server"); code != 0 {
		t.Fatalf("name+status+role filter: code %d", code)
	}
	if _, _, code = runCLI(t, "members", "--rpc-addr", a1.rpc, "--status", "failed"); code != 2 {
		t.Fatalf("--status failed with none failed: code %d, want 2", code)
	}
	if _, errOut, code := runCLI(t, "tags", "--rpc-addr", a2.rpc, "--set", "rack=r1", "--delete", "dc"); code != 0 {
		t.Fatalf("tags: %s", errOut)
	}
	waitFor(t, "node1 to see node2's new tags", 10*time.Second, func() bool {
		m := membersOf(t, a1)["node2"]
		_, hasDC := m.Tags["dc"]
		return m.Tags["rack"] == "r1" && !hasDC
	})
	if _, errOut, code := runCLI(t, "tags", "--rpc-addr", a2.rpc, "--set", "role=interpreter"); code != 1 || !strings.Contains(errOut, `"role"`) {
		t.Fatalf("setting a reserved tag: code %d %s", code, errOut)
	}
}

func TestClientErrorsSayWhatToDo(t *testing.T) {
	port := freeLoopbackPort(t, "127.0.0.1")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	_, errOut, code := runCLI(t, "members", "--rpc-addr", addr)
	if code != 1 || !strings.Contains(errOut, "no agent answers at "+addr) || !strings.Contains(errOut, "agent run") {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
}

// TestRunRejectsBadConfig: a bad value stops `agent run` before it starts,
// with exit code 1 and a message naming the value.
func TestRunRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bad.json")
	os.WriteFile(file, []byte(`{"bnd": "127.0.0.1:1"}`), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"unknown config key", []string{"--config-file", file}, nil, `"bnd"`},
		{"bad duration flag", []string{"--join-retry-max", "forever"}, nil, `"forever"`},
		{"bad duration env", nil, []string{"AGENT_LEAVE_TIMEOUT=soon"}, "AGENT_LEAVE_TIMEOUT"},
		{"bad address", []string{"--bind", "127.0.0.1:123456"}, nil, `"123456"`},
		{"bad rpc address", []string{"--rpc-addr", "nowhere"}, nil, `"nowhere"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(agentBin, append([]string{"run", "--node", "x"}, tc.args...)...)
			cmd.Env = append(os.Environ(), tc.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("err %v, stderr %q; want exit 1 naming %s", err, stderr.String(), tc.want)
			}
		})
	}
}

// TestFlagBeatsEnvBeatsFile runs the real binary with all three layers set.
func TestFlagBeatsEnvBeatsFile(t *testing.T) {
	a := newTestAgent(t, 1)
	file := filepath.Join(t.TempDir(), "agent.json")
	os.WriteFile(file, []byte(`{"tag": ["layer=file"], "node": "from-file", "profile": "local"}`), 0o600)
	t.Setenv("AGENT_TAG", "layer=env")
	t.Setenv("AGENT_PROFILE", "lan")
	a.start(t, "--config-file", file, "--tag", "layer=flag")
	out, _, _ := runCLI(t, "info", "--rpc-addr", a.rpc, "--format", "json")
	var stats map[string]map[string]string
	if err := json.Unmarshal([]byte(out), &stats); err != nil {
		t.Fatal(err, out)
	}
	if stats["tags"]["layer"] != "flag" || stats["agent"]["profile"] != "lan" || stats["agent"]["name"] != a.name {
		t.Fatalf("tags %v agent %v", stats["tags"], stats["agent"])
	}
}

// waitUntil polls cond every 50 ms for at most limit; it reports how long
// it took and whether cond came true, for a caller that says more on
// failure than waitFor can.
func waitUntil(limit time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start), true
}
