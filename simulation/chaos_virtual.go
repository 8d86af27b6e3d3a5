package simulation

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meshagent/agent/chaos"
)

// chaosJob is a chaos run asked of a child process.
type chaosJob struct {
	Seed     int64             `json:"seed"`
	Agents   int               `json:"agents"`
	Duration time.Duration     `json:"duration"`
	Faults   []chaos.FaultKind `json:"faults"`
	Profile  string            `json:"profile,omitempty"`
}

// ChaosPool runs chaos seeds in virtual time in child processes of a
// binary whose main calls ServeVirtualJob first (or a test binary, with
// -test.run=^TestVirtualRun$), at most workers at once. A result keeps
// its history only when the checker found a violation: it is what shows
// it. A child runs one
// seed after another, each in a bubble of its own: it is started once for
// many seeds, because starting a process and growing its heap again for
// every seed was a tenth of a one-minute seed's CPU. A child that dies is
// replaced for the next seed. Safe for concurrent use; Close ends the
// children.
type ChaosPool struct {
	name string
	args []string
	idle chan *chaosWorker
}

// NewChaosPool makes a pool of workers children of name args….
func NewChaosPool(workers int, name string, args ...string) *ChaosPool {
	p := &ChaosPool{name: name, args: args, idle: make(chan *chaosWorker, workers)}
	for range workers {
		p.idle <- &chaosWorker{}
	}
	return p
}

// Run runs one seed on the first free child and returns its result.
// Cancelling ctx kills that child.
func (p *ChaosPool) Run(ctx context.Context, cfg ChaosConfig) (*ChaosResult, error) {
	if cfg.Logger != nil {
		return nil, errors.New("a virtual chaos run happens in a child process: it takes no Logger")
	}
	var w *chaosWorker
	select {
	case w = <-p.idle:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { p.idle <- w }()
	job := chaosJob{Seed: cfg.Seed, Agents: cfg.Agents, Duration: cfg.Duration, Faults: cfg.Faults, Profile: cfg.Profile}
	// A child that ended after its last result (a goroutine of that run
	// left blocked: the harness's failure, not this seed's) is seen when
	// it never takes this job; then a new child takes it.
	for attempt := 0; ; attempt++ {
		res, taken, err := w.run(ctx, p, job)
		if taken || attempt > 0 || ctx.Err() != nil {
			return res, err
		}
	}
}

// Close ends every child once its seed is done and waits for them.
func (p *ChaosPool) Close() {
	for range cap(p.idle) {
		(<-p.idle).stop()
	}
}

// chaosWorker is one child of a pool: started at its first seed, and
// again after it died.
type chaosWorker struct {
	cmd   *exec.Cmd
	jobs  io.WriteCloser // one JSON chaosJob a line
	lines *bufio.Reader  // a chaosLine a line
	out   *tailBuffer    // the child's own output, for errors
	dir   string         // its seeds' data dirs, removed after it exited
	exit  chan struct{}  // closed once the child was waited for
}

// chaosLine is what a worker child writes on chaosResultFD: that it took
// a seed, then the seed's result.
type chaosLine struct {
	Took   *int64         `json:"took,omitempty"`
	Result *virtualResult `json:"result,omitempty"`
}

// chaosResultFD is a worker child's descriptor for its chaosLines.
const chaosResultFD = 3

func (w *chaosWorker) start(p *ChaosPool) error {
	// The seeds' data dirs go in a directory of the pool's: a child killed
	// in a seed (its caller gave up) cannot remove its own.
	dir, err := os.MkdirTemp(diskDir(), "agent-chaos-pool-")
	if err != nil {
		return fmt.Errorf("a chaos child's directory: %w", err)
	}
	job := virtualJob{ChaosDir: dir}
	// Not CommandContext: a seed's ctx ends the seed (run kills the
	// child), not the worker.
	cmd, out, removeJob, err := jobCommand(context.Background(), &job, p.name, p.args...)
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	cleanup := func() { removeJob(); os.RemoveAll(dir) }
	cmd.Env = append(cmd.Env, chaosChildRuntime()...)
	jobs, err := cmd.StdinPipe()
	if err != nil {
		cleanup()
		return err
	}
	r, wr, err := os.Pipe()
	if err != nil {
		cleanup()
		return err
	}
	cmd.ExtraFiles = []*os.File{wr} // chaosResultFD
	if err := cmd.Start(); err != nil {
		r.Close()
		wr.Close()
		cleanup()
		return fmt.Errorf("start a chaos child: %w", err)
	}
	wr.Close() // the child holds its own copy: its death is the reader's EOF
	w.cmd, w.jobs, w.lines, w.out, w.dir, w.exit = cmd, jobs, bufio.NewReader(r), out, dir, make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status says nothing the lines do not
		r.Close()
		cleanup()
		close(w.exit)
	}()
	return nil
}

