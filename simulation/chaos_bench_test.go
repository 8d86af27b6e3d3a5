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
// CHAOS_CPUPROFILE=FILE has the first child write its CPU profile there,
// CHAOS_BENCH_DURATION sets the schedule.
func BenchmarkChaosSeed(b *testing.B) {
	var simulated float64
	start := time.Now()
	for i := 0; i < b.N; i++ {
		seed := int64(101 + i)
		args := []string{"-test.run=^TestVirtualRun$"}
		if p := os.Getenv("CHAOS_CPUPROFILE"); p != "" && i == 0 {
			args = append(args, "-test.cpuprofile="+p)
		}
		res, err := runChaosChild(b.Context(), ChaosConfig{Seed: seed, Agents: 5 + int(seed%5), Duration: benchDur()}, os.Args[0], args...)
		if err != nil {
			b.Fatal(err)
		}
		simulated += res.SimulatedS
	}
	b.ReportMetric(simulated/time.Since(start).Seconds(), "sim-s/s")
}

// benchDur is each seed's schedule: three minutes, or CHAOS_BENCH_DURATION
// (a longer schedule's mesh holds more interpreters, and costs more a
// simulated second).
func benchDur() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("CHAOS_BENCH_DURATION")); err == nil {
		return d
	}
	return 3 * time.Minute
}
