package simulation

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sync"
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
// dilation.
//
// A bubble exists only inside a test: synctest.Test takes a *testing.T.
// So a virtual run happens in a child process of the running binary that
// runs one test through testing.Main, the exported entry point the
// testing package keeps for programs that run tests themselves:
// RunVirtual starts it, ServeVirtualJob is the child's side. `agent
// simulate` runs this way (its main calls ServeVirtualJob first), and so
// do the large benchmarks, whose child is the test binary's
// TestVirtualRun. A process of its own also gives the run its own peak
// RSS, and a crash of the run cannot take the caller with it.

// virtualTick is the network's tick in virtual time (NetworkConfig.Tick).
// Without it the mesh's packets arrived at distinct nanoseconds and the
// bubble ran their handlers one at a time: a 500-node partition kept 1.53
// of the 2 cores busy and took 228 s; with 1 ms, 1.89 cores and 161 s (5
// ms: 148 s). 1 ms is the scale of the default link's own jitter: it adds
// 0.5 ms to the mean one-way latency of 1 ms, against probe timeouts of
// 200 ms (local) to 500 ms (lan).
const virtualTick = time.Millisecond

// VirtualJobEnv names, in a child process's environment, the job file of
// the virtual run it is to do.
const VirtualJobEnv = "AGENT_SIMULATE_VIRTUAL_JOB"

// progressFD is the child's descriptor on which it writes its Progress,
// one JSON object a line (the first of exec.Cmd.ExtraFiles).
const progressFD = 3

// leakWait is how long the goroutines of stopped nodes may take to end.
// A probe in flight when its node shut down still waits out its ack
// timeout: the probe interval, times memberlist's awareness multiplier
// when the node was degraded, times the run's dilation. After a 1,000-node
// benchmark dilated 5 that was more than 15 s. In a bubble the wait costs
// no wall time: the clock runs those timeouts out at once.
const leakWait = 90 * time.Second

// virtualJob is one run asked of a child process: RunConfig's serialisable
// fields, and where to write the result.
type virtualJob struct {
	Scenario         string        `json:"scenario"`
	Nodes            int           `json:"nodes"`
	Seed             int64         `json:"seed"`
	Profile          string        `json:"profile"`
	Loss             float64       `json:"loss,omitempty"`
	PartitionFor     time.Duration `json:"partition_for,omitempty"`
	NoHeal           bool          `json:"no_heal,omitempty"`
	ExactCompression bool          `json:"exact_compression,omitempty"`
	// Progress has the child write its Progress on progressFD.
	Progress bool `json:"progress,omitempty"`
	// ChaosDir, when set, makes the child a ChaosPool's: it runs the chaos
	// seeds its standard input gives (the fields above unused), keeping
	// their data dirs in ChaosDir, which the pool removes once the child
	// has exited, killed or not.
	ChaosDir string `json:"chaos_dir,omitempty"`
	// Out is the result file: a virtualResult, written whole or not at all.
	Out string `json:"out"`
}

// virtualResult is what a child process hands back: the report, or the
// run's error (a mesh that did not form, a bad plan).
type virtualResult struct {
	Report *Report      `json:"report,omitempty"`
	Chaos  *ChaosResult `json:"chaos,omitempty"`
	Error  string       `json:"error,omitempty"`
}

func (j virtualJob) config() RunConfig {
	return RunConfig{Scenario: j.Scenario, Nodes: j.Nodes, Seed: j.Seed, Profile: j.Profile, Loss: j.Loss,
		PartitionFor: j.PartitionFor, NoHeal: j.NoHeal, ExactCompression: j.ExactCompression}
}

// RunVirtual runs cfg in virtual time, in a child process of this binary,
// and returns its report. The binary's main must call ServeVirtualJob
// before anything else. cfg.Progress, when set, is called as the child
// reports; cfg.Prepare and cfg.Logger cannot cross into the child and
// must be nil; cfg.Dilation must be 0 or 1. Cancelling ctx kills the
// child, and so does this process's death.
func RunVirtual(ctx context.Context, cfg RunConfig) (*Report, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("a virtual run needs this program's path to start its child: %w", err)
	}
	return runVirtualChild(ctx, cfg, exe)
}

// ServeVirtualJob returns at once unless this process is a virtual run's
// child (VirtualJobEnv is set). Then it runs the job as the only test of
// testing.Main, writes the result, and exits: 0 when the run ended, with
// or without an error of its own, 1 when the harness failed (a goroutine
// left blocked after the run, the result not written).
func ServeVirtualJob() {
	path := os.Getenv(VirtualJobEnv)
	if path == "" {
		return
	}
	// testing.Main parses the command line as test flags: it gets none.
	os.Args = os.Args[:1]
	matchAll := func(pat, str string) (bool, error) { return true, nil }
	testing.Main(matchAll, []testing.InternalTest{{Name: "VirtualRun", F: func(t *testing.T) { runJob(t, path) }}}, nil, nil)
}

// checkVirtualDilation refuses a dilation for a virtual run: 0 or 1 only.
func checkVirtualDilation(d float64) error {
	if d != 0 && d != 1 {
		return fmt.Errorf("dilation %v in virtual time: a virtual clock is never late, so leave the dilation at 0", d)
	}
	return nil
}

