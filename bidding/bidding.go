package bidding

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
)

// QueryName is the serf query servers answer with bids.
const QueryName = "place"

// MaxResponseBytes is serf's default limit on one query response.
const MaxResponseBytes = 1024

// maxRefusal and maxKindBytes bound a bid's free text, so that with tags at
// memberlist's cap a bid still fits a query response.
const (
	maxRefusal   = 200
	maxKindBytes = 160
)

// DefaultTimeout bounds how long an asker waits for bids.
const DefaultTimeout = time.Second

// maxReaskGrace bounds how long an asker waits before re-asking the servers
// that have not answered: a few gossip intervals of the lan profile.
const maxReaskGrace = 500 * time.Millisecond

// reaskIdle is how many gossip intervals without a new answer mean the query
// has stopped spreading. Answers come in waves, one a gossip hop, so a gap
// of one interval is normal.
const reaskIdle = 2

// maxReasks bounds the re-asks of one place query. Each is a broadcast to
// the whole mesh, and a server that misses the query three times is more
// likely unreachable than unlucky. (In a small mesh with the local profile
// a broadcast goes to two peers; a re-ask can miss the same server again.)
const maxReasks = 2

// ErrNoServers is returned when the asker's view holds no alive server.
var ErrNoServers = errors.New("no alive server in this agent's view")

// Request is what the asker sends with the place query.
type Request struct {
	ID          string   `msgpack:"id"`
	Kind        string   `msgpack:"k"`
	Constraints []string `msgpack:"c,omitempty"` // key=regex, for the record; Elect enforces them
	// Claim is the generation the asker means to place, plus one: zero
	// (left out) when it claims none, -1 when it withdraws its claim.
	Claim int `msgpack:"g,omitempty"`
	// Attempt names the claim, or the claim a release (Claim -1)
	// withdraws: placement.Request.Attempt.
	Attempt uint64 `msgpack:"at,omitempty"`
}

// ClaimOf is the request's claim from a placement request: -1 withdraws
// the asker's claim (Release), which an older server, granting nothing,
// takes for no claim at all.
func ClaimOf(req placement.Request) int {
	if req.Release {
		return -1
	}
	if !req.Claim {
		return 0
	}
	return req.Gen + 1
}

// wireBid is a bid on the wire: short keys, the node name left out (serf
// tells the asker who answered).
type wireBid struct {
	Version    uint8             `msgpack:"v"`
	CPU        float64           `msgpack:"c"`
	Mem        float64           `msgpack:"m"`
	Running    int               `msgpack:"r"`
	Pending    int               `msgpack:"p"`
	Capacity   int               `msgpack:"n"`
	Healthy    bool              `msgpack:"h"`
	OffersKind bool              `msgpack:"o"`
	Tags       map[string]string `msgpack:"t"`
	Refusal    string            `msgpack:"x,omitempty"`
	Kinds      []string          `msgpack:"ks,omitempty"`
	Holds      string            `msgpack:"hd,omitempty"`
	HoldsGen   int               `msgpack:"hg,omitempty"`
	// KnownGen is the highest generation the server saw, plus one: zero
	// (left out) when it saw none, so that older agents read no field.
	KnownGen int    `msgpack:"kg,omitempty"`
	Claimer  string `msgpack:"cb,omitempty"`
	// ClaimGen is the highest generation another asker claimed, plus one
	// (zero: none).
	ClaimGen int    `msgpack:"cl,omitempty"`
	Servers  int    `msgpack:"sv,omitempty"`
	Grant    uint8  `msgpack:"gr,omitempty"`
	Ended    string `msgpack:"en,omitempty"`
}

const wireVersion = 1

// EncodeBid encodes a bid for a query response. Its size is bounded: tags
// fit memberlist's 512 bytes and the refusal is cut to 200 bytes.
func EncodeBid(b placement.Bid) ([]byte, error) {
	refusal := b.Refusal
	if n := maxRefusal - len(b.Ended); len(refusal) > n { // an ended interpreter's name takes the refusal's room
		refusal = refusal[:n]
	}
	// The kinds list is informative only: keep as many as fit in the room
	// the tags and refusal leave.
	kinds, room := []string(nil), maxKindBytes-len(b.Holds)-len(b.Claimer)-len(b.Ended)
	for _, k := range b.Kinds {
		if room -= len(k) + 2; room < 0 {
			break
		}
		kinds = append(kinds, k)
	}
	data, err := msgpack.Marshal(wireBid{
		Version: wireVersion, CPU: b.CPU, Mem: b.Mem, Running: b.Running, Pending: b.Pending,
		Capacity: b.Capacity, Healthy: b.Healthy, OffersKind: b.OffersKind, Tags: b.Tags, Refusal: refusal,
		Kinds: kinds, Holds: b.Holds, HoldsGen: b.HoldsGen, KnownGen: knownGen(b), Claimer: b.Claimer, ClaimGen: claimGen(b),
		Servers: b.Servers, Grant: uint8(b.Grant), Ended: b.Ended,
	})
	if err != nil {
		return nil, fmt.Errorf("encode bid: %w", err)
	}
	if len(data) > MaxResponseBytes {
		return nil, fmt.Errorf("bid encodes to %d bytes, over serf's %d-byte response limit", len(data), MaxResponseBytes)
	}
	return data, nil
}

