package interp

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/state"
)

// This file applies the mesh's rules from this agent's own view: it reports
// duplicates (their supervisors stop the losers themselves) and, on a
// server, re-places the interpreters of a failed host when this server is
// their owner.

// ownerFallback is how long after the owner each next server in rank
// re-places a lost interpreter the owner did not. An owner that restarted
// never hears of a member that failed before it came back (memberlist
// passes on no dead member to a node that never knew it), so the next in
// rank must act soon: two servers that re-place at once cannot both place,
// since each needs a majority's grant. It was 30 s, and a request whose
// owner and next in rank had both restarted ran nowhere past T_settle
// (chaos seed 896, nothing-lost).
const ownerFallback = 5 * time.Second

// meshTick is how often the view is checked even when no event arrives
// (an owner's earlier attempt may have failed).
const meshTick = time.Second

// replaceBackoff bounds one owner's re-placements of one request: 5 in
// 10 minutes, the k-th retry Delay·2^(k-1) after the k-th failure.
var replaceBackoff = Backoff{Attempts: 5, Window: 10 * time.Minute, Delay: time.Second, MaxDelay: 30 * time.Second}

func (l *Lifecycle) watchMesh(changed <-chan struct{}) {
	for {
		select {
		case <-l.deps.Done:
			l.journal.close()
			return
		case <-changed:
		case <-l.clock.After(meshTick):
		}
		members, view := l.meshView()
		l.memory.observeServers(members, l.clock.Now())
		l.memory.observe(view, l.clock.Now())
		if l.journal != nil {
			if err := compactJournal(l.journal, l.memory, &l.claims); err != nil {
				l.logger.Warn("cannot compact the requests journal; it grows until the next restart", "err", err)
			}
		}
		l.reportDuplicates(view)
		if l.cfg.Server {
			l.stopSuperseded()
			l.stopOwnerless(members)
			l.tellSuperseded(members, view)
			l.replaceOrphans(members, l.memory.withOrphans(view, members))
			l.restartLost(view)
			l.restartLostAtStart(members, view)
		}
	}
}

// stopSuperseded stops this host's interpreters whose request this agent
// has seen at a newer generation: a later placement (after their host was
// declared failed, or a server timed out) answered a client with another
// interpreter, so these are stale copies. The duplicate rule stops a
// stale copy that sees the newer one alive; this covers the copy that
// never does, because the newer one ended first (stopped, drained, its
// host gone) or is out of its sight. The answer stands: once a client was
// given generation g, nothing older runs for the request again.
func (l *Lifecycle) stopSuperseded() {
	type stale struct {
		rec   state.Interpreter
		newer int
	}
	var todo []stale
	l.regMu.Lock()
	for _, i := range l.registry.List() {
		if g := l.memory.genOf(i.RequestID); g > i.Gen {
			if _, done := l.superseded[i.Name]; !done {
				l.superseded[i.Name] = g
				todo = append(todo, stale{i, g})
			}
		}
	}
	l.regMu.Unlock()
	for _, s := range todo {
		l.logger.Warn("interpreter-duplicate: stopping this host's interpreter, superseded by a newer generation of its request",
			"interpreter", s.rec.Name, "request", s.rec.RequestID, "gen", s.rec.Gen, "newer_gen", s.newer)
		markSuperseded(s.rec.Spec, fmt.Sprintf("superseded by generation %d of request %s", s.newer, s.rec.RequestID))
		l.procs.Terminate(s.rec.SupervisorPID)
	}
}

// tellFallback is how long after the owner the server next in rank tells
// a host to stop a stale copy that still runs, and so on down the ranks.
// The owner may not know the newer generation (it restarted without its
// data dir while the newer one ran and ended: chaos seed 455,
// the-answer-stands), and telling costs one small query.
const tellFallback = 5 * time.Second

