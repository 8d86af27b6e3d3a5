package interp

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
)

// This file is the asker's side, on any agent: spawn an interpreter
// anywhere, stop one wherever it runs, list them.

const (
	// orderTimeout bounds the asker's wait for one server's answer.
	orderTimeout = 15 * time.Second
	// maxAttempts is how many servers one spawn tries, best bid first.
	maxAttempts = 3
)

// RequestIDFor derives the request id: from the idempotency key when there
// is one, so that the same key always names the same request everywhere.
func RequestIDFor(key string) string {
	if key == "" {
		return NewRequestID()
	}
	sum := sha256.Sum256([]byte("agent-spawn-key\x00" + key))
	return "k" + hex.EncodeToString(sum[:8])
}

// NewRequestID returns a random id for one placement request.
func NewRequestID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on Linux; a clock-based id is still unique enough here.
		return fmt.Sprintf("t%x", time.Now().UnixNano())
	}
	return hex.EncodeToString(b[:])
}

// ParsePlaceRequest checks a place request from a client, naming any bad
// value and the fix.
func ParsePlaceRequest(kind string, constraints []string, policy string) (placement.Request, error) {
	req := placement.Request{ID: NewRequestID(), Kind: kind}
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

// Spawn elects a server and starts an interpreter there. A keyed spawn
// answers with the key's live interpreter when there is one, and is refused
// on a side of a partition that sees no majority of the servers.
func (l *Lifecycle) Spawn(ctx context.Context, req rpc.SpawnRequest) rpc.SpawnResponse {
	start := time.Now()
	rid := RequestIDFor(req.Key)
	resp := rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}
	restart, err := ParseRestart(req.Restart)
	if err != nil {
		return fail(resp, rpc.SpawnBadRequest, err, start)
	}
	if req.Restart == "" {
		restart = "" // the kind's own policy, which only its server knows
	}
	req.Restart = restart
	if req.Key != "" {
		return l.keyedSpawn(ctx, req, start)
	}
	return l.place(ctx, req, rid, 0, l.cfg.Node, "", false, start)
}

