package chaos

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The invariants Check judges: DESIGN.md's "Interpreters under faults".
const (
	OnePerKey        = "one-per-key"
	TheAnswerStands  = "the-answer-stands"
	NothingUnlisted  = "nothing-unlisted"
	EveryAnswerTrue  = "every-answer-true"
	NothingLost      = "nothing-lost"
	StopMeansStopped = "stop-means-stopped"
	// NoQuietEnd: the history does not end with a quiet snapshot taken
	// after the last heal and the settle time, so the rules that judge
	// the end could not be judged.
	NoQuietEnd = "no-quiet-end"
)

// StopGrace is how long after a stop's answer its process may still be
// seen: the supervisor stops its child and exits, which takes a moment.
const StopGrace = 5 * time.Second

// The agents' event types the checker reads.
const (
	eventGaveUp    = "interpreter-gave-up"
	eventReplaced  = "interpreter-replaced"
	eventRestarted = "interpreter-restart"
	eventStopped   = "interpreter-stopped"
)

// Violation is one rule broken in a history.
type Violation struct {
	Invariant string
	At        time.Duration // when the history shows it broken
	Detail    string
	// Slice is the shortest part of the history that shows it, one entry
	// a line, in order of time.
	Slice []string
}

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s at %s: %s", v.Invariant, secs(v.At), v.Detail)
	for _, l := range v.Slice {
		b.WriteString("\n  " + l)
	}
	return b.String()
}

// Check judges a history by every invariant and returns the violations in
// order of time; none when the rules held. Outcomes Info are unknown: they
// break no rule by themselves, and an Info spawn may explain a process.
func Check(h History) []Violation {
	c := newChecker(h)
	c.quietEnd()
	c.onePerKey()
	c.theAnswerStands()
	c.nothingUnlisted()
	c.everyAnswerTrue()
	c.nothingLost()
	c.stopMeansStopped()
	slices.SortStableFunc(c.out, func(a, b Violation) int { return cmp.Compare(a.At, b.At) })
	return c.out
}

type checker struct {
	h        History // its slices copied and sorted by time: ops by their answer
	lastHeal time.Duration
	settleAt time.Duration // from then on, quiet snapshots are judged in full
	final    *Snapshot     // the last snapshot, when quiet and after settleAt
	ridOf    map[string]string
	latest   map[string]Op // by RID: the latest OK spawn answer the final snapshot can show
	out      []Violation
}

func newChecker(h History) *checker {
	h.Ops = slices.Clone(h.Ops)
	h.Faults = slices.Clone(h.Faults)
	h.Events = slices.Clone(h.Events)
	h.Snapshots = slices.Clone(h.Snapshots)
	slices.SortStableFunc(h.Ops, func(a, b Op) int { return cmp.Compare(a.Completed, b.Completed) })
	slices.SortStableFunc(h.Faults, func(a, b Fault) int { return cmp.Compare(a.At, b.At) })
	slices.SortStableFunc(h.Events, func(a, b Event) int { return cmp.Compare(a.At, b.At) })
	slices.SortStableFunc(h.Snapshots, func(a, b Snapshot) int { return cmp.Compare(a.At, b.At) })

	c := &checker{h: h, ridOf: map[string]string{}, latest: map[string]Op{}}
	// The driver's LastHeal, or later if a fault says so: a rule must not
	// be judged while a fault is still in force.
	c.lastHeal = h.LastHeal
	for _, f := range h.Faults {
		c.lastHeal = max(c.lastHeal, f.At, f.Until)
	}
	c.settleAt = c.lastHeal + h.Settle
	if n := len(h.Snapshots); n > 0 && h.Snapshots[n-1].Quiet && h.Snapshots[n-1].At >= c.settleAt {
		c.final = &h.Snapshots[n-1]
	}

	learn := func(name, rid string) {
		if name != "" && rid != "" && c.ridOf[name] == "" {
			c.ridOf[name] = rid
		}
	}
	for _, o := range h.Ops {
		if o.Kind == OpSpawn && o.Outcome == OK {
			learn(o.Name, o.RID)
		}
	}
	for _, e := range h.Events {
		learn(e.Name, e.RID)
	}
	for _, s := range h.Snapshots {
		for _, p := range s.Processes {
			learn(p.Name, p.RID)
		}
		for _, a := range sortedKeys(s.Lists) {
			for _, l := range s.Lists[a] {
				learn(l.Name, l.RID)
			}
		}
	}
	for _, o := range h.Ops {
		// An answer after the final snapshot is one the snapshot cannot show.
		if rid := c.rid(o); o.Kind == OpSpawn && o.Outcome == OK && rid != "" && c.final != nil && o.Completed <= c.final.At {
			c.latest[rid] = o // ops are in order of answer: the last one stays
		}
	}
	return c
}

