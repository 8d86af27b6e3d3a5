package interp

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

// This file serialises the keyed spawns of one key. Two agents that ask
// for one key a moment apart must get one interpreter and the same
// answer, and neither's member list may have heard of the other's yet. So
// every keyed spawn of a key is decided by the key's coordinator: the
// rendezvous owner of its request id among the alive servers, which every
// agent with the same view names alike (no leader, no store). The
// coordinator decides one spawn of a key at a time, and remembers the
// answer it gave until its view shows that interpreter. Views that differ
// on the alive servers can name two coordinators for a while; the bids
// then still say which server already runs or is starting the request,
// and the generation order settles what is left.

// querySpawnKey asks a key's coordinator for a keyed spawn.
const querySpawnKey = "spawn-key"

// coordinatorTimeout bounds the asker's wait for the coordinator: its
// election, and up to maxAttempts spawn orders.
const coordinatorTimeout = 2*time.Second + maxAttempts*orderTimeout

// keyedOrder is a keyed spawn sent to the coordinator.
type keyedOrder struct {
	Key         string   `msgpack:"key"`
	Kind        string   `msgpack:"k"`
	Args        []string `msgpack:"a,omitempty"`
	Constraints []string `msgpack:"c,omitempty"`
	Policy      string   `msgpack:"p,omitempty"`
	Restart     string   `msgpack:"rp,omitempty"`
	Asker       string   `msgpack:"f"`
	// Lease is the request's OwnerLease, Asker its owner.
	Lease time.Duration `msgpack:"ol,omitempty"`
	// ID names this order: askOne sends an order again when the first
	// send is not acknowledged, and the coordinator must decide it once.
	// Empty from an older agent.
	ID string `msgpack:"i,omitempty"`
}

func (o keyedOrder) request() rpc.SpawnRequest {
	return rpc.SpawnRequest{Key: o.Key, Kind: o.Kind, Args: o.Args, Constraints: o.Constraints, Policy: o.Policy, Restart: o.Restart,
		OwnerLease: o.Lease}
}

// keyedAnswer is the coordinator's answer: a spawn response, short.
type keyedAnswer struct {
	Name       string      `msgpack:"n,omitempty"`
	Node       string      `msgpack:"s,omitempty"`
	Kind       string      `msgpack:"k,omitempty"`
	PID        int         `msgpack:"p,omitempty"`
	Endpoint   string      `msgpack:"e,omitempty"`
	Existing   bool        `msgpack:"x,omitempty"`
	Gen        int         `msgpack:"g,omitempty"`
	Code       string      `msgpack:"c,omitempty"`
	Error      string      `msgpack:"r,omitempty"`
	Attempts   []string    `msgpack:"t,omitempty"`
	DecisionMS float64     `msgpack:"d,omitempty"`
	Conn       *connAnswer `msgpack:"cn,omitempty"`
}

// maxAnswerBytes is serf's default limit on one query response.
const maxAnswerBytes = 1024

// encodeKeyedAnswer encodes an answer within serf's response limit,
// dropping the attempts, then shortening the error, when it would not fit.
func encodeKeyedAnswer(a keyedAnswer) []byte {
	data, _ := msgpack.Marshal(a)
	if len(data) > maxAnswerBytes-64 {
		a.Attempts = nil
		data, _ = msgpack.Marshal(a)
	}
	if over := len(data) - (maxAnswerBytes - 64); over > 0 && len(a.Error) > over+3 {
		a.Error = a.Error[:len(a.Error)-over-3] + "..."
		data, _ = msgpack.Marshal(a)
	}
	return data
}

// keyLocks serialises the coordinator's decisions per request. Safe for
// concurrent use.
type keyLocks struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	// held is the lock itself: a channel, so that a spawn waiting its turn
	// can give up with its context (and waits as a goroutine blocked on a
	// channel, which a synctest bubble can tell from one at work).
	held    chan struct{}
	waiters int // guarded by keyLocks.mu
}

// lock takes rid's lock and returns its release, or fails when ctx ends
// first.
func (k *keyLocks) lock(ctx context.Context, rid string) (func(), error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyLock{}
	}
	kl := k.locks[rid]
	if kl == nil {
		kl = &keyLock{held: make(chan struct{}, 1)}
		k.locks[rid] = kl
	}
	kl.waiters++
	k.mu.Unlock()
	leave := func() {
		k.mu.Lock()
		if kl.waiters--; kl.waiters == 0 {
			delete(k.locks, rid)
		}
		k.mu.Unlock()
	}
	select {
	case kl.held <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, fmt.Errorf("waited for an earlier spawn of the same key: %w", ctx.Err())
	}
	return func() { <-kl.held; leave() }, nil
}

