package simulation

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestVirtualRun runs a scenario in virtual time. As a benchmark's child
// process (benchVirtual) it runs the job it was given and writes the
// report. Otherwise it checks the mechanism on 20 nodes: the crash
// scenario's 24 s of protocol time take a fraction of that on the wall
// (0.15 s on two cores), and its figures keep the bounds the protocols
// set, as TestDilationKeepsTheOutcome checks for a dilated run.
func TestVirtualRun(t *testing.T) {
	if path := os.Getenv(VirtualJobEnv); path != "" {
		runJob(t, path)
		return
	}
	r, err := runVirtual(t, RunConfig{Scenario: ScenarioCrash, Nodes: 20, Seed: 3, Profile: "fast"}, nil)
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
		err := formStalled(context.Background(), t, true, "virtual time", "news gate", "fast profile", "--time real")
		if strings.Contains(err.Error(), "--dilation") {
			t.Errorf("error %q sends a virtual run to --dilation", err)
		}
		time.Sleep(leakWait)
		synctest.Wait()
	})
}

// A healed partition costs every node a push/pull with the other side
// (gossip/heal.go), two messages an exchange: the report's push/pull rate
// counts at least those.
func TestThePushPullRateCountsTheHealsPushPulls(t *testing.T) {
	r, err := runVirtual(t, RunConfig{Scenario: ScenarioPartition, Nodes: 20, Seed: 1, Profile: "fast"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.HealS == nil {
		t.Fatal("the partition did not heal")
	}
	msgs := r.PushPullsPerNodePerS * r.LengthS * float64(r.Nodes)
	t.Logf("%.4f push/pull messages a node a second: %.0f in %.0f s of schedule, %v bytes each", r.PushPullsPerNodePerS, msgs, r.LengthS, r.PushPullBytes)
	if msgs < float64(2*r.Nodes)*0.9 || r.PushPullBytes <= 0 {
		t.Errorf("%.0f push/pull messages of %v bytes in the schedule, want at least %d (each node's heal exchange)", msgs, r.PushPullBytes, 2*r.Nodes)
	}
}

// A virtual run in a child process (the test binary's TestVirtualRun, as
// for a benchmark) hands back its report, and its progress as it goes.
func TestAVirtualRunInAChildReportsAndShowsProgress(t *testing.T) {
	var mu sync.Mutex
	phases := map[string]int{}
	cfg := RunConfig{Scenario: ScenarioCrash, Nodes: 20, Seed: 3, Profile: "fast", Progress: func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		phases[p.Phase]++
	}}
	r, err := runVirtualChild(t.Context(), cfg, os.Args[0], "-test.run=^TestVirtualRun$", "-test.count=1")
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("wall %.2f s, progress calls by phase %v", r.WallS, phases)
	if !r.VirtualTime || r.WallS <= 0 || r.Nodes != 20 || r.DetectionP99 == nil {
		t.Errorf("report: virtual %v, wall %v s, %d nodes, detection p99 %v: want a virtual run of 20 nodes with its wall time and detection", r.VirtualTime, r.WallS, r.Nodes, fmtSecs(r.DetectionP99))
	}
	for _, phase := range []string{"converging", "draining", "running"} {
		if phases[phase] == 0 {
			t.Errorf("no progress in phase %q from the child (%v)", phase, phases)
		}
	}
}

// A child's own error (a plan it cannot run) comes back as the error, not
// as a failed process.
func TestAVirtualRunInAChildReturnsTheRunsError(t *testing.T) {
	_, err := runVirtualChild(t.Context(), RunConfig{Scenario: ScenarioCrash, Nodes: 5, Seed: 1, Profile: "fast", PartitionFor: time.Minute},
		os.Args[0], "-test.run=^TestVirtualRun$", "-test.count=1")
	if err == nil || strings.Contains(err.Error(), "exit status") {
		t.Fatalf("err = %v, want the run's own error", err)
	}
	t.Log(err)
}

func TestVirtualTimeTakesNoDilation(t *testing.T) {
	_, err := Run(context.Background(), RunConfig{Scenario: ScenarioCrash, Nodes: 5, VirtualTime: true, Dilation: 4})
	if err == nil {
		t.Fatal("a virtual run dilated 4: no error")
	}
	t.Log(err)
}

// benchVirtual runs cfg in virtual time in a child process of the test
// binary, whose TestVirtualRun runs the job (RunVirtual's child is the
// agent binary instead).
func benchVirtual(b *testing.B, cfg RunConfig) (*Report, error) {
	return runVirtualChild(b.Context(), cfg, os.Args[0], "-test.run=^TestVirtualRun$", "-test.count=1", "-test.timeout=0")
}