func fail(resp rpc.SpawnResponse, code string, err error, start time.Time) rpc.SpawnResponse {
	resp.Code, resp.Error = code, err.Error()
	resp.TotalMS = ms(time.Since(start))
	return resp
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// place elects a server for a request and has it start the interpreter,
// trying the next best bid when one refuses. A server whose bid says it
// already runs or is starting the request is the only one asked: it
// answers with that interpreter. What it reports is true: a failure
// started nothing (a server that did not answer in time is told to stop
// whatever it started for the request), and a success with Wait names an
// interpreter alive at that moment. asker is the agent the client asked,
// the only one a new interpreter's connection is handed to.
//
// With quorum (a keyed spawn, a re-placement: anything one side of a
// partition must not do while the other may), a new interpreter is
// started only when a strict majority of the servers this agent knows
// answered the election: a view can list the other side alive for seconds
// after a cut, but a server that answered is one this agent reaches, and
// two sides cannot both reach a majority. And it is started only when a
// majority of them granted this agent the request (see claims): else the
// election ends with codeDefer, for another agent elects it at the moment.
func (l *Lifecycle) place(ctx context.Context, req rpc.SpawnRequest, rid string, gen int, asker, replaces string, quorum bool, start time.Time) rpc.SpawnResponse {
	resp := rpc.SpawnResponse{Kind: req.Kind, RequestID: rid, Generation: gen}
	preq, err := ParsePlaceRequest(req.Kind, req.Constraints, req.Policy)
	if err != nil {
		return fail(resp, rpc.SpawnBadRequest, err, start)
	}
	preq.ID = rid
	// One placement of a request at a time on this agent: servers know a
	// claim by the agent that makes it, so two placements of this agent's
	// own were both granted, as one asker's (chaos seed 1808: the keyed
	// spawn it coordinated and its re-placement of the same request as
	// owner both placed generation 5). The second elects once the first
	// is done, and finds its interpreter.
	unlock, err := l.placing.lock(ctx, rid)
	if err != nil {
		if quorum {
			resp.Code, resp.Error = codeDefer, "another placement of the request on "+l.cfg.Node+" went on too long"
			return resp
		}
		return fail(resp, rpc.SpawnTimeout, err, start)
	}
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	// Every placement claims the request, though only one with quorum
	// needs a majority's grants: while an unkeyed spawn tries server after
	// server, the owner must not re-place the copy of a server that timed
	// out at the generation the spawn's next attempt takes (chaos seed
	// 139, the-answer-stands); its claim makes the owner defer.
	preq.Claim, preq.Gen, preq.Attempt = true, gen, l.nextAttempt()

	e := l.deps.Elect(ctx, preq)
	resp.DecisionMS = ms(e.Elapsed)
	if replaces != "" && slices.ContainsFunc(e.Result.Bids, func(b placement.Bid) bool { return b.Ended == replaces }) {
		// Its server says it ended on purpose: the mesh took it for
		// failed because its leave was lost.
		l.releaseClaim(ctx, preq)
		resp.Code, resp.Error = codeEnded, replaces+" ended on purpose on its server"
		return resp
	}
	holder, held := holderOf(e.Result.Bids)
	if known, ok := knownGen(e.Result.Bids); ok && held && holder.HoldsGen < known {
		// The copy a server holds is older than one a server saw placed:
		// it is stale (it stops itself once it sees the newer one), not
		// the answer.
		l.logger.Info("a server holds a superseded copy; placing anew", "request", rid, "holder", holder.Holds,
			"gen", holder.HoldsGen, "newest_gen", known)
		held = false
	}
	if above, ok := aboveGen(e.Result.Bids); ok && !held {
		gen = max(gen, NextGen(above)) // a server saw a placement (or a claim) this agent never did
		resp.Generation = gen
	}
	if quorum {
		v := l.tally(e.Result.Bids)
		if l.logger.Enabled(ctx, slog.LevelDebug) {
			var known []string
			for _, b := range e.Result.Bids {
				known = append(known, fmt.Sprintf("%s:known=%t/%d,holds=%s/%d,claimed=%t/%d,grant=%v", b.Node, b.Known, b.KnownGen,
					b.Holds, b.HoldsGen, b.Claimed, b.ClaimGen, b.Grant))
			}
			l.logger.Debug("election", "request", rid, "gen", gen, "asker", asker, "answered", v.answered, "of", v.total,
				"grants", v.grants, "bids", known)
		}
		if !v.majority() {
			l.releaseClaim(ctx, preq)
			return fail(resp, rpc.SpawnMinority, fmt.Errorf("%s heard from %d of the %d servers %s knows during the election "+
				"(%v): starting an interpreter for this request here could start a second one on the other side of a "+
				"partition, so it is refused; retry when the mesh heals, or ask an agent that reaches most servers",
				l.cfg.Node, len(v.answered), v.total, v.by, v.answered), start)
		}
		if !held && !v.granted() {
			// Only the asker a majority of the servers granted the request
			// to may place it anew: another elects it at this moment (its
			// view names another coordinator, or it is the owner
			// re-placing it). The other waits for it, and then answers
			// with its interpreter.
			resp.Code, resp.Error = codeDefer, v.deferral()
			l.releaseClaim(ctx, preq)
			return resp
		}
	}
	if e.Err != nil && !held {
		code := rpc.SpawnRefused
		switch {
		case errors.Is(e.Err, bidding.ErrNoServers), errors.Is(e.Err, placement.ErrNoEligibleServer) && !unknownKind(e):
			code = rpc.SpawnNoServer
		case unknownKind(e):
			code = rpc.SpawnUnknownKind
			e.Err = fmt.Errorf("no server offers kind %q; kinds offered: %s", req.Kind, strings.Join(offeredKinds(e), ", "))
		}
		return fail(resp, code, e.Err, start)
	}
	if !held && gen != preq.Gen {
		// The bids raised the generation above the one the election
		// claimed: a rival told of the claim would place the raised one
		// too.
		claimed, why, ok := l.reclaim(ctx, preq, gen, quorum)
		if !ok {
			l.releaseClaim(ctx, preq)
			resp.Code, resp.Error = codeDefer, why
			return resp
		}
		gen = claimed
		resp.Generation = gen
	}

	order, _ := msgpack.Marshal(spawnOrder{RequestID: rid, Kind: req.Kind, Args: req.Args, Asker: asker, Restart: req.Restart, Gen: gen, Replaces: replaces,
		Lease: req.OwnerLease, ID: NewRequestID()})
	timeouts := 0
	launched := false        // the last attempt's server launched a supervisor that it then stopped
	var timedOut []sentOrder // the servers that did not answer, and the generation each was sent
	ranked := e.Decision.Ranked
	if held {
		ranked = []placement.Candidate{{Bid: holder}}
	}
	for i, cand := range ranked {
		if i == maxAttempts {
			break
		}
		if timeouts > 0 || launched {
			// A server that did not answer may have started it all the
			// same (it is told to stop it, but may not hear), and one
			// that launched a supervisor and stopped it (it missed its
			// start deadline) may have shown it alive a moment: the next
			// attempt outranks whatever that one started. Before, the
			// next attempt took the same generation after such an
			// answer; the stopped copy's name sorted first, the answered
			// one yielded to it as a duplicate, and then nothing ran
			// (chaos seed 4136, nothing-lost).
			launched = false
			claimed, why, ok := l.reclaim(ctx, preq, gen+1, quorum)
			if !ok {
				l.releaseClaim(ctx, preq)
				l.takeBack(rid, timedOut)
				resp.Code, resp.Error = codeDefer, why
				return resp
			}
			gen = claimed
			resp.Generation = gen
			order, _ = msgpack.Marshal(spawnOrder{RequestID: rid, Kind: req.Kind, Args: req.Args, Asker: asker, Restart: req.Restart, Gen: gen, Replaces: replaces,
				Lease: req.OwnerLease, ID: NewRequestID()})
		}
		l.deps.Reserve(rid, cand.Bid)
		var ans spawnAnswer // one per server: an answer never carries over to the next
		raw, err := l.askOne(ctx, cand.Bid.Node, querySpawn, order, l.orderWait)
		if errors.Is(err, errOrderTooLarge) {
			l.deps.Release(rid)
			return fail(resp, rpc.SpawnBadRequest, fmt.Errorf("%w: pass fewer or shorter arguments", err), start)
		}
		if err == nil {
			err = msgpack.Unmarshal(raw, &ans)
			if err == nil && ans.Died != "" {
				l.deps.Release(rid)
				resp.Node, resp.Name = cand.Bid.Node, ans.Name
				return fail(resp, rpc.SpawnDied, fmt.Errorf("%s started %s, but %s", cand.Bid.Node, ans.Name, ans.Died), start)
			}
			if err == nil && ans.Conflict != "" {
				l.deps.Release(rid)
				resp.Node, resp.Name, resp.Existing = cand.Bid.Node, ans.Name, true
				err := errors.New(ans.Conflict)
				if req.Key != "" {
					err = fmt.Errorf("--key %q: %s", req.Key, ans.Conflict)
				}
				return fail(resp, rpc.SpawnConflict, err, start)
			}
			if err == nil && ans.Refusal != "" {
				err = errors.New(ans.Refusal)
				launched = ans.Launched
			}
			if newest, ok := knownGen(e.Result.Bids); err == nil && ok && ans.Existing && ans.Gen < newest {
				// The server answered the new order with the copy it
				// holds, which a newer generation superseded (the
				// election saw it stale and placed anew, but the ranking
				// put its server first): it stops once its host sees the
				// newer one, so it is no answer. Before, the client was
				// told of it, and nothing ran after it stopped (chaos
				// seed 1609, nothing-lost).
				err = fmt.Errorf("it holds %s at generation %d, superseded by generation %d", ans.Name, ans.Gen, newest)
			}
		} else {
			timeouts++
			timedOut = append(timedOut, sentOrder{cand.Bid.Node, gen})
		}
		if err == nil {
			resp.Node = cand.Bid.Node
			resp.Name, resp.PID, resp.Endpoint, resp.Existing = ans.Name, ans.PID, ans.Endpoint, ans.Existing
			if ans.Existing {
				resp.Generation = ans.Gen
			}
			resp.Connection = ans.Conn.connection()
			break
		}
		l.deps.Release(rid)
		resp.Attempts = append(resp.Attempts, cand.Bid.Node+": "+err.Error())
		l.logger.Warn("server did not start the interpreter; trying the next best", "server", cand.Bid.Node, "err", err)
	}
	if resp.Node == "" {
		// A failure must have started nothing: the servers that did not
		// answer are told to stop whatever they started, and unless each
		// says it did, nobody can tell.
		code := rpc.SpawnRefused
		if unsure := l.takeBackNow(ctx, rid, timedOut); len(unsure) > 0 {
			code = rpc.SpawnTimeout
			resp.Attempts = append(resp.Attempts, fmt.Sprintf("%s: may have started it (no answer to the take-back either); "+
				"`agent interpreters` shows it if so", strings.Join(unsure, ", ")))
		}
		return fail(resp, code, fmt.Errorf("no server started the interpreter: %s", strings.Join(resp.Attempts, "; ")), start)
	}
	// The servers that did not answer may have started it after all: only
	// the one that answered may keep it.
	l.takeBack(rid, timedOut)
	unlock() // the placement is done; waiting for its interpreter holds up no other
	unlock = nil
	if req.Wait {
		return l.waitAnswer(ctx, resp, req.Timeout, start)
	}
	resp.TotalMS = ms(time.Since(start))
	return resp
}

// waitAnswer waits until the interpreter a spawn answered with is alive in
// this agent's view, and says so, or why not.
func (l *Lifecycle) waitAnswer(ctx context.Context, resp rpc.SpawnResponse, limit time.Duration, start time.Time) rpc.SpawnResponse {
	if err := l.waitStarted(ctx, resp.Name, resp.Node, limit); err != nil {
		code := rpc.SpawnTimeout
		var died *diedError
		if errors.As(err, &died) {
			code = rpc.SpawnDied
		}
		return fail(resp, code, fmt.Errorf("%s started on %s, but %w", resp.Name, resp.Node, err), start)
	}
	resp.TotalMS = ms(time.Since(start))
	return resp
}

// codeDefer is place's answer when another asker's election for the same
// request goes first: the caller elects again shortly.
const codeDefer = "defer"

// codeEnded is place's answer to a re-placement whose interpreter's
// server says it ended on purpose: there is nothing to re-place.
const codeEnded = "ended"

// holderOf is the bid of a server that says it already runs or is
// starting the request, the newest generation first.
func holderOf(bids []placement.Bid) (placement.Bid, bool) {
	var best placement.Bid
	found := false
	for _, b := range bids {
		if b.Holds != "" && (!found || b.HoldsGen > best.HoldsGen || b.HoldsGen == best.HoldsGen && b.Holds < best.Holds) {
			best, found = b, true
		}
	}
	return best, found
}

// knownGen is the highest generation of the request any bid says its
// server has seen.
func knownGen(bids []placement.Bid) (int, bool) {
	best, found := 0, false
	for _, b := range bids {
		if b.Known && (!found || b.KnownGen > best) {
			best, found = b.KnownGen, true
		}
	}
	return best, found
}

// nextAttempt names a new claim: increasing across the agent's restarts
// (its clock's nanoseconds, or one above the last).
func (l *Lifecycle) nextAttempt() uint64 {
	for {
		last := l.attempt.Load()
		next := max(last+1, uint64(l.clock.Now().UnixNano()))
		if l.attempt.CompareAndSwap(last, next) {
			return next
		}
	}
}

// reclaim claims gen before a placement sends an order for it, when the
// election claimed another: the bids raised the generation, or a server
// did not answer and the next attempt goes one up. The election's claim
// named the generation it knew then and lasts claimKeep, while the
// attempts can take maxAttempts orders' timeouts: without it, a rival
// (the owner re-placing the copy the silent server may have started, or
// another coordinator) told of the old claim, or taking the request once
// it expired, placed the same generation as this attempt. With quorum,
// the placement goes on only while a majority still answers and grants
// this agent the request; else it defers, and why says to whom.
//
// A rival may have claimed (or placed) the generation meanwhile: granted
// the request while this agent's claim looked gone to the servers (a
// flapping partition), it placed generation 1 as this placement's next
// attempt did (chaos seed 63977, the-answer-stands). So when the bids say
// a server saw a generation at or above gen, the claim goes above it, at
// most reclaimTries times; reclaim returns the generation claimed.
func (l *Lifecycle) reclaim(ctx context.Context, preq placement.Request, gen int, quorum bool) (claimed int, why string, ok bool) {
	for try := 1; ; try++ {
		preq.Claim, preq.Gen = true, gen
		e := l.deps.Elect(ctx, preq)
		if quorum {
			v := l.tally(e.Result.Bids)
			switch {
			case !v.majority():
				return gen, fmt.Sprintf("%d of the %d servers answered the claim of generation %d", len(v.answered), v.total, gen), false
			case !v.granted():
				return gen, v.deferral(), false
			}
		}
		above, raised := aboveGen(e.Result.Bids)
		if !raised || above < gen {
			return gen, "", true
		}
		if try == reclaimTries {
			return gen, fmt.Sprintf("generation %d of the request was claimed or placed by another agent %d times in a row", above, try), false
		}
		gen = NextGen(above)
	}
}

// reclaimTries bounds how often reclaim goes above a rival's generation
// before it gives the request up to that rival.
const reclaimTries = 3

// releaseClaim withdraws this agent's claim of req at the servers: it will
// not place the request now, and a rival that asks next may gather the
// grants. Without it, two askers whose claims split the servers evenly
// (each reached half of them first) kept each other out for as long as
// both went on asking (chaos seed 31: an owner's re-placement and the
// host's restart, every 2 s for a minute, nothing-lost).
func (l *Lifecycle) releaseClaim(ctx context.Context, req placement.Request) {
	req.Claim, req.Release = false, true
	l.deps.Elect(ctx, req)
}

// retryJitter is d with a random spread of half of it either way: two
// askers that deferred to each other at the same moment do not ask again
// at the same moment.
func retryJitter(d time.Duration) time.Duration {
	return d/2 + mrand.N(d)
}

// votes is what an election's bids say of the asker's claim: which
// servers answered, of how many (the most any bidder knows, or this
// agent's own count, and who knows that many), how many granted the claim,
// and the asker that the others hold the request for.
type votes struct {
	answered []string
	total    int
	by       string
	grants   int
	holder   string
}

// tally counts bids against the servers this agent knows, or the most any
// bidder knows: a restart or a lost disk leaves a view that never heard of
// the servers already failed.
func (l *Lifecycle) tally(bids []placement.Bid) votes {
	known := ServerQuorum(l.deps.Node.Members())
	v := votes{total: l.memory.serversKnown(known), by: l.cfg.Node}
	for _, b := range bids {
		if !slices.Contains(v.answered, b.Node) {
			v.answered = append(v.answered, b.Node)
		}
		if b.Servers > v.total {
			v.total, v.by = b.Servers, b.Node // a bidder knows servers this view forgot
		}
		if b.Grant != placement.Denied {
			v.grants++
		} else if v.holder == "" || b.Claimer < v.holder {
			v.holder = b.Claimer
		}
	}
	slices.Sort(v.answered)
	return v
}

// majority: a strict majority of the servers answered (two sides of a
// partition cannot both have one).
func (v votes) majority() bool { return 2*len(v.answered) > v.total }

// granted: a strict majority of the servers granted the claim (two askers
// cannot both have one: majorities share a server, and a server grants
// one asker at a time).
func (v votes) granted() bool { return 2*v.grants > v.total }

func (v votes) deferral() string {
	return fmt.Sprintf("%d of %d servers hold this request for %s", len(v.answered)-v.grants, v.total, v.holder)
}

// aboveGen is the generation a new placement must exceed: the highest any
// bid says its server saw placed, or saw another asker claim (that asker
// may place it yet, should its claim outlast this one's grant).
func aboveGen(bids []placement.Bid) (int, bool) {
	best, found := knownGen(bids)
	for _, b := range bids {
		if b.Claimed && (!found || b.ClaimGen > best) {
			best, found = b.ClaimGen, true
		}
	}
	return best, found
}

// sentOrder is a spawn order sent to one server: the generation it carried.
type sentOrder struct {
	server string
	gen    int
}

// takeBackOrder is the stop order that takes back what o started for rid.
func takeBackOrder(rid string, o sentOrder) []byte {
	order, _ := msgpack.Marshal(stopOrder{RequestID: rid, Gen: o.gen, TakeBack: true})
	return order
}

// takeBack tells servers that timed out to stop whatever their orders
// started for rid. Best effort, in the background: the duplicate rule
// covers the rest.
func (l *Lifecycle) takeBack(rid string, sent []sentOrder) {
	for _, o := range sent {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			ctx, cancel := l.untilDone(orderTimeout)
			defer cancel()
			if _, err := l.askOne(ctx, o.server, queryStop, takeBackOrder(rid, o), orderTimeout); err != nil {
				l.logger.Warn("could not take back a spawn from a server that did not answer", "server", o.server, "request", rid, "err", err)
			}
		}()
	}
}