// rid is the request id an op is about: its own, or its interpreter's.
func (c *checker) rid(o Op) string {
	if o.RID != "" {
		return o.RID
	}
	return c.ridOf[o.Name]
}

func (c *checker) add(v Violation, ls []line) {
	v.Slice = render(ls)
	c.out = append(c.out, v)
}

// judged lists the quiet snapshots taken after the last heal and the
// settle time: those every rule applies to in full.
func (c *checker) judged() []Snapshot {
	var out []Snapshot
	for _, s := range c.h.Snapshots {
		if s.Quiet && s.At >= c.settleAt {
			out = append(out, s)
		}
	}
	return out
}

// about says whether op o names the interpreter name or one of request
// rid.
func (c *checker) about(o Op, rid, name string) bool {
	return name != "" && o.Name == name || rid != "" && c.rid(o) == rid
}

// stopped finds an OK stop of request rid (or of its interpreter name)
// answered at or after from and asked by by.
func (c *checker) stopped(rid, name string, from, by time.Duration) *Op {
	for i, o := range c.h.Ops {
		if o.Kind == OpStop && o.Outcome != Fail && o.Completed >= from && o.Invoked <= by && c.about(o, rid, name) {
			return &c.h.Ops[i]
		}
	}
	return nil
}

// endedBySignal finds an OK signal to request rid answered at or after
// from and asked by by that may have ended it cleanly (SIGTERM, SIGINT,
// or one the driver did not record), which no restart policy undoes.
func (c *checker) endedBySignal(rid, name string, from, by time.Duration) *Op {
	for i, o := range c.h.Ops {
		if o.Kind == OpSignal && o.Outcome != Fail && o.Completed >= from && o.Invoked <= by && c.about(o, rid, name) &&
			(o.Signal == "" || o.Signal == "SIGTERM" || o.Signal == "SIGINT") {
			return &c.h.Ops[i]
		}
	}
	return nil
}

// provenance is what tells where interpreter name (of request rid) came
// from, up to before: the first answer that named it and the events about
// it; with neither, the last Info spawn of its request, which may have
// started it.
func (c *checker) provenance(name, rid string, before time.Duration) []line {
	var ls []line
	for _, o := range c.h.Ops {
		if o.Kind == OpSpawn && o.Outcome == OK && o.Name == name && o.Completed <= before {
			ls = append(ls, opLine(o))
			break
		}
	}
	for _, e := range c.h.Events {
		if e.Name == name && e.At <= before {
			ls = append(ls, eventLine(e))
		}
	}
	if len(ls) > 0 {
		return ls
	}
	for i := len(c.h.Ops) - 1; i >= 0; i-- {
		if o := c.h.Ops[i]; o.Kind == OpSpawn && o.Outcome == Info && c.rid(o) == rid && rid != "" && o.Invoked <= before {
			return []line{opLine(o)}
		}
	}
	return nil
}

