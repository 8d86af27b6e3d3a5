package interp

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/meshagent/agent/gossip"
)

// This file is what an agent remembers of each request beyond its member
// list. The list forgets an interpreter one reap window after it ended or
// failed; two rules need more than that:
//
//   - The answer stands. A new placement of a request must outrank every
//     earlier one, including a stale copy that a partition hid for longer
//     than the reap window. So every agent keeps the highest generation it
//     has seen of each request, for a day after it last saw one.
//   - Nothing lost. An on-failure interpreter that failed with its host is
//     remembered until a newer placement (or its own return) resolves it,
//     so that a side with no majority for longer than the reap window does
//     not forget to re-place it once it has one again.

// genKeep is how long a request's highest generation is kept after the
// view last showed one of its interpreters: longer than any partition the
// rules are meant to ride out, short enough that the memory stays small.
const genKeep = 24 * time.Hour

// maxRemembered bounds the memory; past it the requests seen least
// recently are forgotten first.
const maxRemembered = 100_000

// NoGen is what GenOf reports for a request no view has shown.
const NoGen = -1

// memory is one agent's record of requests. Safe for concurrent use.
type memory struct {
	mu   sync.Mutex
	reqs map[string]*remembered
	// j keeps the memory across restarts, on a server (journal.go);
	// written is what it holds of each request.
	j       *journal
	written map[string]writtenReq
	// servers are the servers this agent has listed, and when it last
	// did: a majority is counted against them too (see serversKnown).
	servers map[string]time.Time
}

type remembered struct {
	gen  int       // the highest generation seen
	seen time.Time // when the view last showed one of its interpreters
	// orphan is the newest on-failure instance, failed with no live copy
	// of its request, while unresolved; failedAt, when this agent first
	// saw it so.
	orphan   *Instance
	failedAt time.Time
	// ended is an interpreter its server said ended on purpose (the mesh
	// took it for failed): never an orphan again.
	ended string
}

func newMemory() *memory {
	return &memory{reqs: map[string]*remembered{}, written: map[string]writtenReq{}, servers: map[string]time.Time{}}
}

// observe takes in a view at now: every request's highest generation, and
// the on-failure interpreters that failed with no live copy of their
// request (their hosts failed, or did not start them again). A remembered
// orphan is resolved when the view shows a newer generation of its
// request, or the same one alive, leaving or left (it came back, or
// stopped on purpose).
func (m *memory) observe(view []Instance, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	newest := map[string]int{}
	live := map[string]bool{}
	for _, in := range view {
		rid := in.Tags.RequestID
		r := m.reqs[rid]
		if r == nil {
			r = &remembered{gen: in.Tags.Gen}
			m.reqs[rid] = r
		}
		r.gen, r.seen = max(r.gen, in.Tags.Gen), now
		newest[rid] = max(newest[rid], in.Tags.Gen)
		if in.Status == gossip.StatusAlive || in.Status == gossip.StatusLeaving {
			live[rid] = true
		}
	}
	for _, in := range view {
		rid := in.Tags.RequestID
		r := m.reqs[rid]
		if in.Status != gossip.StatusFailed || in.Tags.Restart != RestartOnFailure || in.Tags.End != "" || live[rid] || in.Name == r.ended ||
			in.Tags.Gen != newest[rid] || r.orphan != nil && r.orphan.Tags.Gen >= in.Tags.Gen {
			continue
		}
		last := in
		r.orphan, r.failedAt = &last, now
	}
	for _, in := range view {
		r := m.reqs[in.Tags.RequestID]
		if r.orphan == nil || in.Name == r.orphan.Name && in.Status == gossip.StatusFailed {
			continue
		}
		if in.Tags.Gen > r.orphan.Tags.Gen || in.Tags.Gen == r.orphan.Tags.Gen && in.Status != gossip.StatusFailed {
			r.orphan = nil
		}
	}
	for rid, r := range m.reqs {
		if r.orphan == nil && now.Sub(r.seen) > genKeep {
			delete(m.reqs, rid)
			m.persistLocked(rid)
		}
	}
	for _, rid := range dropOldest(m.reqs, maxRemembered, func(r *remembered) time.Time { return r.seen }, now) {
		m.persistLocked(rid)
	}
	for _, in := range view {
		m.persistLocked(in.Tags.RequestID)
	}
}

// genOf is the highest generation of rid this agent has seen, or NoGen.
func (m *memory) genOf(rid string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.reqs[rid]; r != nil {
		return r.gen
	}
	return NoGen
}

// placed records that this agent placed gen of rid, before any view shows
// it, so that a placement right after it goes one higher still.
func (m *memory) placed(rid string, gen int, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.reqs[rid]
	if r == nil {
		r = &remembered{gen: gen}
		m.reqs[rid] = r
	}
	r.gen, r.seen = max(r.gen, gen), now
	m.persistLocked(rid)
}

// resolve forgets rid's orphan when it is the interpreter called name: its
// server says it ended on purpose.
func (m *memory) resolve(rid, name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.reqs[rid]; r != nil {
		r.ended = name
		if r.orphan != nil && r.orphan.Name == name {
			r.orphan = nil
			m.persistLocked(rid)
		}
	}
}

