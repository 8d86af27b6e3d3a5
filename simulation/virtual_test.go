package simulation

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// Virtual time.
//
// Inside a testing/synctest bubble every timer of every node runs on the
// bubble's clock, which stands still while any goroutine works and jumps
// to the next timer once all of them wait. So no node is ever late,
// whatever the mesh's size: a run costs its CPU and no more, and needs no
// dilation. A bubble exists only inside a test (synctest.Test takes a
// *testing.T), so `agent simulate` dilates time instead (clock.go), and
// the large benchmarks run their scenario in a child process of the test
// binary, whose TestVirtualRun runs it in a bubble (benchVirtual).

// virtualJobEnv names the job file of TestVirtualRun run as a benchmark's
// child process.
const virtualJobEnv = "SIM_VIRTUAL_JOB"

// virtualJob is one run asked of a child process: RunConfig's serialisable
// fields, and where to write the report.
type virtualJob struct {
	Scenario     string        `json:"scenario"`
	Nodes        int           `json:"nodes"`
	Seed         int64         `json:"seed"`
	Profile      string        `json:"profile"`
	NoHeal       bool          `json:"no_heal"`
	PartitionFor time.Duration `json:"partition_for"`
	Out          string        `json:"out"`
}

func (j virtualJob) config() RunConfig {
	return RunConfig{Scenario: j.Scenario, Nodes: j.Nodes, Seed: j.Seed, Profile: j.Profile, NoHeal: j.NoHeal,
		PartitionFor: j.PartitionFor}
}

// runVirtual runs cfg in virtual time and returns its report, with the
// wall time the run took.
func runVirtual(t *testing.T, cfg RunConfig) (*Report, error) {
	cfg.VirtualTime = true
	var r *Report
	var err error
	start := time.Now()
	synctest.Test(t, func(*testing.T) {
		r, err = Run(context.Background(), cfg)
		// Stopped nodes' goroutines end a little later (a probe in flight
		// waits out its timeout), and the bubble must see every one end:
		// its clock runs those timeouts out at once. A goroutine still
		// blocked after that is a leak, and synctest.Test fails on it.
		time.Sleep(leakWait)
		synctest.Wait()
	})
	if r != nil {
		r.WallS = round(time.Since(start).Seconds())
		r.Baseline.WallS = r.WallS
	}
	return r, err
}

// TestVirtualRun runs a scenario in virtual time. As a benchmark's child
// process (benchVirtual) it runs the job it was given and writes the
// report. Otherwise it checks the mechanism on 20 nodes: the crash
// scenario's 24 s of protocol time take a fraction of that on the wall
// (0.15 s on two cores), and its figures keep the bounds the protocols
// set, as TestDilationKeepsTheOutcome checks for a dilated run.
func TestVirtualRun(t *testing.T) {
	if path := os.Getenv(virtualJobEnv); path != "" {
		runJob(t, path)
		return
	}
	r, err := runVirtual(t, RunConfig{Scenario: ScenarioCrash, Nodes: 20, Seed: 3, Profile: "fast"})
	if err != nil {
		t.Fatal(err)
	}
	protocol := r.ConvergeS + r.DrainS + r.LengthS
	t.Logf("%.1f s of protocol time in %.2f s; detection p99 %v s (baseline %v s), %.0f B/node/s",
		protocol, r.WallS, fmtSecs(r.DetectionP99), fmtSecs(r.Baseline.DetectionP99), r.BytesPerNodePerS)
	if !r.VirtualTime || r.Dilation != 1 || r.TimerLagMaxMS != 0 {
		t.Errorf("the report says virtual %v, dilation %v, timer lag %v ms: want virtual, 1, 0", r.VirtualTime, r.Dilation, r.TimerLagMaxMS)
	}
	if r.WallS > protocol/2 {
		t.Errorf("%.1f s of protocol time took %.1f s on the wall: the clock did not jump ahead", protocol, r.WallS)
	}
	// fast, as in TestDilationKeepsTheOutcome: a probe every 0.5 s, a
	// suspicion of 1.5 s confirmed and of 9 s at most.
	if d := r.DetectionP99; d == nil || *d < 1.5 || *d > 11 || r.Undetected != 0 {
		t.Errorf("gossip detection p99 %v s (%d undetected), want 1.5 to 11 s", fmtSecs(d), r.Undetected)
	}
	lo, hi := (HeartbeatTimeout - HeartbeatInterval).Seconds(), (HeartbeatTimeout + 2*HeartbeatScan).Seconds()
	if d := r.Baseline.DetectionP99; d == nil || *d < lo || *d > hi {
		t.Errorf("baseline detection %v s, want %.0f to %.0f s", fmtSecs(d), lo, hi)
	}
	if r.FalseFailures != 0 || r.Baseline.FalseFailures != 0 {
		t.Errorf("false failures without loss: gossip %d, baseline %d (%v)", r.FalseFailures, r.Baseline.FalseFailures, r.FalseFailureExamples)
	}
}

// In virtual time a forming that stops joining is the mesh's gossip
// holding the news gate, not a starved process: its error says so and
// does not send the user to --dilation, which a virtual run refuses.
func TestAVirtualFormingThatStopsJoiningSaysWhy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		err := formStalled(context.Background(), t, true, "virtual time", "news gate", "fast profile")
		if strings.Contains(err.Error(), "--dilation") {
			t.Errorf("error %q sends a virtual run to --dilation", err)
		}
		time.Sleep(leakWait)
		synctest.Wait()
	})
}

func TestVirtualTimeTakesNoDilation(t *testing.T) {
	_, err := Run(context.Background(), RunConfig{Scenario: ScenarioCrash, Nodes: 5, VirtualTime: true, Dilation: 4})
	if err == nil {
		t.Fatal("a virtual run dilated 4: no error")
	}
	t.Log(err)
}

// runJob is TestVirtualRun in a benchmark's child process.
func runJob(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var job virtualJob
	if err := json.Unmarshal(data, &job); err != nil {
		t.Fatalf("job %s: %v", path, err)
	}
	r, err := runVirtual(t, job.config())
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	tmp := job.Out + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, job.Out); err != nil {
		t.Fatal(err)
	}
}

// benchVirtual runs cfg in virtual time, in a child process of the test
// binary: synctest needs a *testing.T, and a process of its own gives the
// run its own peak RSS.
func benchVirtual(b *testing.B, cfg RunConfig) (*Report, error) {
	dir := b.TempDir()
	job := virtualJob{Scenario: cfg.Scenario, Nodes: cfg.Nodes, Seed: cfg.Seed, Profile: cfg.Profile, NoHeal: cfg.NoHeal,
		PartitionFor: cfg.PartitionFor, Out: filepath.Join(dir, "report.json")}
	data, err := json.Marshal(job)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "job.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestVirtualRun$", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), virtualJobEnv+"="+path)
	// A benchmark stopped by its timeout or a signal takes its run along:
	// the child has no timeout of its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		tail := out.Bytes()
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		return nil, fmt.Errorf("the virtual run of %s at %d nodes, seed %d: %v\n%s", cfg.Scenario, cfg.Nodes, cfg.Seed, err, tail)
	}
	data, err = os.ReadFile(job.Out)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("the virtual run's report: %w", err)
	}
	return &r, nil
}