// DecodeBid decodes a bid answered by node.
func DecodeBid(node string, data []byte) (placement.Bid, error) {
	var w wireBid
	if err := msgpack.Unmarshal(data, &w); err != nil {
		return placement.Bid{}, fmt.Errorf("bid from %s: %w", node, err)
	}
	if w.Version != wireVersion {
		return placement.Bid{}, fmt.Errorf("bid from %s has wire version %d, this agent speaks %d", node, w.Version, wireVersion)
	}
	return placement.Bid{
		Node: node, CPU: w.CPU, Mem: w.Mem, Running: w.Running, Pending: w.Pending, Capacity: w.Capacity,
		Healthy: w.Healthy, OffersKind: w.OffersKind, Tags: w.Tags, Refusal: w.Refusal, Kinds: w.Kinds,
		Holds: w.Holds, HoldsGen: w.HoldsGen, Known: w.KnownGen > 0, KnownGen: max(w.KnownGen-1, 0), Claimer: w.Claimer,
		Claimed: w.ClaimGen > 0, ClaimGen: max(w.ClaimGen-1, 0),
		Servers: w.Servers, Grant: placement.Grant(w.Grant), Ended: w.Ended,
	}, nil
}

func claimGen(b placement.Bid) int {
	if !b.Claimed {
		return 0
	}
	return b.ClaimGen + 1
}

func knownGen(b placement.Bid) int {
	if !b.Known {
		return 0
	}
	return b.KnownGen + 1
}

// Bidder decides a server's bid for a request from asker (the node serf says
// sent the query). It is called concurrently, once per query, and must not
// block for long: the asker is waiting.
type Bidder func(asker string, req Request) placement.Bid

// Serve makes n answer place queries with bidder's bids.
func Serve(n *gossip.Node, bidder Bidder, logger *slog.Logger) {
	n.HandleQuery(QueryName, func(q *gossip.Query) {
		var req Request
		var bid placement.Bid
		if err := msgpack.Unmarshal(q.Payload, &req); err != nil {
			bid = placement.Bid{Refusal: "cannot decode the place request: " + err.Error()}
		} else {
			bid = bidder(q.From, req)
		}
		data, err := EncodeBid(bid)
		if err != nil {
			logger.Error("cannot answer place query", "err", err)
			return
		}
		if err := q.Respond(data); err != nil {
			logger.Debug("place answer not sent", "err", err)
		}
	})
}

// Result is what an asker learnt from one place query.
type Result struct {
	Bids     []placement.Bid // in arrival order
	Expected []string        // the alive servers in the asker's view, sorted
	Missing  []string        // expected servers that did not answer in time, sorted
	Invalid  []string        // answers that could not be decoded, and a failed re-ask, with why
	Elapsed  time.Duration
}

// Servers lists the alive members whose role is server. Members without a
// role tag (a plain serf agent, say) are not servers and are ignored.
func Servers(members []gossip.Member) []string {
	var out []string
	for _, m := range members {
		if m.Status == gossip.StatusAlive && m.Tags[gossip.TagRole] == string(gossip.RoleServer) {
			out = append(out, m.Name)
		}
	}
	sort.Strings(out)
	return out
}

