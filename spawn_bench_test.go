package main

import (
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// benchServers starts n server agents (real processes) with equal load.
func benchServers(b *testing.B, n int, extra ...string) []*testAgent {
	var agents []*testAgent
	for i := 1; i <= n; i++ {
		a := newTestAgent(b, i)
		args := append([]string{"--load-source", "fixed:cpu=30,mem=30", "--log-level", "warn"}, extra...)
		if i > 1 {
			args = append(args, "--join", agents[0].gossip)
		}
		stopInterpreters(b, a)
		a.start(b, args...)
		agents = append(agents, a)
	}
	waitFor(b, "every server alive with load", 30*time.Second, func() bool {
		ms := membersOf(b, agents[0])
		for _, a := range agents {
			if ms[a.name].Status != "alive" || ms[a.name].Tags["cpu"] == "" {
				return false
			}
		}
		return true
	})
	return agents
}

func dialAgent(b *testing.B, a *testAgent) *rpc.Client {
	c, err := rpc.Dial(a.rpc, rpc.ClientConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkSpawn20 measures 20 spawns on 3 servers, one after another, from
// the request to the interpreter alive in the asker's member list (--wait).
// Target: p99 at most 1.5 s.
func BenchmarkSpawn20(b *testing.B) {
	agents := benchServers(b, 3)
	cl := dialAgent(b, agents[0])
	var total, decision []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 20; j++ {
			r, err := cl.Spawn(rpc.SpawnRequest{Kind: "demo", Wait: true})
			if err != nil || r.Code != "" {
				b.Fatalf("spawn: %v %s", err, r.Error)
			}
			total, decision = append(total, r.TotalMS), append(decision, r.DecisionMS)
		}
	}
	b.StopTimer()
	sort.Float64s(total)
	sort.Float64s(decision)
	b.ReportMetric(percentile(total, 0.50), "p50_ms")
	b.ReportMetric(percentile(total, 0.99), "p99_ms")
	b.ReportMetric(percentile(decision, 0.50), "decision_p50_ms")
	b.ReportMetric(percentile(decision, 0.99), "decision_p99_ms")
}

// BenchmarkSpawnBurst sends 60 concurrent spawns, 20 from each of 3 askers,
// over 6 servers with equal load, and reports the most any server got
// (ideal 10, target at most 12). naive_max is what "always the least
// loaded by tags" would have done with the same views: every asker's tags
// show the same loads, so each picks the same server for its whole burst.
func BenchmarkSpawnBurst(b *testing.B) {
	agents := benchServers(b, 6)
	askers := []*rpc.Client{dialAgent(b, agents[0]), dialAgent(b, agents[2]), dialAgent(b, agents[4])}
	views := make([]map[string]memberJSON, len(askers))
	for i, a := range []*testAgent{agents[0], agents[2], agents[4]} {
		views[i] = membersOf(b, a)
	}
	var maxShare, naiveMax, wall float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		counts := map[string]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := time.Now()
		for _, cl := range askers {
			for j := 0; j < 20; j++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := cl.Spawn(rpc.SpawnRequest{Kind: "demo"})
					if err != nil || r.Code != "" {
						b.Errorf("spawn: %v %s", err, r.Error)
						return
					}
					mu.Lock()
					counts[r.Node]++
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		wall = time.Since(start).Seconds()
		most := 0
		for _, n := range counts {
			most = max(most, n)
		}
		maxShare = float64(most)
		b.Logf("burst of 60 over 6 servers: %v (most %d, ideal 10)", counts, most)
	}
	b.StopTimer()
	naive := map[string]int{}
	for _, view := range views {
		naive[leastLoadedByTags(view)] += 20
	}
	for _, n := range naive {
		naiveMax = max(naiveMax, float64(n))
	}
	b.ReportMetric(maxShare, "max_share")
	b.ReportMetric(naiveMax, "naive_max_share")
	b.ReportMetric(wall, "burst_s")
}

// leastLoadedByTags is the replaced system's rule: the server whose tags
// show the least load (cpu + mem), first by name on a tie.
func leastLoadedByTags(view map[string]memberJSON) string {
	best, bestLoad := "", 0.0
	names := make([]string, 0, len(view))
	for n := range view {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		m := view[n]
		t, err := gossip.ParseTags(m.Tags)
		if err != nil || t.Role != gossip.RoleServer || t.Load == nil {
			continue
		}
		if l := t.Load.CPU + t.Load.Mem; best == "" || l < bestLoad {
			best, bestLoad = n, l
		}
	}
	return best
}
