package chaos

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func hosts(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("h%d", i+1)
	}
	return out
}

func mustSchedule(t *testing.T, cfg Config) Plan {
	t.Helper()
	p, err := Schedule(cfg)
	if err != nil {
		t.Fatalf("Schedule(%+v): %v", cfg, err)
	}
	return p
}

func requestsOf(p Plan) []Request {
	var out []Request
	for _, s := range p.Steps {
		if s.Request != nil {
			out = append(out, *s.Request)
		}
	}
	return out
}

func TestScheduleSameSeedSamePlan(t *testing.T) {
	cfg := Config{Seed: 42, Agents: hosts(5), Duration: 10 * time.Minute}
	a, b := mustSchedule(t, cfg), mustSchedule(t, cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("one seed gave two plans")
	}
	if len(a.Faults()) == 0 || len(requestsOf(a)) == 0 {
		t.Fatalf("a 10-minute plan with %d faults and %d requests", len(a.Faults()), len(requestsOf(a)))
	}
}

func TestScheduleSeedsDiffer(t *testing.T) {
	seen := map[string]int64{}
	for seed := int64(-500); seed < 500; seed++ {
		p := mustSchedule(t, Config{Seed: seed, Agents: hosts(5), Duration: 5 * time.Minute})
		key := fmt.Sprintf("%v %v", p.Faults(), requestsOf(p))
		if other, ok := seen[key]; ok {
			t.Fatalf("seeds %d and %d gave the same plan", other, seed)
		}
		seen[key] = seed
	}
}

// span is one host under one host fault, from its start to what ends it.
type span struct {
	host     string
	from, to time.Duration
	down     bool // off the mesh (crash, pause), not drained
}

// holdBounds are how long a host stays crashed or drained.
var holdBounds = map[FaultKind][2]time.Duration{
	FaultCrashHost:  {3 * time.Second, time.Minute},
	FaultCrashAgent: {2 * time.Second, 30 * time.Second},
	FaultDrain:      {10 * time.Second, time.Minute},
}

