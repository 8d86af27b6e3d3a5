package simulation

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
)

// mostReturning is the most push/pull messages a returning node may
// receive in one second: the HealSyncers nodes that rank highest for it,
// the reply to its own join, and one of memberlist's periodic exchanges
// that may land in the same second.
const mostReturning = gossip.HealSyncers + 2

// healPingers is gossip's bound on the heal prober's pings an interval,
// mesh-wide.
const healPingers = 3

// mostInAHeal is the most push/pull messages a node may receive in one
// second of a heal of many: its top syncers, twice the expected share of
// the others (gossip's healSyncShare, 4), and two more as in mostReturning.
const mostInAHeal = gossip.HealSyncers + 2*4 + 2

func TestTheChurnPlansAreWhatTheySay(t *testing.T) {
	p, err := PlanScenario(ScenarioRestart, "", 200, 1)
	if err != nil {
		t.Fatal(err)
	}
	var restarts [][]string
	crashed := map[string]bool{}
	for _, f := range p.Faults {
		switch f.Kind {
		case FaultCrash:
			for _, n := range f.Nodes {
				crashed[n] = true
			}
		case FaultRestart:
			for _, n := range f.Nodes {
				if !crashed[n] {
					t.Errorf("%s restarts without a crash before", n)
				}
			}
			restarts = append(restarts, f.Nodes)
		}
	}
	if len(restarts) != 2 || len(restarts[0]) != 1 || len(restarts[1]) != 2 || len(crashed) != 4 {
		t.Errorf("restart: restarts %v of %d crashed, want one, then two together, of four", restarts, len(crashed))
	}

	p, err = PlanScenario(ScenarioRolling, "", 200, 1)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var last time.Duration
	for _, f := range p.Faults {
		if f.Kind == FaultCrash {
			n++
			if f.At < last+rollingEvery && n > 1 {
				t.Errorf("rolling: %s at %v, %v after the one before", f.Label, f.At, f.At-last)
			}
			last = f.At
		}
	}
	if n != 20 {
		t.Errorf("rolling restarts %d of 200 nodes, want 20", n)
	}

	p, err = PlanScenario(ScenarioChurn, "", 200, 1)
	if err != nil {
		t.Fatal(err)
	}
	starts, stops := map[string]time.Duration{}, map[string]time.Duration{}
	for _, f := range p.Faults {
		switch f.Kind {
		case FaultInterpStart:
			starts[f.To[0]] = f.At
		case FaultInterpStop:
			stops[f.To[0]] = f.At
		}
	}
	if len(starts) < 100 || len(starts) != len(stops) {
		t.Errorf("churn: %d interpreters start and %d stop, want well over 100, each stopping", len(starts), len(stops))
	}
	for name, at := range starts {
		if stops[name]-at != interpLife {
			t.Errorf("churn: %s lives %v, want %v", name, stops[name]-at, interpLife)
		}
	}
}

