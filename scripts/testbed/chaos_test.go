package testbed_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/chaos"
	"github.com/meshagent/agent/scripts/testbed"
)

// chaosSeed is the test's schedule: of the seeds whose three minutes hold
// the most kinds of fault, the first with a cluster restart (26 faults:
// partitions, a one-way cut, loss, pauses, host, agent and supervisor
// crashes, restarts with and without data, a drain, a cluster restart;
// only a flapping partition is missing).
const chaosSeed = 196

// TestChaosOnTheTestBed plays a three-minute chaos schedule on five hosts
// with real agents, supervisors and interpreters (nftables faults,
// SIGSTOP, kill -9, restarts with and without data, drains, a cluster
// restart) and checks its history with the simulation's checker: no rule
// of "Interpreters under faults" may break, no interpreter may run
// without its supervisor at the end, and the bed must be gone afterwards.
func TestChaosOnTheTestBed(t *testing.T) {
	if skipReason != "" {
		t.Skip("end-to-end test bed skipped: " + skipReason)
	}
	res, err := testbed.RunChaos(context.Background(), testbed.ChaosConfig{Seed: chaosSeed, Duration: 3 * time.Minute,
		Agent: agentBin, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, res.Prefix); len(left) > 0 {
		t.Errorf("the chaos run left behind: %s", strings.Join(left, "; "))
	}
	var report strings.Builder
	res.Report(&report)
	t.Log("\n" + report.String())
	for _, o := range res.Orphans {
		t.Errorf("seed %d: an interpreter runs without its supervisor at the end, which no agent can list: %s", chaosSeed, o)
	}
	if len(res.Violations) == 0 {
		return
	}
	// The whole history, for the slices' context: as JSON, and rendered.
	base := filepath.Join(os.TempDir(), fmt.Sprintf("agent-testbed-chaos-seed-%d", chaosSeed))
	data, err := json.MarshalIndent(res.History, "", "  ")
	if err == nil {
		err = os.WriteFile(base+".json", data, 0o644)
	}
	if err == nil {
		err = os.WriteFile(base+".txt", []byte(strings.Join(chaos.Render(res.History), "\n")+"\n"), 0o644)
	}
	if err == nil {
		t.Logf("the whole history is in %s.json, rendered in %s.txt", base, base)
	}
	for _, v := range res.Violations {
		t.Errorf("seed %d: %s", chaosSeed, v.String())
	}
}