// inForce lists the faults not over at t: a network fault or a pause
// before its Until, a crash not yet restarted, a drain not yet undone.
func (c *checker) inForce(t time.Duration) []Fault {
	var out []Fault
	open := map[string]Fault{} // host -> its crash or drain
	for _, f := range c.h.Faults {
		if f.At > t {
			break
		}
		if f.Until > t {
			out = append(out, f)
		}
		if len(f.Hosts) == 0 {
			continue
		}
		switch f.Kind {
		case FaultCrashHost, FaultCrashAgent, FaultDrain:
			open[f.Hosts[0]+"/"+string(f.Kind)] = f
		case FaultRestartHost, FaultRestartAgent, FaultUndrain:
			delete(open, f.Hosts[0]+"/"+string(follows[f.Kind]))
		}
	}
	for _, k := range sortedKeys(open) {
		out = append(out, open[k])
	}
	return out
}

func (c *checker) quietEnd() {
	n := len(c.h.Snapshots)
	const must = "a run must end quiet, with a snapshot taken once every fault has healed and the settle time has passed"
	if n == 0 {
		c.add(Violation{Invariant: NoQuietEnd, At: c.h.End, Detail: "the history has no snapshot: " + must}, nil)
		return
	}
	last := c.h.Snapshots[n-1]
	switch {
	case !last.Quiet:
		ls := []line{snapshotLine(last)}
		for _, f := range c.inForce(last.At) {
			ls = append(ls, faultLine(f))
		}
		c.add(Violation{Invariant: NoQuietEnd, At: last.At,
			Detail: fmt.Sprintf("the last snapshot, at %s, is not quiet: %s", secs(last.At), must)}, ls)
	case last.At < c.settleAt:
		ls := []line{snapshotLine(last)}
		for _, f := range c.h.Faults {
			if f.At == c.lastHeal || f.Until == c.lastHeal {
				ls = append(ls, faultLine(f))
			}
		}
		c.add(Violation{Invariant: NoQuietEnd, At: last.At,
			Detail: fmt.Sprintf("the last snapshot, at %s, comes before the last heal (%s) plus the settle time (%s): %s",
				secs(last.At), secs(c.lastHeal), secs(c.h.Settle), must)}, ls)
	}
}

// plural picks the word that agrees with a count of n.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func describe(p Process) string { return fmt.Sprintf("%s (gen %d on %s)", p.Name, p.Gen, p.Host) }

// onePerKey: in every judged snapshot, at most one process per request.
func (c *checker) onePerKey() {
	reported := map[string]bool{}
	for _, s := range c.judged() {
		byRID := map[string][]Process{}
		for _, p := range s.Processes {
			if p.RID != "" {
				byRID[p.RID] = append(byRID[p.RID], p)
			}
		}
		for _, rid := range sortedKeys(byRID) {
			ps := byRID[rid]
			if len(ps) < 2 || reported[rid] {
				continue
			}
			reported[rid] = true
			var ls []line
			var names []string
			for _, p := range ps {
				ls = append(ls, processLine(s, p))
				ls = append(ls, c.provenance(p.Name, rid, s.At)...)
				names = append(names, describe(p))
			}
			c.add(Violation{Invariant: OnePerKey, At: s.At,
				Detail: fmt.Sprintf("rid %s has %d processes at %s, after the last heal and the settle time: %s",
					rid, len(ps), secs(s.At), strings.Join(names, ", "))}, ls)
		}
	}
}

// placedAfter says whether process p, of a higher generation than the
// latest answer a, was placed after it: named by an answer or by a
// re-placement or restart event, or possibly started by an Info spawn.
// "After" is real-time order, as linearizability has it: an answer that
// a did not follow (it completed after a was invoked: the two overlap)
// may come after a. A spawn asked of an agent whose network was held
// (a pause) named the interpreter it knew when the pause began, and its
// answer reached the client after another client's newer one that began
// and ended inside it (chaos seed 60449): no order of the two is wrong.
func (c *checker) placedAfter(p Process, a Op) bool {
	for _, e := range c.h.Events {
		if (e.Type == eventReplaced || e.Type == eventRestarted) && e.Name == p.Name && e.Gen == p.Gen && e.At >= a.Invoked {
			return true
		}
	}
	for _, o := range c.h.Ops {
		switch {
		case o.Kind != OpSpawn:
		case o.Outcome == OK && o.Name == p.Name && o.Gen == p.Gen && o.Completed >= a.Invoked:
			return true
		case o.Outcome == Info && c.rid(o) == a.RID && o.Completed >= a.Invoked:
			return true
		}
	}
	return false
}