// tellSuperseded has the owner of a request tell another host to stop
// its copy of the request that this agent has seen superseded: that host
// may not know (its agent restarted, or the newer generation lived and
// ended while a partition hid it from that host). Should the copy still
// run tellFallback later, the next server in rank that knows tells, and
// so on. Once per copy, again after a while if it still runs.
func (l *Lifecycle) tellSuperseded(members []gossip.Member, view []Instance) {
	alive := ServerQuorum(members).Alive
	now := l.clock.Now()
	l.meshMu.Lock()
	for name, at := range l.told {
		if now.Sub(at) > tellAgain {
			delete(l.told, name)
		}
	}
	var tell []Instance
	var gens []int
	stale := map[string]bool{}
	for _, in := range view {
		if in.Status != gossip.StatusAlive || in.HostStatus != gossip.StatusAlive || in.Host == l.cfg.Node {
			continue
		}
		g := l.memory.genOf(in.Tags.RequestID)
		if g <= in.Tags.Gen {
			continue
		}
		stale[in.Name] = true
		since, ok := l.staleSince[in.Name]
		if !ok {
			since = now
			l.staleSince[in.Name] = now
		}
		rank := OwnerRank(in.Tags.RequestID, l.cfg.Node, alive)
		if rank < 0 || now.Sub(since) < time.Duration(rank)*tellFallback {
			continue
		}
		if _, done := l.told[in.Name]; done {
			continue
		}
		l.told[in.Name] = now
		tell, gens = append(tell, in), append(gens, g)
	}
	for name := range l.staleSince {
		if !stale[name] {
			delete(l.staleSince, name)
		}
	}
	l.meshMu.Unlock()
	for k, in := range tell {
		order, _ := msgpack.Marshal(stopOrder{Name: in.Name, Superseded: gens[k]})
		l.logger.Info("telling a host to stop a superseded interpreter", "interpreter", in.Name, "host", in.Host,
			"gen", in.Tags.Gen, "newer_gen", gens[k])
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			ctx, cancel := l.untilDone(orderTimeout)
			defer cancel()
			if _, err := l.askOne(ctx, in.Host, queryStop, order, orderTimeout); err != nil {
				l.logger.Warn("could not tell a host to stop a superseded interpreter", "interpreter", in.Name, "host", in.Host, "err", err)
			}
		}()
	}
}

// tellAgain is how long an owner waits before telling a host again about
// a superseded copy that still runs.
const tellAgain = time.Minute

// reportDuplicates logs and emits each duplicate once (again if its losers
// change).
func (l *Lifecycle) reportDuplicates(view []Instance) {
	seen := map[string]bool{}
	for _, d := range Duplicates(view) {
		d.Losers = slices.DeleteFunc(d.Losers, func(x Instance) bool { return restartedBy(d.Winner, x) })
		if len(d.Losers) == 0 {
			continue
		}
		seen[d.RequestID] = true
		names := make([]string, 0, len(d.Losers))
		for _, x := range d.Losers {
			names = append(names, x.Name+"@"+x.Host)
		}
		key := strings.Join(names, ",")
		l.meshMu.Lock()
		fresh := l.duplicates[d.RequestID] != key
		l.duplicates[d.RequestID] = key
		l.meshMu.Unlock()
		if !fresh {
			continue
		}
		l.logger.Warn("interpreter-duplicate: more than one interpreter runs for one request; the losers stop themselves",
			"request", d.RequestID, "winner", d.Winner.Name, "winner_host", d.Winner.Host, "losers", key)
		for _, x := range d.Losers {
			l.emit(Event{Type: EventDuplicate, Interpreter: x.Name, RequestID: d.RequestID, Host: x.Host, Gen: x.Tags.Gen,
				Winner: d.Winner.Name, WinnerHost: d.Winner.Host})
		}
	}
	l.meshMu.Lock()
	for rid := range l.duplicates {
		if !seen[rid] {
			delete(l.duplicates, rid)
		}
	}
	l.meshMu.Unlock()
}

// restartedBy reports whether loser is an earlier start of winner's request
// that winner's host replaced after loser's supervisor died (it restarts
// the request one generation up): not a second copy, but the dead one's
// member not yet seen failed.
func restartedBy(winner, loser Instance) bool {
	return loser.Host == winner.Host && loser.Tags.Gen < winner.Tags.Gen && loser.Tags.Restarts < winner.Tags.Restarts
}