// takeBackNow tells the servers that timed out to stop whatever their
// orders started for rid, and waits for them: it returns those that did
// not answer, which may run it.
func (l *Lifecycle) takeBackNow(ctx context.Context, rid string, sent []sentOrder) (unsure []string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, o := range sent {
		wg.Go(func() {
			if _, err := l.askOne(ctx, o.server, queryStop, takeBackOrder(rid, o), takeBackTimeout); err != nil {
				l.logger.Warn("could not take back a spawn from a server that did not answer", "server", o.server, "request", rid, "err", err)
				mu.Lock()
				unsure = append(unsure, o.server)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(unsure)
	return unsure
}

// takeBackTimeout bounds the wait for a take-back's answer.
const takeBackTimeout = 5 * time.Second

// untilDone is a context for the lifecycle's own work: it ends after
// timeout, or when the agent shuts down.
func (l *Lifecycle) untilDone(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	go func() {
		select {
		case <-l.deps.Done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// waitStarted waits until the interpreter is alive in this agent's view.
// If it leaves or fails first, or never shows up, its server is asked how
// it ended, and a death is reported with its status and first output.
func (l *Lifecycle) waitStarted(ctx context.Context, name, host string, limit time.Duration) error {
	if limit <= 0 {
		limit = rpc.DefaultSpawnWait
	}
	stopSync := l.syncWhileMissing(name, host)
	defer stopSync()
	ended := func(s gossip.Status) bool { return s == gossip.StatusLeft || s == gossip.StatusFailed }
	status, err := l.waitMember(ctx, name, limit, func(s gossip.Status) bool { return s == gossip.StatusAlive || ended(s) },
		"it is not alive in "+l.cfg.Node+"'s member list")
	if err == nil && status == gossip.StatusAlive {
		return nil
	}
	ans, qerr := l.askExit(ctx, host, name)
	switch {
	case qerr == nil && ans.Found:
		d := &diedError{status: ans.Status, output: ans.Output}
		if ans.How != HowExited {
			d.status = ans.How + " (" + ans.Status + ")"
		}
		return fmt.Errorf("it ended during the wait: %w", d)
	case err != nil:
		return err
	default:
		return fmt.Errorf("it was %s before it was seen alive", status)
	}
}

// syncAfter are the moments of a spawn's wait at which the asker, still
// not listing the new interpreter, exchanges state with the server that
// started it (gossip.Node.Sync). In a small mesh the news of a join can
// miss one member altogether, and its next push/pull may be 30 s away: a
// spawn then failed although its interpreter ran.
var syncAfter = []time.Duration{2 * time.Second, 10 * time.Second}

// syncWhileMissing syncs with host at each of syncAfter while this agent
// does not list name; the returned stop ends it and waits for it.
func (l *Lifecycle) syncWhileMissing(name, host string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var waited time.Duration
		for _, at := range syncAfter {
			select {
			case <-done:
				return
			case <-l.deps.Done:
				return
			case <-l.clock.After(at - waited):
			}
			waited = at
			if l.memberStatus(name) != gossip.StatusNone {
				return
			}
			if err := l.deps.Node.Sync(host); err != nil {
				l.logger.Debug("could not sync with the server of a new interpreter", "interpreter", name, "server", host, "err", err)
				continue
			}
			l.logger.Info("the news of a new interpreter missed this agent; exchanged state with its server",
				"interpreter", name, "server", host, "after", at, "status_now", l.memberStatus(name))
		}
	}()
	return func() { close(done); wg.Wait() }
}

// memberStatus is name's status in this agent's member list, StatusNone
// when it is not listed.
func (l *Lifecycle) memberStatus(name string) gossip.Status {
	for _, m := range l.deps.Node.Members() {
		if m.Name == name {
			return m.Status
		}
	}
	return gossip.StatusNone
}

func (l *Lifecycle) askExit(ctx context.Context, host, name string) (exitAnswer, error) {
	var ans exitAnswer
	order, _ := msgpack.Marshal(exitOrder{Name: name})
	raw, err := l.askOne(ctx, host, queryExit, order, 5*time.Second)
	if err != nil {
		return ans, err
	}
	return ans, msgpack.Unmarshal(raw, &ans)
}

// unknownKind reports whether every server rejected the request for the kind.
func unknownKind(e Election) bool {
	if len(e.Decision.Rejected) == 0 {
		return false
	}
	for _, r := range e.Decision.Rejected {
		if r.Rule != placement.RuleKind {
			return false
		}
	}
	return true
}

func offeredKinds(e Election) []string {
	set := map[string]bool{}
	for _, b := range e.Result.Bids {
		for _, k := range b.Kinds {
			set[k] = true
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// errOrderTooLarge is askOne's refusal of an order serf would refuse.
var errOrderTooLarge = fmt.Errorf("over serf's %d-byte query limit", gossip.QuerySizeLimit)

// orderParams addresses an order to one node, which acknowledges it.
func orderParams(node string, timeout time.Duration) gossip.QueryParams {
	return gossip.QueryParams{FilterNodes: []string{node}, RequestAck: true, Timeout: timeout}
}

// askOne sends a query to one node and returns its answer. A gossiped query
// can miss its one target, so when the target has not acknowledged it
// within a second the query is sent again; the orders are idempotent.
func (l *Lifecycle) askOne(ctx context.Context, node, name string, payload []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if size := l.deps.Node.QuerySize(name, payload, orderParams(node, timeout)); size > gossip.QuerySizeLimit {
		return nil, fmt.Errorf("the %s order would be %d bytes, %w", name, size, errOrderTooLarge)
	}
	answers := make(chan []byte, 2)
	acked := make(chan struct{})
	var ackOnce sync.Once
	send := func() {
		l.deps.Node.Query(ctx, name, payload, orderParams(node, timeout),
			func(string) { ackOnce.Do(func() { close(acked) }) },
			func(_ string, p []byte) {
				select {
				case answers <- p:
				default:
				}
				cancel()
			})
	}
	go send()
	select {
	case p := <-answers:
		return p, nil
	case <-acked:
	case <-l.clock.After(time.Second):
		go send()
	case <-ctx.Done():
	}
	select {
	case p := <-answers:
		return p, nil
	case <-ctx.Done():
		select {
		case p := <-answers:
			return p, nil
		default:
		}
		return nil, fmt.Errorf("%s did not answer within %s", node, timeout)
	}
}

// List is the interpreters in this agent's view, sorted by name: the live
// ones (alive or leaving), and with all those gone too, until the mesh
// reaps them, with how they ended.
func (l *Lifecycle) List(all bool) []rpc.InterpreterView {
	var out []rpc.InterpreterView
	_, view := l.meshView()
	for _, in := range view {
		live := in.Status == gossip.StatusAlive || in.Status == gossip.StatusLeaving
		if !live && !all {
			continue
		}
		host := string(in.HostStatus)
		if host == "" {
			host = "unknown"
		}
		t := in.Tags
		restart := t.Restart
		if restart == "" {
			restart = RestartNo
		}
		out = append(out, rpc.InterpreterView{Name: in.Name, Kind: t.Kind, Host: t.Host, HostStatus: host,
			Status: string(in.Status), Endpoint: t.Endpoint, PID: t.PID, RequestID: t.RequestID,
			Restart: restart, Restarts: t.Restarts, Generation: t.Gen, Ended: ended(in)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ended says how a gone interpreter ended, as far as the view tells.
func ended(in Instance) string {
	switch {
	case in.Status == gossip.StatusLeft && in.Tags.End != "":
		return in.Tags.End
	case in.Status == gossip.StatusLeft:
		return "left"
	case in.Status != gossip.StatusFailed:
		return ""
	case in.HostStatus == gossip.StatusFailed || in.HostStatus == gossip.StatusLeft || in.HostStatus == gossip.StatusNone:
		return "host failed"
	}
	return "supervisor failed"
}

// findInstance is the interpreter called name in this agent's view.
func (l *Lifecycle) findInstance(name string) (Instance, error) {
	_, view := l.meshView()
	for _, x := range view {
		if x.Name == name {
			return x, nil
		}
	}
	return Instance{}, fmt.Errorf("no interpreter named %q in this agent's view: `agent interpreters` lists them", name)
}

// Stop stops an interpreter wherever it runs: the order goes to its host
// server, and the call returns once this agent sees the interpreter leave.
func (l *Lifecycle) Stop(ctx context.Context, req rpc.StopRequest) (rpc.StopResponse, error) {
	in, err := l.findInstance(req.Name)
	if err != nil {
		return rpc.StopResponse{}, err
	}
	if in.Status != gossip.StatusAlive {
		return rpc.StopResponse{Name: in.Name, Host: in.Host, Status: string(in.Status)}, nil
	}
	if err := hostUnreachable(in, "stop"); err != nil {
		return rpc.StopResponse{}, err
	}
	order, _ := msgpack.Marshal(stopOrder{Name: req.Name})
	raw, err := l.askOne(ctx, in.Host, queryStop, order, orderTimeout)
	if err != nil {
		return rpc.StopResponse{}, fmt.Errorf("stop %s: its server %w", req.Name, err)
	}
	var ans stopAnswer
	if err := msgpack.Unmarshal(raw, &ans); err != nil {
		return rpc.StopResponse{}, fmt.Errorf("stop %s: %s answered garbage: %w", req.Name, in.Host, err)
	}
	if ans.Error != "" {
		return rpc.StopResponse{}, fmt.Errorf("stop %s: %s", req.Name, ans.Error)
	}
	gone := func(s gossip.Status) bool { return s != gossip.StatusAlive && s != gossip.StatusLeaving }
	final, err := l.waitMember(ctx, req.Name, 20*time.Second, gone, "it was told to stop but is still alive")
	if err != nil {
		return rpc.StopResponse{}, fmt.Errorf("stop %s: %w", req.Name, err)
	}
	return rpc.StopResponse{Name: req.Name, Host: in.Host, Status: string(final)}, nil
}

// hostUnreachable says, for an interpreter alive in the view whose host
// agent is not, why an order through that agent cannot reach it now and
// what to do, instead of waiting out the order's timeout.
func hostUnreachable(in Instance, what string) error {
	var why string
	switch in.HostStatus {
	case gossip.StatusLeft, gossip.StatusLeaving:
		why = "has left the mesh"
	case gossip.StatusFailed:
		why = "is failed in this agent's view"
	case gossip.StatusNone, "":
		why = "is not in this agent's member list"
	default:
		return nil
	}
	return fmt.Errorf("cannot %s %s: its host's agent %s %s, and orders reach an interpreter only through it "+
		"(the interpreter itself still runs, pid %d); start the agent on %s again (with the same --data-dir it "+
		"re-adopts the interpreter), or end the process there", what, in.Name, in.Host, why, in.Tags.PID, in.Host)
}

// waitMember returns name's status in this agent's member list (StatusNone
// when it is not listed) once done holds for it, looking again at every
// member event. After limit it fails with what it was waiting for.
func (l *Lifecycle) waitMember(ctx context.Context, name string, limit time.Duration, done func(gossip.Status) bool, waitingFor string) (gossip.Status, error) {
	changed := make(chan struct{}, 1)
	cancel := l.deps.Node.Subscribe(func(gossip.Event) {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer cancel()
	timeout := l.clock.After(limit)
	for {
		status := l.memberStatus(name)
		if done(status) {
			return status, nil
		}
		select {
		case <-changed:
		case <-timeout:
			return status, fmt.Errorf("%s after %s", waitingFor, limit)
		case <-l.deps.Done:
			return status, errors.New("the agent is shutting down")
		case <-ctx.Done():
			return status, fmt.Errorf("%s: the wait ended (%w)", waitingFor, ctx.Err())
		}
	}
}