// theAnswerStands: at the end, a request's process is the one its latest
// answer named, or one placed after it; never an older copy.
func (c *checker) theAnswerStands() {
	if c.final == nil {
		return
	}
	s := *c.final
	for _, rid := range sortedKeys(c.latest) {
		a := c.latest[rid]
		a.RID = rid
		if c.stopped(rid, a.Name, a.Completed, s.At) != nil {
			continue
		}
		var why []string
		ls := []line{opLine(a)}
		answerRuns := false
		for _, p := range s.Processes {
			if p.RID != rid {
				continue
			}
			ls = append(ls, processLine(s, p))
			switch {
			case p.Name == a.Name && p.Gen == a.Gen:
				answerRuns = true
				continue
			case p.Gen > a.Gen && c.placedAfter(p, a):
				continue
			case p.Gen < a.Gen:
				why = append(why, fmt.Sprintf("%s runs at the end, older than %s that the latest answer (op %d) named: a stale copy won",
					describe(p), describe(Process{Name: a.Name, Gen: a.Gen, Host: a.Host}), a.ID))
			case p.Gen == a.Gen:
				why = append(why, fmt.Sprintf("%s runs at the end, but the latest answer (op %d) named %s of the same generation: a stale copy won",
					describe(p), a.ID, describe(Process{Name: a.Name, Gen: a.Gen, Host: a.Host})))
			default:
				why = append(why, fmt.Sprintf("%s runs at the end, newer than the latest answer (op %d, %s), but no answer, "+
					"re-placement or restart named it", describe(p), a.ID, a.Name))
			}
			ls = append(ls, c.provenance(p.Name, rid, s.At)...)
		}
		if len(why) == 0 {
			continue
		}
		if !answerRuns {
			ls = append(ls, absentLine(s, a.Name))
		}
		c.add(Violation{Invariant: TheAnswerStands, At: s.At,
			Detail: fmt.Sprintf("rid %s: %s", rid, strings.Join(why, "; "))}, ls)
	}
}

// settling says whether interpreter name (of request rid) may still be
// changing at snapshot s, as clients keep asking after the last heal: an
// operation about it was under way within the settle time before s, or an
// agent reported a change to it within the settle time either side of s.
// Lists follow a change by gossip, within the settle time.
func (c *checker) settling(name, rid string, s Snapshot) bool {
	from := s.At - c.h.Settle
	for _, o := range c.h.Ops {
		if o.Invoked <= s.At && o.Completed >= from && c.about(o, rid, name) {
			return true
		}
	}
	for _, e := range c.h.Events {
		if e.At >= from && e.At <= s.At+c.h.Settle && (name != "" && e.Name == name || rid != "" && e.RID == rid) {
			return true
		}
	}
	return false
}

