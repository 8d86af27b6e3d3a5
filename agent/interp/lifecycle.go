package interp

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
	"github.com/meshagent/agent/state"
)

// Config is what the lifecycle needs to know about its agent.
type Config struct {
	Node     string // this agent's node name
	Server   bool   // whether this agent runs interpreters
	Dir      string // the registry and one directory per interpreter
	Profile  string // the gossip profile supervisors join with
	Capacity int    // the most interpreters this server runs; 0: no limit
	Kinds    map[string]Kind
	Self     string // this binary, which supervisors run
	// StopGrace is how long an interpreter has between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// Reap is how long interpreter members stay listed after they left or
	// failed; supervisors forget them after it too.
	Reap time.Duration
}

// Election is one run of the place query and the decision.
type Election struct {
	Result   bidding.Result
	Decision placement.Decision
	Err      error
	Elapsed  time.Duration
}

// Deps are the agent's parts the lifecycle uses, handed in so that it
// owns none of them.
type Deps struct {
	Node   *gossip.Node // set by Start
	Clock  state.Clock
	Logger *slog.Logger
	Done   <-chan struct{} // closed when the agent shuts down
	// Elect runs an election; reserve says whether the winner is counted
	// in the asker's ledger. Reserve and Release manage that ledger.
	Elect   func(ctx context.Context, req placement.Request) Election
	Reserve func(rid string, b placement.Bid)
	Release func(rid string)
	// AllowSpawn rate-limits spawn orders per asker; nil allows all.
	AllowSpawn func(asker string) bool
	// Changed is told when the count of interpreters here changed.
	Changed func()
	// Emit hands a lifecycle event to the operators' streams; nil drops it.
	Emit func(Event)
	// Draining says the server takes no new interpreters; nil: never.
	Draining func() bool
	// Processes is where supervisors run; nil: real processes of
	// Config.Self.
	Processes Processes
	// Joined says the agent has joined the mesh it was told to join (or
	// was told to join none); nil: always. Until then its view is its
	// own alone, and it takes no decision for the mesh.
	Joined func() bool
}

// Event is something that happened to an interpreter that operators want
// to see: on the HTTP event stream, in `agent monitor`, in metrics.
type Event struct {
	Type        string `json:"type"`
	Interpreter string `json:"interpreter"`
	RequestID   string `json:"request_id"`
	Host        string `json:"host,omitempty"`
	Gen         int    `json:"gen,omitempty"`
	How         string `json:"how,omitempty"`
	Status      string `json:"status,omitempty"`
	Reason      string `json:"reason,omitempty"`
	Winner      string `json:"winner,omitempty"`
	WinnerHost  string `json:"winner_host,omitempty"`
}

// The lifecycle events.
const (
	EventStarted   = "interpreter-started"
	EventExited    = "interpreter-exited"
	EventRestarted = "interpreter-restart"
	EventGaveUp    = "interpreter-gave-up"
	EventReplaced  = "interpreter-replaced"
	EventDuplicate = "interpreter-duplicate"
	EventStopped   = "interpreter-stopped"
	EventReaped    = "interpreter-reaped"
)

