package interp

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
}

func (o keyedOrder) request() rpc.SpawnRequest {
	return rpc.SpawnRequest{Key: o.Key, Kind: o.Kind, Args: o.Args, Constraints: o.Constraints, Policy: o.Policy, Restart: o.Restart}
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
	By         string      `msgpack:"b,omitempty"` // the coordinator
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

// keyLocks serialises the coordinator's decisions per request, and holds
// the answers it gave that its view does not show yet. Safe for
// concurrent use.
type keyLocks struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	// held is the lock itself: a channel, so that a spawn waiting its turn
	// can give up with its context (and waits as a goroutine blocked on a
	// channel, which a synctest bubble can tell from one at work).
	held chan struct{}
	last *placedAnswer // guarded by held
	// Guarded by keyLocks.mu: the spawns holding or waiting for the lock,
	// and until when the lock must be kept for its last answer.
	waiters   int
	keepUntil time.Time
}

// placedAnswer is a new interpreter this coordinator named, until its view
// shows it.
type placedAnswer struct {
	resp rpc.SpawnResponse
	gen  int
	at   time.Time
}

// lock takes rid's lock and returns it with its release, or fails when ctx
// ends first.
func (k *keyLocks) lock(ctx context.Context, rid string) (*keyLock, func(), error) {
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
	leave := func(keepUntil time.Time) {
		k.mu.Lock()
		kl.waiters--
		if keepUntil.After(kl.keepUntil) {
			kl.keepUntil = keepUntil
		}
		if kl.waiters == 0 && time.Now().After(kl.keepUntil) {
			delete(k.locks, rid)
		}
		k.mu.Unlock()
	}
	select {
	case kl.held <- struct{}{}:
	case <-ctx.Done():
		leave(time.Time{})
		return nil, nil, fmt.Errorf("waited for an earlier spawn of the same key: %w", ctx.Err())
	}
	return kl, func() {
		var keepUntil time.Time
		if kl.last != nil {
			keepUntil = kl.last.at.Add(replaceGrace)
		}
		<-kl.held
		leave(keepUntil)
	}, nil
}

