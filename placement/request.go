package placement

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ErrInvalidRequest is returned by Elect for a request it cannot run.
var ErrInvalidRequest = errors.New("invalid placement request")

// ErrInvalidPolicy is returned for a policy name that is not known.
var ErrInvalidPolicy = errors.New("invalid placement policy")

// ErrInvalidConstraint is returned for a constraint that is not key=regex
// with a valid regular expression.
var ErrInvalidConstraint = errors.New("invalid constraint")

// Bid is one server's answer to "place an interpreter of kind K". A server
// must say it is Healthy and OffersKind: a bid that leaves them false is
// rejected, so a half-filled bid never wins.
type Bid struct {
	Node       string
	CPU        float64 // averaged CPU use, percent
	Mem        float64 // averaged memory use, percent
	Running    int     // interpreters running, by the server's own count
	Pending    int     // accepted but not yet visible in its tags
	Capacity   int     // the most interpreters it accepts; 0 means no limit
	Healthy    bool
	OffersKind bool     // the server is configured to start the requested kind
	Kinds      []string // every kind the server offers, for error messages
	Tags       map[string]string
	Refusal    string // empty, or why the server refuses
	// Holds names the interpreter of this very request the server already
	// runs or is starting ("" when none), HoldsGen its generation: the
	// asker then takes that one instead of electing.
	Holds    string
	HoldsGen int
	// Known says the server has seen the request's interpreters; KnownGen
	// is the highest generation it saw, which a new placement must exceed.
	Known    bool
	KnownGen int
	// Claimer is another asker that claimed the request in its own bid
	// request lately: an election for it may be under way elsewhere.
	// Claimed says one did, and ClaimGen is the highest generation such a
	// claim named: an intent, not a placement (the claimer may have
	// deferred), so a new placement goes above it but nothing counts it
	// as placed.
	Claimer  string
	Claimed  bool
	ClaimGen int
	// Ended names the request's interpreter that ended on this server on
	// purpose lately (stopped, a duplicate, exited, or a start given up):
	// should the mesh take it for failed (its leave was lost), it is not
	// to be re-placed.
	Ended string
	// Grant answers an asker's claim of the request: Granted when this
	// server holds the request for that asker (no other asker claimed it
	// first within the last seconds), Denied when another holds it
	// (Claimer names it), NoGrant from a server that grants nothing (an
	// older agent, or a bid without a claim).
	Grant Grant
	// Servers is how many servers the bidder knows (alive and failed):
	// an asker counts its majority against the most any bidder knows, not
	// only its own view, which may have forgotten some (a restart, a lost
	// disk: a fresh member never hears of those already failed).
	Servers int
}

// Grant is a server's answer to an asker's claim of a request.
type Grant uint8

const (
	NoGrant Grant = iota
	Granted
	Denied
)

// Request asks for one interpreter of Kind. ID names the request; it is the
// idempotency key the server checks and the seed of the near-tie hash, so
// two requests must not share it.
type Request struct {
	ID          string
	Kind        string
	Constraints []Constraint // all must hold
	Policy      Policy       // empty means Spread
	// Claim, when set, says the asker means to place generation Gen of
	// the request (a keyed spawn, a re-placement): each bidding server
	// remembers it, and tells another asker of the same request.
	Claim bool
	Gen   int
	// Release, with Claim unset, withdraws this asker's claim of the
	// request: it did not get a majority's grants and defers, so that a
	// rival may gather them (two askers whose claims split the servers
	// evenly would otherwise keep each other out for as long as both ask).
	Release bool
	// Attempt names this claim (or the claim a Release withdraws): a
	// server withdraws only a claim no newer than the release's, so a
	// release that gossip delivers after the asker's next claim leaves
	// that claim in place.
	Attempt uint64
}

// Policy says which eligible server an election prefers.
type Policy string

// The policies. Spread is the default.
const (
	// Spread prefers the least loaded server, so interpreters spread out
	// and each one gets the most headroom.
	Spread Policy = "spread"
	// Binpack prefers the most loaded server that still has room, so
	// idle servers stay idle (to be drained or shut down).
	Binpack Policy = "binpack"
)

// ParsePolicy checks a policy name given by a user.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case Spread, Binpack:
		return p, nil
	}
	return "", fmt.Errorf("%w %q: use %q or %q", ErrInvalidPolicy, s, Spread, Binpack)
}

// Constraint requires a server tag to match a regular expression. The
// expression is anchored: it must match the whole value, so "zone=eu" does
// not admit "eu-west". A server without the tag never matches.
type Constraint struct {
	Key     string
	Pattern string // RE2 syntax, without ^ and $
}

// ParseConstraint parses "key=regex", as given to --constraint. The key ends
// at the first '='.
func ParseConstraint(s string) (Constraint, error) {
	key, pattern, ok := strings.Cut(s, "=")
	c := Constraint{Key: key, Pattern: pattern}
	if !ok {
		return Constraint{}, fmt.Errorf("%w %q: no '='; use key=regex, e.g. zone=eu-.*", ErrInvalidConstraint, s)
	}
	if _, err := c.compile(); err != nil {
		return Constraint{}, err
	}
	return c, nil
}

// String returns the constraint as ParseConstraint reads it.
func (c Constraint) String() string { return c.Key + "=" + c.Pattern }

// compile returns a matcher for the constraint's tag value. It matches
// leftmost-longest and asks for the whole value rather than wrapping the
// pattern in ^(?:…)$, which a pattern such as `\Qa` (quote to the end)
// would break.
func (c Constraint) compile() (valueMatcher, error) {
	if c.Key == "" {
		return valueMatcher{}, fmt.Errorf("%w %q: empty tag key; use key=regex, e.g. zone=eu-.*", ErrInvalidConstraint, c.String())
	}
	if strings.Contains(c.Key, "=") {
		return valueMatcher{}, fmt.Errorf("%w %q: tag key %q contains '='", ErrInvalidConstraint, c.String(), c.Key)
	}
	re, err := regexp.Compile(c.Pattern)
	if err != nil {
		return valueMatcher{}, fmt.Errorf("%w %q: %w; the value after '=' must be an RE2 regular expression", ErrInvalidConstraint, c.String(), err)
	}
	re.Longest()
	return valueMatcher{re}, nil
}

type valueMatcher struct{ re *regexp.Regexp }

// matches reports whether the whole of v matches. A leftmost-longest match
// that starts at 0 covers all of v exactly when some match does.
func (m valueMatcher) matches(v string) bool {
	loc := m.re.FindStringIndex(v)
	return loc != nil && loc[0] == 0 && loc[1] == len(v)
}
