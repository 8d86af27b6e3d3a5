package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/placement"
	"github.com/meshagent/agent/state"
)

// BuiltinKind is the interpreter kind every server offers: a tiny echo
// server inside the binary, so the product works with nothing installed.
const BuiltinKind = "demo"

// offersKind reports whether this server can start kind.
func (a *Agent) offersKind(kind string) bool {
	_, ok := a.kinds[kind]
	return ok
}

// bid is this server's answer to a place query.
func (a *Agent) bid(asker string, req bidding.Request) placement.Bid {
	load, healthy := a.currentLoad()
	b := placement.Bid{
		Node:       a.cfg.NodeName,
		CPU:        load.CPU,
		Mem:        load.Mem,
		Running:    a.runningInterpreters(),
		Pending:    a.startingInterpreters(),
		Capacity:   a.cfg.Capacity,
		Healthy:    healthy,
		OffersKind: a.offersKind(req.Kind),
		Kinds:      kindNames(a.kinds),
		Tags:       a.node.Tags(),
	}
	select {
	case <-a.shutdownCh:
		b.Refusal = "shutting down"
	default:
	}
	if b.Refusal == "" && !a.allow(a.placeLimit, asker) {
		b.Refusal = fmt.Sprintf("rate limited: %s sent more than %g place queries a second (--place-rate-limit)", asker, a.cfg.PlaceRate)
	}
	if b.Refusal == "" && b.Capacity > 0 && b.Running+b.Pending >= b.Capacity {
		b.Refusal = fmt.Sprintf("at capacity: %d of %d interpreters", b.Running+b.Pending, b.Capacity)
	}
	if b.Refusal != "" {
		a.metrics.bidsRefused.inc(refusalReason(b.Refusal))
	}
	return b
}

// newRequestID returns a random id for one placement request.
func newRequestID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on Linux; a clock-based id is still unique enough here.
		return fmt.Sprintf("t%x", time.Now().UnixNano())
	}
	return hex.EncodeToString(b[:])
}

// parsePlaceRequest checks a place request from a client, naming any bad
// value and the fix.
func parsePlaceRequest(kind string, constraints []string, policy string) (placement.Request, error) {
	req := placement.Request{ID: newRequestID(), Kind: kind}
	if strings.TrimSpace(kind) == "" {
		return req, errors.New("no interpreter kind: give --kind, e.g. --kind demo")
	}
	for _, c := range constraints {
		pc, err := placement.ParseConstraint(c)
		if err != nil {
			return req, err
		}
		req.Constraints = append(req.Constraints, pc)
	}
	if policy != "" {
		p, err := placement.ParsePolicy(policy)
		if err != nil {
			return req, err
		}
		req.Policy = p
	}
	return req, nil
}

// election is one run of the place query and the decision.
type election struct {
	result   bidding.Result
	decision placement.Decision
	err      error
	elapsed  time.Duration
}

// elect asks the servers for bids and elects one. The ledger may be nil (a
// dry run reserves nothing).
func (a *Agent) elect(ctx context.Context, req placement.Request, timeout time.Duration, ledger *placement.Ledger) election {
	start := time.Now()
	if timeout <= 0 {
		timeout = a.cfg.PlaceTimeout
	}
	constraints := make([]string, 0, len(req.Constraints))
	for _, c := range req.Constraints {
		constraints = append(constraints, c.String())
	}
	var e election
	e.result, e.err = bidding.Collect(ctx, a.node, bidding.Request{ID: req.ID, Kind: req.Kind, Constraints: constraints}, timeout)
	if e.err == nil {
		if ledger != nil {
			a.ledgerMu.Lock()
		}
		e.decision, e.err = placement.Elect(req, e.result.Bids, ledger, a.clock.Now())
		if ledger != nil {
			a.ledgerMu.Unlock()
		}
		if e.err != nil && len(e.result.Missing) > 0 {
			e.err = fmt.Errorf("%w (%s)", e.err, e.result.Describe())
		}
	}
	e.elapsed = time.Since(start)
	a.metrics.placeLatency.observe(e.elapsed)
	switch {
	case e.err == nil:
		a.metrics.placements.inc("elected")
	case errors.Is(e.err, bidding.ErrNoServers):
		a.metrics.placements.inc("no_server")
	case errors.Is(e.err, placement.ErrNoEligibleServer):
		a.metrics.placements.inc("none_eligible")
	default:
		a.metrics.placements.inc("error")
	}
	return e
}

// placeView renders an election for the RPC.
func placeView(e election) rpc.PlaceResponse {
	d := e.decision
	resp := rpc.PlaceResponse{
		RequestID: d.RequestID, Policy: string(d.Policy), Winner: d.Winner, RunnerUp: d.RunnerUp,
		Reason: d.Reason, Missing: e.result.Missing, DecisionMS: float64(e.elapsed.Microseconds()) / 1000,
	}
	if e.err != nil {
		resp.Error = e.err.Error()
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
	for _, b := range e.result.Bids {
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
	preq, err := parsePlaceRequest(req.Kind, req.Constraints, req.Policy)
	if err != nil {
		return nil, err
	}
	e := a.elect(context.Background(), preq, req.Timeout, nil)
	if e.err != nil && errors.Is(e.err, bidding.ErrNoServers) {
		return nil, e.err
	}
	return placeView(e), nil
}

// allow takes a token from limiter for asker.
func (a *Agent) allow(limiter *state.RateLimiter, asker string) bool {
	a.limitMu.Lock()
	defer a.limitMu.Unlock()
	return limiter.Allow(asker, a.clock.Now())
}