// replaceOrphans re-places each interpreter whose host failed, when this
// server is its owner and sees a majority of the servers: exactly one actor
// in a connected mesh, and none on a minority side. Every decision is taken
// on this call's view: an attempt starts at once or not at all, and the
// replacer keeps the owner from placing again what it placed and its view
// has not heard of yet.
func (l *Lifecycle) replaceOrphans(members []gossip.Member, view []Instance) {
	if !l.inMesh(members) {
		return // its view is its own alone: every other host looks gone
	}
	orphans := Orphans(view)
	for _, o := range l.memory.stuck(members, l.clock.Now()) {
		if !slices.ContainsFunc(orphans, func(x Orphan) bool { return x.Last.Tags.RequestID == o.Last.Tags.RequestID }) {
			orphans = append(orphans, o)
		}
	}
	l.meshMu.Lock()
	orphans = slices.DeleteFunc(orphans, func(o Orphan) bool { _, ended := l.endedSeen[o.Last.Name]; return ended })
	l.meshMu.Unlock()
	q := ServerQuorum(members)
	if len(orphans) > 0 && !q.Majority() {
		l.logger.Debug("not re-placing interpreters of failed hosts: no majority of servers in view", "seen", q.String())
		return
	}
	// The owner acts at once. Should it not (a server that restarted
	// without its memory never learns of a member that died before it
	// joined), the next in rank acts ownerFallback later, and so on.
	now := l.clock.Now()
	ours := func(rid string) bool {
		rank := OwnerRank(rid, l.cfg.Node, q.Alive)
		if rank <= 0 {
			return rank == 0
		}
		since, ok := l.memory.lostSince(rid)
		return ok && now.Sub(since) >= time.Duration(rank)*ownerFallback
	}
	l.meshMu.Lock()
	start := l.replacer.due(orphans, ours, l.clock.Now())
	l.meshMu.Unlock()
	for _, o := range start {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			placed, gen := l.replace(o)
			l.meshMu.Lock()
			l.replacer.done(o.Last.Tags.RequestID, gen, placed, l.clock.Now())
			l.meshMu.Unlock()
		}()
	}
}

// replace places a lost interpreter anew, as a spawn with the same request
// id, kind, arguments and policy, at least one generation up. It reports
// whether an interpreter of the request runs now (started, or found), and
// its generation.
func (l *Lifecycle) replace(o Orphan) (bool, int) {
	t := o.Last.Tags
	why := "host " + o.Last.Host + " failed"
	if o.Last.HostStatus == gossip.StatusAlive {
		why = "it failed on " + o.Last.Host + ", which did not start it again"
	}
	l.logger.Info("re-placing a lost interpreter", "interpreter", o.Last.Name, "host", o.Last.Host,
		"request", t.RequestID, "gen", o.NextGen, "why", why)
	ctx, cancel := l.untilDone(40 * time.Second)
	defer cancel()
	resp := l.place(ctx, rpc.SpawnRequest{Kind: t.Kind, Args: t.Args, Restart: t.Restart}, t.RequestID, o.NextGen, l.cfg.Node, o.Last.Name, true, time.Now())
	if resp.Code == codeEnded {
		l.logger.Info("not re-placing an interpreter: its server says it ended on purpose (the mesh missed its leave)",
			"interpreter", o.Last.Name, "host", o.Last.Host, "request", t.RequestID)
		l.meshMu.Lock()
		now := l.clock.Now()
		maps.DeleteFunc(l.endedSeen, func(_ string, at time.Time) bool { return now.Sub(at) > endedKeep })
		l.endedSeen[o.Last.Name] = now
		l.meshMu.Unlock()
		l.memory.resolve(t.RequestID, o.Last.Name)
		return false, notNow
	}
	if resp.Code == codeDefer {
		// Another agent elects the request at this moment: not a failed
		// attempt (it spends none of the re-placement's tries); a later
		// look sees what that one did. (A minority of answers is a failed
		// attempt: after the tries, the owner says it gave up.)
		l.logger.Info("not re-placing a lost interpreter yet", "request", t.RequestID, "why", resp.Error)
		return false, notNow
	}
	if resp.Code != "" {
		l.meshMu.Lock()
		spent := l.replacer.spent(t.RequestID, l.clock.Now())
		l.meshMu.Unlock()
		if spent {
			l.logger.Error("interpreter-gave-up: could not re-place an interpreter whose host failed", "request", t.RequestID, "err", resp.Error)
			l.emit(Event{Type: EventGaveUp, Interpreter: o.Last.Name, RequestID: t.RequestID, Host: o.Last.Host, Reason: resp.Error})
		} else {
			l.logger.Warn("re-placement failed; trying again", "request", t.RequestID, "err", resp.Error)
		}
		return false, o.NextGen
	}
	l.memory.placed(t.RequestID, resp.Generation, l.clock.Now())
	if resp.Existing {
		return true, resp.Generation // somebody else's re-placement is already alive
	}
	// The server that started it reports interpreter-replaced: it knows
	// even if this owner fails before the answer reaches it.
	l.logger.Info("re-placed a lost interpreter", "interpreter", resp.Name, "on", resp.Node,
		"was", o.Last.Name, "on_host", o.Last.Host, "gen", resp.Generation, "why", why)
	return true, resp.Generation
}
