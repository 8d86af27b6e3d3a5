package chaos

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Config is what a schedule is drawn from.
type Config struct {
	Seed     int64
	Agents   []string      // the hosts' names; every one runs a server agent
	Duration time.Duration // every fault starts and ends, and every operation is invoked, within it
	// Faults restricts the nemesis to these kinds (see ParseFaultKinds):
	// nil allows every kind of FaultKinds, empty but not nil allows none
	// (client operations only).
	Faults []FaultKind
}

// Request is a client operation for the driver to invoke.
type Request struct {
	ID    int // 1, 2, … in the order of At: the Op.ID of what the driver records
	At    time.Duration
	Kind  OpKind
	Agent string // the agent asked

	// Spawn: the idempotency key ("" for an unkeyed spawn), the restart
	// policy ("on-failure" or ""; one key always asks the same, since a
	// keyed spawn that differs is refused), and whether to wait until the
	// interpreter is alive.
	Key     string
	Restart string
	Wait    bool

	// Stop and signal: the driver sorts the interpreters Agent lists at
	// At by name and takes the one at Pick modulo their count (none
	// listed: the request is not sent).
	Pick   int
	Signal string // signal: SIGINT, SIGTERM or SIGKILL
}

// Step is one thing a driver does at At: start a fault, end one (End: its
// Until has come), or invoke a client operation.
type Step struct {
	At      time.Duration
	Fault   *Fault
	End     bool
	Request *Request
}

// Plan is a schedule: its steps in the order to play them.
type Plan struct {
	Seed     int64
	Agents   []string
	Duration time.Duration
	Steps    []Step
}

// Faults lists the faults the plan starts, in order: what a driver records
// in History.Faults when it plays the plan through.
func (p Plan) Faults() []Fault {
	var out []Fault
	for _, s := range p.Steps {
		if s.Fault != nil && !s.End {
			out = append(out, *s.Fault)
		}
	}
	return out
}

// FaultKinds are the faults a schedule chooses among. The restarts and the
// undrain are not among them: each follows the fault it ends.
var FaultKinds = []FaultKind{
	FaultPartition, FaultOneWay, FaultFlap, FaultLoss, FaultPause,
	FaultCrashHost, FaultCrashAgent, FaultCrashSupervisor, FaultDrain, FaultClusterRestart,
}

// follows names the fault each follower kind comes after.
var follows = map[FaultKind]FaultKind{
	FaultRestartHost:  FaultCrashHost,
	FaultRestartAgent: FaultCrashAgent,
	FaultUndrain:      FaultDrain,
}

// Signals are the signals a signal request sends: the ones rpc allows
// (restated here, as this package imports nothing of the project's).
var Signals = []string{"SIGINT", "SIGTERM", "SIGKILL"}

// ParseFaultKinds reads a comma-separated list of fault kinds, as
// `--faults partition,crash-host` gives it. An empty list allows every
// kind (nil); "none" allows none (an empty, non-nil slice). The kinds come
// back in the order of FaultKinds, whatever order the list had, so one set
// gives one plan.
func ParseFaultKinds(list string) ([]FaultKind, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return nil, nil
	}
	if list == "none" {
		return []FaultKind{}, nil
	}
	asked := map[FaultKind]bool{}
	for _, name := range strings.Split(list, ",") {
		k := FaultKind(strings.TrimSpace(name))
		if k == "" {
			continue
		}
		if err := checkFaultKind(k); err != nil {
			return nil, err
		}
		asked[k] = true
	}
	out := []FaultKind{}
	for _, k := range FaultKinds {
		if asked[k] {
			out = append(out, k)
		}
	}
	return out, nil
}

func checkFaultKind(k FaultKind) error {
	if slices.Contains(FaultKinds, k) {
		return nil
	}
	if first, ok := follows[k]; ok {
		return fmt.Errorf("fault %q is not chosen on its own: it follows every %s; name %s instead", k, first, first)
	}
	names := make([]string, len(FaultKinds))
	for i, k := range FaultKinds {
		names[i] = string(k)
	}
	return fmt.Errorf("unknown fault %q: the faults are %s (or none)", k, strings.Join(names, ", "))
}

