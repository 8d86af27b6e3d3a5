package placement

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// ErrNoEligibleServer is returned by Elect when every bid was rejected (or
// there were none). The error's text says why each server was rejected.
var ErrNoEligibleServer = errors.New("no eligible server")

// NearTie is how close two scores must be, in score points (0-100 scale), to
// count as equally good. Loads are averaged and published with one decimal,
// a little stale, so smaller differences are noise; treating them as ties
// lets the request hash spread a burst instead of sending it all to the
// server that happened to look a fraction better.
const NearTie = 1.0

// NominalCapacity is the capacity a server without a limit (Capacity 0) is
// scored against: each of its interpreters counts as 1/32 of it. It is never
// full.
const NominalCapacity = 32

// Rule names the filter that rejected a bid.
type Rule string

// The filters, in the order Elect applies them; a bid is rejected by the
// first that fails.
const (
	RuleMalformed  Rule = "malformed"  // no node name, load outside [0, 100], negative counts
	RuleDuplicate  Rule = "duplicate"  // a second bid from the same node; the first is kept
	RuleRefused    Rule = "refused"    // the server refused (Bid.Refusal)
	RuleUnhealthy  Rule = "unhealthy"  // the server reports itself unhealthy
	RuleKind       Rule = "kind"       // the server does not offer the kind
	RuleConstraint Rule = "constraint" // a tag constraint does not hold
	RuleFull       Rule = "full"       // running + pending + reserved >= capacity
)

// Rejection is a bid Elect did not consider, and why.
type Rejection struct {
	Node   string
	Rule   Rule
	Reason string // a human phrase, e.g. "full: 8/8 interpreters (7 running, 1 pending)"
}

// Candidate is an eligible bid with its score.
type Candidate struct {
	Bid Bid
	// Reserved counts this asker's reservations against the node that its
	// bid does not show yet.
	Reserved int
	// Slots is Running+Pending+Reserved as a percentage of Capacity (of
	// NominalCapacity when Capacity is 0).
	Slots float64
	// Score is the load the policy ranks by (see Elect).
	Score float64
	// TieGroup numbers the near-tie groups in rank order from 0; members of
	// one group were ordered by reservations and Hash, not by Score.
	TieGroup int
	// Hash is the rendezvous hash of (request id, node); the highest wins a
	// near-tie.
	Hash uint64
}

// Interpreters returns the interpreters counted against the node.
func (c Candidate) Interpreters() int { return c.Bid.Running + c.Bid.Pending + c.Reserved }

// Decision is the outcome of an election, with its explanation.
type Decision struct {
	RequestID string
	Policy    Policy
	Winner    string // node name; empty when nothing was eligible
	RunnerUp  string // empty when only one server was eligible
	Reason    string // a sentence on why Winner won
	// Ranked holds the eligible servers, best first (Ranked[0] is Winner).
	// When the winner refuses or does not answer, the asker tries the next.
	Ranked []Candidate
	// Rejected holds every bid that was not eligible, sorted by node.
	Rejected []Rejection
}

// Elect chooses the server for req from bids.
//
// Bids are filtered, in the order of the Rule constants: malformed,
// duplicate, refusing, unhealthy, kind-missing, constraint-violating and full
// bids are rejected, each with its reason. The rest are scored:
//
//	slots = 100 * (running + pending + reserved) / capacity
//	score = (max(cpu, mem, slots) + (cpu + mem + slots)/3) / 2
//
// The most used resource dominates, because the first one exhausted is what
// hurts a new interpreter (a server at 95% memory is not a good target
// however idle its CPU); the mean keeps the other two in play, so a server
// busy on every axis ranks below one busy on a single axis. Reserved is this
// asker's outstanding reservations from ledger (nil means none), so its own
// burst counts before the servers report it.
//
// Spread ranks the lowest score first, Binpack the highest. Candidates within
// NearTie of the best remaining one form a near-tie group, ordered by their
// interpreters, running, pending and this asker's reservations together
// (Spread: fewest first, so one asker's burst over equal servers gives each
// the same number; Binpack: most first, to keep packing) and then by the
// rendezvous hash of (request id, node), highest first, so
// askers with identical stale views still pick different servers. The result
// depends only on the inputs.
//
// Elect forgets the ledger's reservations that the bids now show or that have
// expired at now, but records none: the caller calls ledger.Reserve when it
// commits to a candidate (the winner, or the next one after a refusal).
//
// When nothing is eligible, the error wraps ErrNoEligibleServer and says why
// each server was rejected; the Decision still lists the rejections.
func Elect(req Request, bids []Bid, ledger *Ledger, now time.Time) (Decision, error) {
	policy, cs, err := check(req)
	if err != nil {
		return Decision{}, err
	}
	d := Decision{RequestID: req.ID, Policy: policy}

	seen := make(map[string]bool, len(bids))
	observed := make(map[string]int, len(bids))
	valid := make([]Bid, 0, len(bids))
	for _, b := range bids {
		if why := malformed(b); why != "" {
			d.reject(b.Node, RuleMalformed, "malformed bid: "+why)
			continue
		}
		if seen[b.Node] {
			d.reject(b.Node, RuleDuplicate, "duplicate bid: the first one counts")
			continue
		}
		seen[b.Node] = true
		observed[b.Node] = b.Running + b.Pending
		valid = append(valid, b)
	}

	var reserved map[string]int
	if ledger != nil {
		ledger.settle(observed, now)
		reserved = ledger.outstanding()
	}

	for _, b := range valid {
		c := Candidate{Bid: b, Reserved: reserved[b.Node]}
		if rule, why := filter(req.Kind, cs, c); rule != "" {
			d.reject(b.Node, rule, why)
			continue
		}
		c.Slots = slots(c)
		c.Score = score(b.CPU, b.Mem, c.Slots)
		c.Hash = rendezvous(req.ID, b.Node)
		d.Ranked = append(d.Ranked, c)
	}
	slices.SortStableFunc(d.Rejected, func(a, b Rejection) int { return strings.Compare(a.Node, b.Node) })

	if len(d.Ranked) == 0 {
		return d, noneEligible(req, d.Rejected)
	}
	rank(policy, d.Ranked)
	d.Winner = d.Ranked[0].Bid.Node
	if len(d.Ranked) > 1 {
		d.RunnerUp = d.Ranked[1].Bid.Node
	}
	d.Reason = reason(policy, d.Ranked)
	return d, nil
}