// checkPlan asserts every constraint Schedule promises, for one plan.
func checkPlan(t *testing.T, cfg Config, p Plan) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d, %d agents, %s: %s", cfg.Seed, len(cfg.Agents), cfg.Duration, fmt.Sprintf(format, args...))
	}
	minority := (len(cfg.Agents) - 1) / 2
	for i, s := range p.Steps {
		if i > 0 && s.At < p.Steps[i-1].At {
			fail("step %d at %s comes after one at %s", i, s.At, p.Steps[i-1].At)
		}
		if (s.Fault == nil) == (s.Request == nil) {
			fail("step %d is neither a fault nor a request, or both", i)
		}
		if s.End && s.At != s.Fault.Until {
			fail("the end of %s at %s, not at its Until %s", s.Fault.Kind, s.At, s.Fault.Until)
		}
	}

	faults := p.Faults()
	var spans []span
	var netEnd time.Duration
	clusterRestarts := 0
	for i, f := range faults {
		if f.At <= 0 || f.At > cfg.Duration || f.Until > cfg.Duration {
			fail("%s from %s until %s is not within the run", f.Kind, f.At, f.Until)
		}
		switch f.Kind {
		case FaultPartition, FaultOneWay, FaultFlap, FaultLoss:
			if f.At <= netEnd {
				fail("%s at %s while another network fault is in force until %s", f.Kind, f.At, netEnd)
			}
			if f.Until <= f.At {
				fail("%s at %s has no end", f.Kind, f.At)
			}
			netEnd = f.Until
		}
		switch f.Kind {
		case FaultPartition, FaultFlap:
			var all []string
			for _, g := range f.Groups {
				if len(g) == 0 {
					fail("%s with an empty group: %v", f.Kind, f.Groups)
				}
				all = append(all, g...)
			}
			slices.Sort(all)
			if !slices.Equal(all, sorted(cfg.Agents)) || len(f.Groups) < 2 || len(f.Groups) > 3 {
				fail("%s groups %v do not cut the agents in 2 or 3", f.Kind, f.Groups)
			}
			if f.Kind == FaultFlap && (f.Period < time.Second || f.Period > 5*time.Second) {
				fail("flap period %s", f.Period)
			}
		case FaultOneWay:
			all := append(slices.Clone(f.From), f.To...)
			slices.Sort(all)
			if len(f.From) == 0 || len(f.To) == 0 || !slices.Equal(all, sorted(cfg.Agents)) {
				fail("one-way %v -> %v", f.From, f.To)
			}
		case FaultLoss:
			if f.Rate < 0.05 || f.Rate > 0.30 {
				fail("loss rate %v", f.Rate)
			}
		case FaultPause:
			spans = append(spans, span{f.Hosts[0], f.At, f.Until, true})
		case FaultCrashHost, FaultCrashAgent, FaultDrain:
			follower := map[FaultKind]FaultKind{FaultCrashHost: FaultRestartHost, FaultCrashAgent: FaultRestartAgent,
				FaultDrain: FaultUndrain}[f.Kind]
			j := slices.IndexFunc(faults[i+1:], func(g Fault) bool {
				return g.Kind != FaultCrashSupervisor && len(g.Hosts) > 0 && g.Hosts[0] == f.Hosts[0]
			})
			if j < 0 || faults[i+1+j].Kind != follower {
				fail("%s of %s at %s is not followed by its %s", f.Kind, f.Hosts[0], f.At, follower)
			}
			end := faults[i+1+j].At
			if lo, hi := holdBounds[f.Kind][0], holdBounds[f.Kind][1]; end-f.At < lo || end-f.At > hi {
				fail("%s of %s lasts %s, want %s-%s", f.Kind, f.Hosts[0], end-f.At, lo, hi)
			}
			spans = append(spans, span{f.Hosts[0], f.At, end, f.Kind != FaultDrain})
		case FaultClusterRestart:
			clusterRestarts++
		}
	}
	// Each follower ends the fault just before it on its host.
	last := map[string]FaultKind{}
	for _, f := range faults {
		if len(f.Hosts) == 0 || f.Kind == FaultCrashSupervisor {
			continue
		}
		h := f.Hosts[0]
		if want, ok := follows[f.Kind]; ok && last[h] != want {
			fail("%s of %s at %s follows %q, not %s", f.Kind, h, f.At, last[h], want)
		}
		last[h] = f.Kind
	}
	if clusterRestarts > 1+int(cfg.Duration/(10*time.Minute)) {
		fail("%d cluster restarts", clusterRestarts)
	}
	overlaps := func(a, b span) bool { return a.from <= b.to && b.from <= a.to }
	for _, a := range spans {
		down, drained := 0, 0
		for _, b := range spans {
			if a == b || !overlaps(a, b) {
				continue
			}
			if a.host == b.host {
				fail("%s is under two host faults at once: %+v and %+v", a.host, a, b)
			}
			if b.from <= a.from {
				if b.down {
					down++
				} else {
					drained++
				}
			}
		}
		if a.down && down+1 > minority || !a.down && drained+1 > minority {
			fail("at %s more than a minority (%d) of hosts down or drained", a.from, minority)
		}
	}
	for _, f := range faults {
		switch f.Kind {
		case FaultCrashSupervisor:
			for _, s := range spans {
				if s.host == f.Hosts[0] && s.down && s.from <= f.At && f.At <= s.to {
					fail("crash-supervisor on %s at %s while it is down", f.Hosts[0], f.At)
				}
			}
		case FaultClusterRestart:
			for _, g := range faults {
				if g.Kind == FaultClusterRestart {
					continue
				}
				if g.At > f.At && g.At <= f.At+clusterSettle || g.Until >= f.At && g.At <= f.At {
					fail("cluster restart at %s with %s at %s until %s", f.At, g.Kind, g.At, g.Until)
				}
			}
			for _, s := range spans {
				if s.from <= f.At && f.At <= s.to {
					fail("cluster restart at %s while %s is under a fault", f.At, s.host)
				}
			}
		}
	}

	policy := map[string]string{}
	for i, q := range requestsOf(p) {
		if q.ID != i+1 {
			fail("request %d has ID %d", i+1, q.ID)
		}
		if q.At < 0 || q.At >= cfg.Duration || !slices.Contains(cfg.Agents, q.Agent) {
			fail("request %+v", q)
		}
		switch q.Kind {
		case OpSpawn:
			if q.Key != "" {
				if want, ok := policy[q.Key]; ok && want != q.Restart {
					fail("key %s asked with restart %q and %q", q.Key, want, q.Restart)
				}
				policy[q.Key] = q.Restart
			}
			if q.Restart != "" && q.Restart != "on-failure" {
				fail("restart %q", q.Restart)
			}
		case OpStop:
		case OpSignal:
			if !slices.Contains(Signals, q.Signal) {
				fail("signal %q", q.Signal)
			}
		default:
			fail("request kind %q", q.Kind)
		}
		if q.Pick < 0 {
			fail("pick %d", q.Pick)
		}
	}
	if len(policy) < 1 || len(policy) > 8 {
		fail("%d keys", len(policy))
	}
}