// validate says what is wrong with cfg, naming the value and the fix.
func (cfg Config) validate() error {
	if cfg.Duration <= 0 {
		return fmt.Errorf("chaos duration %s: it must be positive, e.g. 10m", cfg.Duration)
	}
	if len(cfg.Agents) < 3 {
		return fmt.Errorf("chaos needs at least 3 agents, got %d (%s): a crash must leave a majority; add agents",
			len(cfg.Agents), strings.Join(cfg.Agents, ", "))
	}
	seen := map[string]bool{}
	for i, a := range cfg.Agents {
		if a == "" {
			return fmt.Errorf("agent %d has an empty name: give every agent its host's name", i+1)
		}
		if seen[a] {
			return fmt.Errorf("agent %q is named twice: give every agent its own name", a)
		}
		seen[a] = true
	}
	for _, k := range cfg.Faults {
		if err := checkFaultKind(k); err != nil {
			return err
		}
	}
	return nil
}

// Schedule draws the plan of a chaos run from cfg: a pure function, so
// the same Config gives the same plan and a failing seed replays.
//
// The faults stay sane, so that every rule can hold: at most one network
// fault (partition, one-way, flap, loss) at a time; at most a minority of
// hosts down (crashed host, crashed agent, paused) and at most a minority
// drained at once, each host under one host fault at a time; every crash
// restarted, every drain undone and every fault ended within Duration; a
// whole-cluster restart only when nothing else is in force.
func Schedule(cfg Config) (Plan, error) {
	if err := cfg.validate(); err != nil {
		return Plan{}, err
	}
	kinds := FaultKinds
	if cfg.Faults != nil {
		kinds = nil
		for _, k := range FaultKinds {
			if slices.Contains(cfg.Faults, k) {
				kinds = append(kinds, k)
			}
		}
	}
	agents := slices.Clone(cfg.Agents)
	n := nemesis{
		rng: newRNG(cfg.Seed, streamFaults), hosts: agents, end: cfg.Duration,
		hostFree: map[string]time.Duration{}, hostDown: map[string]bool{},
	}
	faults := n.draw(kinds)
	requests := drawRequests(newRNG(cfg.Seed, streamClients), agents, cfg.Duration)

	var steps []Step
	for i := range faults {
		f := &faults[i]
		steps = append(steps, Step{At: f.At, Fault: f})
		if f.Until > 0 {
			steps = append(steps, Step{At: f.Until, Fault: f, End: true})
		}
	}
	for i := range requests {
		steps = append(steps, Step{At: requests[i].At, Request: &requests[i]})
	}
	// At one moment: ends first (a heal before the next fault), then
	// starts, then requests.
	rank := func(s Step) int {
		switch {
		case s.End:
			return 0
		case s.Fault != nil:
			return 1
		}
		return 2
	}
	slices.SortStableFunc(steps, func(a, b Step) int {
		return cmp.Or(cmp.Compare(a.At, b.At), cmp.Compare(rank(a), rank(b)))
	})
	return Plan{Seed: cfg.Seed, Agents: agents, Duration: cfg.Duration, Steps: steps}, nil
}

// nemesis draws the faults of a run, tracking what is in force.
type nemesis struct {
	rng   *rng
	hosts []string
	end   time.Duration

	netFree  time.Duration            // the network fault in force ends then
	hostFree map[string]time.Duration // a host's fault in force ends then
	hostDown map[string]bool          // and whether it takes the host off the mesh (not a drain)
	allFree  time.Duration            // a cluster restart settles then
	restarts int                      // cluster restarts so far

	faults []Fault
}

// The nemesis's pace, and its rest around a cluster restart.
const (
	nemesisStart = 3 * time.Second
	nemesisGapLo = 2 * time.Second
	nemesisGapHi = 12 * time.Second
	// clusterSettle keeps every other fault away after a cluster restart,
	// which needs a whole mesh to find its interpreters again.
	clusterSettle = 15 * time.Second
	// clusterEvery bounds cluster restarts to one per this much of a run
	// (and one at least), as they are meant to be rare.
	clusterEvery = 10 * time.Minute
)