// Lifecycle is one agent's part in the interpreters' life: on a server, it
// starts, stops, re-adopts and restarts the interpreters of this host; on
// every agent, it spawns and stops interpreters anywhere, lists them, and
// applies the mesh's rules (one interpreter per request after a heal, re-
// placement of a failed host's interpreters by one owner). All methods are
// safe for concurrent use.
type Lifecycle struct {
	cfg    Config
	deps   Deps
	logger *slog.Logger
	clock  state.Clock
	procs  Processes

	regMu        sync.Mutex
	registry     *state.Registry
	inflight     map[string]starting // request id -> its start under way
	takenBack    map[order]time.Time // orders their askers took back, and when: see handleStopOrder
	supervisors  map[string]Started
	hostRestarts map[string]*Tracker  // request id -> restarts after supervisor crashes
	restarting   map[string]bool      // request ids whose restart here waits out its delay
	abandoned    map[string]time.Time // interpreters whose start this server gave up on, by name
	endedHere    map[string]endedHere // by request: its interpreter that ended here on purpose lately
	superseded   map[string]int       // interpreters this server stopped for a newer generation: that generation
	forgotten    map[string]time.Time // interpreters the registry held and let go, by name: still listed alive, they are ending
	lostAtStart  []state.Interpreter  // on-failure interpreters that died while the agent was down

	views viewCache // Instances of the member list, while it holds

	meshMu     sync.Mutex
	replacer   *replacer            // this owner's re-placements
	endedSeen  map[string]time.Time // by name: interpreters their server said ended on purpose; not re-placed
	duplicates map[string]string    // request id -> the losers last reported
	// told are the stale copies on other hosts this owner told their
	// host to stop, by name, and when.
	told map[string]time.Time
	// staleSince is when this agent first saw each stale copy still run
	// on another host, by name (tellSuperseded's fallback).
	staleSince map[string]time.Time
	// restartsSeen is each of this host's interpreters' restart count, as
	// last published.
	restartsSeen map[string]int
	// ownerGone is when this server first saw each leased interpreter's
	// owner gone, and stopWhy the reason it stopped one for its lease
	// (leases.go); meshMu guards both.
	ownerGone map[string]time.Time
	stopWhy   map[string]string

	signals     recentSignals             // signal orders answered lately, by order id
	keyedOrders recentOrders[keyedAnswer] // keyed spawn orders decided lately, by order id
	spawnOrders recentOrders[spawnAnswer] // spawn orders carried out lately, by order id

	memory  *memory       // requests' generations and orphans beyond the reap
	keys    keyLocks      // this coordinator's keyed spawns, one at a time per key
	placing keyLocks      // this agent's placements, one at a time per request (place)
	claims  claims        // generations askers claimed in their bids lately
	journal *journal      // keeps memory and claims across restarts (a server's, once loaded)
	attempt atomic.Uint64 // the last claim this agent made (nextAttempt)

	orderWait time.Duration // a placement's wait for one server's answer: orderTimeout (tests shorten it)

	wg sync.WaitGroup

	kindSet atomic.Pointer[map[string]Kind] // the kinds as a reload set them; nil: cfg.Kinds (kinds.go)
}

// starting is a start under way on this server.
type starting struct {
	done chan struct{} // closed when the start ends
	kind string
	name string // the interpreter it starts
	gen  int
}

// order names one spawn order: its request and generation. An asker sends
// each generation of a request to one server at a time.
type order struct {
	rid string
	gen int
}

