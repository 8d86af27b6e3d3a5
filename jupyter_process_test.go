package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Process tests of what the Jupyter provisioner stands on, through the real
// binary: kinds with a connection file, and signals through the mesh.

// kernelCluster starts node1 (no kinds of its own: spawns asked there are
// placed on node2) and node2, which offers the kinds in kinds (JSON).
func kernelCluster(t *testing.T, kinds string) (*testAgent, *testAgent) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "interpreters.json")
	if err := os.WriteFile(file, []byte(kinds), 0o644); err != nil {
		t.Fatal(err)
	}
	a1, a2 := newTestAgent(t, 1), newTestAgent(t, 2)
	stopInterpreters(t, a1, a2)
	a1.start(t, "--load-source", "fixed:cpu=30,mem=30")
	a2.start(t, "--load-source", "fixed:cpu=30,mem=30", "--join", a1.gossip, "--interpreters", file)
	waitFor(t, "both servers with load", 20*time.Second, func() bool {
		ms := membersOf(t, a1)
		return ms[a1.name].Tags["cpu"] != "" && ms[a2.name].Tags["cpu"] != ""
	})
	return a1, a2
}

// TestConnectionFileKind: a kind with "connection": "jupyter" gets five
// distinct ports and a connection file (0600) with a fresh key; the spawn
// answer gives the asker the same connection; the key is in no member's
// tags, on no command line and not in the spec; another agent asking for
// the same key is told where it runs, without the connection.
func TestConnectionFileKind(t *testing.T) {
	a1, a2 := kernelCluster(t, `{"kernel": {"command": ["sh", "-c", "cat \"$0\" >/dev/null && exec sleep 300", "{connection_file}"],
		"connection": "jupyter"}}`)
	out, errOut, code := runCLI(t, "spawn", "--rpc-addr", a1.rpc, "--kind", "kernel", "--key", "nb-1", "--wait", "--format", "json")
	if code != 0 {
		t.Fatalf("spawn: exit %d %s", code, errOut)
	}
	var s struct {
		Name, Node string
		Connection map[string]any
	}
	json.Unmarshal([]byte(out), &s)
	if s.Node != a2.name || s.Connection == nil {
		t.Fatalf("spawn answer: %s", out)
	}
	key, _ := s.Connection["key"].(string)
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(key) || s.Connection["ip"] != a2.ip ||
		s.Connection["signature_scheme"] != "hmac-sha256" || s.Connection["transport"] != "tcp" {
		t.Fatalf("connection %v", s.Connection)
	}
	ports := map[float64]bool{}
	for _, p := range []string{"shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"} {
		n, _ := s.Connection[p].(float64)
		if n <= 0 || ports[n] {
			t.Fatalf("%s: %v in %v", p, s.Connection[p], s.Connection)
		}
		ports[n] = true
	}

	dir := filepath.Join(a2.dataDir, "interpreters", s.Name)
	file := filepath.Join(dir, "kernel", "connection.json")
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("connection file %s: %v %v", file, st, err)
	}
	var onDisk map[string]any
	data, _ := os.ReadFile(file)
	json.Unmarshal(data, &onDisk)
	for k, v := range s.Connection {
		if k != "kernel_name" && onDisk[k] != v {
			t.Errorf("connection file %s = %v, the answer says %v", k, onDisk[k], v)
		}
	}
	// Nowhere else.
	for _, a := range []*testAgent{a1, a2} {
		members, _, _ := runCLI(t, "members", "--rpc-addr", a.rpc, "--format", "json")
		if strings.Contains(members, key) {
			t.Errorf("the key is in %s's member list", a.name)
		}
	}
	spec, _ := os.ReadFile(filepath.Join(dir, "spec.json"))
	if strings.Contains(string(spec), key) {
		t.Errorf("the key is in the spec")
	}
	for _, pid := range append(supervisorsUnder(a2.dataDir), interpretersOf(t, a1)[s.Name].PID) {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", itoa(pid), "cmdline"))
		if len(cmdline) == 0 || strings.Contains(string(cmdline), key) {
			t.Errorf("process %d's command line %q: missing or holds the key", pid, cmdline)
		}
	}
	// Another asker, same key: where it runs, not how to connect.
	out, _, code = runCLI(t, "spawn", "--rpc-addr", a2.rpc, "--kind", "kernel", "--key", "nb-1", "--format", "json")
	if code != 0 || !strings.Contains(out, `"existing": true`) || strings.Contains(out, "connection") || strings.Contains(out, key) {
		t.Fatalf("a second asker of the same key: exit %d %s", code, out)
	}
}