// nothingUnlisted: in every judged snapshot, every process is listed by
// every agent, and everything an agent lists runs, unless it is still
// settling.
func (c *checker) nothingUnlisted() {
	reported := map[string]bool{}
	for _, s := range c.judged() {
		agents := sortedKeys(s.Lists)
		listed := map[string]map[string]bool{}
		for _, a := range agents {
			listed[a] = map[string]bool{}
			for _, l := range s.Lists[a] {
				listed[a][l.Name] = true
			}
		}
		running := map[string]bool{}
		for _, p := range s.Processes {
			running[p.Name] = true
		}
		for _, p := range s.Processes {
			var missing []string
			ls := []line{processLine(s, p)}
			for _, a := range agents {
				if !listed[a][p.Name] {
					missing = append(missing, a)
					ls = append(ls, unlistedLine(s, a, p.Name))
				}
			}
			if len(missing) == 0 || reported["process "+p.Name] || c.settling(p.Name, p.RID, s) {
				continue
			}
			reported["process "+p.Name] = true
			ls = append(ls, c.provenance(p.Name, p.RID, s.At)...)
			c.add(Violation{Invariant: NothingUnlisted, At: s.At,
				Detail: fmt.Sprintf("%s (rid %s, gen %d) runs on %s at %s, but %s %s not list it", p.Name, orNone(p.RID), p.Gen, p.Host, secs(s.At),
					strings.Join(missing, ", "), plural(len(missing), "does", "do"))}, ls)
		}
		for _, a := range agents {
			for _, l := range s.Lists[a] {
				if running[l.Name] || reported["listed "+l.Name] || c.settling(l.Name, l.RID, s) {
					continue
				}
				reported["listed "+l.Name] = true
				var by []string
				var ls []line
				for _, b := range agents {
					for _, m := range s.Lists[b] {
						if m.Name == l.Name {
							by = append(by, b)
							ls = append(ls, listedLine(s, b, m))
							break
						}
					}
				}
				ls = append(ls, absentLine(s, l.Name))
				for _, e := range c.h.Events {
					if e.Name == l.Name && e.At <= s.At {
						ls = append(ls, eventLine(e))
					}
				}
				c.add(Violation{Invariant: NothingUnlisted, At: s.At,
					Detail: fmt.Sprintf("%s %s %s (on %s) alive at %s, but no host runs it", strings.Join(by, ", "),
						plural(len(by), "lists", "list"), l.Name, l.Host, secs(s.At))}, ls)
			}
		}
	}
}

// everyAnswerTrue: a spawn that waited named a live process; an unkeyed
// spawn that failed started nothing.
func (c *checker) everyAnswerTrue() {
	for _, o := range c.h.Ops {
		if o.Kind != OpSpawn {
			continue
		}
		if o.Outcome == OK && o.Wait && !o.AliveAtAnswer {
			c.add(Violation{Invariant: EveryAnswerTrue, At: o.Completed,
				Detail: fmt.Sprintf("op %d waited and answered %s on %s, but it was not alive at the answer", o.ID, o.Name, o.Host)},
				[]line{opLine(o)})
		}
		// Keyed fails share their request with other ops, so only an
		// unkeyed one's request is its own.
		if o.Outcome != Fail || o.Key != "" || o.RID == "" || c.sharesRID(o) {
			continue
		}
		for _, s := range c.h.Snapshots {
			if s.At < o.Completed+c.h.Settle {
				continue
			}
			i := slices.IndexFunc(s.Processes, func(p Process) bool { return p.RID == o.RID })
			if i < 0 {
				continue
			}
			p := s.Processes[i]
			c.add(Violation{Invariant: EveryAnswerTrue, At: s.At,
				Detail: fmt.Sprintf("op %d failed, but its request %s runs at %s as %s: a failed spawn must start nothing",
					o.ID, o.RID, secs(s.At), describe(p))}, []line{opLine(o), processLine(s, p)})
			break
		}
	}
}

// sharesRID says whether a spawn other than o, not failed, has o's RID.
func (c *checker) sharesRID(o Op) bool {
	for _, q := range c.h.Ops {
		if q.Kind == OpSpawn && q.ID != o.ID && q.Outcome != Fail && c.rid(q) == o.RID {
			return true
		}
	}
	return false
}

