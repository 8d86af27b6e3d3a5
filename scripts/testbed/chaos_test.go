package testbed_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/chaos"
	"github.com/meshagent/agent/scripts/testbed"
)

// TestChaosOnTheTestBed plays seed 1's three-minute chaos schedule on five
// hosts with real agents, supervisors and interpreters (nftables faults,
// SIGSTOP, kill -9, restarts with and without data, drains, a cluster
// restart) and checks its history with the simulation's checker: no rule
// of "Interpreters under faults" may break. The bed is removed however
// the run ends.
func TestChaosOnTheTestBed(t *testing.T) {
	if skipReason != "" {
		t.Skip("end-to-end test bed skipped: " + skipReason)
	}
	res, err := testbed.RunChaos(context.Background(), testbed.ChaosConfig{Seed: 1, Duration: 3 * time.Minute,
		Agent: agentBin, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	var report strings.Builder
	res.Report(&report)
	t.Log("\n" + report.String())
	if len(res.Violations) == 0 {
		return
	}
	// The whole history, for the slices' context.
	path := filepath.Join(os.TempDir(), "agent-testbed-chaos-seed-1.json")
	if data, err := json.MarshalIndent(res.History, "", "  "); err == nil && os.WriteFile(path, data, 0o644) == nil {
		t.Logf("the whole history is in %s (%d lines rendered)", path, len(chaos.Render(res.History)))
	}
	for _, v := range res.Violations {
		t.Errorf("seed 1: %s", v.String())
	}
}