func (n *nemesis) draw(kinds []FaultKind) []Fault {
	if len(kinds) == 0 {
		return nil
	}
	for t := nemesisStart; ; {
		t += n.rng.between(nemesisGapLo, nemesisGapHi)
		if t >= n.end {
			return n.faults
		}
		k := kinds[n.rng.intn(len(kinds))]
		if t <= n.allFree {
			continue
		}
		n.try(k, t) // false: no room for k now, and this moment passes without a fault
	}
}

// try adds a fault of kind k at t if it fits with those in force.
func (n *nemesis) try(k FaultKind, t time.Duration) bool {
	switch k {
	case FaultPartition, FaultOneWay, FaultFlap, FaultLoss:
		return n.network(k, t)
	case FaultPause:
		h, ok := n.freeHost(t, true)
		if !ok {
			return false
		}
		return n.hold(h, t, n.rng.between(time.Second, 15*time.Second), true,
			Fault{Kind: FaultPause, At: t, Hosts: []string{h}}, nil)
	case FaultCrashHost:
		h, ok := n.freeHost(t, true)
		if !ok {
			return false
		}
		d := n.rng.between(3*time.Second, time.Minute)
		return n.hold(h, t, d, true, Fault{Kind: FaultCrashHost, At: t, Hosts: []string{h}},
			&Fault{Kind: FaultRestartHost, At: t + d, Hosts: []string{h}, KeepData: n.rng.chance(1, 2)})
	case FaultCrashAgent:
		h, ok := n.freeHost(t, true)
		if !ok {
			return false
		}
		d := n.rng.between(2*time.Second, 30*time.Second)
		return n.hold(h, t, d, true, Fault{Kind: FaultCrashAgent, At: t, Hosts: []string{h}},
			&Fault{Kind: FaultRestartAgent, At: t + d, Hosts: []string{h}, KeepData: n.rng.chance(3, 4)})
	case FaultDrain:
		h, ok := n.freeHost(t, false)
		if !ok {
			return false
		}
		d := n.rng.between(10*time.Second, time.Minute)
		return n.hold(h, t, d, false, Fault{Kind: FaultDrain, At: t, Hosts: []string{h}, Stop: n.rng.chance(1, 2)},
			&Fault{Kind: FaultUndrain, At: t + d, Hosts: []string{h}})
	case FaultCrashSupervisor:
		// Any host whose agent runs, drained or not.
		var up []string
		for _, h := range n.hosts {
			if n.hostFree[h] < t || !n.hostDown[h] {
				up = append(up, h)
			}
		}
		h := up[n.rng.intn(len(up))] // a minority at most is down
		n.faults = append(n.faults, Fault{Kind: FaultCrashSupervisor, At: t, Hosts: []string{h}, Pick: n.rng.intn(1 << 16)})
		return true
	case FaultClusterRestart:
		if !n.rng.chance(1, 8) || n.restarts >= 1+int(n.end/clusterEvery) {
			return false
		}
		if t <= n.netFree || t+clusterSettle > n.end {
			return false
		}
		for _, h := range n.hosts {
			if n.hostFree[h] >= t {
				return false
			}
		}
		n.restarts++
		n.allFree = t + clusterSettle
		n.faults = append(n.faults, Fault{Kind: FaultClusterRestart, At: t, KeepData: true})
		return true
	}
	return false
}

// freeHost picks a host under no fault at t whose fault would keep the
// number of hosts down (or drained) a minority.
func (n *nemesis) freeHost(t time.Duration, down bool) (string, bool) {
	var free []string
	taken := 0
	for _, h := range n.hosts {
		switch {
		case n.hostFree[h] < t:
			free = append(free, h)
		case n.hostDown[h] == down:
			taken++
		}
	}
	if len(free) == 0 || taken+1 > (len(n.hosts)-1)/2 {
		return "", false
	}
	return free[n.rng.intn(len(free))], true
}

// hold puts host h under f from t for d, then follower ends it (nil: f
// ends by its own Until).
func (n *nemesis) hold(h string, t, d time.Duration, down bool, f Fault, follower *Fault) bool {
	if t+d > n.end {
		return false
	}
	n.hostFree[h] = t + d
	n.hostDown[h] = down
	if follower == nil {
		f.Until = t + d
		n.faults = append(n.faults, f)
		return true
	}
	// The follower's place among later faults is fixed when the plan's
	// steps are sorted.
	n.faults = append(n.faults, f, *follower)
	return true
}

