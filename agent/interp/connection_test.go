package interp

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
)

func TestJupyterKind(t *testing.T) {
	dir := t.TempDir()
	kinds, err := LoadKinds(writeFile(t, dir, "k.json", `{"ipykernel": {"command": ["sh", "-m", "ipykernel_launcher",
		"-f", "{connection_file}", "--extra={port:extra}"], "connection": "jupyter", "ports": ["extra"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	k := kinds["ipykernel"]
	if strings.Join(k.Ports, ",") != "shell,iopub,stdin,control,hb,extra" {
		t.Fatalf("ports %v", k.Ports)
	}
	ports, err := k.namedPorts("127.0.0.1", OSProcesses{}.FreePort)
	if err != nil || len(ports) != 6 {
		t.Fatalf("ports %v %v", ports, err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p == 0 {
			t.Fatalf("ports not distinct: %v", ports)
		}
		seen[p] = true
	}
	argv, env := k.expand(k.argv("ipykernel-x", "127.0.0.1:1", "1", nil), nil, ports, "/d/kernel/connection.json")
	if argv[4] != "/d/kernel/connection.json" || argv[5] != "--extra="+itoa(ports["extra"]) {
		t.Fatalf("argv %q", argv)
	}
	if !strings.Contains(strings.Join(env, "\n"), "AGENT_INTERPRETER_CONNECTION_FILE=/d/kernel/connection.json") {
		t.Fatalf("env %q", env)
	}

	c, err := newConnection(k, "10.0.0.1", ports)
	if err != nil || len(c.Key) != 64 {
		t.Fatalf("connection %+v %v", c, err)
	}
	idir := filepath.Join(dir, "interp")
	os.MkdirAll(idir, 0o700)
	path, err := writeConnection(idir, c, -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("connection file mode %v", st.Mode())
	}
	var f map[string]any
	data, _ := os.ReadFile(path)
	json.Unmarshal(data, &f)
	for _, key := range []string{"ip", "transport", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port", "key",
		"signature_scheme", "kernel_name"} {
		if _, ok := f[key]; !ok {
			t.Errorf("connection file lacks %q: %s", key, data)
		}
	}
	back, err := readConnection(path)
	if err != nil || back.Key != c.Key || back.Ports["hb"] != ports["hb"] || back.IP != "10.0.0.1" {
		t.Fatalf("read back %+v %v", back, err)
	}

	for name, tc := range map[string]struct{ body, want string }{
		"unknown connection": {`{"k": {"command": ["sh"], "connection": "ssh"}}`, `connection "ssh" is not known`},
		"port not declared":  {`{"k": {"command": ["sh", "{port:web}"]}}`, `{port:web}`},
		"no connection file": {`{"k": {"command": ["sh", "{connection_file}"]}}`, `"connection": "jupyter"`},
		"bad port name":      {`{"k": {"command": ["sh"], "ports": ["Web"]}}`, `port name "Web"`},
		"twice":              {`{"k": {"command": ["sh"], "connection": "jupyter", "ports": ["hb"]}}`, `"hb" appears twice`},
		"ports not a list":   {`{"k": {"command": ["sh"], "ports": "web"}}`, `"ports" must be a list of strings`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadKinds(writeFile(t, dir, strings.ReplaceAll(name, " ", "-")+".json", tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to mention %s", err, tc.want)
			}
		})
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestSpawnAnswerFitsAQueryResponse: the largest spawn answer with a
// connection must fit serf's 1024-byte query response with room for serf's
// header (its clock, id, flags and the server's node name, up to 128 bytes,
// about 200 bytes in all).
func TestSpawnAnswerFitsAQueryResponse(t *testing.T) {
	ports := map[string]int{}
	for _, p := range append(JupyterPorts, "abcdefghijklmnop", "bbcdefghijklmnop", "cbcdefghijklmnop") {
		ports[p] = 65535
	}
	c, _ := newConnection(Kind{Name: strings.Repeat("k", 32)}, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ports)
	ans := spawnAnswer{Name: InterpreterName(strings.Repeat("k", 32), RequestIDFor("x")), PID: 1 << 30,
		Endpoint: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", Existing: true, Conn: toConnAnswer(&c)}
	data, err := msgpack.Marshal(ans)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 700 {
		t.Fatalf("worst spawn answer is %d bytes; serf's response limit is 1024 with about 200 of header", len(data))
	}
	t.Logf("worst spawn answer: %d bytes", len(data))
	var back spawnAnswer
	if err := msgpack.Unmarshal(data, &back); err != nil || back.Conn.connection().Key != c.Key {
		t.Fatalf("round trip: %v", err)
	}
}

func TestDeliverAllowsOnlyTheListedSignals(t *testing.T) {
	for _, s := range []string{"SIGHUP", "STOP", "1", "", "SIGUSR1"} {
		if a := deliver(s, osChild{pid: 1}); a.Delivered || !strings.Contains(a.Reason, "SIGINT, SIGTERM, SIGKILL") {
			t.Errorf("%q: %+v", s, a)
		}
	}
	if a := deliver("SIGINT", nil); a.Delivered || !strings.Contains(a.Reason, "not running") {
		t.Errorf("no child: %+v", a)
	}
	for in, want := range map[string]string{"int": "SIGINT", "SIGTERM": "SIGTERM", "9": "SIGKILL", " kill ": "SIGKILL"} {
		if got, _, err := rpc.ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %q, %v", in, got, err)
		}
	}
}

// TestControlSocketSignalsTheGroup: the supervisor's control socket, under
// a directory too long for a Unix socket address, takes a signal for the
// interpreter's process group and says it was delivered.
func TestControlSocketSignalsTheGroup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "60")
	child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	t.Cleanup(func() { child.Process.Kill(); <-done })
	c := osChild{pid: child.Process.Pid}
	path := filepath.Join(dir, controlSocket)
	ctl, err := serveControl(path, func(sig string) ControlAnswer { return deliver(sig, c) },
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if a := askSupervisor(path, "SIGHUP"); a.Delivered || !strings.Contains(a.Reason, "not allowed") {
		t.Fatalf("SIGHUP: %+v", a)
	}
	if a := askSupervisor(path, "SIGTERM"); !a.Delivered || a.PID != child.Process.Pid {
		t.Fatalf("SIGTERM: %+v", a)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Fatalf("the child ended with %v, want SIGTERM", err)
	}
	done <- nil // for the cleanup
	ctl.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the socket is left after Close: %v", err)
	}
	if a := askSupervisor(path, "SIGINT"); a.Delivered || !strings.Contains(a.Reason, "does not answer") {
		t.Fatalf("after Close: %+v", a)
	}
}

// TestConnectionForTheAskerOnly: a re-sent spawn order gets the connection
// again only from the agent that asked first.
func TestConnectionForTheAskerOnly(t *testing.T) {
	dir := t.TempDir()
	c, _ := newConnection(Kind{Name: "k"}, "10.0.0.2", map[string]int{"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "hb": 5})
	file, err := writeConnection(dir, c, -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: "k-1", Argv: []string{"x"}, Gossip: "127.0.0.1:1", Asker: "node1", ConnectionFile: file}
	data, _ := json.Marshal(spec)
	specPath := filepath.Join(dir, "spec.json")
	os.WriteFile(specPath, data, 0o600)
	if got := connectionFor(specPath, "node1"); got == nil || got.Key != c.Key {
		t.Fatalf("the first asker: %+v", got)
	}
	if got := connectionFor(specPath, "node2"); got != nil {
		t.Fatalf("another asker got the connection: %+v", got)
	}
}

// TestConnectionFileForTheKindsUser: with a kind's user, the kernel's
// subdirectory and file are that user's, and the interpreter's directory
// lets it through without letting it list the spec.
func TestConnectionFileForTheKindsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to hand files to another user")
	}
	var k Kind
	if err := k.setUser("nobody"); err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(t.TempDir(), "interp")
	os.MkdirAll(dir, 0o700)
	c, _ := newConnection(Kind{Name: "k"}, "10.0.0.2", map[string]int{"shell": 1})
	file, err := writeConnection(dir, c, int(k.UID), int(k.GID))
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{dir: 0o711, filepath.Dir(file): 0o700, file: 0o600} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %v", path, st.Mode(), err, mode)
		}
		owner := st.Sys().(*syscall.Stat_t).Uid
		if want := map[bool]uint32{true: 0, false: k.UID}[path == dir]; owner != want {
			t.Errorf("%s owned by %d, want %d", path, owner, want)
		}
	}
}

// TestSignalOrderDeliveredOnce: a re-sent signal order (same id) gets the
// first answer and does not deliver again; another id delivers.
func TestSignalOrderDeliveredOnce(t *testing.T) {
	var r recentSignals
	now := time.Unix(1000, 0)
	n := 0
	deliver := func() signalAnswer { n++; return signalAnswer{Delivered: true, PID: n} }
	first := r.once("a", now, deliver)
	again := r.once("a", now.Add(time.Second), deliver)
	other := r.once("b", now.Add(time.Second), deliver)
	if n != 2 || first != again || other.PID != 2 {
		t.Fatalf("delivered %d times: %+v %+v %+v", n, first, again, other)
	}
	if later := r.once("a", now.Add(2*time.Minute), deliver); n != 3 || later.PID != 3 {
		t.Fatalf("an order id a minute old is forgotten: %d %+v", n, later)
	}
}