// TestARestartedNodeIsSyncedWithByAFewNotByTheMesh: at 200 nodes one node
// crashes and comes back once every node failed it; later two come back
// together while a third stays down. A returning node receives at most
// mostReturning push/pulls in any second (every node that saw it come back
// used to sync with it: 199), the heal prober's pings after the two came
// back stay near healPingers a second (every node used to ping every
// second), and no node is failed falsely.
func TestARestartedNodeIsSyncedWithByAFewNotByTheMesh(t *testing.T) {
	r, err := runVirtual(t, RunConfig{Scenario: ScenarioRestart, Nodes: 200, Seed: 1, Profile: "fast"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := r.Churn
	if c == nil || len(c.Returning) != 3 {
		t.Fatalf("the report's churn record: %+v, want three returning nodes", c)
	}
	for _, p := range c.Returning {
		t.Logf("returning %s (back at %.0f s): %d push/pulls at %.0f s, %d bytes at %.0f s", p.Name, p.RestartS, p.PushPulls, p.PushPullsAtS, p.BytesReceived, p.BytesAtS)
		if p.PushPulls > mostReturning {
			t.Errorf("%s received %d push/pulls in one second after its restart, want at most %d", p.Name, p.PushPulls, mostReturning)
		}
	}
	if r.FalseFailures != 0 {
		t.Errorf("%d false failures: %v", r.FalseFailures, r.FalseFailureExamples)
	}
	if p := c.HealPingsMostPerSAfterRestart; p == nil || *p > 4*healPingers {
		t.Errorf("the heal prober sent at most %v pings a second after two nodes came back, want at most %d (healPingers from the follow-up, and the steady prober's about healPingers)", p, 4*healPingers)
	} else {
		t.Logf("heal pings a second after two came back: at most %d", *p)
	}
}

// TestAHealOfManyIsSyncedByEveryNodeAndHerdsNoOne: a 60/40 split of 200
// nodes held 30 s, then healed. Every node makes a push/pull with a member
// of the far side (a heal of 80 or 120 returns is more news than gossip
// carries quickly: with the top syncers alone, a fifth of the nodes made
// none and the last learnt the heal seconds late), and still no node
// receives more than mostInAHeal in any second.
func TestAHealOfManyIsSyncedByEveryNodeAndHerdsNoOne(t *testing.T) {
	r, err := runVirtual(t, RunConfig{Scenario: ScenarioPartition, Nodes: 200, Seed: 1, Profile: "fast", PartitionFor: 30 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, c := r.Partition, r.Churn
	if p == nil || c == nil {
		t.Fatalf("no partition or churn record: %+v, %+v", p, c)
	}
	t.Logf("heal: all agree %v s, p50/p99 %v/%v s; push/pulls after the heal %d; busiest node %s: %d push/pulls in a second",
		deref(r.HealS), deref(p.HealP50), deref(p.HealP99), p.HealJoinsAfter, c.MostPushPulls.Name, c.MostPushPulls.PushPulls)
	if p.HealJoinsAfter < uint64(r.Nodes) {
		t.Errorf("%d heal push/pulls after the heal of 200 nodes, want one per node at least", p.HealJoinsAfter)
	}
	if c.MostPushPulls.PushPulls > mostInAHeal {
		t.Errorf("%s received %d push/pulls in one second, want at most %d", c.MostPushPulls.Name, c.MostPushPulls.PushPulls, mostInAHeal)
	}
	if r.FalseFailures != 0 {
		t.Errorf("%d false failures: %v", r.FalseFailures, r.FalseFailureExamples)
	}
}

// TestARollingRestartOfATenthFailsNoOneAndCostsLittle: 20 of 200 nodes
// restart one after the other. No node is failed falsely, and the bytes a
// node sends a second while they do stay within twice the steady state.
func TestARollingRestartOfATenthFailsNoOneAndCostsLittle(t *testing.T) {
	r, err := runVirtual(t, RunConfig{Scenario: ScenarioRolling, Nodes: 200, Seed: 1, Profile: "fast"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.FalseFailures != 0 {
		t.Errorf("%d false failures: %v", r.FalseFailures, r.FalseFailureExamples)
	}
	c := r.Churn
	if c == nil || c.BytesPerNodePerSSteady == nil || c.BytesPerNodePerSChurn == nil {
		t.Fatalf("no steady and churn bytes in the report: %+v", c)
	}
	t.Logf("bytes per node per s: steady %.0f, rolling %.0f; most push/pulls received in a second %d (%s)",
		*c.BytesPerNodePerSSteady, *c.BytesPerNodePerSChurn, c.MostPushPulls.PushPulls, c.MostPushPulls.Name)
	if *c.BytesPerNodePerSChurn > 2**c.BytesPerNodePerSSteady {
		t.Errorf("a node sent %.0f bytes a second during the rolling restart, more than twice the steady %.0f",
			*c.BytesPerNodePerSChurn, *c.BytesPerNodePerSSteady)
	}
	for _, p := range c.Returning {
		if p.PushPulls > mostReturning {
			t.Errorf("%s received %d push/pulls in one second after its restart, want at most %d", p.Name, p.PushPulls, mostReturning)
		}
	}
}

// BenchmarkChurn runs the restart scenario at 200 and 1,000 nodes and the
// rolling one at 200, in virtual time, and reports what a returning node
// received in its busiest second, the heal prober's pings after two came
// back, false failures and the bytes against the steady state. At 1,000
// nodes a restart takes minutes and about 3.6 GB; a rolling restart there
// (100 nodes, 15 s apart) would take 25 minutes of protocol time.
func BenchmarkChurn(b *testing.B) {
	for _, tc := range []struct {
		n  int
		sc string
	}{{200, ScenarioRestart}, {200, ScenarioRolling}, {1000, ScenarioRestart}} {
		n, sc := tc.n, tc.sc
		{
			b.Run(fmt.Sprintf("N=%d/scenario=%s", n, sc), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					r, err := benchVirtual(b, RunConfig{Scenario: sc, Nodes: n, Seed: int64(i + 1), Profile: "fast", VirtualTime: true})
					if err != nil {
						b.Fatal(err)
					}
					c := r.Churn
					most, bytes := 0.0, 0.0
					for _, p := range c.Returning {
						most, bytes = max(most, float64(p.PushPulls)), max(bytes, float64(p.BytesReceived))
					}
					b.ReportMetric(0, "ns/op")
					b.ReportMetric(most, "returning_push_pulls_max")
					b.ReportMetric(bytes, "returning_bytes_max")
					b.ReportMetric(float64(r.FalseFailures), "false_failures")
					if p := c.HealPingsMostPerSAfterRestart; p != nil {
						b.ReportMetric(float64(*p), "heal_pings_max_per_s")
					}
					if c.BytesPerNodePerSSteady != nil && c.BytesPerNodePerSChurn != nil {
						b.ReportMetric(*c.BytesPerNodePerSSteady, "bytes_steady")
						b.ReportMetric(*c.BytesPerNodePerSChurn, "bytes_churn")
					}
					b.ReportMetric(r.WallS, "wall_s")
					if r.PeakRSSMB != nil {
						b.ReportMetric(*r.PeakRSSMB, "peak_rss_mb")
					}
				}
			})
		}
	}
}
