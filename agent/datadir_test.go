package agent

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/meshagent/agent/gossip"
)

// TestDataDirLock: a second lock on a held data dir fails naming the dir
// and the holder's pid and changes nothing there; once released, the dir
// can be locked again.
func TestDataDirLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	first, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	lockPath := filepath.Join(dir, lockFileName)
	before, _ := os.ReadFile(lockPath)
	if got := strings.TrimSpace(string(before)); got != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q, want this pid", got)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode: %v %v", st.Mode(), err)
	}
	_, err = lockDataDir(dir)
	want := "data dir " + dir + " in use by pid " + strconv.Itoa(os.Getpid()) + ": stop that agent"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second lock: %v, want %q", err, want)
	}
	if after, _ := os.ReadFile(lockPath); string(after) != string(before) {
		t.Fatalf("the refused lock changed the file: %q, was %q", after, before)
	}
	first.release()
	again, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again.release()
}

// TestInterpDirIsTheDataDir: the agent keeps its interpreters and drain in
// --data-dir and nowhere else; an agent with none (an interpreter-role
// agent, which starts no interpreters) names no directory, never a
// predictable one under $TMPDIR (issue 34, item 1).
func TestInterpDirIsTheDataDir(t *testing.T) {
	for _, tc := range []struct {
		role    gossip.Role
		dataDir string
	}{
		{gossip.RoleInterpreter, ""},
		{gossip.RoleInterpreter, t.TempDir()},
		{gossip.RoleServer, t.TempDir()},
	} {
		cfg := DefaultConfig()
		cfg.NodeName, cfg.Role, cfg.DataDir, cfg.HTTPAddr = "n1", tc.role, tc.dataDir, ""
		logger, stream, err := NewLogger(io.Discard, "info", "text")
		if err != nil {
			t.Fatal(err)
		}
		a, err := New(cfg, Deps{Logger: logger, Logs: stream})
		if err != nil {
			t.Fatalf("%s, data dir %q: %v", tc.role, tc.dataDir, err)
		}
		if got := a.interpDir(); got != tc.dataDir {
			t.Errorf("%s, data dir %q: interpreters kept in %q, want the data dir", tc.role, tc.dataDir, got)
		}
	}
}
