package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// environOf reads a process's environment.
func environOf(t *testing.T, pid int) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(data), "\x00")
}

// TestReloadOfKindsAppliesToTheNextSpawn: agent reload applies a changed
// interpreters file: a kind it adds spawns at once, a spawn of a changed
// kind runs the new definition, and the interpreter started before keeps
// the one it started with. A bad file is refused naming the kind, and the
// kinds stay as they were.
func TestReloadOfKindsAppliesToTheNextSpawn(t *testing.T) {
	kinds := filepath.Join(t.TempDir(), "interpreters.json")
	kind := func(version string) string {
		return fmt.Sprintf(`{"command": [%q, "echo-server", "--addr", "{addr}"], "env": {"KIND_VERSION": %q}}`, agentBin, version)
	}
	writeFile(t, kinds, `{"echo": `+kind("1")+`}`)
	a := checkedServer(t, kinds)
	before, errOut, code := spawnVia(t, a, "--kind", "echo", "--wait")
	if code != 0 {
		t.Fatalf("spawn echo: %s", errOut)
	}
	if _, errOut, code := spawnVia(t, a, "--kind", "echo2"); code == 0 || !strings.Contains(errOut, `"echo2"`) {
		t.Fatalf("spawn of a kind not yet in the file: exit %d, %s", code, errOut)
	}

	writeFile(t, kinds, `{"echo": `+kind("2")+`, "echo2": `+kind("2")+`}`)
	out, errOut, code := runCLI(t, "reload", "--rpc-addr", a.rpc)
	if code != 0 || !strings.Contains(out, "the file changed") || !strings.Contains(out, "kinds echo, echo2") {
		t.Fatalf("agent reload: exit %d, %s%s", code, out, errOut)
	}
	added, errOut, code := spawnVia(t, a, "--kind", "echo2", "--wait")
	if code != 0 {
		t.Fatalf("spawn echo2 after the reload: %s", errOut)
	}
	after, errOut, code := spawnVia(t, a, "--kind", "echo", "--wait")
	if code != 0 {
		t.Fatalf("spawn echo after the reload: %s", errOut)
	}
	for _, c := range []struct {
		s    spawnJSON
		want string
	}{{added, "KIND_VERSION=2"}, {after, "KIND_VERSION=2"}, {before, "KIND_VERSION=1"}} {
		if env := environOf(t, c.s.PID); !strings.Contains(strings.Join(env, " "), c.want) {
			t.Errorf("%s runs with %v, want %s", c.s.Name, env, c.want)
		}
		if got := echo(t, c.s.Endpoint, "hi"); got != "hi" {
			t.Errorf("%s echoed %q", c.s.Name, got)
		}
	}

	writeFile(t, kinds, `{"echo3": {"command": ["/no/such/kernel"]}}`)
	_, errOut, code = runCLI(t, "reload", "--rpc-addr", a.rpc)
	if code == 0 || !strings.Contains(errOut, `kind "echo3": program "/no/such/kernel" does not exist`) ||
		!strings.Contains(errOut, "the running config stays") {
		t.Fatalf("agent reload of a bad kinds file: exit %d, %s", code, errOut)
	}
	if s, errOut, code := spawnVia(t, a, "--kind", "echo2", "--wait"); code != 0 || environOf(t, s.PID) == nil {
		t.Fatalf("spawn echo2 after a refused reload: %s", errOut)
	}
}
