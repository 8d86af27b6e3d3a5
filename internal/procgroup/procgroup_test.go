package procgroup

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRunKillsTheWholeGroupAtItsDeadline: a shell that started a child of
// its own is killed with that child when the context ends first.
func TestRunKillsTheWholeGroupAtItsDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	cmd := exec.Command("/bin/sh", "-c", "sleep 60 & echo $!; wait")
	var out strings.Builder
	cmd.Stdout = &out
	killed, err := Run(ctx, cmd)
	if !killed || err != nil {
		t.Fatalf("killed %v, err %v: want killed at the deadline", killed, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("no child pid in %q", out.String())
	}
	for i := 0; running(pid); i++ { // bounded: the kill is delivered at once
		if i == 100 {
			t.Fatalf("the shell's child %d outlived the group kill", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunReportsTheCommandsOwnEnd: a command that ends first is not
// killed, and its exit status comes back.
func TestRunReportsTheCommandsOwnEnd(t *testing.T) {
	killed, err := Run(context.Background(), exec.Command("/bin/sh", "-c", "exit 3"))
	if killed || err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("killed %v, err %v: want exit status 3", killed, err)
	}
	if killed, err := Run(context.Background(), exec.Command("/nonexistent/x")); killed || err == nil {
		t.Fatalf("a command that cannot start: killed %v, err %v", killed, err)
	}
}

// running reports whether pid is a live process: not gone, and not a
// zombie waiting for a parent (here, whoever adopted it) to reap it.
func running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}
