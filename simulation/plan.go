package simulation

import (
	"errors"
	"fmt"
	"math"
	"math/rand"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshagent/agent/gossip"
)

// FaultKind names what a Fault does to the network.
type FaultKind string

// The faults a plan can schedule.
const (
	FaultCrash     FaultKind = "crash"     // Nodes crash for good
	FaultPartition FaultKind = "partition" // Groups stop reaching each other
	FaultCut       FaultKind = "cut"       // packets from Nodes to To are dropped
	FaultHeal      FaultKind = "heal"      // partitions and cuts end
	FaultLoss      FaultKind = "loss"      // every link loses Loss of its packets
	FaultPause     FaultKind = "pause"     // Nodes are stopped, their traffic held
	FaultResume    FaultKind = "resume"    // Nodes run again, held traffic flows
	// FaultBurst is not a network fault: each of Nodes asks the mesh to
	// place one interpreter at once (a place query and an election).
	FaultBurst FaultKind = "burst"
)

// Fault is one step of a fault schedule.
type Fault struct {
	At     time.Duration // since the schedule started (the mesh had converged)
	Kind   FaultKind
	Nodes  []string   // crash, pause, resume: the hosts; cut: the senders
	To     []string   // cut: the receivers
	Groups [][]string // partition: the sides
	Loss   float64    // loss: the probability on every link
	Label  string     // what a person reads on the timeline
}

// Group is a set of nodes that a scenario treats alike (a side of a
// partition, the crashed nodes), so the timeline draws them together.
type Group struct {
	Name  string
	Nodes []string
}

// Plan is a scenario's fault schedule: a pure function of the scenario, the
// number of nodes and the seed (PlanScenario), so a seed replays the same
// faults on the same nodes at the same offsets. The gossip that reacts to
// them is not deterministic.
type Plan struct {
	Scenario string
	Profile  string // the gossip profile whose detector sizes the crash and loss schedules
	Nodes    int
	Seed     int64
	Faults   []Fault       // in time order
	Length   time.Duration // how long the schedule observes the mesh
	Groups   []Group       // every node in exactly one group
	// HealedFor, when set, ends the schedule before Length once every node
	// sees every live node alive again after the last heal and HealedFor
	// has passed since it: long enough for the steady state after the heal
	// to be measured and for a late false verdict to show. The rest of a
	// long schedule waits for serf's reconnect rounds, which only a mesh
	// still split needs.
	HealedFor time.Duration
}

// MonitorHost is the host of the heartbeat baseline's central monitor. Each
// plan puts it somewhere on purpose: with the larger side of a partition,
// among the receivers of a one-way cut.
const MonitorHost = "monitor"

// NodeName is the name of node i of n: node-0 … node-9, node-00 … node-99.
func NodeName(i, n int) string {
	width := len(strconv.Itoa(n - 1))
	return fmt.Sprintf("node-%0*d", width, i)
}

func nodeNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = NodeName(i, n)
	}
	return out
}

// scenario describes one scenario and builds its plan.
type scenario struct {
	summary  string
	minNodes int
	build    func(p *Plan, names []string, rng *rand.Rand)
}

// The scenario names.
const (
	ScenarioCrash      = "crash"
	ScenarioLoss       = "loss"
	ScenarioPartition  = "partition"
	ScenarioPartition3 = "partition3"
	ScenarioOneWay     = "oneway"
	ScenarioPause      = "pause"
	ScenarioBurst      = "burst"
)

// LossRate is the packet loss of the loss scenario.
const LossRate = 0.05