// run sends job to the child (starting one if none runs) and reads its
// result. taken is false when the child died before it took the job.
func (w *chaosWorker) run(ctx context.Context, p *ChaosPool, job chaosJob) (res *ChaosResult, taken bool, err error) {
	if w.cmd == nil {
		if err := w.start(p); err != nil {
			return nil, true, err
		}
	}
	data, err := json.Marshal(job)
	if err != nil {
		return nil, true, err
	}
	stop := context.AfterFunc(ctx, func() { w.cmd.Process.Kill() })
	defer stop()
	failed := func(what string) (*ChaosResult, bool, error) {
		w.stop()
		if ctx.Err() != nil {
			return nil, true, ctx.Err()
		}
		return nil, taken, fmt.Errorf("the chaos run of seed %d %s\n%s", job.Seed, what, w.out.tail())
	}
	if _, err := w.jobs.Write(append(data, '\n')); err != nil {
		return failed("could not be sent to its child: " + err.Error())
	}
	for {
		line, err := w.lines.ReadBytes('\n')
		if err != nil {
			if !taken {
				return failed("was not taken: its child ended")
			}
			return failed("left no result: its child ended")
		}
		var l chaosLine
		if err := json.Unmarshal(line, &l); err != nil {
			return failed(fmt.Sprintf("sent a line that is not a result (%v): %q", err, line))
		}
		switch {
		case l.Took != nil && *l.Took == job.Seed:
			taken = true
		case l.Result == nil:
			return failed(fmt.Sprintf("sent an unexpected line: %q", line))
		case l.Result.Error != "":
			return nil, true, errors.New(l.Result.Error)
		case l.Result.Chaos == nil:
			return nil, true, fmt.Errorf("the chaos run of seed %d returned neither a result nor an error", job.Seed)
		default:
			return l.Result.Chaos, true, nil
		}
	}
}

// stop ends the child: it finishes its seed, if any, and exits when its
// job input closes; a killed one at once.
func (w *chaosWorker) stop() {
	if w.cmd == nil {
		return
	}
	w.jobs.Close()
	<-w.exit
	w.cmd = nil
}

// chaosChildRuntime is the Go runtime's settings for a chaos child,
// unless the environment gives its own: one P (a bubble's goroutines run
// one at a time anyway, and with two Ps a third of the CPU went to waking
// the other one: BenchmarkChaosSeed, 135 simulated seconds a wall second
// with two, 184 with one), so that one child a core keeps every core busy;
// and a heap four times the live one before a collection (209 with it: a
// small mesh's heap is tens of megabytes).
func chaosChildRuntime() []string {
	var env []string
	if os.Getenv("GOMAXPROCS") == "" {
		env = append(env, "GOMAXPROCS=1")
	}
	if os.Getenv("GOGC") == "" {
		env = append(env, "GOGC=400")
	}
	return env
}

// ChaosWorkers is how many chaos children to run at once: one a core,
// each with one P (chaosChildRuntime).
func ChaosWorkers() int { return max(1, runtime.NumCPU()) }

// ChaosLogEnv names a file that a chaos run's child writes its agents'
// and supervisors' logs to, at debug level, in virtual time: how to see
// what each one did in a seed that failed. A %d in it is the seed, for a
// run of many seeds (AGENT_CHAOS_LOG=/tmp/chaos-%d.log). Unset, the logs
// are discarded.
const ChaosLogEnv = "AGENT_CHAOS_LOG"

func chaosLogFromEnv(seed int64) (*slog.Logger, func(), error) {
	path := os.Getenv(ChaosLogEnv)
	if path == "" {
		return nil, func() {}, nil
	}
	if strings.Contains(path, "%d") {
		path = strings.ReplaceAll(path, "%d", strconv.FormatInt(seed, 10))
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", ChaosLogEnv, err)
	}
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug})), func() { f.Close() }, nil
}

// runChaosWorker is a pool child's test: it runs each chaosJob line of
// its standard input as a seed of its own, saying on chaosResultFD that it
// took it and then its result, until the input ends.
func runChaosWorker(t *testing.T, dir string) {
	out := os.NewFile(chaosResultFD, "results")
	defer out.Close()
	enc := json.NewEncoder(out)
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadBytes('\n')
		if err != nil {
			return // the pool closed it
		}
		var j chaosJob
		if err := json.Unmarshal(line, &j); err != nil {
			t.Fatalf("a chaos job that is not JSON (%v): %q", err, line)
		}
		if err := enc.Encode(chaosLine{Took: &j.Seed}); err != nil {
			t.Fatal(err)
		}
		runChaosSeed(t, j, dir, func(res virtualResult) error { return enc.Encode(chaosLine{Result: &res}) })
	}
}

// runChaosSeed runs one seed in a bubble of its own and hands its result
// to send inside the bubble, as soon as the run returns: a goroutine the
// bubble then finds left blocked (a leak, which fails the test) does not
// lose it.
func runChaosSeed(t *testing.T, j chaosJob, dir string, send func(virtualResult) error) {
	var sendErr error
	logger, closeLog, err := chaosLogFromEnv(j.Seed)
	if err != nil {
		t.Fatal(err)
	}
	defer closeLog()
	synctest.Test(t, func(t *testing.T) {
		res, err := RunChaos(context.Background(), ChaosConfig{Seed: j.Seed, Agents: j.Agents, Duration: j.Duration,
			Faults: j.Faults, Profile: j.Profile, Logger: logger, Dir: dir})
		out := virtualResult{Chaos: res}
		if err != nil {
			out = virtualResult{Error: err.Error()}
		} else if len(res.Violations) == 0 {
			res.History = chaos.History{} // only a violation needs it shown
		}
		sendErr = send(out)
		time.Sleep(leakWait)
		synctest.Wait()
	})
	if sendErr != nil {
		t.Fatal(sendErr)
	}
}
