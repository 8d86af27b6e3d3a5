package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshagent/agent/agent/checks"
	"github.com/meshagent/agent/agent/interp"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/internal/durable"
	"github.com/meshagent/agent/placement"
	"github.com/meshagent/agent/state"
)

// Version is the agent's version, set at build time with -ldflags.
var Version = "0.1.0-dev"

// Deps are what the agent is handed instead of reaching for globals.
type Deps struct {
	Logger *slog.Logger
	Logs   *LogStream  // log lines for `agent monitor`; nil: monitor sees nothing
	Clock  state.Clock // nil: the real clock
	// Transport replaces the real gossip network (the simulation uses it).
	Transport gossip.Transport
	// LoadConfig re-reads the configuration for a reload (SIGHUP, agent
	// reload): the files, environment and flags the agent started with.
	// nil: the agent cannot reload.
	LoadConfig func() (Config, error)
	// Notifier tells systemd the agent's state (Type=notify); nil: not
	// under systemd.
	Notifier *Notifier
}

// Agent is the daemon: a gossip node, the RPC server, and the loops around
// them. New validates and starts nothing; Start runs; Leave is graceful;
// Shutdown is idempotent and closes ShutdownCh.
type Agent struct {
	cfg Config
	// given is the configuration as given (cfg fills in the token from its
	// file, and its Tags carry the checks' tag); a reload compares with it
	// and updates its reloadable settings. Guarded by reloadMu.
	given    Config
	reloadMu sync.Mutex
	kindsSum [32]byte // the interpreters file's content as last applied; guarded by reloadMu
	logger   *slog.Logger
	logs     *LogStream
	clock    state.Clock
	deps     Deps

	node  *gossip.Node
	rpc   *rpc.Server
	rpcLn net.Listener

	// peersMu orders writes of the peers file; once the leave is recorded
	// no later membership change may overwrite it.
	peersMu   sync.Mutex
	peersLeft bool

	tagsMu sync.Mutex
	tags   tagState
	// userTags are the --tag tags; cfg.Tags is them plus the checks' tag.
	// Guarded by tagsMu.
	userTags map[string]string

	// checks are the server's health checks. Guarded by checksMu.
	checksMu     sync.Mutex
	checks       healthChecks
	checkChanges atomic.Uint64 // status changes, for metrics
	load         LoadSource

	samples atomic.Uint64 // load samples taken, so tests can follow the loop

	// interps is the interpreter lifecycle: spawn, stop, restart, the
	// rules of the mesh.
	interps *interp.Lifecycle
	events  *eventFeed

	// Per-asker limits on the place queries and spawn orders this server
	// answers, guarded by limitMu.
	limitMu    sync.Mutex
	placeLimit *state.RateLimiter
	spawnLimit *state.RateLimiter
	placeRate  float64

	// Operators: the HTTP API, the load history behind its charts, metrics
	// and event handlers.
	http       *http.Server
	httpLn     net.Listener
	httpCtx    context.Context
	httpCancel context.CancelFunc
	history    *loadHistory
	metrics    *agentMetrics
	// The event handlers and their timeout, which a reload replaces.
	handlersMu     sync.Mutex
	handlers       []EventHandler
	handlerTimeout time.Duration

	// The asker's reservations, so that a burst of spawns spreads.
	ledgerMu sync.Mutex
	ledger   *placement.Ledger

	lostMu  sync.Mutex
	lostErr error

	// drain is the server's drain; drainGen counts its changes, so that
	// a superseded deadline does nothing.
	drainMu  sync.Mutex
	drain    drainState
	drainGen uint64

	// dirLock is held on the data dir from Start to the end of Shutdown.
	dirLockMu sync.Mutex
	dirLock   *dataDirLock

	// leaving is set when the leave begins: from then on the node's tags
	// are final, and publishing them would race the leave broadcast.
	leaving atomic.Bool
	// joined is set once the agent has joined the mesh it was told to
	// join (or was told to join none): the lifecycle takes no decision for
	// the mesh on a view of itself alone.
	joined atomic.Bool
	// readyCh is closed once the agent joined or retried its first join.
	readyOnce sync.Once
	readyCh   chan struct{}

	stopOnce   sync.Once
	shutdownCh chan struct{}
	leaveOnce  sync.Once
	leftCh     chan struct{}
	wg         sync.WaitGroup
}