var scenarios = map[string]scenario{
	ScenarioCrash: {
		summary:  "nodes crash a few seconds apart (1 node below 10 nodes, else 3), watched for twice the profile's detection time; measures detection",
		minNodes: 3,
		build:    buildCrash,
	},
	ScenarioLoss: {
		summary:  "5% loss on every link for the whole run, plus the crashes of `crash`; measures false failures and detection under loss",
		minNodes: 3,
		build:    buildLoss,
	},
	ScenarioPartition: {
		summary:  "the mesh splits 60/40 (the monitor with the 60), then heals; measures both sides and the heal",
		minNodes: 4,
		build:    func(p *Plan, names []string, rng *rand.Rand) { buildPartition(p, names, rng, 0.6, 0.4) },
	},
	ScenarioPartition3: {
		summary:  "a 3-way split 50/30/20 (the monitor with the 50), then heals",
		minNodes: 6,
		build:    func(p *Plan, names []string, rng *rand.Rand) { buildPartition(p, names, rng, 0.5, 0.3, 0.2) },
	},
	ScenarioOneWay: {
		summary:  "one node's packets to a third of the others (the monitor among them) are dropped, the other way works; then heals",
		minNodes: 4,
		build:    buildOneWay,
	},
	ScenarioBurst: {
		summary:  "the mesh splits 60/40; a burst of placements just after the split and another once each side has failed the other; then heals",
		minNodes: 4,
		build:    buildBurst,
	},
	ScenarioRestart: {
		summary:  "one node crashes and comes back once failed everywhere; later three crash, two come back together, one stays down; measures what a returning node receives and the heal prober's pings",
		minNodes: 5,
		build:    buildRestart,
	},
	ScenarioRolling: {
		summary:  "a tenth of the nodes restart one after the other, 15 s apart, each down for the profile's detection time (a rolling upgrade); measures false failures and bytes against the steady state",
		minNodes: 3,
		build:    buildRolling,
	},
	ScenarioChurn: {
		summary:  "interpreter members join and leave (one a second per 100 nodes, each living 20 s) while a server crashes every 15 s with its interpreters and comes back",
		minNodes: 3,
		build:    buildChurn,
	},
	ScenarioPause: {
		summary:  "one node is paused like SIGSTOP (its traffic held) for 1.5 lan detection times, then resumed",
		minNodes: 3,
		build:    buildPause,
	},
}