// keyedSpawn is a keyed spawn: decided on the key's coordinator (this
// agent, when its view names it), then, with Wait, waited for here.
func (l *Lifecycle) keyedSpawn(ctx context.Context, req rpc.SpawnRequest, start time.Time) rpc.SpawnResponse {
	for attempt := 1; ; attempt++ {
		resp := l.decideKeyed(ctx, req, start)
		if resp.Code != "" || !req.Wait {
			return resp
		}
		if resp.Existing {
			// A view can list an interpreter alive for a few seconds after
			// its host died or it ended: its host says whether it runs.
			ans, err := l.askExit(ctx, resp.Node, resp.Name)
			switch {
			case err != nil:
				return fail(resp, rpc.SpawnTimeout, fmt.Errorf("--key %q names %s on %s, which this agent lists alive, but %s "+
					"does not answer (%w): it may be down; retry, or ask `agent interpreters` in a moment", req.Key, resp.Name,
					resp.Node, resp.Node, err), start)
			case (ans.Found || ans.Lost) && attempt == 1:
				// It ended: once this view shows it gone, the key is free.
				gone := func(s gossip.Status) bool { return s != gossip.StatusAlive && s != gossip.StatusLeaving }
				if _, err := l.waitMember(resp.Name, l.waitLimit(req), gone, "it ended, but is still listed alive"); err != nil {
					return fail(resp, rpc.SpawnTimeout, fmt.Errorf("--key %q names %s on %s: %w", req.Key, resp.Name, resp.Node, err), start)
				}
				continue
			case ans.Found || ans.Lost:
				return fail(resp, rpc.SpawnTimeout, fmt.Errorf("--key %q names %s on %s, which has ended; retry", req.Key,
					resp.Name, resp.Node), start)
			}
		}
		if err := l.waitStarted(ctx, resp.Name, resp.Node, req.Timeout); err != nil {
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
}

func (l *Lifecycle) waitLimit(req rpc.SpawnRequest) time.Duration {
	if req.Timeout > 0 {
		return req.Timeout
	}
	return rpc.DefaultSpawnWait
}

// decideKeyed has the key's coordinator decide a keyed spawn: this agent,
// when its view names it, else asked.
func (l *Lifecycle) decideKeyed(ctx context.Context, req rpc.SpawnRequest, start time.Time) rpc.SpawnResponse {
	rid := RequestIDFor(req.Key)
	members := l.deps.Node.Members()
	view := Instances(members)
	l.memory.observe(view, l.clock.Now())
	// What this agent's own view shows alive answers at once, unless a
	// newer placement of the key is known: then the coordinator decides.
	if in, ok := Live(view, rid); ok && in.Tags.Gen >= l.memory.genOf(rid) {
		return existingAnswer(in, req, start)
	}
	q := ServerQuorum(members)
	coord, ok := Owner(rid, q.Alive)
	if !ok || coord == l.cfg.Node {
		return l.coordinate(ctx, req, l.cfg.Node, start)
	}
	order := keyedOrder{Key: req.Key, Kind: req.Kind, Args: req.Args, Constraints: req.Constraints, Policy: req.Policy,
		Restart: req.Restart, Asker: l.cfg.Node}
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
		ctx, cancel := l.untilDone(coordinatorTimeout - time.Second)
		r := l.coordinate(ctx, o.request(), o.Asker, start)
		cancel()
		a = keyedAnswer{Name: r.Name, Node: r.Node, Kind: r.Kind, PID: r.PID, Endpoint: r.Endpoint, Existing: r.Existing,
			Gen: r.Generation, Code: r.Code, Error: r.Error, Attempts: r.Attempts, DecisionMS: r.DecisionMS, By: l.cfg.Node}
		if r.Connection != nil {
			a.Conn = toConnAnswer(r.Connection)
		}
	}
	if err := q.Respond(encodeKeyedAnswer(a)); err != nil {
		l.logger.Warn("answer not sent", "query", q.Name, "to", q.From, "err", err)
	}
}

// coordinate decides one keyed spawn, one at a time per key: the key's
// live interpreter, or the one this coordinator named lately and its view
// does not show yet, or a new placement one generation above every one
// known. asker is the agent the client asked, the only one that may
// receive a new interpreter's connection.
func (l *Lifecycle) coordinate(ctx context.Context, req rpc.SpawnRequest, asker string, start time.Time) rpc.SpawnResponse {
	rid := RequestIDFor(req.Key)
	kl, unlock, err := l.keys.lock(ctx, rid)
	if err != nil {
		return fail(rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}, rpc.SpawnTimeout, err, start)
	}
	defer unlock()
	now := l.clock.Now()
	members := l.deps.Node.Members()
	view := Instances(members)
	l.memory.observe(view, now)
	known := l.memory.genOf(rid)
	if in, ok := Live(view, rid); ok && in.Tags.Gen >= known {
		kl.last = nil
		return existingAnswer(in, req, start)
	}
	if p := kl.last; p != nil && now.Sub(p.at) < replaceGrace && !listedIn(view, p.resp.Name) && p.gen >= known {
		resp := p.resp
		resp.Existing, resp.Connection = true, nil
		if err := conflict(req, resp.Kind, nil, ""); err != nil {
			return fail(resp, rpc.SpawnConflict, err, start)
		}
		resp.TotalMS = ms(time.Since(start))
		return resp
	}
	if q := ServerQuorum(members); !q.Majority() {
		resp := rpc.SpawnResponse{Kind: req.Kind, RequestID: rid}
		return fail(resp, rpc.SpawnMinority, fmt.Errorf("%s sees %s: a keyed spawn here could start a second "+
			"interpreter for --key %q on the other side of a partition, so it is refused; retry when the mesh heals, "+
			"ask an agent that sees most servers, or, if the failed servers are gone for good, remove them with "+
			"`agent force-leave NAME`", l.cfg.Node, q, req.Key), start)
	}
	gen := NextGen(known)
	req.Wait = false // the asker waits in its own view
	resp := l.place(ctx, req, rid, gen, asker, true, start)
	if resp.Code != "" {
		return resp
	}
	l.memory.placed(rid, resp.Generation, l.clock.Now())
	if !resp.Existing {
		kl.last = &placedAnswer{resp: resp, gen: resp.Generation, at: l.clock.Now()}
	}
	return resp
}

// listedIn reports whether the view lists name at all: once it does, the
// view, not the coordinator's memory, says whether it answers for its key.
func listedIn(view []Instance, name string) bool {
	return slices.ContainsFunc(view, func(in Instance) bool { return in.Name == name })
}

// existingAnswer answers a keyed spawn with the key's live interpreter, or
// refuses it when it asked for something else.
func existingAnswer(in Instance, req rpc.SpawnRequest, start time.Time) rpc.SpawnResponse {
	t := in.Tags
	resp := rpc.SpawnResponse{Kind: t.Kind, RequestID: t.RequestID, Name: in.Name, Node: t.Host, PID: t.PID,
		Endpoint: t.Endpoint, Existing: true, Generation: t.Gen}
	var args []string
	if t.Restart == RestartOnFailure {
		args = t.Args // published only with the policy
	}
	restart := t.Restart
	if restart == "" {
		restart = RestartNo
	}
	if err := conflict(req, t.Kind, args, restart); err != nil {
		return fail(resp, rpc.SpawnConflict, err, start)
	}
	resp.TotalMS = ms(time.Since(start))
	return resp
}

// conflict says how a keyed spawn differs from the key's interpreter, as
// far as what is known of it tells (args nil and restart "" are unknown).
func conflict(req rpc.SpawnRequest, kind string, args []string, restart string) error {
	var diffs []string
	if req.Kind != kind {
		diffs = append(diffs, fmt.Sprintf("kind %q, not %q", kind, req.Kind))
	}
	if args != nil && !slices.Equal(args, req.Args) && (len(args) > 0 || len(req.Args) > 0) {
		diffs = append(diffs, fmt.Sprintf("arguments %q, not %q", args, req.Args))
	}
	if restart != "" && req.Restart != "" && req.Restart != restart {
		diffs = append(diffs, fmt.Sprintf("restart policy %q, not %q", restart, req.Restart))
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("--key %q already names a running interpreter with %s: use another key, or stop it first "+
		"(`agent stop NAME`)", req.Key, strings.Join(diffs, " and "))
}