// New checks cfg and prepares an agent without starting anything.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	given := cfg
	given.Tags = maps.Clone(cfg.Tags)
	defs, err := checks.ParseAll(cfg.Checks)
	if err != nil {
		return nil, err
	}
	kinds, kindsSum, err := readKinds(cfg.InterpretersFile)
	if err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		return nil, errors.New("agent needs a logger")
	}
	if deps.Clock == nil {
		deps.Clock = systemClock{}
	}
	if deps.Logs == nil {
		deps.Logs = &LogStream{subs: map[uint64]logSub{}}
	}
	// Until its first result a check is critical: a server is not chosen
	// before it is known healthy.
	cfg.Tags = withCheckTag(given.Tags, checkNames(defs))
	load, err := ParseLoadSource(cfg.LoadSource)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary, which runs interpreter supervisors: %w", err)
	}
	kinds[interp.BuiltinKind] = interp.Demo(self)
	ledger, err := placement.NewLedger(reservationTTL, 4096)
	if err != nil {
		return nil, err
	}
	if cfg.RPCTokenFile != "" {
		if cfg.RPCToken, err = ReadTokenFile(cfg.RPCTokenFile); err != nil {
			return nil, err
		}
	}
	if !isLoopback(cfg.RPCAddr) && cfg.RPCToken == "" {
		return nil, fmt.Errorf("the RPC on %s is reachable from other hosts and has no token, so anyone who reaches it "+
			"could start processes here: set --rpc-token-file (or --rpc-token), or bind it to 127.0.0.1", cfg.RPCAddr)
	}
	var handlers []EventHandler
	for _, spec := range cfg.EventHandlers {
		h, err := ParseEventHandler(spec)
		if err != nil {
			return nil, err
		}
		handlers = append(handlers, h)
	}
	httpCtx, httpCancel := context.WithCancel(context.Background())
	a := &Agent{
		given:          given,
		kindsSum:       kindsSum,
		userTags:       maps.Clone(given.Tags),
		handlerTimeout: cfg.EventHandlerTimeout,
		placeRate:      cfg.PlaceRate,
		handlers:       handlers,
		httpCtx:        httpCtx,
		httpCancel:     httpCancel,
		history:        newLoadHistory(10*time.Minute, 600),
		metrics:        newAgentMetrics(),
		load:           load,
		events:         newEventFeed(),
		ledger:         ledger,
		placeLimit:     state.NewRateLimiter(cfg.PlaceRate, 2*cfg.PlaceRate, 4096),
		spawnLimit:     state.NewRateLimiter(cfg.SpawnRate, 2*cfg.SpawnRate, 4096),
		tags:           tagState{extra: cfg.Tags},
		cfg:            cfg,
		logger:         deps.Logger,
		logs:           deps.Logs,
		clock:          deps.Clock,
		deps:           deps,
		shutdownCh:     make(chan struct{}),
		leftCh:         make(chan struct{}),
		readyCh:        make(chan struct{}),
	}
	a.interps, err = interp.New(interp.Config{Node: cfg.NodeName, Server: cfg.Role == gossip.RoleServer, Dir: a.interpDir(),
		Profile: cfg.Profile, Capacity: cfg.Capacity, Kinds: kinds, Self: self, Reap: cfg.InterpreterReap},
		interp.Deps{Clock: deps.Clock, Logger: deps.Logger, Done: a.shutdownCh, Elect: a.electForSpawn,
			Reserve: a.reserve, Release: a.release, AllowSpawn: a.allowSpawn,
			Changed: a.publishCounts, Emit: a.emitInterpreterEvent, Draining: a.draining, Joined: a.joined.Load})
	if err != nil {
		return nil, err
	}
	a.checks = healthChecks{runner: a.newChecks(defs), defs: defs}
	return a, nil
}

