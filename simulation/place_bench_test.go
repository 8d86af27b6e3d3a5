package simulation

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
)

// BenchmarkPlaceDecision times the place decision (bidding.Collect, then
// placement.Elect) in a healthy simulated mesh of 100 servers with no
// fault: 20 placements one after another from different askers, reported
// as p50_ms and p99_ms. The target is a p99 of at most 500 ms; serf's own
// default query timeout at this size is several seconds.
func BenchmarkPlaceDecision(b *testing.B) {
	for _, profile := range []string{"lan", "fast"} {
		b.Run(fmt.Sprintf("N=100/profile=%s", profile), func(b *testing.B) {
			logger := slog.New(slog.DiscardHandler)
			c, err := StartCluster(context.Background(), ClusterConfig{Nodes: 100, Profile: profile, Seed: 1,
				Prepare: func(name string, n *gossip.Node) (func(), error) {
					serveBids(name, n, logger)
					return nil, nil
				}})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Stop()
			names := c.Names()
			var ms []float64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := 0; j < 20; j++ {
					asker := names[(i*20+j*7)%len(names)]
					r := c.place(context.Background(), fmt.Sprintf("bench-%d-%d", i, j), asker)
					if r.winner == "" {
						b.Fatalf("no winner from %s: %v", asker, r.err)
					}
					ms = append(ms, float64(r.elapsed)/float64(time.Millisecond))
				}
			}
			b.StopTimer()
			sort.Float64s(ms)
			b.ReportMetric(*percentile(ms, 50), "p50_ms")
			b.ReportMetric(*percentile(ms, 99), "p99_ms")
		})
	}
}
