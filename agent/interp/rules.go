package interp

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
)

// This file holds the rules every node applies to its own view of the mesh
// to agree, without asking anyone, on who owns a request. They are pure:
// members in, verdicts out; no I/O, no clock, no randomness.

// Instance is one interpreter member as a member list shows it, with the
// status of its host server in the same list.
type Instance struct {
	Name       string
	Status     gossip.Status
	Host       string
	HostStatus gossip.Status // StatusNone when the host is not listed
	Tags       gossip.Tags
}

// Instances picks the interpreters out of a member list.
func Instances(members []gossip.Member) []Instance {
	status := make(map[string]gossip.Status, len(members))
	for _, m := range members {
		status[m.Name] = m.Status
	}
	out := make([]Instance, 0, len(members))
	for _, m := range members {
		t, _ := m.ParsedTags()
		if t.Role != gossip.RoleInterpreter || t.RequestID == "" {
			continue
		}
		st := m.Status
		if st == gossip.StatusFailed && t.End != "" {
			// Its supervisor said how it ended, then left; this view missed
			// serf's leave intent (a gossip that can miss a member) and saw
			// only memberlist's dead message. It left.
			st = gossip.StatusLeft
		}
		out = append(out, Instance{Name: m.Name, Status: st, Host: t.Host, HostStatus: status[t.Host], Tags: t})
	}
	return out
}

// Beats reports whether a wins over b when both run for one request: the
// higher generation wins (it was placed after the other's host was declared
// failed), then the name that sorts first. It is a strict total order, so
// every node that sees the same two picks the same one.
func Beats(a, b Instance) bool {
	if a.Tags.Gen != b.Tags.Gen {
		return a.Tags.Gen > b.Tags.Gen
	}
	return a.Name < b.Name
}

// Duplicate is a request with more than one alive interpreter.
type Duplicate struct {
	RequestID string
	Winner    Instance
	Losers    []Instance // sorted by name
}

// Duplicates finds every request that has more than one alive interpreter
// in the view and says which one stays. The result does not depend on the
// order of the view.
func Duplicates(view []Instance) []Duplicate {
	byRID := map[string][]Instance{}
	for _, in := range view {
		if in.Status == gossip.StatusAlive {
			byRID[in.Tags.RequestID] = append(byRID[in.Tags.RequestID], in)
		}
	}
	var out []Duplicate
	for rid, group := range byRID {
		if len(group) < 2 {
			continue
		}
		slices.SortFunc(group, func(a, b Instance) int { return cmp.Compare(a.Name, b.Name) })
		win := 0
		for i := range group {
			if Beats(group[i], group[win]) {
				win = i
			}
		}
		d := Duplicate{RequestID: rid, Winner: group[win]}
		for i, in := range group {
			if i != win {
				d.Losers = append(d.Losers, in)
			}
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Duplicate) int { return cmp.Compare(a.RequestID, b.RequestID) })
	return out
}

// Owner is the alive server that acts for a request when an action must be
// taken by exactly one node (re-placing an interpreter whose host failed):
// the one with the highest rendezvous hash of (request id, server). Every
// node that sees the same alive servers names the same owner.
func Owner(rid string, aliveServers []string) (string, bool) {
	best, found := "", false
	var bestHash uint64
	for _, s := range aliveServers {
		h := placement.Rendezvous(rid, s)
		if !found || h > bestHash || h == bestHash && s < best {
			best, bestHash, found = s, h, true
		}
	}
	return best, found
}

// OwnerRank is server's place in the order of owners of a request: 0 for
// the owner, 1 for the one that acts should the owner not, and so on; -1
// when server is not among aliveServers. Every node that sees the same
// alive servers ranks them alike.
func OwnerRank(rid, server string, aliveServers []string) int {
	if !slices.Contains(aliveServers, server) {
		return -1
	}
	mine := placement.Rendezvous(rid, server)
	rank := 0
	for _, s := range aliveServers {
		if h := placement.Rendezvous(rid, s); s != server && (h > mine || h == mine && s < server) {
			rank++
		}
	}
	return rank
}

// Quorum is what a node sees of the servers: a keyed spawn or a re-placement
// goes ahead only on a side that sees a strict majority of them alive.
type Quorum struct {
	Alive   []string // alive (or leaving) servers, sorted
	Missing []string // failed servers, sorted; left ones are not counted
}

// ServerQuorum counts the servers of a member list. Servers that left on
// purpose (or were force-left) are out of the count; failed ones are in,
// because a failed server may be alive on the other side of a partition.
func ServerQuorum(members []gossip.Member) Quorum {
	var q Quorum
	for _, m := range members {
		if m.Tags[gossip.TagRole] != string(gossip.RoleServer) {
			continue
		}
		switch m.Status {
		case gossip.StatusAlive, gossip.StatusLeaving:
			q.Alive = append(q.Alive, m.Name)
		case gossip.StatusFailed:
			q.Missing = append(q.Missing, m.Name)
		}
	}
	slices.Sort(q.Alive)
	slices.Sort(q.Missing)
	return q
}

// Majority reports whether more than half of the known servers are alive.
func (q Quorum) Majority() bool { return 2*len(q.Alive) > len(q.Alive)+len(q.Missing) }

// String says what the node sees, for errors and logs.
func (q Quorum) String() string {
	return fmt.Sprintf("%d of %d known servers alive (alive: %v; failed: %v)", len(q.Alive), len(q.Alive)+len(q.Missing), q.Alive, q.Missing)
}

