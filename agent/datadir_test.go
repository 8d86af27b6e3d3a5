package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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