// Start starts gossip and the RPC, and begins joining in the background.
// It first locks the data dir, so that an agent started on the data dir of
// a running one stops before it reads or writes anything there. Every
// listener is opened before the node gossips, so an agent that cannot serve
// fails before it joins anyone.
func (a *Agent) Start() error {
	if a.cfg.DataDir != "" {
		l, err := lockDataDir(a.cfg.DataDir)
		if err != nil {
			return err
		}
		a.dirLockMu.Lock()
		a.dirLock = l
		a.dirLockMu.Unlock()
	}
	if err := a.start(); err != nil {
		a.releaseDataDir()
		return err
	}
	return nil
}

// releaseDataDir drops the data dir's lock, once.
func (a *Agent) releaseDataDir() {
	a.dirLockMu.Lock()
	defer a.dirLockMu.Unlock()
	a.dirLock.release()
	a.dirLock = nil
}

func (a *Agent) start() error {
	if err := a.restoreUserTags(); err != nil {
		return err
	}
	if a.cfg.Role == gossip.RoleServer {
		if err := a.interps.LoadRegistry(); err != nil {
			return err
		}
		if err := a.loadDrain(); err != nil {
			return err
		}
	}
	gcfg, err := a.gossipConfig()
	if err != nil {
		return err
	}
	if err := a.checkGossipSecurity(gcfg); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", a.cfg.RPCAddr)
	if err != nil {
		return fmt.Errorf("rpc listen on %s: %w (is another agent running? choose another --rpc-addr)", a.cfg.RPCAddr, err)
	}
	a.rpcLn = ln
	if a.cfg.HTTPAddr != "" {
		hln, err := net.Listen("tcp", a.cfg.HTTPAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("http listen on %s: %w (choose another --http-addr, or empty to turn it off)", a.cfg.HTTPAddr, err)
		}
		a.httpLn = hln
	}
	gossipMetrics, err := gossip.EnableMetrics()
	if err != nil {
		a.closeListeners()
		return err
	}
	node, err := gossip.Start(gcfg)
	if err != nil {
		a.closeListeners()
		// memberlist flattens the syscall error into its text.
		if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use") {
			return fmt.Errorf("%w (is another agent running? choose another --bind)", err)
		}
		return err
	}
	a.node = node
	if err := errors.Join(a.registerMetrics(gossipMetrics), a.registerCheckMetrics()); err != nil {
		node.Shutdown()
		a.closeListeners()
		return fmt.Errorf("metrics: %w", err)
	}

	a.rpc = rpc.NewServer(ln, &backend{a: a}, rpc.ServerConfig{Token: a.cfg.RPCToken, MaxConns: a.cfg.RPCMaxConns,
		Logger: a.logger.With("component", "rpc"), OnCommand: func(c string) { a.metrics.rpcRequests.WithLabelValues(c).Inc() }})
	a.rpc.Register(rpc.CommandPlace, a.handlePlace)
	a.rpc.Register(rpc.CommandSpawn, a.handleSpawn)
	a.rpc.Register(rpc.CommandInterpreters, a.handleInterpreters)
	a.rpc.Register(rpc.CommandStopInterpreter, a.handleStopInterpreter)
	a.rpc.Register(rpc.CommandDrain, a.handleDrain)
	a.rpc.Register(rpc.CommandSignalInterpreter, a.handleSignalInterpreter)
	a.rpc.Register(rpc.CommandRestartInterpreter, a.handleRestartInterpreter)
	a.rpc.Register(rpc.CommandChecks, a.handleChecks)
	a.rpc.Register(rpc.CommandReload, a.handleReload)
	a.interps.Start(node)
	if a.cfg.Role == gossip.RoleServer {
		a.armRestoredDrain()
		bidding.Serve(node, a.bid, a.logger.With("component", "placement"))
		a.checksMu.Lock()
		if r := a.checks.runner; r != nil {
			r.Start()
		}
		a.checksMu.Unlock()
		started := a.clock.Now()
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.runLoad(a.load, started) }()
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.rpc.Serve(); err != nil {
			a.logger.Error("rpc server stopped", "err", err)
		}
	}()
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.watchLost() }()

	a.watchHistory()
	a.logUserEvents()
	a.startEventHandlers()
	if err := a.startHTTP(); err != nil {
		a.Shutdown()
		return err
	}
	if a.cfg.HTTPAddr != "" && !isLoopback(a.cfg.HTTPAddr) {
		a.logger.Warn("the HTTP API is reachable from other hosts: it shows the whole member list to anyone who reaches "+a.cfg.HTTPAddr, "http", a.cfg.HTTPAddr)
	}

	a.logger.Info("agent started", "node", a.cfg.NodeName, "role", a.cfg.Role, "gossip", node.Addr(),
		"rpc", ln.Addr().String(), "http", a.HTTPAddr(), "profile", a.cfg.Profile, "encrypted", node.EncryptionEnabled(), "version", Version)

	joinAddrs := a.cfg.Join
	if path := a.peersPath(); path != "" {
		if len(joinAddrs) == 0 {
			peers, left, err := loadPeers(path)
			switch {
			case err != nil:
				a.logger.Warn("not rejoining by itself", "err", err)
			case len(peers) == 0:
			case left && !a.cfg.Rejoin:
				a.logger.Warn(fmt.Sprintf("this agent left the mesh on purpose before it stopped, so it does not rejoin by itself: "+
					"give --join ADDR, or --rejoin to rejoin the %s it knew", plural(len(peers), "member", "members")), "peers", peers)
			default:
				a.logger.Info("rejoining the members known before the restart", "peers", peers, "after_leave", left)
				joinAddrs = peers
			}
		}
		changed := make(chan struct{}, 1)
		cancel := node.Subscribe(func(e gossip.Event) {
			if e.Type != gossip.EventUser && e.Type != gossip.EventQuery {
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		})
		a.wg.Add(1)
		go func() { defer a.wg.Done(); defer cancel(); a.recordPeers(changed, time.Second) }()
	}
	// The interpreters it re-adopted know the mesh, and it is their
	// server: contacting them at once relists them everywhere, even when
	// every agent restarted together and knows nobody else yet.
	if own := a.interps.MemberAddrs(); len(own) > 0 {
		a.logger.Info("rejoining through the interpreters re-adopted here", "addrs", own)
		joinAddrs = append(slices.Clone(joinAddrs), own...)
	}
	// Every subscriber is in place: the events held since the node started
	// (its own join first) may flow.
	node.ReleaseEvents()
	if len(joinAddrs) == 0 {
		a.joined.Store(true) // the first of a mesh: nothing to wait for
		a.markReady()
		a.logger.Info("no --join and no members to rejoin: this agent is alone until it joins a mesh (--join ADDR, or agent join ADDR)")
	}
	if len(joinAddrs) > 0 {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.retryJoin(joinAddrs) }()
	}
	if n := a.deps.Notifier; n != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.runNotify(n) }()
	}
	return nil
}