// Scenarios lists the scenario names, sorted.
func Scenarios() []string {
	out := make([]string, 0, len(scenarios))
	for name := range scenarios {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// ScenarioSummary says in one line what a scenario does.
func ScenarioSummary(name string) string { return scenarios[name].summary }

// ErrUnknownScenario is returned for a scenario name that does not exist.
var ErrUnknownScenario = errors.New("unknown scenario")

// MaxNodes is the largest mesh a plan accepts: every node runs in this
// process, and each keeps a view of all the others.
const MaxNodes = 2000

// PlanScenario builds the fault schedule of a scenario for n nodes running
// a gossip profile (empty is gossip.DefaultProfile). It is a pure function
// of its arguments.
func PlanScenario(name, profile string, n int, seed int64) (Plan, error) {
	sc, ok := scenarios[name]
	if !ok {
		return Plan{}, fmt.Errorf("%w %q: use one of %s", ErrUnknownScenario, name, strings.Join(Scenarios(), ", "))
	}
	if profile == "" {
		profile = gossip.DefaultProfile
	}
	if err := gossip.CheckProfile(profile); err != nil {
		return Plan{}, err
	}
	if n < sc.minNodes {
		return Plan{}, fmt.Errorf("%d nodes are too few for the %s scenario: use at least %d", n, name, sc.minNodes)
	}
	if n > MaxNodes {
		return Plan{}, fmt.Errorf("%d nodes are more than one process simulates: use at most %d", n, MaxNodes)
	}
	p := Plan{Scenario: name, Profile: profile, Nodes: n, Seed: seed}
	sc.build(&p, nodeNames(n), rand.New(rand.NewSource(seed)))
	sort.SliceStable(p.Faults, func(i, j int) bool { return p.Faults[i].At < p.Faults[j].At })
	return p, nil
}

// lanDetection estimates how long lan's detector takes to fail one crashed
// node at n nodes (gossip.DetectionEstimate): 16 s at 1,000. The split and
// pause schedules are sized by it whatever the profile: failing a whole
// side is slower than failing one node (at 1,000 nodes with fast, 35 s for
// every node to fail the other side, docs/scale.md), so fast's estimate
// would heal many splits before they were whole. wan needs longer than
// they give.
func lanDetection(n int) time.Duration {
	d, _ := gossip.DetectionEstimate("lan", n)
	return d
}

// detection estimates how long the plan's profile takes to fail one crashed
// node (gossip.DetectionEstimate).
func (p *Plan) detection() time.Duration {
	d, _ := gossip.DetectionEstimate(p.Profile, p.Nodes)
	return d
}

// crashWatch is how long the crash and loss schedules go on after the last
// crash: twice the profile's detection estimate, for the stragglers, and at
// least the baseline's bound, for its monitor fails a crashed node at most
// HeartbeatTimeout and a scan after the last heartbeat, which came before
// the crash (and one scan more for the links' delays). 13 s at 1,000 nodes
// with fast (11.4 s at 300), 32 s with lan; 11 s for fast up to about 200
// nodes.
func (p *Plan) crashWatch() time.Duration {
	return max(2*p.detection(), HeartbeatTimeout+2*HeartbeatScan)
}

const (
	lead         = 2 * time.Second  // quiet time before the first fault
	crashSpacing = 3 * time.Second  // between successive crashes
	reconnect    = 30 * time.Second // serf's reconnect interval: how a healed partition finds the other side
)

func crashes(p *Plan, names []string, rng *rand.Rand, start time.Duration) (end time.Duration) {
	count := 3
	if len(names) < 10 {
		count = 1
	}
	victims := pick(names, rng, count)
	at := start
	for i, v := range victims {
		at = start + time.Duration(i)*crashSpacing
		p.Faults = append(p.Faults, Fault{At: at, Kind: FaultCrash, Nodes: []string{v}, Label: "crash " + v})
	}
	p.Groups = []Group{
		{Name: "live nodes", Nodes: without(names, victims)},
		{Name: "crashed nodes", Nodes: victims},
	}
	return at + p.crashWatch()
}

func buildCrash(p *Plan, names []string, rng *rand.Rand) {
	p.Length = crashes(p, names, rng, lead)
}

func buildLoss(p *Plan, names []string, rng *rand.Rand) {
	p.Faults = append(p.Faults, Fault{At: 0, Kind: FaultLoss, Loss: LossRate,
		Label: fmt.Sprintf("%g%% loss on every link", LossRate*100)})
	end := crashes(p, names, rng, lead+p.detection())
	p.Length = max(end, 45*time.Second)
}

func buildPartition(p *Plan, names []string, rng *rand.Rand, shares ...float64) {
	n := len(names)
	perm := pick(names, rng, n)
	sizes := make([]int, len(shares))
	rest := n
	for i, s := range shares {
		if i == len(shares)-1 {
			sizes[i] = rest
			break
		}
		left := len(shares) - i - 1 // each later side keeps at least one node
		sizes[i] = min(max(1, int(math.Round(s*float64(n)))), rest-left)
		rest -= sizes[i]
	}
	groups := make([][]string, len(sizes))
	parts := make([]string, len(sizes))
	for i, size := range sizes {
		groups[i] = append([]string(nil), perm[:size]...)
		sort.Strings(groups[i])
		perm = perm[size:]
		parts[i] = strconv.Itoa(size)
		name := fmt.Sprintf("side %c (%d nodes)", 'A'+i, size)
		if i == 0 {
			name = fmt.Sprintf("side A (%d nodes, with the monitor)", size)
		}
		p.Groups = append(p.Groups, Group{Name: name, Nodes: groups[i]})
	}
	groups[0] = append(groups[0], MonitorHost)
	d := lanDetection(n)
	heal := lead + 2*d + 10*time.Second
	p.Faults = append(p.Faults,
		Fault{At: lead, Kind: FaultPartition, Groups: groups, Label: "partition " + strings.Join(parts, "/")},
		Fault{At: heal, Kind: FaultHeal, Label: "heal"})
	// Two of serf's reconnect rounds: after a partition complete enough that
	// each side has failed the other, only they (and push/pull, 90 s apart
	// at 100 nodes) bring the sides back together without the heal prober.
	p.Length = heal + 2*reconnect + d
	// A healed mesh is watched for a minute more: stale death verdicts from
	// the other side have come 40 to 50 s after a heal (docs/design-simulation.md), and the
	// other side's dead stay in memberlist's gossip for GossipToTheDeadTime
	// (a minute with fast). Ending 10 s after the heal hid them.
	p.HealedFor = 2 * reconnect
}

// burstSize is how many placements a burst asks for, from distinct nodes.
const burstSize = 20

func buildBurst(p *Plan, names []string, rng *rand.Rand) {
	buildPartition(p, names, rng, 0.6, 0.4)
	heal := p.Faults[len(p.Faults)-1].At
	askers := func() []string {
		a := pick(names, rng, min(burstSize, len(names)))
		sort.Strings(a)
		return a
	}
	p.Faults = append(p.Faults,
		Fault{At: lead + time.Second, Kind: FaultBurst, Nodes: askers(), Label: "burst (views still whole)"},
		Fault{At: heal - 5*time.Second, Kind: FaultBurst, Nodes: askers(), Label: "burst (sides apart)"})
}

func buildOneWay(p *Plan, names []string, rng *rand.Rand) {
	perm := pick(names, rng, len(names))
	v := perm[0]
	deaf := append([]string(nil), perm[1:1+max(1, (len(names)-1)/3)]...)
	sort.Strings(deaf)
	d := lanDetection(len(names))
	heal := lead + 2*d + 10*time.Second
	p.Faults = append(p.Faults,
		Fault{At: lead, Kind: FaultCut, Nodes: []string{v}, To: append(append([]string(nil), deaf...), MonitorHost),
			Label: fmt.Sprintf("%s → %d nodes and the monitor cut", v, len(deaf))},
		Fault{At: heal, Kind: FaultHeal, Label: "heal"})
	p.Length = heal + d
	p.Groups = []Group{
		{Name: v + " (its packets to the deaf nodes are dropped)", Nodes: []string{v}},
		{Name: fmt.Sprintf("deaf nodes (%d, do not hear %s directly)", len(deaf), v), Nodes: deaf},
		{Name: "the rest", Nodes: without(names, append([]string{v}, deaf...))},
	}
}

func buildPause(p *Plan, names []string, rng *rand.Rand) {
	v := pick(names, rng, 1)[0]
	d := lanDetection(len(names))
	resume := lead + d*3/2
	p.Faults = append(p.Faults,
		Fault{At: lead, Kind: FaultPause, Nodes: []string{v}, Label: "pause " + v},
		Fault{At: resume, Kind: FaultResume, Nodes: []string{v}, Label: "resume " + v})
	p.Length = resume + reconnect + d
	p.Groups = []Group{
		{Name: v + " (paused)", Nodes: []string{v}},
		{Name: "the rest", Nodes: without(names, []string{v})},
	}
}

// pick draws k distinct names in a seeded order.
func pick(names []string, rng *rand.Rand, k int) []string {
	perm := rng.Perm(len(names))
	out := make([]string, k)
	for i := range out {
		out[i] = names[perm[i]]
	}
	return out
}

func without(names, drop []string) []string {
	skip := make(map[string]bool, len(drop))
	for _, d := range drop {
		skip[d] = true
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		if !skip[n] {
			out = append(out, n)
		}
	}
	return out
}

// setLoss changes the rate of the plan's loss fault.
func (p *Plan) setLoss(rate float64) error {
	if err := (Link{Loss: rate}).check(); err != nil {
		return err
	}
	found := false
	for i, f := range p.Faults {
		if f.Kind == FaultLoss {
			p.Faults[i].Loss = rate
			p.Faults[i].Label = fmt.Sprintf("%g%% loss on every link", rate*100)
			found = true
		}
	}
	if !found {
		return fmt.Errorf("the %s scenario has no packet loss to change: use the %s scenario", p.Scenario, ScenarioLoss)
	}
	return nil
}

// setPartitionLength holds the partition of a partition scenario for d
// before it heals; what the schedule observes after the heal stays as long.
func (p *Plan) setPartitionLength(d time.Duration) error {
	if p.Scenario != ScenarioPartition && p.Scenario != ScenarioPartition3 {
		return fmt.Errorf("the %s scenario has no partition to lengthen: use the %s or %s scenario", p.Scenario, ScenarioPartition, ScenarioPartition3)
	}
	if d <= 0 {
		return fmt.Errorf("a partition of %v: give a positive duration, e.g. 5m", d)
	}
	var split, heal *Fault
	for i := range p.Faults {
		switch p.Faults[i].Kind {
		case FaultPartition:
			split = &p.Faults[i]
		case FaultHeal:
			heal = &p.Faults[i]
		}
	}
	after := p.Length - heal.At
	heal.At = split.At + d
	p.Length = heal.At + after
	return nil
}

// healAt is when the network is whole again: the last heal or resume.
func (p Plan) healAt() (time.Duration, bool) {
	at, ok := time.Duration(0), false
	for _, f := range p.Faults {
		if f.Kind == FaultHeal || f.Kind == FaultResume {
			at, ok = f.At, true
		}
	}
	return at, ok
}

// Apply makes a fault happen on the network now.
func (n *Network) Apply(f Fault) error {
	switch f.Kind {
	case FaultCrash:
		return eachNode(f.Nodes, n.Crash)
	case FaultPause:
		return eachNode(f.Nodes, n.Pause)
	case FaultResume:
		return eachNode(f.Nodes, n.Resume)
	case FaultPartition:
		return n.Partition(f.Groups...)
	case FaultCut:
		return n.Cut(f.Nodes, f.To)
	case FaultHeal:
		return n.Heal()
	case FaultBurst:
		return fmt.Errorf("a burst is not a network fault: the run asks for the placements")
	case FaultLoss:
		return n.change(func(fs *faultState) error {
			l := fs.def
			l.Loss = f.Loss
			if err := l.check(); err != nil {
				return err
			}
			fs.def = l
			return nil
		})
	}
	return fmt.Errorf("fault kind %q is not known", f.Kind)
}

func eachNode(names []string, fn func(string) error) error {
	for _, name := range names {
		if err := fn(name); err != nil {
			return err
		}
	}
	return nil
}
