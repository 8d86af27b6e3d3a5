package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/chaos"
	"github.com/meshagent/agent/simulation"
)

// The chaos scenario of `agent simulate`: seeded random schedules of
// faults and client operations on whole agents in virtual time, each
// checked against the rules for interpreters under faults.

// chaosSummary is `agent simulate --scenario chaos`'s report.
type chaosSummary struct {
	Scenario       string                    `json:"scenario"`
	Seeds          []int64                   `json:"seeds"`
	SimulatedHours float64                   `json:"simulated_hours"`
	Ops            int                       `json:"ops"`
	Faults         int                       `json:"faults"`
	Violations     int                       `json:"violations"`
	SettleP50S     float64                   `json:"settle_p50_s"`
	SettleP99S     float64                   `json:"settle_p99_s"`
	WallS          float64                   `json:"wall_s"`
	Failed         []*simulation.ChaosResult `json:"failed,omitempty"` // the seeds with violations, with their histories
	Runs           []chaosRun                `json:"runs"`
}

type chaosRun struct {
	Seed       int64   `json:"seed"`
	Agents     int     `json:"agents"`
	SimulatedS float64 `json:"simulated_s"`
	Ops        int     `json:"ops"`
	Faults     int     `json:"faults"`
	Violations int     `json:"violations"`
	SettleS    float64 `json:"settle_s"`
}

// chaosAgents is how many agents a seed's run has, when --nodes is not
// given: 5 to 9, by the seed.
func chaosAgents(seed int64) int { return 5 + int(((seed%5)+5)%5) }

func simulateChaos(c *ucli.Context, format string) error {
	for _, name := range []string{"loss", "partition-for", "no-heal", "exact-compression", "dilation", "svg"} {
		if c.IsSet(name) {
			return fmt.Errorf("--%s does not apply to the chaos scenario: drop it", name)
		}
	}
	if c.String("time") != "virtual" {
		return fmt.Errorf("--time %s: the chaos scenario runs in virtual time only", c.String("time"))
	}
	seeds, duration := c.Int("seeds"), c.Duration("duration")
	if seeds < 1 {
		return fmt.Errorf("--seeds %d: give how many seeds to run, 1 or more (seed, seed+1, …)", seeds)
	}
	if duration <= 0 {
		return fmt.Errorf("--duration %s: give a positive duration of faults and operations, e.g. 10m", duration)
	}
	kinds, err := chaos.ParseFaultKinds(c.String("faults"))
	if err != nil {
		return fmt.Errorf("--faults: %w", err)
	}
	nodes := 0
	if c.IsSet("nodes") {
		nodes = c.Int("nodes")
		if nodes < 3 || nodes > 15 {
			return fmt.Errorf("--nodes %d: the chaos scenario runs 3 to 15 agents (default: 5 to 9, by the seed)", nodes)
		}
	}
	if path := c.String("out"); path != "" {
		if err := checkWritableDir(path); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
	}
	first := c.Int64("seed")
	sum := chaosSummary{Scenario: "chaos"}
	start := time.Now()
	results := make([]*simulation.ChaosResult, seeds)
	errs := make([]error, seeds)
	// One run a core at once: each child is one process with one P, and
	// runs one seed after another.
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("the chaos runs need this program's path to start their children: %w", err)
	}
	pool := simulation.NewChaosPool(simulation.ChaosWorkers(), exe)
	defer pool.Close()
	var wg sync.WaitGroup
	next := make(chan int)
	var mu sync.Mutex
	for range simulation.ChaosWorkers() {
		wg.Go(func() {
			for i := range next {
				seed := first + int64(i)
				n := nodes
				if n == 0 {
					n = chaosAgents(seed)
				}
				r, err := pool.Run(c.Context, simulation.ChaosConfig{Seed: seed, Agents: n, Duration: duration, Faults: kinds})
				results[i], errs[i] = r, err
				if format != "json" && err == nil {
					mu.Lock()
					fmt.Fprintf(c.App.ErrWriter, "seed %d: %d agents, %.0f s simulated, %d operations, %d faults, %d violations\n",
						seed, r.Agents, r.SimulatedS, r.Ops, r.Faults, len(r.Violations))
					mu.Unlock()
				}
			}
		})
	}
	for i := range seeds {
		select {
		case next <- i:
		case <-c.Context.Done():
		}
	}
	close(next)
	wg.Wait()
	if err := c.Context.Err(); err != nil && err != context.Canceled {
		return err
	}
	var settles []float64
	for i, r := range results {
		if errs[i] != nil {
			return fmt.Errorf("chaos seed %d: %w", first+int64(i), errs[i])
		}
		sum.Seeds = append(sum.Seeds, r.Seed)
		sum.SimulatedHours += r.SimulatedS / 3600
		sum.Ops += r.Ops
		sum.Faults += r.Faults
		sum.Violations += len(r.Violations)
		if r.SettleS >= 0 {
			settles = append(settles, r.SettleS)
		}
		if len(r.Violations) > 0 {
			sum.Failed = append(sum.Failed, r)
		}
		sum.Runs = append(sum.Runs, chaosRun{Seed: r.Seed, Agents: r.Agents, SimulatedS: r.SimulatedS, Ops: r.Ops,
			Faults: r.Faults, Violations: len(r.Violations), SettleS: r.SettleS})
	}
	sort.Float64s(settles)
	sum.SettleP50S, sum.SettleP99S = quantile(settles, 0.5), quantile(settles, 0.99)
	sum.SimulatedHours = float64(int(sum.SimulatedHours*100+0.5)) / 100
	sum.WallS = float64(time.Since(start).Milliseconds()) / 1000

	if path := c.String("out"); path != "" {
		var buf bytes.Buffer
		if err := writeJSON(&buf, sum); err != nil {
			return err
		}
		if err := writeFileAtomically(path, buf.Bytes()); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
	}
	if format == "json" {
		if err := writeJSON(c.App.Writer, sum); err != nil {
			return err
		}
	} else {
		writeChaosText(c.App.Writer, sum)
	}
	if sum.Violations > 0 {
		return withCode(ExitError, fmt.Errorf("%d violations in %d of %d seeds: replay one with --seed S --seeds 1 --duration %s",
			sum.Violations, len(sum.Failed), seeds, duration))
	}
	return nil
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return -1
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func writeChaosText(w io.Writer, s chaosSummary) {
	fmt.Fprintf(w, "chaos: %d seeds (%d to %d), %.2f simulated hours, %d operations, %d faults, in %.1f s of wall time\n",
		len(s.Seeds), slices.Min(s.Seeds), slices.Max(s.Seeds), s.SimulatedHours, s.Ops, s.Faults, s.WallS)
	fmt.Fprintf(w, "settle after the last heal (every agent lists exactly what runs, one per request): p50 %.1f s, p99 %.1f s\n",
		s.SettleP50S, s.SettleP99S)
	if s.Violations == 0 {
		fmt.Fprintln(w, "violations: none")
		return
	}
	fmt.Fprintf(w, "violations: %d\n", s.Violations)
	for _, r := range s.Failed {
		for _, v := range r.Violations {
			fmt.Fprintf(w, "\nseed %d (%d agents): %s\n", r.Seed, r.Agents, v.String())
		}
	}
}