func (a *Agent) gossipConfig() (gossip.Config, error) {
	host, port, err := splitHostPort(a.cfg.BindAddr)
	if err != nil {
		return gossip.Config{}, fmt.Errorf("bind: %w", err)
	}
	g := gossip.Config{
		Name:       a.cfg.NodeName,
		BindAddr:   host,
		BindPort:   port,
		Profile:    a.cfg.Profile,
		Tags:       a.initialTags(),
		Transport:  a.deps.Transport,
		Logger:     a.logger,
		Reap:       gossip.IsInterpreter,
		ReapAfter:  a.cfg.InterpreterReap,
		HoldEvents: true,
	}
	if a.cfg.AdvertiseAddr != "" {
		if g.AdvertiseAddr, g.AdvertisePort, err = splitHostPort(a.cfg.AdvertiseAddr); err != nil {
			return gossip.Config{}, fmt.Errorf("advertise: %w", err)
		}
	}
	if a.cfg.DataDir != "" {
		if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
			return gossip.Config{}, fmt.Errorf("data dir: %w", err)
		}
		g.SnapshotPath = filepath.Join(a.cfg.DataDir, "serf.snapshot")
	}
	keyring := a.cfg.KeyringFile
	if keyring == "" && a.cfg.DataDir != "" {
		keyring = filepath.Join(a.cfg.DataDir, "keyring.json")
	}
	if keyring != "" {
		keys, err := gossip.LoadKeyringFile(keyring)
		if err != nil {
			return gossip.Config{}, err
		}
		if len(keys) > 0 {
			g.Keys = keys
			if a.cfg.EncryptKey != "" {
				a.logger.Warn("keyring file found, so --encrypt is ignored; manage keys with `agent keys`", "keyring", keyring)
			}
		}
		g.KeyringFile = keyring
	}
	if len(g.Keys) == 0 && a.cfg.EncryptKey != "" {
		k, err := gossip.DecodeKey(a.cfg.EncryptKey)
		if err != nil {
			return gossip.Config{}, err
		}
		g.Keys = [][]byte{k}
		// Keep the key with the data, so a restart (or a key rotation with
		// `agent keys`, which serf writes here) needs no --encrypt again.
		if keyring != "" {
			if err := durable.WriteFile(keyring, []byte(`["`+a.cfg.EncryptKey+`"]`+"\n"), 0o600); err != nil {
				return gossip.Config{}, fmt.Errorf("keyring: %w", err)
			}
		}
	}
	return g, nil
}