func (d *Decision) reject(node string, rule Rule, why string) {
	d.Rejected = append(d.Rejected, Rejection{Node: node, Rule: rule, Reason: why})
}

func check(req Request) (Policy, []compiledConstraint, error) {
	if req.ID == "" {
		return "", nil, fmt.Errorf("%w: empty request id (it seeds the near-tie hash)", ErrInvalidRequest)
	}
	if req.Kind == "" {
		return "", nil, fmt.Errorf("%w %s: empty interpreter kind", ErrInvalidRequest, req.ID)
	}
	policy := req.Policy
	if policy == "" {
		policy = Spread
	}
	if _, err := ParsePolicy(string(policy)); err != nil {
		return "", nil, err
	}
	cs := make([]compiledConstraint, len(req.Constraints))
	for i, c := range req.Constraints {
		m, err := c.compile()
		if err != nil {
			return "", nil, err
		}
		cs[i] = compiledConstraint{c, m}
	}
	return policy, cs, nil
}

type compiledConstraint struct {
	Constraint
	m valueMatcher
}

// malformed says what is wrong with a bid no server should send.
func malformed(b Bid) string {
	switch {
	case b.Node == "":
		return "no node name"
	case math.IsNaN(b.CPU) || b.CPU < 0 || b.CPU > 100:
		return fmt.Sprintf("cpu %v outside [0, 100]", b.CPU)
	case math.IsNaN(b.Mem) || b.Mem < 0 || b.Mem > 100:
		return fmt.Sprintf("mem %v outside [0, 100]", b.Mem)
	case b.Running < 0 || b.Pending < 0 || b.Capacity < 0:
		return fmt.Sprintf("negative count (running %d, pending %d, capacity %d)", b.Running, b.Pending, b.Capacity)
	}
	return ""
}

// filter returns the rule c breaks and why, or "" when c is eligible.
func filter(kind string, cs []compiledConstraint, c Candidate) (Rule, string) {
	b := c.Bid
	if b.Refusal != "" {
		return RuleRefused, "refused: " + b.Refusal
	}
	if !b.Healthy {
		return RuleUnhealthy, "unhealthy"
	}
	if !b.OffersKind {
		return RuleKind, fmt.Sprintf("does not offer kind %q", kind)
	}
	for _, k := range cs {
		v, ok := b.Tags[k.Key]
		if !ok {
			return RuleConstraint, fmt.Sprintf("constraint %s: no tag %s", k.Constraint, k.Key)
		}
		if !k.m.matches(v) {
			return RuleConstraint, fmt.Sprintf("constraint %s: tag %s is %q", k.Constraint, k.Key, v)
		}
	}
	if b.Capacity > 0 && c.Interpreters() >= b.Capacity {
		return RuleFull, "full: " + interpreters(c)
	}
	return "", ""
}

// rendezvous returns the near-tie hash of (id, node): FNV-1a 64 of
// id + "\x00" + node, then murmur3's 64-bit finalizer. FNV-1a alone mixes
// its last byte into the high bits through a single multiply, so nodes whose
// names differ only at the end (node-1, node-2) would be ordered by a few low
// bits of the id's hash: over six such nodes two won a quarter of the ties
// each. The finalizer spreads every input bit over the whole word. FNV-1a is
// written out (hash/fnv gives the same sums) because hash/fnv's interface
// costs two allocations a bid.
// Rendezvous is the rendezvous (highest random weight) hash of a request id
// and a node: every node computes the same ranking of nodes for one id.
func Rendezvous(id, node string) uint64 { return rendezvous(id, node) }

