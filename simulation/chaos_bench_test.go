package simulation

import (
	"os"
	"testing"
	"time"
)

// BenchmarkChaosSeed: one seed of the chaos scenario (five to nine
// agents, a three-minute schedule) in a child process, as `make test`'s
// chaos test runs it; it reports simulated seconds per wall second, the
// figure that decides how many seeds `make test` affords.
// CHAOS_CPUPROFILE=FILE has the first child write its CPU profile there.
func BenchmarkChaosSeed(b *testing.B) {
	var simulated float64
	start := time.Now()
	for i := 0; i < b.N; i++ {
		seed := int64(101 + i)
		args := []string{"-test.run=^TestVirtualRun$"}
		if p := os.Getenv("CHAOS_CPUPROFILE"); p != "" && i == 0 {
			args = append(args, "-test.cpuprofile="+p)
		}
		res, err := runChaosChild(b.Context(), ChaosConfig{Seed: seed, Agents: 5 + int(seed%5), Duration: 3 * time.Minute}, os.Args[0], args...)
		if err != nil {
			b.Fatal(err)
		}
		simulated += res.SimulatedS
	}
	b.ReportMetric(simulated/time.Since(start).Seconds(), "sim-s/s")
}