// TestSignalThroughTheMesh: agent signal, asked on node1, reaches an
// interpreter on node2: SIGINT is delivered to its process group (the
// program traps it and goes on; its supervisor stays), a signal outside
// the allowlist is refused naming the allowed ones, SIGKILL ends it, and a
// signal for an ended interpreter says it was not delivered.
func TestSignalThroughTheMesh(t *testing.T) {
	a1, a2 := kernelCluster(t, `{"trap": {"command": ["sh", "-c",
		"trap 'echo interrupted' INT; while :; do sleep 0.05; done"]}}`)
	s, errOut, code := spawnVia(t, a1, "--kind", "trap", "--wait")
	if code != 0 || s.Node != a2.name {
		t.Fatalf("spawn: exit %d on %q %s", code, s.Node, errOut)
	}
	_, errOut, code = runCLI(t, "signal", s.Name, "SIGHUP", "--rpc-addr", a1.rpc)
	if code != 1 || !strings.Contains(errOut, `signal "SIGHUP" is not allowed: use one of SIGINT, SIGTERM, SIGKILL`) {
		t.Fatalf("SIGHUP: exit %d %s", code, errOut)
	}
	out, errOut, code := runCLI(t, "signal", s.Name, "INT", "--rpc-addr", a1.rpc)
	if code != 0 || !strings.Contains(out, "SIGINT delivered to "+s.Name+" on "+a2.name) {
		t.Fatalf("SIGINT: exit %d %s %s", code, out, errOut)
	}
	output := filepath.Join(a2.dataDir, "interpreters", s.Name, "output.log")
	waitFor(t, "the interpreter to print that it was interrupted", 10*time.Second, func() bool {
		data, _ := os.ReadFile(output)
		return strings.Contains(string(data), "interrupted")
	})
	if i := interpretersOf(t, a1)[s.Name]; i.Status != "alive" || len(supervisorsUnder(a2.dataDir)) != 1 {
		t.Fatalf("after SIGINT the interpreter is %q with %d supervisors", i.Status, len(supervisorsUnder(a2.dataDir)))
	}
	out, errOut, code = runCLI(t, "signal", s.Name, "SIGKILL", "--rpc-addr", a1.rpc, "--format", "json")
	var resp struct {
		Delivered bool
		Signal    string
	}
	json.Unmarshal([]byte(out), &resp)
	if code != 0 || !resp.Delivered || resp.Signal != "SIGKILL" {
		t.Fatalf("SIGKILL: exit %d %s %s", code, out, errOut)
	}
	waitFor(t, "the killed interpreter to leave", 20*time.Second, func() bool {
		return interpretersOf(t, a1)[s.Name].Status == "left"
	})
	_, errOut, code = runCLI(t, "signal", s.Name, "SIGINT", "--rpc-addr", a1.rpc)
	if code != 1 || !strings.Contains(errOut, "not delivered") || !strings.Contains(errOut, "left") {
		t.Fatalf("signal after the end: exit %d %s", code, errOut)
	}
	waitFor(t, "no supervisor left", 10*time.Second, func() bool { return len(supervisorsUnder(a2.dataDir)) == 0 })
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestRestartInPlace: agent restart, asked on node1, restarts a kernel
// on node2 in place: the same interpreter (name, host, member), a new
// process, the old one gone, and the connection file (ports and key)
// unchanged, so a client connected to it reaches the new process. A
// restart of an interpreter that ended says so, and `agent signal`
// cannot send the restart word.
func TestRestartInPlace(t *testing.T) {
	a1, a2 := kernelCluster(t, `{"kernel": {"command": ["sh", "-c", "cat \"$0\" >/dev/null && exec sleep 300", "{connection_file}"],
		"connection": "jupyter"}}`)
	s, errOut, code := spawnVia(t, a1, "--kind", "kernel", "--key", "nb-restart", "--wait")
	if code != 0 || s.Node != a2.name {
		t.Fatalf("spawn: exit %d on %q %s", code, s.Node, errOut)
	}
	file := filepath.Join(a2.dataDir, "interpreters", s.Name, "kernel", "connection.json")
	before, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, "restart", s.Name, "--rpc-addr", a1.rpc, "--format", "json")
	var r struct {
		Name, Host string
		Restarted  bool
		PID        int
	}
	json.Unmarshal([]byte(out), &r)
	if code != 0 || !r.Restarted || r.Name != s.Name || r.Host != a2.name || r.PID == 0 || r.PID == s.PID {
		t.Fatalf("restart: exit %d %s %s (the first process was %d)", code, out, errOut, s.PID)
	}
	if processRuns(s.PID) {
		t.Errorf("the first process %d still runs after the restart", s.PID)
	}
	if !processRuns(r.PID) {
		t.Errorf("the new process %d does not run", r.PID)
	}
	after, _ := os.ReadFile(file)
	if string(after) != string(before) {
		t.Errorf("the connection file changed:\n%s\n%s", before, after)
	}
	if n := len(supervisorsUnder(a2.dataDir)); n != 1 {
		t.Errorf("%d supervisors after the restart, want the same one", n)
	}
	waitFor(t, "node1 to list the new process of the same interpreter", 10*time.Second, func() bool {
		i := interpretersOf(t, a1)[s.Name]
		return i.Status == "alive" && i.PID == r.PID
	})
	if _, errOut, code := runCLI(t, "signal", s.Name, "RESTART", "--rpc-addr", a1.rpc); code == 0 || !strings.Contains(errOut, "not allowed") {
		t.Errorf("agent signal RESTART: exit %d %s", code, errOut)
	}

	if _, errOut, code := runCLI(t, "stop", s.Name, "--rpc-addr", a1.rpc); code != 0 {
		t.Fatalf("stop: %s", errOut)
	}
	waitFor(t, "the stopped interpreter to leave", 10*time.Second, func() bool { return interpretersOf(t, a1)[s.Name].Status == "left" })
	_, errOut, code = runCLI(t, "restart", s.Name, "--rpc-addr", a1.rpc)
	if code != 1 || !strings.Contains(errOut, "not restarted") || !strings.Contains(errOut, "left") {
		t.Fatalf("restart after the end: exit %d %s", code, errOut)
	}
	waitFor(t, "no supervisor left", 10*time.Second, func() bool { return len(supervisorsUnder(a2.dataDir)) == 0 })
}

// processRuns says whether pid is a process that has not ended (a zombie
// has).
func processRuns(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}
