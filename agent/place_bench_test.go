package agent

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/rpc"
)

// BenchmarkPlaceDecision measures a place decision end to end through the
// RPC (query, bids, election) with 5 agents on loopback, for each profile.
// It reports p50_ms and p99_ms of the decision as the asker timed it.
func BenchmarkPlaceDecision(b *testing.B) {
	for _, profile := range []string{"lan", "fast", "local"} {
		b.Run("agents=5/profile="+profile, func(b *testing.B) {
			loads := map[string]string{}
			for i := 1; i <= 5; i++ {
				loads[fmt.Sprintf("s%d", i)] = fmt.Sprintf("fixed:cpu=%d,mem=%d", 10*i, 5*i)
			}
			var cl *rpc.Client
			cleanup := benchCluster(b, loads, profile, &cl)
			defer cleanup()
			samples := make([]float64, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resp, err := cl.Place(rpc.PlaceRequest{Kind: "demo"})
				if err != nil || resp.Winner == "" {
					b.Fatalf("place: %v %s", err, resp.Error)
				}
				samples = append(samples, resp.DecisionMS)
			}
			b.StopTimer()
			sort.Float64s(samples)
			b.ReportMetric(percentile(samples, 0.50), "p50_ms")
			b.ReportMetric(percentile(samples, 0.99), "p99_ms")
		})
	}
}

func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// benchCluster starts the servers for a benchmark and returns their stop.
func benchCluster(b *testing.B, loads map[string]string, profile string, cl **rpc.Client) func() {
	var agents []*Agent
	var first *Agent
	i := 1
	for _, name := range sortedKeys(loads) {
		cfg := DefaultConfig()
		cfg.NodeName = name
		cfg.DataDir = b.TempDir()
		ip := fmt.Sprintf("127.0.0.%d", i)
		i++
		cfg.BindAddr = freeLoopbackAddr(b, ip)
		cfg.RPCAddr = ip + ":0"
		cfg.Profile = profile
		cfg.LoadSource = loads[name]
		cfg.HTTPAddr = ""
		if first != nil {
			cfg.Join = []string{first.Node().Addr()}
		}
		logger, stream, _ := NewLogger(discard{}, "error", "text")
		a, err := New(cfg, Deps{Logger: logger, Logs: stream})
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Start(); err != nil {
			b.Fatal(err)
		}
		agents = append(agents, a)
		if first == nil {
			first = a
		}
	}
	stop := func() {
		for _, a := range agents {
			a.Shutdown()
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := len(first.Node().Members()) == len(loads)
		for _, a := range agents {
			if _, ok := a.currentLoad(); !ok {
				ready = false
			}
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			stop()
			b.Fatal("cluster did not form")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := rpc.Dial(first.RPCAddr(), rpc.ClientConfig{})
	if err != nil {
		stop()
		b.Fatal(err)
	}
	*cl = c
	return func() { c.Close(); stop() }
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