// withOrphans returns view plus the remembered orphans the view no longer
// shows (the reap forgot them), their hosts' status read from members.
func (m *memory) withOrphans(view []Instance, members []gossip.Member) []Instance {
	inView := map[string]bool{}
	for _, in := range view {
		inView[in.Tags.RequestID] = true
	}
	m.mu.Lock()
	var extra []Instance
	for rid, r := range m.reqs {
		if r.orphan != nil && !inView[rid] {
			extra = append(extra, *r.orphan)
		}
	}
	m.mu.Unlock()
	if len(extra) == 0 {
		return view
	}
	status := map[string]gossip.Status{}
	for _, mb := range members {
		status[mb.Name] = mb.Status
	}
	for i := range extra {
		st, listed := status[extra[i].Host]
		if !listed {
			st = gossip.StatusLeft // forgotten by the mesh: gone
		}
		extra[i].HostStatus = st
	}
	return append(append([]Instance(nil), view...), extra...)
}

// lostSince is when this agent first saw rid's newest interpreter failed
// with no live copy, while it is unresolved.
func (m *memory) lostSince(rid string) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.reqs[rid]; r != nil && r.orphan != nil {
		return r.failedAt, true
	}
	return time.Time{}, false
}

// stuckAfter is how long an on-failure interpreter may stay failed on a
// host that is alive before the mesh re-places it. Its host restarts it
// when it knows it, mostly within seconds; a host that came back without
// its supervisors' record (or its data dir) does not, and nobody else
// would. Short enough that the re-placement's election and start fit in
// T_settle (30 s) after the host's return. Should the host restart it at
// the same moment, both ask the servers for the request (claimRestart),
// and only one gets a majority's grant.
const stuckAfter = 15 * time.Second

// stuck lists the remembered orphans whose hosts are alive in members but
// that stayed failed for stuckAfter: the mesh must re-place them.
func (m *memory) stuck(members []gossip.Member, now time.Time) []Orphan {
	alive := map[string]bool{}
	for _, mb := range members {
		if mb.Status == gossip.StatusAlive || mb.Status == gossip.StatusLeaving {
			alive[mb.Name] = true
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Orphan
	for _, r := range m.reqs {
		if o := r.orphan; o != nil && alive[o.Host] && now.Sub(r.failedAt) >= stuckAfter {
			last := *o
			last.HostStatus = gossip.StatusAlive
			out = append(out, Orphan{Last: last, NextGen: r.gen + 1})
		}
	}
	slices.SortFunc(out, func(a, b Orphan) int { return cmp.Compare(a.Last.Tags.RequestID, b.Last.Tags.RequestID) })
	return out
}

// dropOldest deletes from m the entries at (of at most now) says are the
// oldest, while it holds more than limit, and returns their keys.
func dropOldest[V any](m map[string]V, limit int, at func(V) time.Time, now time.Time) (dropped []string) {
	for len(m) > limit {
		oldest, when := "", now
		for k, v := range m {
			if !at(v).After(when) {
				oldest, when = k, at(v)
			}
		}
		delete(m, oldest)
		dropped = append(dropped, oldest)
	}
	return dropped
}

// NextGen is the generation of a new placement of a request whose highest
// known generation is known (NoGen when none was ever seen): one above
// every earlier placement, so that it wins over any copy of them that
// comes back, in whatever order the views merge.
func NextGen(known int) int {
	if known == NoGen {
		return 0
	}
	return known + 1
}

// observeServers takes in the servers members lists at now. A server is
// remembered until it leaves (gracefully, or forced out), or goes unlisted
// for genKeep: a view fresh from a restart lists only the servers it has
// reached again, and must not count a majority of those alone.
func (m *memory) observeServers(members []gossip.Member, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mb := range members {
		if mb.Tags[gossip.TagRole] != string(gossip.RoleServer) {
			continue
		}
		_, known := m.servers[mb.Name]
		switch {
		case mb.Status == gossip.StatusLeft:
			if known {
				delete(m.servers, mb.Name)
				m.j.add(journalRec{K: "l", R: mb.Name})
			}
		default:
			if !known {
				m.j.add(journalRec{K: "s", R: mb.Name})
			}
			m.servers[mb.Name] = now
		}
	}
	for name, seen := range m.servers {
		if now.Sub(seen) > genKeep {
			delete(m.servers, name)
			m.j.add(journalRec{K: "l", R: name})
		}
	}
}

// serversKnown is how many servers there are to count a majority of: the
// view's (q), and those this agent remembers and q does not list. Before,
// two servers that restarted during a partition (one without its data
// dir) listed only each other, saw two of two, and placed a key that the
// other side ran at the same generation (chaos seed 867,
// the-answer-stands).
func (m *memory) serversKnown(q Quorum) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(q.Alive) + len(q.Missing)
	for name := range m.servers {
		if !slices.Contains(q.Alive, name) && !slices.Contains(q.Missing, name) {
			n++
		}
	}
	return n
}
