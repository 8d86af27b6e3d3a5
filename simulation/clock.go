package simulation

import (
	"fmt"
	"math"
	"time"
)

// Time dilation.
//
// Every simulated node is a real memberlist and serf, and their timers are
// the time package's. A run in virtual time (virtual.go) puts them on a
// testing/synctest bubble's clock; a run in real time keeps the machine's
// clock, and then the simulation dilates it: with a dilation of D, every
// protocol timer (each node's memberlist and serf configuration and heal
// prober, through gossip.Config.TimeScale), every link delay, every TCP
// retransmission and every timer of the harness (the fault schedule, the
// baseline's heartbeats, the placement timeouts) lasts D times longer on
// the wall clock, and every figure is reported in protocol time (wall time
// / D).
//
// The protocol sees the same sequence of events as at D = 1, only slower;
// what does not stretch is the CPU time the nodes spend, which is the
// point: at D the process has D times more CPU per protocol second, as if
// the nodes ran on a machine D times faster. A run of N nodes needs a
// dilation at which the whole mesh's work per protocol second fits the
// machine's cores; AutoDilation picks one from N, and the report's timer
// lag (in protocol milliseconds) says whether it sufficed.

// MaxDilation bounds a run's dilation: past it a run of a few minutes of
// protocol time would take hours.
const MaxDilation = 50

// AutoDilation is the dilation a run of n nodes gets when none is asked
// for (doubled for a plan that splits the mesh: Plan.dilation): 1 (real
// time) up to 100 nodes, then n/125 rounded up, at least 2
// (3 at 300 nodes, 5 at 600, 8 at 1,000, 16 at 2,000), chosen on this
// project's 2-core machine (docs/scale.md); the report's timer lag says
// whether it sufficed.
//
// The worst moment sets it: news that every member gossips at once (a
// forming's last joins, each side of a partition failing the other) makes
// each node send its GossipNodes packets every GossipInterval, so the
// mesh's packets per protocol second grow as n, and a dilation that keeps
// them within the cores grows as n too. Short of it, probe acks wait behind
// the gossip, the probes time out, and the false suspicions are news again:
// at 1,000 nodes, two formings in three dilated 5, and the one tried
// dilated 3, fell into that and did not come out; dilated 8, seven in
// eight formed, in the same wall time (a forming is bounded by CPU, not by
// the clock), and the eighth crawled.
func AutoDilation(n int) float64 {
	if n <= 100 {
		return 1
	}
	return math.Min(MaxDilation, math.Max(2, math.Ceil(float64(n)/125)))
}

// dilation is the dilation a run of the plan gets when none is asked for:
// AutoDilation(p.Nodes), twice that past 100 nodes when the plan splits the
// mesh (partition, partition3, burst: 6 at 300 nodes, 16 at 1,000). A heal
// is as much news as a forming (each side re-learns the other's members
// and refutes its death verdicts) but comes within seconds of protocol
// time: at 1,000 nodes dilated 8 it starved the process (timer lag p99
// 299 ms, a million failures no fault caused); dilated 16 the machine kept
// up (p99 1.9 ms) and the heal was measured (docs/scale.md).
func (p Plan) dilation() float64 {
	d := AutoDilation(p.Nodes)
	if d == 1 {
		return d
	}
	for _, f := range p.Faults {
		if f.Kind == FaultPartition {
			return math.Min(MaxDilation, 2*d)
		}
	}
	return d
}

// checkDilation accepts 0 (automatic) or a factor from 1 to MaxDilation.
func checkDilation(d float64) error {
	if d == 0 || (d >= 1 && d <= MaxDilation) {
		return nil
	}
	return fmt.Errorf("dilation %v: use 1 (real time) to %d, or 0 to choose by the number of nodes", d, MaxDilation)
}

// clock converts between the wall clock and protocol time for one
// dilation. Protocol instants are wall instants mapped around a fixed base,
// so they compare and subtract like times; the zero clock is real time.
type clock struct {
	scale float64   // the dilation, at least 1; 0 is taken as 1
	base  time.Time // the wall instant where both times agree
}

func newClock(scale float64) clock {
	if scale < 1 {
		scale = 1
	}
	return clock{scale: scale, base: time.Now()}
}

func (c clock) factor() float64 {
	if c.scale < 1 {
		return 1
	}
	return c.scale
}

// wall is how long a protocol duration lasts on the wall clock.
func (c clock) wall(d time.Duration) time.Duration {
	if c.factor() == 1 {
		return d
	}
	return time.Duration(float64(d) * c.scale)
}

// proto maps a wall instant to protocol time.
func (c clock) proto(t time.Time) time.Time {
	if c.factor() == 1 || t.IsZero() {
		return t
	}
	return c.base.Add(time.Duration(float64(t.Sub(c.base)) / c.scale))
}

// protoDur is the protocol duration of a wall duration.
func (c clock) protoDur(d time.Duration) time.Duration {
	if c.factor() == 1 {
		return d
	}
	return time.Duration(float64(d) / c.scale)
}

// now is the protocol time now.
func (c clock) now() time.Time { return c.proto(time.Now()) }