// nothingLost: at the end, an on-failure request its client did not end
// runs, or an agent said it gave up on it.
func (c *checker) nothingLost() {
	if c.final == nil {
		return
	}
	s := *c.final
	for _, rid := range sortedKeys(c.latest) {
		a := c.latest[rid]
		// A stop or signal of the named interpreter while the spawn was
		// still answering ends it as well as one after the answer: the
		// interpreter ran, and the client (or another) ended it.
		if a.Restart != "on-failure" || c.stopped(rid, a.Name, a.Invoked, s.At) != nil || c.endedBySignal(rid, a.Name, a.Invoked, s.At) != nil {
			continue
		}
		if slices.ContainsFunc(s.Processes, func(p Process) bool { return p.RID == rid }) || c.lostWithItsDisk(rid, a) {
			continue
		}
		// Given up on, or stopped by its server (a drain's --stop: an
		// operator's act, as a client's stop is).
		if slices.ContainsFunc(c.h.Events, func(e Event) bool {
			return (e.Type == eventGaveUp || e.Type == eventStopped) && e.At >= a.Invoked && (e.RID == rid || c.ridOf[e.Name] == rid)
		}) {
			continue
		}
		ls := []line{opLine(a), absentLine(s, "for rid "+rid)}
		hosts := map[string]bool{a.Host: true}
		for _, e := range c.h.Events {
			if e.At >= a.Invoked && (e.RID == rid || c.ridOf[e.Name] == rid) {
				ls = append(ls, eventLine(e))
				hosts[e.Host] = true
			}
		}
		for _, snap := range c.h.Snapshots {
			for _, p := range snap.Processes {
				if p.RID == rid && snap.At >= a.Invoked {
					hosts[p.Host] = true
				}
			}
		}
		for _, o := range c.h.Ops {
			if o.Kind == OpSignal && o.Completed >= a.Invoked && c.about(o, rid, a.Name) {
				ls = append(ls, opLine(o))
			}
		}
		for _, f := range c.h.Faults {
			if f.At < a.Invoked {
				continue
			}
			switch f.Kind {
			case FaultClusterRestart:
				ls = append(ls, faultLine(f))
			case FaultCrashHost, FaultRestartHost, FaultCrashAgent, FaultRestartAgent, FaultCrashSupervisor, FaultDrain, FaultUndrain:
				if len(f.Hosts) > 0 && hosts[f.Hosts[0]] {
					ls = append(ls, faultLine(f))
				}
			}
		}
		c.add(Violation{Invariant: NothingLost, At: s.At,
			Detail: fmt.Sprintf("rid %s asked --restart on-failure (op %d named %s on %s), but at the end no process runs for it "+
				"and no agent reported %s", rid, a.ID, a.Name, a.Host, eventGaveUp)}, ls)
	}
}

// lostWithItsDisk reports whether the request's only record went with
// its host's disk: the host of the interpreter that a named crashed after
// the answer and came back without its data dir, and no agent but that
// host had listed an interpreter of the request before the crash. Like a
// write acknowledged before it was replicated, nothing is left that could
// start it again (docs/interpreters.md, "Interpreters under faults"). An interpreter
// joins the mesh within a second of its start, and from then on every
// agent that saw it keeps the request.
func (c *checker) lostWithItsDisk(rid string, a Op) bool {
	var crash time.Duration
	found := false
	for _, f := range c.h.Faults {
		if !found && f.At >= a.Invoked && f.Kind == FaultCrashHost && len(f.Hosts) > 0 && f.Hosts[0] == a.Host {
			crash, found = f.At, true
			continue
		}
		if found && f.At >= crash && f.Kind == FaultRestartHost && len(f.Hosts) > 0 && f.Hosts[0] == a.Host {
			if f.KeepData {
				return false
			}
			for _, s := range c.h.Snapshots {
				if s.At > crash {
					break
				}
				for agent, ls := range s.Lists {
					if agent != a.Host && slices.ContainsFunc(ls, func(l Listed) bool { return l.RID == rid }) {
						return false
					}
				}
			}
			return true
		}
	}
	return false
}

// stopMeansStopped: StopGrace after a stop's OK answer, its process is
// gone from every host.
func (c *checker) stopMeansStopped() {
	reported := map[string]bool{}
	for _, o := range c.h.Ops {
		if o.Kind != OpStop || o.Outcome != OK || o.Name == "" || reported[o.Name] {
			continue
		}
		for _, s := range c.h.Snapshots {
			if s.At < o.Completed+StopGrace {
				continue
			}
			i := slices.IndexFunc(s.Processes, func(p Process) bool { return p.Name == o.Name })
			if i < 0 {
				continue
			}
			reported[o.Name] = true
			c.add(Violation{Invariant: StopMeansStopped, At: s.At,
				Detail: fmt.Sprintf("op %d stopped %s at %s, but it still runs on %s at %s", o.ID, o.Name, secs(o.Completed),
					s.Processes[i].Host, secs(s.At))}, []line{opLine(o), processLine(s, s.Processes[i])})
			break
		}
	}
}