// keyedSpawn is a keyed spawn: decided on the key's coordinator (this
// agent, when its view names it), then, with Wait, waited for here.
func (l *Lifecycle) keyedSpawn(ctx context.Context, req rpc.SpawnRequest, start time.Time) rpc.SpawnResponse {
	for try := 1; ; try++ {
		resp := l.decideKeyed(ctx, req, start)
		if resp.Code != "" || !req.Wait {
			return resp
		}
		resp = l.waitAnswer(ctx, resp, req.Timeout, start)
		if resp.Code != "" || try == staleAnswerTries || !l.supersededAnswer(resp) {
			return resp
		}
		l.logger.Info("the interpreter a keyed spawn waited for was superseded meanwhile; asking again", "request", resp.RequestID,
			"name", resp.Name, "gen", resp.Generation, "newest_gen", l.memory.genOf(resp.RequestID))
	}
}

// staleAnswerTries bounds how often a keyed spawn with --wait asks again
// because the interpreter it waited for was superseded meanwhile.
const staleAnswerTries = 3

// supersededAnswer reports whether this agent's view, read now, shows a
// newer generation of the answer's request than the answer's own: the
// answer was decided before another spawn of the key placed anew (under a
// partition that hid the first from the other side), and is no longer the
// request's interpreter. Before, the client was told of the stale one,
// last, after its wait (chaos seed 30936, the-answer-stands).
func (l *Lifecycle) supersededAnswer(resp rpc.SpawnResponse) bool {
	_, view := l.meshView()
	l.memory.observe(view, l.clock.Now())
	return l.memory.genOf(resp.RequestID) > resp.Generation
}

// decideKeyed has the key's coordinator decide a keyed spawn: this agent,
// when its view names it, else asked.
func (l *Lifecycle) decideKeyed(ctx context.Context, req rpc.SpawnRequest, start time.Time) rpc.SpawnResponse {
	rid := RequestIDFor(req.Key)
	members := l.deps.Node.Members()
	if !l.inMesh(members) {
		return fail(rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}, rpc.SpawnMinority, fmt.Errorf("%s has not joined the "+
			"mesh yet, so it knows no other server: a keyed spawn here could start a second interpreter for --key %q; "+
			"retry once it has joined (`agent members`)", l.cfg.Node, req.Key), start)
	}
	q := ServerQuorum(members)
	coord, ok := Owner(rid, q.Alive)
	if !ok || coord == l.cfg.Node {
		return l.coordinate(ctx, req, l.cfg.Node, start)
	}
	order := keyedOrder{Key: req.Key, Kind: req.Kind, Args: req.Args, Constraints: req.Constraints, Policy: req.Policy,
		Restart: req.Restart, Asker: l.cfg.Node, ID: NewRequestID(), Lease: req.OwnerLease}
	payload, _ := msgpack.Marshal(order)
	raw, err := l.askOne(ctx, coord, querySpawnKey, payload, coordinatorTimeout)
	resp := rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}
	if err != nil {
		code := rpc.SpawnTimeout
		if strings.Contains(err.Error(), errOrderTooLarge.Error()) {
			code = rpc.SpawnBadRequest
			err = fmt.Errorf("%w: pass fewer or shorter arguments", err)
		} else {
			err = fmt.Errorf("key %q's coordinator %s did not answer (%w); it may still start the interpreter: "+
				"`agent interpreters` shows it, and the same spawn again answers with it", req.Key, coord, err)
		}
		return fail(resp, code, err, start)
	}
	var a keyedAnswer
	if err := msgpack.Unmarshal(raw, &a); err != nil {
		return fail(resp, rpc.SpawnTimeout, fmt.Errorf("key %q's coordinator %s answered garbage: %w", req.Key, coord, err), start)
	}
	resp.Name, resp.Node, resp.PID, resp.Endpoint, resp.Existing, resp.Generation = a.Name, a.Node, a.PID, a.Endpoint, a.Existing, a.Gen
	resp.Attempts, resp.DecisionMS, resp.Coordinator = a.Attempts, a.DecisionMS, coord
	if a.Kind != "" {
		resp.Kind = a.Kind
	}
	resp.Connection = a.Conn.connection()
	if a.Code != "" {
		return fail(resp, a.Code, fmt.Errorf("%s", a.Error), start)
	}
	l.memory.placed(rid, a.Gen, l.clock.Now())
	resp.TotalMS = ms(time.Since(start))
	return resp
}

// handleKeyedOrder answers a keyed spawn as the key's coordinator.
func (l *Lifecycle) handleKeyedOrder(q *gossip.Query) {
	var o keyedOrder
	start := time.Now()
	var a keyedAnswer
	if err := msgpack.Unmarshal(q.Payload, &o); err != nil || o.Key == "" {
		a.Code, a.Error = rpc.SpawnBadRequest, fmt.Sprintf("cannot decode the keyed spawn order: %v", err)
	} else {
		a = l.decideKeyedOrder(o, start)
	}
	if err := q.Respond(encodeKeyedAnswer(a)); err != nil {
		l.logger.Warn("answer not sent", "query", q.Name, "to", q.From, "err", err)
	}
}

