package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/meshagent/agent/agent/interp"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/placement"
	"github.com/meshagent/agent/state"
)

// bid is this server's answer to a place query.
func (a *Agent) bid(asker string, req bidding.Request) placement.Bid {
	load, healthy := a.currentLoad()
	b := placement.Bid{Node: a.cfg.NodeName, CPU: load.CPU, Mem: load.Mem, Healthy: healthy, Tags: a.node.Tags()}
	select {
	case <-a.shutdownCh:
		b.Refusal = "shutting down"
	default:
	}
	if b.Refusal == "" && a.draining() {
		b.Refusal = "draining: this server takes no new interpreters (agent drain --undo ends it)"
	}
	if critical := a.criticalChecks(); b.Refusal == "" && len(critical) > 0 {
		b.Refusal = "unhealthy: " + strings.Join(critical, ", ")
	}
	if b.Refusal == "" && !a.allowPlace(asker) {
		b.Refusal = fmt.Sprintf("rate limited: %s sent more than %g place queries a second (--place-rate-limit)", asker, a.currentPlaceRate())
	}
	b = a.interps.Bid(asker, req, b)
	if b.Refusal != "" {
		a.metrics.bidsRefused.WithLabelValues(refusalReason(b.Refusal)).Inc()
	}
	return b
}

// elect asks the servers for bids and elects one. The ledger may be nil (a
// dry run reserves nothing).
func (a *Agent) elect(ctx context.Context, req placement.Request, timeout time.Duration, ledger *placement.Ledger) interp.Election {
	start := time.Now()
	if timeout <= 0 {
		timeout = a.cfg.PlaceTimeout
	}
	constraints := make([]string, 0, len(req.Constraints))
	for _, c := range req.Constraints {
		constraints = append(constraints, c.String())
	}
	var e interp.Election
	a.logger.Debug("asking the servers for bids", "kind", req.Kind, "request", req.ID, "timeout", timeout)
	e.Result, e.Err = bidding.Collect(ctx, a.node, bidding.Request{ID: req.ID, Kind: req.Kind, Constraints: constraints,
		Claim: bidding.ClaimOf(req), Attempt: req.Attempt}, timeout)
	if e.Err == nil {
		if ledger != nil {
			a.ledgerMu.Lock()
		}
		e.Decision, e.Err = placement.Elect(req, e.Result.Bids, ledger, a.clock.Now())
		if ledger != nil {
			a.ledgerMu.Unlock()
		}
		if e.Err != nil && len(e.Result.Missing) > 0 {
			e.Err = fmt.Errorf("%w (%s)", e.Err, e.Result.Describe())
		}
	}
	e.Elapsed = time.Since(start)
	a.metrics.placeLatency.Observe(e.Elapsed.Seconds())
	switch {
	case e.Err == nil:
		a.metrics.placements.WithLabelValues("elected").Inc()
	case errors.Is(e.Err, bidding.ErrNoServers):
		a.metrics.placements.WithLabelValues("no_server").Inc()
	case errors.Is(e.Err, placement.ErrNoEligibleServer):
		a.metrics.placements.WithLabelValues("none_eligible").Inc()
	default:
		a.metrics.placements.WithLabelValues("error").Inc()
	}
	return e
}

// placeView renders an election for the RPC.
func placeView(e interp.Election) rpc.PlaceResponse {
	d := e.Decision
	resp := rpc.PlaceResponse{
		RequestID: d.RequestID, Policy: string(d.Policy), Winner: d.Winner, RunnerUp: d.RunnerUp,
		Reason: d.Reason, Missing: e.Result.Missing, DecisionMS: float64(e.Elapsed.Microseconds()) / 1000,
	}
	if e.Err != nil {
		resp.Error = e.Err.Error()
	}
	view := func(b placement.Bid) rpc.BidView {
		return rpc.BidView{Node: b.Node, CPU: b.CPU, Mem: b.Mem, Running: b.Running, Pending: b.Pending,
			Capacity: b.Capacity, Healthy: b.Healthy, OffersKind: b.OffersKind, Refusal: b.Refusal}
	}
	seen := map[string]bool{}
	for i, c := range d.Ranked {
		v := view(c.Bid)
		v.Score, v.Rank, v.Reserved = c.Score, i+1, c.Reserved
		resp.Bids = append(resp.Bids, v)
		seen[c.Bid.Node] = true
	}
	rejected := map[string]string{}
	for _, r := range d.Rejected {
		rejected[r.Node] = r.Reason
	}
	var rest []rpc.BidView
	for _, b := range e.Result.Bids {
		if seen[b.Node] {
			continue
		}
		v := view(b)
		v.Rejected = rejected[b.Node]
		rest = append(rest, v)
		seen[b.Node] = true
	}
	sort.Slice(rest, func(i, j int) bool { return rest[i].Node < rest[j].Node })
	resp.Bids = append(resp.Bids, rest...)
	return resp
}

// handlePlace is the `place` RPC command: a dry-run election.
func (a *Agent) handlePlace(body rpc.Body) (any, error) {
	var req rpc.PlaceRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad place request: %w", err)
	}
	preq, err := interp.ParsePlaceRequest(req.Kind, req.Constraints, req.Policy)
	if err != nil {
		return nil, err
	}
	e := a.elect(body.Context(), preq, req.Timeout, nil) // a client that hangs up ends the wait for bids
	if e.Err != nil && errors.Is(e.Err, bidding.ErrNoServers) {
		return nil, e.Err
	}
	return placeView(e), nil
}

// allow takes a token from limiter for asker.
func (a *Agent) allow(limiter *state.RateLimiter, asker string) bool {
	a.limitMu.Lock()
	defer a.limitMu.Unlock()
	return limiter.Allow(asker, a.clock.Now())
}
