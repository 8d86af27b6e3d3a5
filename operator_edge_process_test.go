package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