// Orphan is a request with a restart policy whose every newest interpreter
// failed together with its host: the mesh must place it again.
type Orphan struct {
	Last    Instance // the newest failed interpreter, whose tags say what to start
	NextGen int      // the generation of the interpreter to start
}

// Orphans lists the requests to re-place. Only the newest generation of a
// request counts: older ones were already replaced. A request is an orphan
// when it has the on-failure policy, no interpreter of it is alive (or
// leaving), and its newest ones all failed on hosts that failed or left. An
// interpreter that left stopped on purpose (or gave up), so its request is
// not an orphan; nor is one that failed on a host still alive, whose host
// restarts it.
func Orphans(view []Instance) []Orphan {
	byRID := map[string][]Instance{}
	for _, in := range view {
		byRID[in.Tags.RequestID] = append(byRID[in.Tags.RequestID], in)
	}
	var out []Orphan
	for _, group := range byRID {
		newest := 0
		for _, in := range group {
			newest = max(newest, in.Tags.Gen)
		}
		var last *Instance
		orphan := true
		for i := range group {
			in := group[i]
			if in.Status == gossip.StatusAlive || in.Status == gossip.StatusLeaving {
				orphan = false
				break
			}
			if in.Tags.Gen != newest {
				continue
			}
			hostGone := in.HostStatus == gossip.StatusFailed || in.HostStatus == gossip.StatusLeft
			if in.Status != gossip.StatusFailed || !hostGone || in.Tags.Restart != RestartOnFailure {
				orphan = false
				break
			}
			if last == nil || in.Name < last.Name {
				last = &group[i]
			}
		}
		if orphan && last != nil {
			out = append(out, Orphan{Last: *last, NextGen: newest + 1})
		}
	}
	slices.SortFunc(out, func(a, b Orphan) int { return cmp.Compare(a.Last.Tags.RequestID, b.Last.Tags.RequestID) })
	return out
}

// The restart policies.
const (
	RestartNo        = "no"
	RestartOnFailure = "on-failure"
)

// ParseRestart checks a restart policy from a request or a kind; empty is
// "no".
func ParseRestart(s string) (string, error) {
	switch s {
	case "", RestartNo:
		return RestartNo, nil
	case RestartOnFailure:
		return RestartOnFailure, nil
	}
	return "", fmt.Errorf("restart policy %q is not known: use %q or %q", s, RestartNo, RestartOnFailure)
}

// Backoff bounds restarts: at most Attempts in any Window, each after a
// delay that doubles from Delay up to MaxDelay.
type Backoff struct {
	Attempts int
	Window   time.Duration
	Delay    time.Duration
	MaxDelay time.Duration
}

// DefaultBackoff is the on-failure policy's bound: 5 restarts in 10 minutes,
// 1 s doubling to 30 s apart.
var DefaultBackoff = Backoff{Attempts: 5, Window: 10 * time.Minute, Delay: time.Second, MaxDelay: 30 * time.Second}

// Tracker applies a Backoff to one interpreter. Time is passed in. Not safe
// for concurrent use.
type Tracker struct {
	b     Backoff
	tries []time.Time // within the window, oldest first
}

// NewTracker starts a tracker with no attempts.
func NewTracker(b Backoff) *Tracker { return &Tracker{b: b} }

// Next records a failure at now and says how long to wait before the next
// attempt, or false when the attempts in the window are spent: give up.
func (t *Tracker) Next(now time.Time) (time.Duration, bool) {
	keep := t.tries[:0]
	for _, at := range t.tries {
		if now.Sub(at) < t.b.Window {
			keep = append(keep, at)
		}
	}
	t.tries = keep
	if len(t.tries) >= t.b.Attempts {
		return 0, false
	}
	delay := t.b.Delay
	for range len(t.tries) {
		delay *= 2
		if delay >= t.b.MaxDelay {
			delay = t.b.MaxDelay
			break
		}
	}
	t.tries = append(t.tries, now)
	return delay, true
}

// refund takes back the latest attempt: it was not one (it did not get
// to try).
func (t *Tracker) refund() {
	if len(t.tries) > 0 {
		t.tries = t.tries[:len(t.tries)-1]
	}
}

// canTry reports whether an attempt at now would be allowed, without
// recording one.
func (t *Tracker) canTry(now time.Time) bool { return t.inWindow(now) < t.b.Attempts }

// inWindow counts the attempts within the window before now.
func (t *Tracker) inWindow(now time.Time) int {
	n := 0
	for _, at := range t.tries {
		if now.Sub(at) < t.b.Window {
			n++
		}
	}
	return n
}

// viewCache keeps Instances of a node's member list for as long as the
// list holds (gossip.Node.VersionedMembers), so that the passes over the
// view (the rules, every list, every spawn order) parse nothing while the
// mesh is unchanged. The view it returns is shared: read-only.
type viewCache struct {
	mu      sync.Mutex
	version uint64
	view    []Instance
}

func (c *viewCache) of(node *gossip.Node) ([]gossip.Member, []Instance) {
	members, v := node.VersionedMembers()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.view == nil || c.version != v {
		// Clipped: a caller's append copies instead of writing past it.
		c.view, c.version = slices.Clip(Instances(members)), v
	}
	return members, c.view
}

// meshView is this agent's member list and the interpreters in it.
func (l *Lifecycle) meshView() ([]gossip.Member, []Instance) { return l.views.of(l.deps.Node) }