func rendezvous(id, node string) uint64 {
	const offset64, prime64 = 14695981039346656037, 1099511628211
	x := uint64(offset64)
	for i := 0; i < len(id); i++ {
		x = (x ^ uint64(id[i])) * prime64
	}
	x *= prime64 // the "\x00" separator: xor with 0 leaves x as it is
	for i := 0; i < len(node); i++ {
		x = (x ^ uint64(node[i])) * prime64
	}
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func slots(c Candidate) float64 {
	capacity := c.Bid.Capacity
	if capacity == 0 {
		capacity = NominalCapacity
	}
	return 100 * float64(c.Interpreters()) / float64(capacity)
}

func score(cpu, mem, slots float64) float64 {
	return (max(cpu, mem, slots) + (cpu+mem+slots)/3) / 2
}

// rank sorts cs best first and numbers the near-tie groups.
func rank(policy Policy, cs []Candidate) {
	better := func(c Candidate) float64 { // lower is better
		if policy == Binpack {
			return -c.Score
		}
		return c.Score
	}
	slices.SortFunc(cs, func(a, b Candidate) int {
		return cmp.Or(cmp.Compare(better(a), better(b)), strings.Compare(a.Bid.Node, b.Bid.Node))
	})
	group := 0
	for i := 0; i < len(cs); group++ {
		lead := better(cs[i])
		j := i + 1
		// The slack absorbs float error, so that 11.0 against 10.0 is a tie.
		for j < len(cs) && better(cs[j])-lead <= NearTie+1e-9 {
			j++
		}
		// Inside a tie the interpreter count decides first: one more
		// interpreter moves a score by less than NearTie when capacity is
		// large, yet it is exactly what spreading should see. Reservations
		// are part of the count, so one asker's burst spreads too.
		slices.SortFunc(cs[i:j], func(a, b Candidate) int {
			byCount := cmp.Compare(a.Interpreters(), b.Interpreters())
			if policy == Binpack {
				byCount = -byCount
			}
			return cmp.Or(byCount, cmp.Compare(b.Hash, a.Hash), strings.Compare(a.Bid.Node, b.Bid.Node))
		})
		for k := i; k < j; k++ {
			cs[k].TieGroup = group
		}
		i = j
	}
}

// reason explains the winner of ranked, e.g. "lowest load 12.0 (cpu 10.0,
// mem 20.0, 1/8 interpreters); runner-up node-b 15.2".
func reason(policy Policy, ranked []Candidate) string {
	w := ranked[0]
	best := w.Score
	for _, c := range ranked {
		if c.TieGroup != 0 {
			break
		}
		if policy == Binpack {
			best = max(best, c.Score)
		} else {
			best = min(best, c.Score)
		}
	}
	var s strings.Builder
	extreme := "lowest load"
	if policy == Binpack {
		extreme = "highest load with room"
	}
	if w.Score == best {
		fmt.Fprintf(&s, "%s %.1f (%s)", extreme, w.Score, describe(w))
	} else {
		fmt.Fprintf(&s, "load %.1f (%s), within %.1f of the %s %.1f", w.Score, describe(w), NearTie, extreme, best)
	}
	if len(ranked) == 1 {
		s.WriteString("; the only eligible server")
		return s.String()
	}
	r := ranked[1]
	if r.TieGroup != w.TieGroup {
		fmt.Fprintf(&s, "; runner-up %s %.1f", r.Bid.Node, r.Score)
		return s.String()
	}
	fmt.Fprintf(&s, "; near-tie with runner-up %s %.1f, won on ", r.Bid.Node, r.Score)
	if w.Interpreters() != r.Interpreters() {
		more := "fewer"
		if policy == Binpack {
			more = "more"
		}
		fmt.Fprintf(&s, "%s interpreters (%d vs %d)", more, w.Interpreters(), r.Interpreters())
	} else {
		s.WriteString("request hash")
	}
	return s.String()
}

// describe gives the parts of a candidate's score.
func describe(c Candidate) string {
	return fmt.Sprintf("cpu %.1f, mem %.1f, %s", c.Bid.CPU, c.Bid.Mem, interpreters(c))
}

// interpreters gives a candidate's interpreter count against its capacity,
// e.g. "3/8 interpreters (1 running, 1 pending, 1 reserved)".
func interpreters(c Candidate) string {
	var s strings.Builder
	if c.Bid.Capacity > 0 {
		fmt.Fprintf(&s, "%d/%d interpreters", c.Interpreters(), c.Bid.Capacity)
	} else {
		fmt.Fprintf(&s, "%d interpreters, no cap", c.Interpreters())
	}
	if c.Bid.Pending > 0 || c.Reserved > 0 {
		fmt.Fprintf(&s, " (%d running, %d pending, %d reserved)", c.Bid.Running, c.Bid.Pending, c.Reserved)
	}
	return s.String()
}

func noneEligible(req Request, rejected []Rejection) error {
	if len(rejected) == 0 {
		return fmt.Errorf("%w for kind %q: no server answered", ErrNoEligibleServer, req.Kind)
	}
	why := make([]string, len(rejected))
	for i, r := range rejected {
		node := r.Node
		if node == "" {
			node = `""`
		}
		why[i] = node + " " + r.Reason
	}
	return fmt.Errorf("%w for kind %q: %s", ErrNoEligibleServer, req.Kind, strings.Join(why, "; "))
}