// watchHistory records every server's published load as this agent sees it.
func (a *Agent) watchHistory() {
	now := a.clock.Now()
	for _, m := range a.node.Members() {
		a.history.record(m, now)
	}
	cancel := a.node.Subscribe(func(e gossip.Event) {
		if e.Type == gossip.EventMemberJoin || e.Type == gossip.EventMemberUpdate {
			now := a.clock.Now()
			for _, m := range e.Members {
				a.history.record(m, now)
			}
		}
	})
	a.wg.Add(1)
	go func() { defer a.wg.Done(); <-a.shutdownCh; cancel() }()
}

// logUserEvents logs the user events and queries this agent receives at
// info, as serf's agent does, so that `agent monitor` shows them; the
// queries placement sends itself, many a second in a busy mesh, go to debug.
func (a *Agent) logUserEvents() {
	cancel := a.node.Subscribe(func(e gossip.Event) {
		switch {
		case e.Type == gossip.EventUser:
			a.logger.Info("user event received", "name", e.Name, "payload_bytes", len(e.Payload), "ltime", e.LTime)
		case e.Type == gossip.EventQuery && IsOwnQuery(e.Name):
			a.logger.Debug("placement query received", "name", e.Name, "ltime", e.LTime)
		case e.Type == gossip.EventQuery:
			from := ""
			if e.Query != nil {
				from = e.Query.From
			}
			a.logger.Info("query received", "name", e.Name, "from", from, "payload_bytes", len(e.Payload), "ltime", e.LTime)
		}
	})
	a.wg.Add(1)
	go func() { defer a.wg.Done(); <-a.shutdownCh; cancel() }()
}

// startEventHandlers hands events to the operator's scripts. It runs with
// none too: a reload may add some.
func (a *Agent) startEventHandlers() {
	events := make(chan gossip.Event, handlerQueue)
	cancel := a.node.Subscribe(func(e gossip.Event) {
		select {
		case events <- e:
		default:
			a.logger.Warn("event handlers are behind; an event was dropped", "event", e.Type)
		}
	})
	a.wg.Add(1)
	go func() { defer a.wg.Done(); defer cancel(); a.runEventHandlers(events) }()
}