// runVirtualChild starts name args... with a job for cfg and waits for its
// result.
func runVirtualChild(ctx context.Context, cfg RunConfig, name string, args ...string) (*Report, error) {
	if cfg.Prepare != nil || cfg.Logger != nil {
		return nil, errors.New("a virtual run happens in a child process: it takes no Prepare or Logger")
	}
	if err := checkVirtualDilation(cfg.Dilation); err != nil {
		return nil, err
	}
	job := virtualJob{Scenario: cfg.Scenario, Nodes: cfg.Nodes, Seed: cfg.Seed, Profile: cfg.Profile, Loss: cfg.Loss,
		PartitionFor: cfg.PartitionFor, NoHeal: cfg.NoHeal, ExactCompression: cfg.ExactCompression,
		Progress: cfg.Progress != nil}
	cmd, out, cleanup, err := jobCommand(ctx, &job, name, args...)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	var progress sync.WaitGroup
	if cfg.Progress != nil {
		pr, pw, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		defer pr.Close()
		cmd.ExtraFiles = []*os.File{pw}
		progress.Go(func() { readProgress(pr, cfg.Progress) })
		defer progress.Wait()
		defer pw.Close() // also on a failed Start: the reader then ends
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the virtual run: %w", err)
	}
	if len(cmd.ExtraFiles) > 0 {
		cmd.ExtraFiles[0].Close() // the child holds its own copy
	}
	waitErr := cmd.Wait()
	wall := time.Since(start)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res, err := readResult(job.Out)
	switch {
	case waitErr != nil:
		return nil, fmt.Errorf("the virtual run of %s at %d nodes, seed %d, failed: %v\n%s", cfg.Scenario, cfg.Nodes, cfg.Seed, waitErr, out.tail())
	case err != nil:
		return nil, fmt.Errorf("the virtual run of %s at %d nodes, seed %d, left no result: %v\n%s", cfg.Scenario, cfg.Nodes, cfg.Seed, err, out.tail())
	case res.Error != "":
		return nil, errors.New(res.Error)
	case res.Report == nil:
		return nil, fmt.Errorf("the virtual run of %s at %d nodes, seed %d, returned neither a report nor an error", cfg.Scenario, cfg.Nodes, cfg.Seed)
	}
	r := res.Report
	r.WallS = round(wall.Seconds())
	r.Baseline.WallS = r.WallS
	return r, nil
}

// jobCommand writes job into a directory of its own (its Out there too)
// and returns the child that runs it, its output kept for errors, and
// the removal of the directory.
func jobCommand(ctx context.Context, job *virtualJob, name string, args ...string) (*exec.Cmd, *tailBuffer, func(), error) {
	dir, err := os.MkdirTemp("", "agent-simulate-")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("a virtual run's job directory: %w", err)
	}
	cleanup := func() { os.RemoveAll(dir) }
	job.Out = filepath.Join(dir, "result.json")
	data, err := json.Marshal(job)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "job.json"), data, 0o600)
	}
	if err != nil {
		cleanup()
		return nil, nil, nil, fmt.Errorf("a virtual run's job file: %w", err)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), VirtualJobEnv+"="+filepath.Join(dir, "job.json"))
	dieWithParent(cmd)
	// The child's own output is the testing package's (PASS, or a failure
	// with its goroutines): kept for the error, its tail only.
	out := &tailBuffer{max: 16 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, out, cleanup, nil
}

// readResult reads what a child wrote to its job's Out.
func readResult(path string) (virtualResult, error) {
	var res virtualResult
	data, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(data, &res)
	}
	return res, err
}

// readProgress calls f for each Progress line the child writes, until the
// child closes its end.
func readProgress(r io.Reader, f func(Progress)) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var p Progress
		if json.Unmarshal(sc.Bytes(), &p) == nil {
			f(p)
		}
	}
}

// runVirtual runs cfg in virtual time in this process, which must be a
// test, and returns its report with the wall time the run took. done, when
// set, is called inside the bubble as soon as Run returns, before the
// bubble waits for the nodes' last goroutines: a caller that must hand the
// result on does it there, so that a leak the bubble then finds does not
// lose it.
func runVirtual(t *testing.T, cfg RunConfig, done func(*Report, error)) (*Report, error) {
	cfg.VirtualTime = true
	var r *Report
	var err error
	start := time.Now()
	synctest.Test(t, func(*testing.T) {
		r, err = Run(context.Background(), cfg)
		if done != nil {
			done(r, err)
		}
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

// hugePageScan is how often a child looks for new mappings to advise huge
// pages for (adviseHugePages): a run that outgrows its reserve maps a heap
// arena every few seconds, and reading /proc/self/maps takes microseconds.
const hugePageScan = 100 * time.Millisecond

// runJob is a child process's test: it runs the job in path and writes
// its result.
func runJob(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var job virtualJob
	if err := json.Unmarshal(data, &job); err != nil {
		t.Fatalf("job %s: %v", path, err)
	}
	if job.ChaosDir != "" {
		runChaosWorker(t, job.ChaosDir)
		return
	}
	cfg := job.config()
	if job.Progress {
		w := os.NewFile(progressFD, "progress")
		defer w.Close()
		enc := json.NewEncoder(w)
		cfg.Progress = func(p Progress) { _ = enc.Encode(p) } // a parent gone is Pdeathsig's to handle
	}
	// The process is the run's alone: its heap may have huge pages, as
	// much of it as the run's memory limit (StartCluster's) allows.
	stop := adviseHugePages(memoryLimit(cfg.Nodes, debug.SetMemoryLimit(-1), physicalMemory()), hugePageScan)
	defer stop()
	var writeErr error
	runVirtual(t, cfg, func(r *Report, err error) {
		res := virtualResult{Report: r}
		if err != nil {
			res = virtualResult{Error: err.Error()}
		}
		writeErr = writeResult(job.Out, res)
	})
	if writeErr != nil {
		t.Fatal(writeErr)
	}
}

// writeResult writes res to path whole: a temporary file renamed.
func writeResult(path string, res virtualResult) error {
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - b.max; over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *tailBuffer) tail() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