// New prepares the lifecycle; Start runs it.
func New(cfg Config, deps Deps) (*Lifecycle, error) {
	if deps.Clock == nil || deps.Logger == nil || deps.Done == nil || deps.Elect == nil || deps.Reserve == nil || deps.Release == nil {
		return nil, errors.New("interpreter lifecycle needs a clock, a logger, a done channel and the election")
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	procs := deps.Processes
	if procs == nil {
		procs = OSProcesses{Self: cfg.Self}
	}
	return &Lifecycle{
		cfg: cfg, deps: deps, logger: deps.Logger.With("component", "interpreters"), clock: deps.Clock, procs: procs,
		registry:     state.NewRegistry(),
		inflight:     map[string]starting{},
		takenBack:    map[order]time.Time{},
		memory:       newMemory(),
		supervisors:  map[string]Started{},
		hostRestarts: map[string]*Tracker{},
		restarting:   map[string]bool{},
		abandoned:    map[string]time.Time{},
		endedHere:    map[string]endedHere{},
		endedSeen:    map[string]time.Time{},
		forgotten:    map[string]time.Time{},
		superseded:   map[string]int{},
		told:         map[string]time.Time{},
		staleSince:   map[string]time.Time{},
		replacer:     newReplacer(replaceBackoff, replaceGrace),
		duplicates:   map[string]string{},
		restartsSeen: map[string]int{},
		ownerGone:    map[string]time.Time{},
		stopWhy:      map[string]string{},
		orderWait:    orderTimeout,
	}, nil
}

// LoadRegistry re-adopts the interpreters a server started before it
// restarted. It runs before the node joins anyone, so the server's first
// tags count them.
func (l *Lifecycle) LoadRegistry() error {
	if !l.cfg.Server {
		return nil
	}
	return l.loadRegistry()
}

// Start answers the server's queries on node and runs the loops that watch
// supervisors and apply the mesh's rules. It returns at once.
func (l *Lifecycle) Start(node *gossip.Node) {
	l.deps.Node = node
	if l.cfg.Server {
		node.HandleQuery(querySpawn, l.handleSpawnOrder)
		node.HandleQuery(queryStop, l.handleStopOrder)
		node.HandleQuery(queryExit, l.handleExitOrder)
		node.HandleQuery(querySignal, l.handleSignalOrder)
		node.HandleQuery(queryRestart, l.handleRestartOrder)
		node.HandleQuery(querySpawnKey, l.handleKeyedOrder)
		l.wg.Add(1)
		go func() { defer l.wg.Done(); l.watchSupervisors() }()
	}
	changed := make(chan struct{}, 1)
	cancel := node.Subscribe(func(e gossip.Event) {
		if e.Type == gossip.EventUser || e.Type == gossip.EventQuery {
			return
		}
		if (e.Type == gossip.EventMemberUpdate || e.Type == gossip.EventMemberJoin) && l.cfg.Server {
			l.noticeRestarts(e.Members, e.Type == gossip.EventMemberUpdate)
		}
		if e.Type == gossip.EventMemberReap {
			for _, m := range e.Members {
				l.meshMu.Lock()
				delete(l.restartsSeen, m.Name)
				l.meshMu.Unlock()
				if gossip.IsInterpreter(m.Tags) {
					l.logger.Debug("interpreter-reaped: forgotten after the reap window", "interpreter", m.Name)
					l.emit(Event{Type: EventReaped, Interpreter: m.Name, RequestID: m.Tags[gossip.TagRequestID], Host: m.Tags[gossip.TagHost]})
				}
			}
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	l.wg.Add(1)
	go func() { defer l.wg.Done(); defer cancel(); l.watchMesh(changed) }()
}

// noticeRestarts reports the in-place restarts of this host's
// interpreters (a supervisor restarts its child and publishes the count),
// which nothing else tells the agent.
func (l *Lifecycle) noticeRestarts(members []gossip.Member, update bool) {
	for _, m := range members {
		t, err := m.ParsedTags()
		if err != nil || t.Role != gossip.RoleInterpreter || t.Host != l.cfg.Node {
			continue
		}
		l.meshMu.Lock()
		prev, seen := l.restartsSeen[m.Name]
		l.restartsSeen[m.Name] = t.Restarts
		l.meshMu.Unlock()
		if update && seen && t.Restarts > prev {
			l.logger.Info("interpreter-restart: its supervisor restarted it", "interpreter", m.Name, "restarts", t.Restarts)
			l.emit(Event{Type: EventRestarted, Interpreter: m.Name, RequestID: t.RequestID, Host: l.cfg.Node, Gen: t.Gen})
		}
	}
}

// Wait returns once every goroutine of the lifecycle has ended, after Done
// was closed.
func (l *Lifecycle) Wait() { l.wg.Wait() }

func (l *Lifecycle) emit(e Event) {
	if l.deps.Emit != nil {
		l.deps.Emit(e)
	}
}

func (l *Lifecycle) changed() {
	if l.deps.Changed != nil {
		l.deps.Changed()
	}
}
