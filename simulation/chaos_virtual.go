package simulation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
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

// RunChaosVirtual runs one chaos seed in virtual time, in a child process
// of this binary (whose main must call ServeVirtualJob first), and returns
// its result. The history is kept only when the checker found a
// violation: it is what shows it. Cancelling ctx kills the child.
func RunChaosVirtual(ctx context.Context, cfg ChaosConfig) (*ChaosResult, error) {
	if cfg.Logger != nil {
		return nil, errors.New("a virtual chaos run happens in a child process: it takes no Logger")
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("a virtual run needs this program's path to start its child: %w", err)
	}
	return runChaosChild(ctx, cfg, exe)
}

func runChaosChild(ctx context.Context, cfg ChaosConfig, name string, args ...string) (*ChaosResult, error) {
	job := virtualJob{Chaos: &chaosJob{Seed: cfg.Seed, Agents: cfg.Agents, Duration: cfg.Duration, Faults: cfg.Faults,
		Profile: cfg.Profile}}
	cmd, out, cleanup, err := jobCommand(ctx, &job, name, args...)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	cmd.Env = append(cmd.Env, chaosChildRuntime()...)
	waitErr := cmd.Run()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res, err := readResult(job.Out)
	switch {
	case waitErr != nil && res.Chaos == nil:
		return nil, fmt.Errorf("the chaos run of seed %d failed: %v\n%s", cfg.Seed, waitErr, out.tail())
	case err != nil:
		return nil, fmt.Errorf("the chaos run of seed %d left no result: %v\n%s", cfg.Seed, err, out.tail())
	case res.Error != "":
		return nil, errors.New(res.Error)
	case res.Chaos == nil:
		return nil, fmt.Errorf("the chaos run of seed %d returned neither a result nor an error", cfg.Seed)
	}
	return res.Chaos, nil
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

// runChaosJob is a child process's chaos run.
func runChaosJob(t *testing.T, job virtualJob) {
	j := job.Chaos
	var writeErr error
	logger, closeLog, err := chaosLogFromEnv(j.Seed)
	if err != nil {
		t.Fatal(err)
	}
	defer closeLog()
	synctest.Test(t, func(t *testing.T) {
		res, err := RunChaos(context.Background(), ChaosConfig{Seed: j.Seed, Agents: j.Agents, Duration: j.Duration,
			Faults: j.Faults, Profile: j.Profile, Logger: logger})
		out := virtualResult{Chaos: res}
		if err != nil {
			out = virtualResult{Error: err.Error()}
		} else if len(res.Violations) == 0 {
			res.History = chaos.History{} // only a violation needs it shown
		}
		writeErr = writeResult(job.Out, out)
		time.Sleep(leakWait)
		synctest.Wait()
	})
	if writeErr != nil {
		t.Fatal(writeErr)
	}
}
