package chaos

import "time"

// Calm is a driver's account of when a run is quiet (Snapshot.Quiet): no
// fault in force, no operation awaiting its answer, and neither for the
// settle time. It also keeps History.LastHeal. Times are offsets from the
// run's start, passed in. Not safe for concurrent use: the driver guards it.
type Calm struct {
	inForce  int           // faults in force
	opsOut   int           // operations not yet answered
	since    time.Duration // when the run last became calm
	lastHeal time.Duration
}

// FaultStarted counts a fault in force until FaultEnded.
func (c *Calm) FaultStarted() { c.inForce++ }

// FaultEnded counts one fault over at at; the last one over is a heal.
func (c *Calm) FaultEnded(at time.Duration) {
	if c.inForce > 0 {
		c.inForce--
	}
	c.Healed(at)
}

// Healed marks at as the end of the last fault, when none is in force (a
// restart, say, which ends a crash counted by nothing).
func (c *Calm) Healed(at time.Duration) {
	if c.inForce == 0 {
		c.since, c.lastHeal = at, at
	}
}

// HealAll ends every fault at at: the end of the plan.
func (c *Calm) HealAll(at time.Duration) {
	c.inForce = 0
	c.Healed(at)
}

// OpStarted counts an operation awaiting its answer until OpEnded.
func (c *Calm) OpStarted() { c.opsOut++ }

// OpEnded counts one operation answered.
func (c *Calm) OpEnded() { c.opsOut-- }

// Settling restarts the settle at at: the last operation was answered.
func (c *Calm) Settling(at time.Duration) { c.since = at }

// Quiet reports whether the run is quiet at at.
func (c *Calm) Quiet(at, settle time.Duration) bool {
	return c.inForce == 0 && c.opsOut == 0 && at-c.since >= settle
}

// LastHeal is when the last fault ended.
func (c *Calm) LastHeal() time.Duration { return c.lastHeal }

// SettledAfter is how long after the last heal the history's snapshots
// first showed one process per request, each listed by every agent, and
// nothing listed that does not run (T_settle as observed); false when
// none did.
func (h History) SettledAfter() (time.Duration, bool) {
	for _, s := range h.Snapshots {
		if s.At >= h.LastHeal && len(s.Lists) == len(h.Agents) && settled(s) {
			return s.At - h.LastHeal, true
		}
	}
	return 0, false
}

// settled reports whether a snapshot shows one process per request, and
// every agent listing exactly what runs.
func settled(s Snapshot) bool {
	perRID := map[string]int{}
	running := map[string]bool{}
	for _, p := range s.Processes {
		if perRID[p.RID]++; perRID[p.RID] > 1 {
			return false
		}
		running[p.Name] = true
	}
	for _, list := range s.Lists {
		if len(list) != len(s.Processes) {
			return false
		}
		for _, l := range list {
			if !running[l.Name] {
				return false
			}
		}
	}
	return true
}
