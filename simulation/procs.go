package simulation

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/meshagent/agent/agent/interp"
	"github.com/meshagent/agent/gossip"
)

// This file is the simulation's process table: a host's supervisors run
// agent/interp's own supervisor (interp.Supervise) on a goroutine each,
// their members on the simulated network, their interpreters an in-memory
// double. A host implements interp.Processes, so a simulated agent's
// lifecycle starts, finds, stops and signals its supervisors exactly as a
// real one does, through the same code.

// simHost is one simulated machine's processes. Safe for concurrent use.
type simHost struct {
	name   string
	net    *Network
	logger *slog.Logger

	mu       sync.Mutex
	nextPID  int
	nextPort int
	sups     map[int]*simSupervisor // running supervisors, by pid
	ended    map[string]time.Time   // when each supervisor's interpreter ended for good, by name
	wg       sync.WaitGroup         // their goroutines
}

func newSimHost(name string, n *Network, logger *slog.Logger) *simHost {
	return &simHost{name: name, net: n, logger: logger, nextPID: 100, nextPort: 20000, sups: map[int]*simSupervisor{},
		ended: map[string]time.Time{}}
}

func (h *simHost) pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextPID++
	return h.nextPID
}

// simSupervisor is one supervisor "process": interp.Supervise on a
// goroutine, with this as its SupervisorEnv.
type simSupervisor struct {
	host     *simHost
	pid      int
	specPath string
	spec     interp.Spec

	ready    chan interp.Readiness
	stops    chan os.Signal
	killed   chan struct{}
	killOnce sync.Once
	done     chan struct{}

	mu      sync.Mutex
	phase   string
	deliver func(string) interp.ControlAnswer // while its signal server runs
	child   *simChild                         // the interpreter running now
	node    *gossip.Node
}

// Launch starts a supervisor for spec on this host.
func (h *simHost) Launch(specPath string, spec interp.Spec) (interp.Started, error) {
	s := &simSupervisor{host: h, pid: h.pid(), specPath: specPath, spec: spec, ready: make(chan interp.Readiness, 1),
		stops: make(chan os.Signal, 2), killed: make(chan struct{}), done: make(chan struct{})}
	h.mu.Lock()
	h.sups[s.pid] = s
	h.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer close(s.done)
		interp.Supervise(spec, s, io.Discard, h.logger)
		s.mu.Lock()
		if c := s.child; c != nil {
			c.exit(errKilled) // Pdeathsig: a child never outlives its supervisor
		}
		s.mu.Unlock()
		h.mu.Lock()
		delete(h.sups, s.pid)
		h.mu.Unlock()
	}()
	return interp.Started{PID: s.pid, Ready: s.ready, Done: s.done}, nil
}

func (h *simHost) supervisor(pid int) *simSupervisor {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sups[pid]
}

// Running reports whether the supervisor pid runs the spec at specPath.
func (h *simHost) Running(pid int, specPath string) bool {
	s := h.supervisor(pid)
	return s != nil && s.specPath == specPath
}

// Terminate delivers SIGTERM to a supervisor.
func (h *simHost) Terminate(pid int) error {
	s := h.supervisor(pid)
	if s == nil {
		return syscall.ESRCH
	}
	select {
	case s.stops <- syscall.SIGTERM:
	default:
	}
	return nil
}

// Kill ends a supervisor on the spot, and its interpreter with it.
func (h *simHost) Kill(pid int) error {
	s := h.supervisor(pid)
	if s == nil {
		return syscall.ESRCH
	}
	s.kill()
	return nil
}

// SignalInterpreter asks the supervisor running spec to signal its
// interpreter.
func (h *simHost) SignalInterpreter(spec interp.Spec, sig string) interp.ControlAnswer {
	h.mu.Lock()
	var s *simSupervisor
	for _, x := range h.sups {
		if x.spec.Name == spec.Name {
			s = x
		}
	}
	h.mu.Unlock()
	if s == nil {
		return interp.ControlAnswer{Reason: "its supervisor does not answer: no such process"}
	}
	s.mu.Lock()
	deliver := s.deliver
	s.mu.Unlock()
	if deliver == nil {
		return interp.ControlAnswer{Reason: "its supervisor does not answer: no control socket"}
	}
	return deliver(sig)
}

// FreePort hands out this host's ports in turn: nothing else listens.
func (h *simHost) FreePort(string, bool) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextPort++
	return h.nextPort, nil
}

// killAll ends every supervisor of the host on the spot: the host crashed.
func (h *simHost) killAll() {
	h.mu.Lock()
	sups := make([]*simSupervisor, 0, len(h.sups))
	for _, s := range h.sups {
		sups = append(sups, s)
	}
	h.mu.Unlock()
	for _, s := range sups {
		s.kill()
	}
}

