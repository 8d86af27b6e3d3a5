package simulation

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
)

// Every simulated node is a server that answers place queries with a bid
// from its fake load, through the same bidding code the agent runs. A burst
// has each of its askers run the asker's side: bidding.Collect, then
// placement.Elect on the bids. Nothing is started: the election is what is
// measured, not the spawn.

// simKind is the interpreter kind every simulated server offers.
const simKind = "demo"

// serveBids makes a node answer place queries with its fake load.
func serveBids(name string, n *gossip.Node, logger *slog.Logger) {
	tags := n.Tags()
	t, _ := gossip.ParseTags(tags)
	load := gossip.Load{}
	if t.Load != nil {
		load = *t.Load
	}
	bidding.Serve(n, func(string, bidding.Request) placement.Bid {
		return placement.Bid{Node: name, CPU: load.CPU, Mem: load.Mem, Running: t.Interpreters, Capacity: t.Capacity,
			Healthy: true, OffersKind: true, Kinds: []string{simKind}, Tags: tags}
	}, logger)
}

// placementResult is one asker's attempt.
type placementResult struct {
	asker, winner string
	bids, missing int
	elapsed       time.Duration // protocol time
	err           error
}

// burst runs one placement per asker, all at once, and returns when every
// one has finished.
func (c *Cluster) burst(ctx context.Context, tag string, askers []string) []placementResult {
	out := make([]placementResult, len(askers))
	var wg sync.WaitGroup
	for i, asker := range askers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = c.place(ctx, fmt.Sprintf("%s-%s", tag, asker), asker)
		}()
	}
	wg.Wait()
	return out
}

func (c *Cluster) place(ctx context.Context, id, asker string) placementResult {
	r := placementResult{asker: asker}
	n := c.Node(asker)
	if n == nil {
		r.err = fmt.Errorf("no node %s", asker)
		return r
	}
	start := time.Now()
	res, err := bidding.Collect(ctx, n, bidding.Request{ID: id, Kind: simKind}, c.clk.wall(bidding.DefaultTimeout))
	r.bids, r.missing = len(res.Bids), len(res.Missing)
	if err == nil || len(res.Bids) > 0 {
		var d placement.Decision
		d, err = placement.Elect(placement.Request{ID: id, Kind: simKind}, res.Bids, nil, time.Now())
		r.winner = d.Winner
	}
	r.elapsed, r.err = c.clk.protoDur(time.Since(start)), err
	return r
}

// BurstRecord is what one burst of placements achieved, side by side.
type BurstRecord struct {
	AtS   float64     `json:"at_s"`
	Label string      `json:"label"`
	Sides []BurstSide `json:"sides"`
	Notes []string    `json:"errors,omitempty"` // the first few failures, for a person
}

// BurstSide is one side of the partition during a burst.
type BurstSide struct {
	Side    string `json:"side"`
	Asked   int    `json:"asked"`
	Decided int    `json:"decided"` // an election chose a server
	// Elsewhere counts winners on another side: a server the asker could
	// not reach. It should be zero.
	Elsewhere int `json:"winners_elsewhere"`
	// MissingBids sums, over the askers, the servers in their view that did
	// not answer in time (those on the other side, not yet seen failed).
	MissingBids   int     `json:"missing_bids"`
	MedianMS      float64 `json:"decision_median_ms"`
	P99MS         float64 `json:"decision_p99_ms"`
	BaselineCould int     `json:"baseline_decided"` // askers that could reach the central monitor
}

type sideResult struct {
	side, winnerSide int
	placementResult
	monitor bool
}

// summariseBurst groups a burst's results by side (the partition groups of
// the fault state at the burst; one side when there is no partition).
func summariseBurst(at float64, label string, results []sideResult, sideNames []string) BurstRecord {
	rec := BurstRecord{AtS: at, Label: label}
	bySide := map[int][]sideResult{}
	for _, r := range results {
		bySide[r.side] = append(bySide[r.side], r)
	}
	sides := make([]int, 0, len(bySide))
	for s := range bySide {
		sides = append(sides, s)
	}
	sort.Ints(sides)
	for _, s := range sides {
		name := "the whole mesh"
		if s >= 0 && s < len(sideNames) {
			name = sideNames[s]
		}
		bs := BurstSide{Side: name}
		var ms []float64
		for _, r := range bySide[s] {
			bs.Asked++
			bs.MissingBids += r.missing
			if r.monitor {
				bs.BaselineCould++
			}
			if r.winner == "" {
				if len(rec.Notes) < 5 && r.err != nil {
					rec.Notes = append(rec.Notes, fmt.Sprintf("%s: %v", r.asker, r.err))
				}
				continue
			}
			bs.Decided++
			ms = append(ms, float64(r.elapsed.Milliseconds()))
			if r.winnerSide != r.side {
				bs.Elsewhere++
			}
		}
		if v := percentile(ms, 50); v != nil {
			bs.MedianMS = *v
		}
		if v := percentile(ms, 99); v != nil {
			bs.P99MS = *v
		}
		rec.Sides = append(rec.Sides, bs)
	}
	return rec
}
