package simulation

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
)

func TestTheSameSeedGivesTheSameFaultSchedule(t *testing.T) {
	for _, sc := range Scenarios() {
		for _, n := range []int{6, 20, 100, 1000} {
			a, err := PlanScenario(sc, "", n, 42)
			if err != nil {
				t.Fatalf("%s/%d: %v", sc, n, err)
			}
			b, _ := PlanScenario(sc, "", n, 42)
			if !reflect.DeepEqual(a, b) {
				t.Errorf("%s/%d: two plans from seed 42 differ:\n%+v\n%+v", sc, n, a, b)
			}
			differs := false
			for seed := int64(1); seed <= 5 && !differs; seed++ {
				c, _ := PlanScenario(sc, "", n, seed)
				differs = !reflect.DeepEqual(a.Faults, c.Faults)
			}
			if sc != ScenarioLoss || n >= 10 { // loss on <10 nodes crashes one of few
				if !differs {
					t.Errorf("%s/%d: seeds 1 to 5 all give seed 42's faults", sc, n)
				}
			}
		}
	}
}

func TestPlansAreWellFormed(t *testing.T) {
	for _, sc := range Scenarios() {
		for _, n := range []int{scenarios[sc].minNodes, 20, 1000} {
			p, err := PlanScenario(sc, "", n, 3)
			if err != nil {
				t.Fatalf("%s/%d: %v", sc, n, err)
			}
			seen := map[string]int{}
			for _, g := range p.Groups {
				for _, name := range g.Nodes {
					seen[name]++
				}
			}
			for _, name := range nodeNames(n) {
				if seen[name] != 1 {
					t.Errorf("%s/%d: %s is in %d groups, want 1", sc, n, name, seen[name])
				}
			}
			last := p.Faults[len(p.Faults)-1].At
			if heal, ok := p.healAt(); ok && p.HealedFor > 0 && heal+p.HealedFor >= p.Length {
				t.Errorf("%s/%d: healed for %v after the heal at %v is not before the end at %v", sc, n, p.HealedFor, heal, p.Length)
			}
			if p.Length <= last {
				t.Errorf("%s/%d: the schedule ends at %v, at or before its last fault at %v", sc, n, p.Length, last)
			}
			for i := 1; i < len(p.Faults); i++ {
				if p.Faults[i].At < p.Faults[i-1].At {
					t.Errorf("%s/%d: faults out of order", sc, n)
				}
			}
			for _, f := range p.Faults {
				if f.Kind != FaultPartition {
					continue
				}
				covered := map[string]bool{}
				for _, g := range f.Groups {
					if len(g) == 0 {
						t.Errorf("%s/%d: an empty side", sc, n)
					}
					for _, name := range g {
						covered[name] = true
					}
				}
				if len(covered) != n+1 || !covered[MonitorHost] {
					t.Errorf("%s/%d: the partition covers %d hosts, want every node and the monitor", sc, n, len(covered))
				}
			}
		}
	}
}

func TestBadScenarioRequestsSayWhatToDo(t *testing.T) {
	_, err := PlanScenario("meteor", "", 10, 1)
	if !errors.Is(err, ErrUnknownScenario) || !strings.Contains(err.Error(), strings.Join(Scenarios(), ", ")) {
		t.Errorf("unknown scenario: %v", err)
	}
	if _, err := PlanScenario(ScenarioPartition3, "", 5, 1); err == nil || !strings.Contains(err.Error(), "at least 6") {
		t.Errorf("too few nodes: %v", err)
	}
	if _, err := PlanScenario(ScenarioCrash, "", MaxNodes+1, 1); err == nil {
		t.Error("more than MaxNodes was accepted")
	}
}

// The crash and loss schedules watch for twice the profile's estimated
// detection after the last crash, so a run of fast is not kept waiting for
// lan's detector, and never less than the heartbeat baseline needs; the
// split and pause schedules do not depend on the profile.
func TestCrashSchedulesAreSizedByTheProfilesDetector(t *testing.T) {
	for _, profile := range gossip.Profiles() {
		for _, n := range []int{6, 100, 1000} {
			d, err := gossip.DetectionEstimate(profile, n)
			if err != nil {
				t.Fatal(err)
			}
			crash, err := PlanScenario(ScenarioCrash, profile, n, 1)
			if err != nil {
				t.Fatal(err)
			}
			last := crash.Faults[len(crash.Faults)-1].At
			watch := crash.Length - last
			if watch != max(2*d, HeartbeatTimeout+2*HeartbeatScan) || watch < 2*d || watch <= HeartbeatTimeout+HeartbeatScan {
				t.Errorf("crash, %s, %d nodes: the schedule ends %v after the last crash; detection estimate %v, the baseline's bound %v", profile, n, watch, d, HeartbeatTimeout+HeartbeatScan)
			}
			loss, err := PlanScenario(ScenarioLoss, profile, n, 1)
			if err != nil {
				t.Fatal(err)
			}
			first := loss.Faults[1].At // after the loss itself, at 0
			if first != lead+d || loss.Length != max(loss.Faults[len(loss.Faults)-1].At+watch, 45*time.Second) {
				t.Errorf("loss, %s, %d nodes: first crash at %v, end at %v; detection estimate %v", profile, n, first, loss.Length, d)
			}
			for _, sc := range []string{ScenarioPartition, ScenarioOneWay, ScenarioPause} {
				a, _ := PlanScenario(sc, profile, n, 1)
				b, _ := PlanScenario(sc, "lan", n, 1)
				a.Profile = b.Profile
				if !reflect.DeepEqual(a, b) {
					t.Errorf("%s, %s, %d nodes: the plan differs from lan's", sc, profile, n)
				}
			}
		}
	}
	if crash, _ := PlanScenario(ScenarioCrash, "fast", 1000, 1); crash.Length != 21*time.Second {
		t.Errorf("crash, fast, 1,000 nodes: %v, want 21 s (crashes at 2, 5 and 8 s, then 2 × 6.5 s)", crash.Length)
	}
	if _, err := PlanScenario(ScenarioCrash, "lna", 100, 1); !errors.Is(err, gossip.ErrUnknownProfile) {
		t.Errorf("an unknown profile: %v", err)
	}
}