// supervisors lists the running supervisors, by interpreter name.
func (h *simHost) supervisors() []*simSupervisor {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*simSupervisor, 0, len(h.sups))
	for _, s := range h.sups {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *simSupervisor) int {
		if a.spec.Name < b.spec.Name {
			return -1
		}
		if a.spec.Name > b.spec.Name {
			return 1
		}
		return a.pid - b.pid
	})
	return out
}

func (s *simSupervisor) kill() {
	// The supervisor sees killed and ends without a word; its member
	// shuts down without a leave, so the mesh finds it failed.
	s.killOnce.Do(func() {
		close(s.killed)
		s.host.endedNow(s.spec.Name)
	})
}

// StartChild starts the interpreter double.
func (s *simSupervisor) StartChild(spec interp.Spec, _ io.Writer) (interp.Child, error) {
	select {
	case <-s.killed:
		return nil, syscall.ESRCH
	default:
	}
	c := &simChild{pid: s.host.pid(), exited: make(chan error, 1)}
	s.mu.Lock()
	s.child = c
	s.mu.Unlock()
	return c, nil
}

// StartNode starts the supervisor's member on the host's network, at
// spec's gossip address.
func (s *simSupervisor) StartNode(spec interp.Spec, cfg gossip.Config) (*gossip.Node, error) {
	_, p, err := net.SplitHostPort(spec.Gossip)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, err
	}
	ep, err := s.host.net.Attach(s.host.name, port)
	if err != nil {
		return nil, err
	}
	cfg.Transport, cfg.Uncompressed = ep, true // nothing measures the bytes here
	cfg.NoCoordinates = true                   // nor asks for round-trip times
	cfg.Logger = slog.New(slog.DiscardHandler)
	node, err := gossip.Start(cfg)
	if err != nil {
		ep.Shutdown()
		return nil, err
	}
	s.mu.Lock()
	s.node = node
	s.mu.Unlock()
	select {
	case <-s.killed:
		node.Shutdown()
		return nil, fmt.Errorf("killed")
	default:
	}
	return node, nil
}

// ServeSignals takes signals for the interpreter while the supervisor runs.
func (s *simSupervisor) ServeSignals(_ interp.Spec, deliver func(string) interp.ControlAnswer) (io.Closer, error) {
	s.mu.Lock()
	s.deliver = deliver
	s.mu.Unlock()
	return closer(func() error {
		s.mu.Lock()
		s.deliver = nil
		s.mu.Unlock()
		return nil
	}), nil
}

func (s *simSupervisor) Ready(r interp.Readiness) {
	select {
	case s.ready <- r:
	default:
	}
}

func (s *simSupervisor) Phase(st string) {
	s.mu.Lock()
	s.phase = st
	s.mu.Unlock()
	if st == "ended" {
		s.host.endedNow(s.spec.Name)
	}
}

func (h *simHost) endedNow(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.ended[name]; !ok {
		h.ended[name] = time.Now()
	}
}

// endedAt is when the interpreter called name ended for good on this host.
func (h *simHost) endedAt(name string) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.ended[name]
	return t, ok
}

// up reports whether the supervisor keeps an interpreter: it runs one, or
// starts one, or waits out a restart's delay.
func (s *simSupervisor) up() bool {
	select {
	case <-s.killed:
		return false
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.phase == "starting" || s.phase == "running" || s.phase == "restarting"
}

func (s *simSupervisor) Stops() <-chan os.Signal { return s.stops }
func (s *simSupervisor) Killed() <-chan struct{} { return s.killed }

type closer func() error

func (c closer) Close() error { return c() }

// simChild is the interpreter double: a process that runs until it is
// signalled, as the built-in demo kind does: SIGTERM and SIGINT end it
// cleanly (exit status 0), SIGKILL kills it.
type simChild struct {
	pid    int
	exited chan error

	mu   sync.Mutex
	done bool
}

// simExit is how a double ended, shaped like exec's exit errors.
type simExit struct {
	sig  string
	code int
}

func (e simExit) Error() string  { return "signal: " + e.sig }
func (e simExit) ExitCode() int  { return e.code }
func (e simExit) String() string { return e.Error() }

var errKilled = simExit{sig: "killed", code: 128 + int(syscall.SIGKILL)}

func (c *simChild) PID() int             { return c.pid }
func (c *simChild) Exited() <-chan error { return c.exited }

func (c *simChild) Signal(sig syscall.Signal) error {
	if c.ended() {
		return syscall.ESRCH
	}
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT:
		c.exit(nil)
	case syscall.SIGKILL:
		c.exit(errKilled)
	}
	return nil
}

func (c *simChild) exit(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	c.done = true
	c.exited <- err
}

func (c *simChild) ended() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}
