package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshagent/agent/simulation"
)

// `agent simulate` runs in virtual time by default, in a child process of
// the binary: the run's protocol time costs a fraction of it on the wall,
// and its figures keep the bounds the fast profile sets.
func TestSimulateRunsInVirtualTime(t *testing.T) {
	out := filepath.Join(t.TempDir(), "report.json")
	stdout, stderr, code := runCLI(t, "simulate", "--nodes", "20", "--scenario", "crash", "--seed", "3", "--out", out)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "virtual time") {
		t.Errorf("the summary does not say the clock was virtual:\n%s", stdout)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r simulation.Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	protocol := r.ConvergeS + r.DrainS + r.LengthS
	t.Logf("%.1f s of protocol time in %.2f s of wall time, peak RSS %v MiB", protocol, r.WallS, deref(r.PeakRSSMB))
	if !r.VirtualTime || r.Dilation != 1 {
		t.Errorf("report says virtual %v, dilation %v: want a virtual run, undilated", r.VirtualTime, r.Dilation)
	}
	if r.WallS <= 0 || r.WallS > protocol/2 {
		t.Errorf("%.1f s of protocol time took %.2f s on the wall: want more than 0 and under half", protocol, r.WallS)
	}
	// fast: a probe every 0.5 s, a suspicion of 1.5 s confirmed, of 9 s at most.
	if d := r.DetectionP99; d == nil || *d < 1.5 || *d > 11 || r.Undetected != 0 {
		t.Errorf("detection p99 %v s, %d undetected: want 1.5 to 11 s, none", deref(d), r.Undetected)
	}
	if r.FalseFailures != 0 {
		t.Errorf("%d false failures without loss", r.FalseFailures)
	}
}

func TestSimulateTimeFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--time", "fake"}, []string{`--time "fake"`, "virtual", "real"}},
		{[]string{"--time", "virtual", "--dilation", "4"}, []string{"--dilation 4", "--time real"}},
	} {
		_, stderr, code := runCLI(t, append([]string{"simulate", "--nodes", "5"}, tc.args...)...)
		if code != 1 {
			t.Errorf("%v: exit %d, want 1", tc.args, code)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: error %q does not say %q", tc.args, strings.TrimSpace(stderr), w)
			}
		}
	}
}

// An interrupted `agent simulate` takes its virtual run's child process
// with it.
func TestSimulateInterruptedLeavesNoChild(t *testing.T) {
	cmd := exec.Command(agentBin, "simulate", "--nodes", "300", "--scenario", "partition")
	var stderrText lockedBuffer
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}) // closed when the command ended: waitErr is its error
	var waitErr error
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			stderrText.Write([]byte(sc.Text() + "\n"))
			select {
			case lines <- sc.Text():
			default:
			}
		}
		waitErr = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	// The first progress line comes from the child: it runs.
	select {
	case line := <-lines:
		t.Logf("progress: %s", line)
	case <-done:
		t.Fatalf("agent simulate ended before any progress: %v", waitErr)
	case <-time.After(2 * time.Minute):
		t.Fatal("no progress line within 2 minutes")
	}
	children := childrenOf(t, cmd.Process.Pid)
	if len(children) != 1 {
		t.Fatalf("agent simulate has %d child processes (%v), want the run's one", len(children), children)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		if waitErr == nil {
			t.Error("an interrupted simulation exited 0")
		}
		if !strings.Contains(stderrText.String(), "interrupted") {
			t.Errorf("an interrupted simulation does not say so:\n%s", stderrText.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("agent simulate did not stop within a minute of an interrupt")
	}
	for _, pid := range children {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("the run's process %d outlived agent simulate", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// childrenOf lists the processes whose parent is pid (from /proc).
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid == pid {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			out = append(out, child)
		}
	}
	return out
}

func deref(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}
