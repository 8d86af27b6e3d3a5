package interp

import "time"

// replaceGrace is how long an owner trusts a re-placement it made that its
// own view does not show yet. The new interpreter's join reaches the owner
// by gossip, usually within a second; until it does, the view still shows
// the request as an orphan. Past the grace the owner places it again (the
// interpreter may have died before anyone heard of it), and if it was alive
// after all, the duplicate rule stops one of the two.
const replaceGrace = 30 * time.Second

// replacer is one owner's memory of its re-placements. It decides, from a
// fresh view on every call, which orphans to place now: none it is placing
// already, none it placed and its view has not caught up with, and none
// before the backoff after a failed attempt has passed. Time is passed in.
// Not safe for concurrent use.
type replacer struct {
	b     Backoff
	grace time.Duration
	reqs  map[string]*replaceState
}

type replaceState struct {
	tries     *Tracker
	busy      bool          // an attempt is under way
	retryIn   time.Duration // the wait after this attempt, should it fail
	notBefore time.Time     // no attempt before this (after a failure)
	placedGen int           // the newest generation this owner placed
	placedAt  time.Time
}

func newReplacer(b Backoff, grace time.Duration) *replacer {
	return &replacer{b: b, grace: grace, reqs: map[string]*replaceState{}}
}

// due returns the orphans this owner starts re-placing at now, each marked
// busy until done is called for it. ours says whether this node is an
// orphan's owner in the same view. A request whose attempts in the
// backoff's window are spent is skipped until the window frees one.
func (r *replacer) due(orphans []Orphan, ours func(rid string) bool, now time.Time) (start []Orphan) {
	current := map[string]bool{}
	for _, o := range orphans {
		rid := o.Last.Tags.RequestID
		current[rid] = true
		if !ours(rid) {
			continue
		}
		s := r.reqs[rid]
		if s == nil {
			s = &replaceState{tries: NewTracker(r.b)}
			r.reqs[rid] = s
		}
		switch {
		case s.busy:
			continue
		case o.NextGen <= s.placedGen && now.Sub(s.placedAt) < r.grace:
			continue // placed by us; our view has not heard it yet
		case now.Before(s.notBefore):
			continue
		}
		delay, ok := s.tries.Next(now)
		if !ok {
			continue // given up: said once, when the last attempt failed
		}
		s.busy, s.retryIn = true, delay
		start = append(start, o)
	}
	// Forget the requests that are no orphans here, once nothing is under
	// way for them and their attempts have left the window.
	for rid, s := range r.reqs {
		if !current[rid] && !s.busy && s.tries.inWindow(now) == 0 {
			delete(r.reqs, rid)
		}
	}
	return start
}

// done records how an attempt that due started ended: placed (gen is the
// generation started, or found alive) or failed.
func (r *replacer) done(rid string, gen int, placed bool, now time.Time) {
	s := r.reqs[rid]
	if s == nil {
		return
	}
	s.busy = false
	if gen == notNow {
		// Another agent elected it at the moment, or too few servers
		// answered: no attempt was made, so none is spent; look again soon.
		s.tries.refund()
		s.notBefore = now.Add(retryJitter(notNowWait))
		return
	}
	if placed {
		s.placedGen, s.placedAt = max(s.placedGen, gen), now
		return
	}
	s.notBefore = now.Add(s.retryIn)
}

// notNow is the generation done is told when the attempt did not get to
// place (see replace), and notNowWait how long the owner then waits, give
// or take half of it (retryJitter).
const (
	notNow     = -1
	notNowWait = 2 * time.Second
)

// spent says whether the request's attempts in the window are used up.
func (r *replacer) spent(rid string, now time.Time) bool {
	s := r.reqs[rid]
	return s != nil && !s.tries.canTry(now)
}
