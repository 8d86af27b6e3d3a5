package simulation

import (
	"os"
	"testing"
	"time"
)

// BenchmarkChaosSeed: seeds of the chaos scenario (five to nine agents, a
// three-minute schedule) one after another on one child process of a
// ChaosPool, as `make test`'s chaos test runs them two at a time; it
// reports simulated seconds per wall second, the figure that decides how
// many seeds `make test` affords. CHAOS_CPUPROFILE=FILE has the child
// write its CPU profile there, CHAOS_BENCH_DURATION sets the schedule.
func BenchmarkChaosSeed(b *testing.B) {
	args := []string{"-test.run=^TestVirtualRun$"}
	if p := os.Getenv("CHAOS_CPUPROFILE"); p != "" {
		args = append(args, "-test.cpuprofile="+p)
	}
	pool := NewChaosPool(1, os.Args[0], args...)
	var simulated float64
	start := time.Now()
	for i := 0; i < b.N; i++ {
		seed := int64(101 + i)
		res, err := pool.Run(b.Context(), ChaosConfig{Seed: seed, Agents: 5 + int(seed%5), Duration: benchDur()})
		if err != nil {
			b.Fatal(err)
		}
		simulated += res.SimulatedS
	}
	pool.Close() // the child's exit writes its profile
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