// TestScheduleProperties checks every promise of Schedule over 1,000
// seeds, and that together they show every kind of fault and operation.
func TestScheduleProperties(t *testing.T) {
	seen := map[string]int{}
	var ops int
	var simulated time.Duration
	for seed := int64(0); seed < 1000; seed++ {
		cfg := Config{Seed: seed * 7919, Agents: hosts(3 + int(seed%7)), Duration: time.Duration(1+seed%15) * time.Minute}
		p := mustSchedule(t, cfg)
		checkPlan(t, cfg, p)
		simulated += cfg.Duration
		for _, f := range p.Faults() {
			seen[string(f.Kind)]++
			switch {
			case f.Kind == FaultPartition && len(f.Groups) == 3:
				seen["partition in 3"]++
			case f.Kind == FaultPartition && len(f.Groups[0]) < len(f.Groups[1]):
				seen["partition, minority first"]++
			case f.Kind == FaultPartition && len(f.Groups[0]) > len(f.Groups[1]):
				seen["partition, majority first"]++
			case f.Kind == FaultRestartHost && f.KeepData:
				seen["restart-host with data"]++
			case f.Kind == FaultRestartHost:
				seen["restart-host without data"]++
			case f.Kind == FaultRestartAgent && !f.KeepData:
				seen["restart-agent without data"]++
			case f.Kind == FaultDrain && f.Stop:
				seen["drain --stop"]++
			}
		}
		reqs := requestsOf(p)
		ops += len(reqs)
		for i, q := range reqs {
			switch {
			case q.Kind == OpSpawn && q.Key == "":
				seen["unkeyed spawn"]++
			case q.Kind == OpSpawn && q.Restart == "on-failure":
				seen["keyed on-failure spawn"]++
			}
			if q.Kind == OpSpawn && q.Wait {
				seen["spawn --wait"]++
			}
			if q.Key != "" && i > 0 && reqs[i-1].Key == q.Key && reqs[i-1].Agent != q.Agent && q.At-reqs[i-1].At <= burstSpread {
				seen["one key from two agents at once"]++
			}
			seen[string(q.Kind)]++
		}
	}
	for _, want := range append(kindNames(), "restart-host", "restart-agent", "undrain", "partition in 3",
		"partition, minority first", "partition, majority first", "restart-host with data", "restart-host without data",
		"restart-agent without data", "drain --stop", "unkeyed spawn", "keyed on-failure spawn", "spawn --wait",
		"one key from two agents at once", "spawn", "stop", "signal") {
		if seen[want] == 0 {
			t.Errorf("no %s in 1,000 seeds", want)
		}
	}
	if rate := simulated / time.Duration(ops); rate < time.Second || rate > 3*time.Second {
		t.Errorf("one operation every %s on average, want 1-3 s", rate)
	}
	if seen["one key from two agents at once"]*5 < seen["spawn"] {
		t.Errorf("one key from two agents at once %d times in %d spawns: not often", seen["one key from two agents at once"], seen["spawn"])
	}
	if seen["cluster-restart"]*20 > seen["crash-host"] {
		t.Errorf("%d cluster restarts against %d host crashes: not occasional", seen["cluster-restart"], seen["crash-host"])
	}
}