// checkGossipSecurity refuses unencrypted gossip that other hosts can reach,
// unless the operator said --insecure, which is then logged at every start.
func (a *Agent) checkGossipSecurity(g gossip.Config) error {
	local := isLoopback(a.cfg.BindAddr) && (a.cfg.AdvertiseAddr == "" || isLoopback(a.cfg.AdvertiseAddr))
	if len(g.Keys) > 0 || local || g.Transport != nil {
		return nil
	}
	if a.cfg.Insecure {
		a.logger.Warn("gossip is NOT encrypted and reachable from other hosts (--insecure): anyone who reaches "+
			a.cfg.BindAddr+" can join the mesh and ask it to start interpreters", "bind", a.cfg.BindAddr)
		return nil
	}
	where, fix := "--bind "+a.cfg.BindAddr, "bind to 127.0.0.1"
	if isLoopback(a.cfg.BindAddr) {
		// The bind is local; the advertised address is what others reach.
		where, fix = "--advertise "+a.cfg.AdvertiseAddr, "advertise a 127.0.0.0/8 address"
	}
	give := "give it to every agent with --encrypt"
	// Under the packaged unit the settings are files: name the one to write.
	if dir := a.cfg.ConfigDir; dir != "" {
		give = fmt.Sprintf(`give it to every agent with --encrypt or, as this agent reads %s, in a file there: `+
			`write {"encrypt": "KEY"} to %s (readable by the agent only)`, dir, filepath.Join(dir, "20-encrypt.json"))
	} else if n := len(a.cfg.Files); n > 0 {
		give = fmt.Sprintf(`give it to every agent with --encrypt or add "encrypt": "KEY" to %s`, a.cfg.Files[n-1])
	}
	return fmt.Errorf("gossip on %s is reachable from other hosts but not encrypted, so anyone who reaches it could join "+
		"the mesh and start interpreters: make a key with `agent keygen` and %s "+
		"(it is then kept in the data dir's keyring), or %s; on a network you fully trust, --insecure "+
		"turns this check off", where, give, fix)
}

// ReadTokenFile reads an RPC token from a file: the first line, trimmed.
func ReadTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("rpc token file: %w", err)
	}
	token := strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0])
	if token == "" {
		return "", fmt.Errorf("rpc token file %s is empty: put the token on its first line", path)
	}
	return token, nil
}

