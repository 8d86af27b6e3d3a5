package state

import (
	"fmt"
	"math"
	"time"
)

// PublishPolicy says when a server's load is worth gossiping. A tag update
// is an incarnation bump that every node of the mesh receives, so load is
// published only when it moved enough to matter to placement, never more
// often than MinInterval, and at least every MaxInterval.
type PublishPolicy struct {
	Threshold   float64       // percentage points an average must move
	MinInterval time.Duration // no two updates closer than this
	MaxInterval time.Duration // a drift below the threshold goes out after this
}

// DefaultPublishPolicy is the agent's default: 2 points, 2 s, 60 s.
func DefaultPublishPolicy() PublishPolicy {
	return PublishPolicy{Threshold: 2, MinInterval: 2 * time.Second, MaxInterval: 60 * time.Second}
}

// Validate checks that the policy can work: a non-negative threshold and
// 0 < MinInterval <= MaxInterval.
func (p PublishPolicy) Validate() error {
	if p.Threshold < 0 || math.IsNaN(p.Threshold) {
		return fmt.Errorf("publish threshold %v must be 0 or more percentage points", p.Threshold)
	}
	if p.MinInterval <= 0 || p.MaxInterval < p.MinInterval {
		return fmt.Errorf("publish intervals min %s, max %s: need 0 < min <= max", p.MinInterval, p.MaxInterval)
	}
	return nil
}

// Published is what a server last put in its tags: load rounded as the
// tags carry it (one decimal) and the interpreter count.
type Published struct {
	CPU, Mem     float64
	Interpreters int
	At           time.Time
	Valid        bool // false until the first publication
}

// Round1 rounds a percentage to the one decimal that tags carry.
func Round1(v float64) float64 { return math.Round(v*10) / 10 }

// Decide returns whether to publish now, and why, given what was last
// published and the current values. A reason is returned for logs and tests.
// Values are compared as the tags carry them (one decimal), so a change too
// small to show in the tags is never published.
func (p PublishPolicy) Decide(last Published, cpu, mem float64, interpreters int, now time.Time) (bool, string) {
	cpu, mem = Round1(cpu), Round1(mem)
	if !last.Valid {
		return true, "first publication"
	}
	since := now.Sub(last.At)
	if since < 0 {
		// The clock stepped back: measure from now on, as if just published.
		since = 0
	}
	if since < p.MinInterval {
		return false, "within the minimum interval"
	}
	if interpreters != last.Interpreters {
		return true, "interpreter count changed"
	}
	if math.Abs(cpu-last.CPU) > p.Threshold || math.Abs(mem-last.Mem) > p.Threshold {
		return true, "load moved past the threshold"
	}
	if since >= p.MaxInterval && (cpu != last.CPU || mem != last.Mem) {
		return true, "maximum interval reached with a small drift"
	}
	return false, "no change worth gossiping"
}