func (n *nemesis) network(k FaultKind, t time.Duration) bool {
	if t <= n.netFree {
		return false
	}
	f := Fault{Kind: k, At: t}
	switch k {
	case FaultPartition:
		f.Groups = n.split(n.rng.chance(1, 4))
		f.Until = t + n.rng.between(5*time.Second, time.Minute)
	case FaultFlap:
		f.Groups = n.split(false)
		f.Period = n.rng.between(time.Second, 5*time.Second).Round(100 * time.Millisecond)
		f.Until = t + n.rng.between(10*time.Second, time.Minute)
	case FaultOneWay:
		s := shuffle(n.rng, n.hosts)
		cut := 1 + n.rng.intn(len(s)-1)
		f.From, f.To = sorted(s[:cut]), sorted(s[cut:])
		f.Until = t + n.rng.between(5*time.Second, time.Minute)
	case FaultLoss:
		f.Rate = float64(5+n.rng.intn(26)) / 100
		f.Until = t + n.rng.between(5*time.Second, time.Minute)
	}
	if f.Until > n.end {
		return false
	}
	n.netFree = f.Until
	n.faults = append(n.faults, f)
	return true
}

// split cuts the hosts into a minority and a majority (in either order),
// or into three groups.
func (n *nemesis) split(three bool) [][]string {
	s := shuffle(n.rng, n.hosts)
	if three && len(s) >= 3 {
		a := 1 + n.rng.intn(len(s)-2)
		b := a + 1 + n.rng.intn(len(s)-a-1)
		return [][]string{sorted(s[:a]), sorted(s[a:b]), sorted(s[b:])}
	}
	minority := 1 + n.rng.intn(len(s)/2)
	if n.rng.chance(1, 2) {
		return [][]string{sorted(s[minority:]), sorted(s[:minority])}
	}
	return [][]string{sorted(s[:minority]), sorted(s[minority:])}
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// The clients' pace and shape.
const (
	clientStart = time.Second
	clientGapLo = time.Second
	clientGapHi = 4 * time.Second
	// burstSpread is how far apart the askers of one key in a burst are.
	burstSpread = 400 * time.Millisecond
)

// drawRequests draws the client operations: bursts of one key asked by
// 2–3 agents at once, unkeyed spawns, stops and signals, about one every
// 1.7 s. A small key space (4–8 keys) makes each key asked again and again
// across faults.
func drawRequests(r *rng, agents []string, end time.Duration) []Request {
	nkeys := 4 + r.intn(5)
	keys := make([]string, nkeys)
	restart := make([]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k-%d", i+1)
		if r.chance(1, 2) {
			restart[i] = "on-failure"
		}
	}
	var out []Request
	add := func(q Request) {
		if q.At < end {
			out = append(out, q)
		}
	}
	for t := clientStart; t < end; t += r.between(clientGapLo, clientGapHi) {
		switch x := r.intn(100); {
		case x < 45:
			k := r.intn(nkeys)
			count := 1
			if r.chance(7, 10) {
				count = min(2+r.intn(2), len(agents))
			}
			for i, a := range shuffle(r, agents)[:count] {
				at := t
				if i > 0 {
					at += r.between(0, burstSpread)
				}
				add(Request{At: at, Kind: OpSpawn, Agent: a, Key: keys[k], Restart: restart[k], Wait: r.chance(1, 2)})
			}
		case x < 65:
			q := Request{At: t, Kind: OpSpawn, Agent: agents[r.intn(len(agents))], Wait: r.chance(1, 2)}
			if r.chance(3, 10) {
				q.Restart = "on-failure"
			}
			add(q)
		case x < 85:
			add(Request{At: t, Kind: OpStop, Agent: agents[r.intn(len(agents))], Pick: r.intn(1 << 16)})
		default:
			add(Request{At: t, Kind: OpSignal, Agent: agents[r.intn(len(agents))], Pick: r.intn(1 << 16),
				Signal: Signals[r.intn(len(Signals))]})
		}
	}
	slices.SortStableFunc(out, func(a, b Request) int { return cmp.Compare(a.At, b.At) })
	for i := range out {
		out[i].ID = i + 1
	}
	return out
}