// decideKeyedOrder decides a keyed order as its key's coordinator, once
// per order: a re-sent order waits for the first one's answer. Before, a
// coordinator that got an order twice under loss decided it twice; the
// asker took the first answer (a failure, say), and the second run
// started an interpreter no answer named (chaos seed 52,
// the-answer-stands).
func (l *Lifecycle) decideKeyedOrder(o keyedOrder, start time.Time) keyedAnswer {
	return l.keyedOrders.once(o.ID, l.clock.Now(), func() keyedAnswer {
		ctx, cancel := l.untilDone(coordinatorTimeout - time.Second)
		defer cancel()
		r := l.coordinate(ctx, o.request(), o.Asker, start)
		a := keyedAnswer{Name: r.Name, Node: r.Node, Kind: r.Kind, PID: r.PID, Endpoint: r.Endpoint, Existing: r.Existing,
			Gen: r.Generation, Code: r.Code, Error: r.Error, Attempts: r.Attempts, DecisionMS: r.DecisionMS}
		if r.Connection != nil {
			a.Conn = toConnAnswer(r.Connection)
		}
		return a
	})
}

// coordinate decides one keyed spawn, one at a time per key: the key's
// live interpreter, or the one this coordinator named lately and its view
// does not show yet, or a new placement one generation above every one
// known. asker is the agent the client asked, the only one that may
// receive a new interpreter's connection.
func (l *Lifecycle) coordinate(ctx context.Context, req rpc.SpawnRequest, asker string, start time.Time) rpc.SpawnResponse {
	rid := RequestIDFor(req.Key)
	if !l.inMesh(l.deps.Node.Members()) {
		return fail(rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}, rpc.SpawnMinority,
			fmt.Errorf("%s, the key's coordinator in %s's view, has not joined the mesh yet: retry in a moment", l.cfg.Node, asker), start)
	}
	unlock, err := l.keys.lock(ctx, rid)
	if err != nil {
		return fail(rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}, rpc.SpawnTimeout, err, start)
	}
	defer unlock()
	members, view := l.meshView()
	l.memory.observe(view, l.clock.Now())
	if q := ServerQuorum(members); !q.Majority() {
		resp := rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}
		return fail(resp, rpc.SpawnMinority, fmt.Errorf("%s sees %s: a keyed spawn here could start a second "+
			"interpreter for --key %q on the other side of a partition, so it is refused; retry when the mesh heals, "+
			"ask an agent that sees most servers, or, if the failed servers are gone for good, remove them with "+
			"`agent force-leave NAME`", l.cfg.Node, q, req.Key), start)
	}
	// The election answers both questions: a server whose bid says it runs
	// (or is starting) the key's interpreter is asked for it, else the
	// best server starts one, a generation above every one known. Either
	// way, only with the bids of a majority of the servers: a view can
	// list a stale copy alive, a majority's bids cannot.
	req.Wait = false // the asker waits in its own view
	for try := 1; ; try++ {
		resp := l.place(ctx, req, rid, NextGen(l.memory.genOf(rid)), asker, "", true, start)
		if resp.Code == codeDefer {
			if try == deferTries {
				return fail(rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}, rpc.SpawnTimeout,
					fmt.Errorf("another agent's election of --key %q went on for %s (%s): retry in a moment; "+
						"`agent interpreters` shows its interpreter once it runs", req.Key, time.Duration(deferTries)*deferWait, resp.Error), start)
			}
			select {
			case <-ctx.Done():
				return fail(rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}, rpc.SpawnTimeout,
					fmt.Errorf("waited for another agent's spawn of --key %q (%s): %w", req.Key, resp.Error, ctx.Err()), start)
			case <-l.clock.After(retryJitter(deferWait)):
				continue
			}
		}
		if resp.Code == "" {
			l.memory.placed(rid, resp.Generation, l.clock.Now())
		}
		return resp
	}
}

// How long, and how often, a coordinator waits for another one's
// election of the same key before it goes ahead.
const (
	deferWait  = 500 * time.Millisecond
	deferTries = 6
)

// inMesh reports whether this agent has joined a mesh: it did (or had
// none to join), or another server reached it.
func (l *Lifecycle) inMesh(members []gossip.Member) bool {
	if l.deps.Joined == nil || l.deps.Joined() {
		return true
	}
	for _, m := range members {
		if m.Name != l.cfg.Node && m.Status == gossip.StatusAlive && m.Tags[gossip.TagRole] == string(gossip.RoleServer) {
			return true
		}
	}
	return false
}