// initialTags are the tags the agent starts with: the role, the user's own,
// and for a server its interpreter count and capacity (load follows).
func (a *Agent) initialTags() map[string]string {
	a.tagsMu.Lock()
	defer a.tagsMu.Unlock()
	return a.buildTagsLocked()
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("address %q is not host:port", s)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: bad port", s)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// retryJoin joins the given members, retrying with exponential backoff
// until one answers or the agent stops.
func (a *Agent) retryJoin(addrs []string) {
	wait := time.Duration(0)
	for attempt := 1; ; attempt++ {
		if wait > 0 {
			select {
			case <-a.shutdownCh:
				return
			case <-a.clock.After(wait):
			}
		}
		n, err := a.node.Join(addrs, false)
		if n > 0 {
			a.joined.Store(true)
			a.markReady()
			a.logger.Info("joined the mesh", "contacted", n, "attempt", attempt)
			a.republishTags()
			return
		}
		a.markReady() // systemd waits for the first attempt, not for the mesh
		wait = NextBackoff(wait, a.cfg.JoinRetryMax)
		a.logger.Warn("join failed; retrying", "addrs", addrs, "attempt", attempt, "err", err, "retry_in", wait)
	}
}

// republishTags gossips the tags again after a join. A tag change made while
// the agent was still alone (its first load sample races the join) can miss
// the members it then joins, who would keep the old tags until the next
// push/pull, half a minute later.
func (a *Agent) republishTags() {
	a.tagsMu.Lock()
	defer a.tagsMu.Unlock()
	if a.leaving.Load() {
		return
	}
	if err := a.node.SetTags(a.buildTagsLocked()); err != nil {
		a.logger.Warn("could not republish tags after joining", "err", err)
	}
}

// NextBackoff doubles the wait from one second up to max.
func NextBackoff(prev, max time.Duration) time.Duration {
	next := 2 * prev
	if next < time.Second {
		next = time.Second
	}
	if next > max {
		next = max
	}
	return next
}

// closeListeners closes what Start opened before the node started.
func (a *Agent) closeListeners() {
	a.rpcLn.Close()
	if a.httpLn != nil {
		a.httpLn.Close()
	}
}

// watchLost ends the agent when its node stops being a member by itself
// (another member holds its name): serving RPC and HTTP with a frozen view
// would lie to every client.
func (a *Agent) watchLost() {
	select {
	case <-a.shutdownCh:
	case <-a.node.Lost():
		err := a.node.LostErr()
		a.logger.Error("this agent is no longer a member of the mesh; stopping", "err", err)
		a.lostMu.Lock()
		a.lostErr = err
		a.lostMu.Unlock()
		a.leaveOnce.Do(func() { close(a.leftCh) })
	}
}

// Lost is why the agent stopped being a member by itself, or nil. The
// process should exit non-zero with it once LeftCh is closed.
func (a *Agent) Lost() error {
	a.lostMu.Lock()
	defer a.lostMu.Unlock()
	return a.lostErr
}

// Node is the agent's gossip node; nil before Start.
func (a *Agent) Node() *gossip.Node { return a.node }

// RPCAddr is the address the RPC actually listens on.
func (a *Agent) RPCAddr() string { return a.rpcLn.Addr().String() }

// Leave leaves the mesh gracefully, waiting at most the leave timeout. The
// agent must still be shut down.
func (a *Agent) Leave() error {
	a.leaving.Store(true)
	a.notify("STOPPING=1\nSTATUS=leaving the mesh")
	// The members known now stay on record, for --rejoin.
	var peers []string
	if a.peersPath() != "" {
		if peers = a.alivePeers(); len(peers) == 0 {
			peers, _, _ = loadPeers(a.peersPath())
		}
	}
	done := make(chan error, 1)
	go func() { done <- a.node.Leave() }()
	select {
	case err := <-done:
		if err != nil {
			return err
		}
		// A member that left on purpose does not rejoin by itself on restart.
		a.peersMu.Lock()
		defer a.peersMu.Unlock()
		a.peersLeft = true
		if a.peersPath() == "" {
			return nil
		}
		return a.writePeers(peers, true)
	case <-a.clock.After(a.cfg.LeaveTimeout):
		return fmt.Errorf("leave did not finish within %s", a.cfg.LeaveTimeout)
	}
}

// LeftCh is closed when a client asked the agent to leave over RPC; the
// process should then shut the agent down and exit.
func (a *Agent) LeftCh() <-chan struct{} { return a.leftCh }

// Shutdown stops gossip (without leaving) and the RPC. It is idempotent.
func (a *Agent) Shutdown() error {
	var err error
	a.stopOnce.Do(func() {
		close(a.shutdownCh)
		a.stopChecks()
		a.httpCancel()
		if a.http != nil {
			a.http.Close()
		}
		// Gossip stops first: an RPC reply in flight (to leave) still goes out.
		if a.node != nil {
			err = a.node.Shutdown()
		}
		if a.rpc != nil {
			a.rpc.Close()
		} else if a.rpcLn != nil {
			a.closeListeners()
		}
		a.wg.Wait()
		a.interps.Wait()
		a.releaseDataDir()
		a.logger.Info("agent stopped")
	})
	return err
}

// ShutdownCh is closed when Shutdown begins.
func (a *Agent) ShutdownCh() <-chan struct{} { return a.shutdownCh }

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// samplesTaken counts the load loop's samples.
func (a *Agent) samplesTaken() uint64 { return a.samples.Load() }

// plural writes n with the singular or plural noun: "1 member", "2 members".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
