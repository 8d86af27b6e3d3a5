package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/state"
)

func TestParseLoadSource(t *testing.T) {
	for _, tc := range []struct {
		in       string
		at       time.Duration
		cpu, mem float64
		err      string
	}{
		{in: "fixed:cpu=40,mem=30", cpu: 40, mem: 30},
		{in: "fixed:mem=5,cpu=0", cpu: 0, mem: 5},
		{in: "script:0s=10/20,30s=80/50", at: 29 * time.Second, cpu: 10, mem: 20},
		{in: "script:0s=10/20,30s=80/50", at: 30 * time.Second, cpu: 80, mem: 50},
		{in: "script:30s=80/50,0s=10/20", at: time.Hour, cpu: 80, mem: 50},
		{in: "fixed:cpu=40", err: "give both cpu and mem"},
		{in: "fixed:cpu=140,mem=1", err: `cpu "140"`},
		{in: "fixed:gpu=1,mem=1", err: `unknown key "gpu"`},
		{in: "script:5s=1/1", err: "first step must start at 0s"},
		{in: "script:0s=1", err: "OFFSET=CPU/MEM"},
		{in: "script:soon=1/1", err: `offset "soon"`},
		{in: "host:x", err: "host takes no argument"},
		{in: "random", err: `"random" is not known`},
	} {
		src, err := ParseLoadSource(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		cpu, mem, err := src.Sample(tc.at)
		if err != nil || cpu != tc.cpu || mem != tc.mem {
			t.Errorf("%s at %s: %v %v %v", tc.in, tc.at, cpu, mem, err)
		}
	}
}

func TestHostLoadReadsThisMachine(t *testing.T) {
	src, _ := ParseLoadSource("host")
	cpu, mem, err := src.Sample(0)
	if err != nil {
		t.Fatal(err)
	}
	if cpu < 0 || cpu > 100 || mem <= 0 || mem > 100 {
		t.Fatalf("cpu %v mem %v", cpu, mem)
	}
}

// advance moves the fake clock one sample interval, once the load loop is
// parked on it, and waits until the loop has taken that sample.
func advance(t *testing.T, clk *state.FakeClock, a *Agent, steps int) {
	t.Helper()
	for i := 0; i < steps; i++ {
		poll(t, "the load loop to wait on the clock", func() bool { return clk.Waiters() > 0 })
		before := a.samplesTaken()
		clk.Advance(sampleInterval)
		poll(t, "the load loop to take a sample", func() bool { return a.samplesTaken() > before })
	}
}

// TestSteadyLoadCausesNoTagUpdates: with a constant load, the tags are
// published once and never again; a real change is published again.
func TestSteadyLoadCausesNoTagUpdates(t *testing.T) {
	clk := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	a := startAgentWith(t, "steady", "127.0.0.1", Deps{Clock: clk}, func(c *Config) {
		c.LoadSource = "script:0s=40/30,300s=90/30"
	})
	poll(t, "the first sample, taken at start", func() bool { return a.samplesTaken() >= 1 })
	if got := a.loadUpdates(); got != 1 {
		t.Fatalf("%d load updates after the first sample, want 1", got)
	}
	tags, err := gossip.ParseTags(a.Node().Tags())
	if err != nil || tags.Load == nil || tags.Load.CPU != 40 || tags.Load.Mem != 30 {
		t.Fatalf("tags %+v %v", tags, err)
	}
	advance(t, clk, a, 200) // 200 s of the same load, past the 60 s maximum interval
	if got := a.loadUpdates(); got != 1 {
		t.Fatalf("%d load updates after 200 s of steady load, want 1", got)
	}
	advance(t, clk, a, 110) // the script jumps cpu to 90 at 300 s
	if got := a.loadUpdates(); got < 2 {
		t.Fatalf("a jump from 40 to 90 %% cpu was not published")
	}
	tags, _ = gossip.ParseTags(a.Node().Tags())
	if tags.Load.CPU <= 42 {
		t.Fatalf("published cpu %v after the jump", tags.Load.CPU)
	}
}

// TestWorstCaseServerTagsFit: a server's tags with the largest values they
// can take, plus a realistic set of user tags, stay under memberlist's cap.
func TestWorstCaseServerTagsFit(t *testing.T) {
	extra := map[string]string{}
	for _, k := range []string{"dc", "zone", "rack", "env", "team", "gpu"} {
		extra[k] = strings.Repeat("x", 24)
	}
	tags := gossip.Tags{Role: gossip.RoleServer, Load: &gossip.Load{CPU: 100, Mem: 100},
		Interpreters: 99999, Capacity: 99999, Extra: extra}.Map()
	if n := gossip.EncodedTagSize(tags); n > gossip.MaxTagBytes {
		t.Fatalf("worst-case server tags encode to %d bytes, over %d", n, gossip.MaxTagBytes)
	} else {
		t.Logf("worst-case server tags: %d of %d bytes", n, gossip.MaxTagBytes)
	}
}