// Collect sends the place query to every server and returns their bids. It
// returns as soon as every alive server in n's own view has answered, or
// when timeout passes (DefaultTimeout when zero), whichever is first.
//
// A serf query is gossiped, and in a small mesh a broadcast reaches only a
// few peers before it retires, so now and then a server never hears it.
// Rather than wait out the whole timeout for that server, the asker re-asks
// the servers still silent when answers have stopped coming: after a short
// grace (a quarter of the timeout, at most maxReaskGrace) and after
// reaskIdle gossip intervals without a new answer or re-ask, at most
// maxReasks times. While answers still arrive the query is still
// spreading, and another broadcast would only add to its cost. A re-ask
// names the silent servers when their names fit serf's query size limit,
// else it goes to every server. A bid is read-only, so a server that hears
// the query twice answers twice and the second answer is ignored.
func Collect(ctx context.Context, n *gossip.Node, req Request, timeout time.Duration) (Result, error) {
	start := time.Now()
	if timeout <= 0 {
		timeout = n.Dilate(DefaultTimeout)
	}
	res := Result{Expected: Servers(n.Members())}
	if len(res.Expected) == 0 {
		return res, fmt.Errorf("%w: is any `agent run --role server` joined to this mesh?", ErrNoServers)
	}
	payload, err := msgpack.Marshal(req)
	if err != nil {
		return res, fmt.Errorf("encode place request: %w", err)
	}
	params := func(nodes []string) gossip.QueryParams {
		return gossip.QueryParams{
			FilterNodes: nodes,
			FilterTags:  map[string]string{gossip.TagRole: "^" + string(gossip.RoleServer) + "$"},
			Timeout:     timeout,
		}
	}
	if size := n.QuerySize(QueryName, payload, params(nil)); size > gossip.QuerySizeLimit {
		return res, fmt.Errorf("the place query would be %d bytes, over serf's %d-byte query limit: use fewer or shorter constraints",
			size, gossip.QuerySizeLimit)
	}
	waiting := make(map[string]bool, len(res.Expected))
	for _, s := range res.Expected {
		waiting[s] = true
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var mu sync.Mutex
	lastNews := start // the last new answer or re-ask
	onResponse := func(from string, data []byte) {
		mu.Lock()
		defer mu.Unlock()
		if !waiting[from] {
			return // a second answer, or a server we did not expect
		}
		delete(waiting, from)
		lastNews = time.Now()
		bid, err := DecodeBid(from, data)
		if err != nil {
			res.Invalid = append(res.Invalid, err.Error())
		} else {
			res.Bids = append(res.Bids, bid)
		}
		if len(waiting) == 0 {
			cancel() // every server we know of answered: no reason to wait
		}
	}
	ask := func(p gossip.QueryParams) error {
		p.Timeout = time.Until(deadlineOf(ctx))
		return n.Query(ctx, QueryName, payload, p, nil, onResponse)
	}

	first, again := make(chan error, 1), make(chan error, maxReasks)
	go func() {
		err := ask(params(nil))
		if err != nil {
			cancel() // nothing was asked: no answer will come
		}
		first <- err
	}()
	reasks := 0
	idle := reaskIdle * n.GossipInterval()
	timer := time.NewTimer(min(timeout/4, n.Dilate(maxReaskGrace)))
	defer timer.Stop()
wait:
	for reasks < maxReasks {
		select {
		case <-ctx.Done():
			break wait
		case <-timer.C:
			mu.Lock()
			quietSince := time.Since(lastNews)
			var silent []string
			for s := range waiting {
				silent = append(silent, s)
			}
			mu.Unlock()
			if quietSince < idle {
				timer.Reset(idle - quietSince) // answers still arrive: the query is still spreading
				continue
			}
			if len(silent) == 0 {
				break wait
			}
			reasks++
			go func() { again <- ask(reaskParams(n, payload, silent, params)) }()
			mu.Lock()
			lastNews = time.Now() // give the re-ask its own time to spread
			mu.Unlock()
			timer.Reset(idle)
		}
	}
	err = <-first
	var reaskErrs []string
	for i := 0; i < reasks; i++ {
		if e := <-again; e != nil {
			reaskErrs = append(reaskErrs, e.Error())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reaskErrs) > 0 {
		// The first query went out; the bids it brought still count.
		res.Invalid = append(res.Invalid, "re-asking the silent servers failed: "+strings.Join(reaskErrs, "; "))
	}
	for s := range waiting {
		res.Missing = append(res.Missing, s)
	}
	sort.Strings(res.Missing)
	res.Elapsed = time.Since(start)
	return res, err
}

// reaskParams addresses a re-ask to the silent servers by name when the
// names fit serf's query size limit; else to every server, whose repeated
// answers Collect ignores.
func reaskParams(n *gossip.Node, payload []byte, silent []string, params func([]string) gossip.QueryParams) gossip.QueryParams {
	sort.Strings(silent)
	if p := params(silent); n.QuerySize(QueryName, payload, p) <= gossip.QuerySizeLimit {
		return p
	}
	return params(nil)
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// Describe lists the servers that did not take part, for error messages.
func (r Result) Describe() string {
	var parts []string
	if len(r.Missing) > 0 {
		parts = append(parts, "no answer from "+strings.Join(r.Missing, ", "))
	}
	parts = append(parts, r.Invalid...)
	return strings.Join(parts, "; ")
}