func kindNames() []string {
	var out []string
	for _, k := range FaultKinds {
		out = append(out, string(k))
	}
	return out
}

func TestScheduleFaultsRestricted(t *testing.T) {
	base := Config{Seed: 7, Agents: hosts(5), Duration: 20 * time.Minute}
	all := mustSchedule(t, base)

	some := base
	some.Faults = []FaultKind{FaultCrashHost, FaultPartition}
	p := mustSchedule(t, some)
	checkPlan(t, some, p)
	kinds := map[FaultKind]bool{}
	for _, f := range p.Faults() {
		kinds[f.Kind] = true
	}
	if !reflect.DeepEqual(kinds, map[FaultKind]bool{FaultPartition: true, FaultCrashHost: true, FaultRestartHost: true}) {
		t.Errorf("faults restricted to partition and crash-host gave %v", kinds)
	}
	if !reflect.DeepEqual(requestsOf(p), requestsOf(all)) {
		t.Error("restricting the faults changed the client operations of the seed")
	}
	other := base
	other.Faults = []FaultKind{FaultPartition, FaultCrashHost}
	if !reflect.DeepEqual(mustSchedule(t, other), p) {
		t.Error("one set of faults in another order gave another plan")
	}

	none := base
	none.Faults = []FaultKind{}
	p = mustSchedule(t, none)
	if len(p.Faults()) != 0 || !reflect.DeepEqual(requestsOf(p), requestsOf(all)) {
		t.Errorf("no faults allowed: %d faults", len(p.Faults()))
	}
}

func TestScheduleBadConfig(t *testing.T) {
	good := Config{Seed: 1, Agents: hosts(3), Duration: time.Minute}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want []string
	}{
		{"zero duration", func(c *Config) { c.Duration = 0 }, []string{"duration 0s", "positive"}},
		{"negative duration", func(c *Config) { c.Duration = -time.Minute }, []string{"duration -1m0s", "positive"}},
		{"two agents", func(c *Config) { c.Agents = hosts(2) }, []string{"at least 3 agents", "got 2", "h1, h2", "add agents"}},
		{"no agents", func(c *Config) { c.Agents = nil }, []string{"at least 3 agents", "got 0"}},
		{"duplicate", func(c *Config) { c.Agents = []string{"h1", "h2", "h1"} }, []string{`"h1"`, "twice", "its own name"}},
		{"empty name", func(c *Config) { c.Agents = []string{"h1", "", "h3"} }, []string{"agent 2", "empty name"}},
		{"unknown fault", func(c *Config) { c.Faults = []FaultKind{"meteor"} }, []string{`"meteor"`, "partition, one-way"}},
		{"follower fault", func(c *Config) { c.Faults = []FaultKind{FaultUndrain} }, []string{`"undrain"`, "name drain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			cfg.Agents = slices.Clone(good.Agents)
			tc.edit(&cfg)
			_, err := Schedule(cfg)
			if err == nil {
				t.Fatalf("Schedule(%+v) gave no error", cfg)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestParseFaultKinds(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []FaultKind
		wantErr []string
	}{
		{in: "", want: nil},
		{in: "  ", want: nil},
		{in: "none", want: []FaultKind{}},
		{in: "crash-host", want: []FaultKind{FaultCrashHost}},
		{in: "crash-host, partition,,partition", want: []FaultKind{FaultPartition, FaultCrashHost}},
		{in: strings.Join(kindNames(), ","), want: FaultKinds},
		{in: "partition,meteor", wantErr: []string{`unknown fault "meteor"`, strings.Join(kindNames(), ", ")}},
		{in: "restart-host", wantErr: []string{`"restart-host"`, "follows every crash-host", "name crash-host"}},
		{in: "Partition", wantErr: []string{`"Partition"`}},
	} {
		got, err := ParseFaultKinds(tc.in)
		if tc.wantErr != nil {
			if err == nil {
				t.Errorf("ParseFaultKinds(%q) = %v, want an error", tc.in, got)
				continue
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ParseFaultKinds(%q): error %q does not say %q", tc.in, err, w)
				}
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("ParseFaultKinds(%q) = %#v, %v; want %#v", tc.in, got, err, tc.want)
		}
	}
}
