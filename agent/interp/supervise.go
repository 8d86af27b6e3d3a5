package interp

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/meshagent/agent/agent/checks"
	"github.com/meshagent/agent/gossip"
	"github.com/vmihailenco/msgpack/v5"
)

// This file is one supervisor's life, start to end, in one place: the
// states an interpreter goes through under its supervisor, and what moves
// it from one to the next. What a supervisor does outside itself (start a
// process, join the mesh, hear signals) goes through a SupervisorEnv:
// real processes for `agent interpreter` (osprocess.go), an in-memory
// double in the simulation. The logic here is the same for both.

// SupervisorEnv is the world one supervisor acts on. A real supervisor
// (`agent interpreter`) gets processes, sockets and signals; the
// simulation gives an in-memory double of the interpreter and a member on
// its in-memory network. Its methods are called from the supervisor's one
// goroutine, except Ready, which may be called from any.
type SupervisorEnv interface {
	// StartChild starts the interpreter spec describes, writing its output
	// to out.
	StartChild(spec Spec, out io.Writer) (Child, error)
	// StartNode starts the supervisor's member of the mesh with cfg
	// (name, tags, keys, profile and reap are set; the address or
	// transport is the env's), not yet joined to anyone.
	StartNode(spec Spec, cfg gossip.Config) (*gossip.Node, error)
	// ServeSignals lets the agent reach the interpreter with signals;
	// deliver answers each one. The closer stops it.
	ServeSignals(spec Spec, deliver func(sig string) ControlAnswer) (io.Closer, error)
	// Ready tells the server that launched the supervisor how the start
	// went. Called once.
	Ready(Readiness)
	// Stops delivers the requests to stop the interpreter (SIGTERM,
	// SIGINT, SIGHUP to the supervisor).
	Stops() <-chan os.Signal
	// Phase says which state the supervisor entered: starting, running,
	// restarting, ended.
	Phase(state string)
	// Killed is closed when the supervisor dies on the spot (the
	// simulation's kill -9): it then ends without a word, as a killed
	// process would. A real process has no such channel (nil).
	Killed() <-chan struct{}
}

// Child is one running interpreter.
type Child interface {
	PID() int
	// Exited delivers how it ended, once.
	Exited() <-chan error
	// Signal signals its process group.
	Signal(sig syscall.Signal) error
}

// The states of an interpreter under its supervisor.
type supervisorState string

const (
	stateStarting   supervisorState = "starting"   // the child runs; not yet settled or a member
	stateRunning    supervisorState = "running"    // a member, the child runs
	stateRestarting supervisorState = "restarting" // the child failed; a restart waits out its delay
	stateEnded      supervisorState = "ended"      // the child is gone for good; leaving the mesh
)

// supervisor runs one interpreter. Its fields are touched only by its own
// goroutine, except current, which the signal server reads.
type supervisor struct {
	spec   Spec
	env    SupervisorEnv
	logger *slog.Logger
	out    io.Writer

	state     supervisorState
	child     Child
	exited    <-chan error // child's; nil once read
	waitErr   error
	end       Exit
	tags      gossip.Tags
	node      *gossip.Node
	ctl       io.Closer // the signal server
	tracker   *Tracker
	restartAt <-chan time.Time
	checks    *supervisorChecks // the kind's checks; nil: none

	mu      sync.Mutex
	current Child // what signals reach: nil between a failure and its restart

	// restarts carries the control socket's restart-in-place requests to
	// the loop; done is closed when the loop has ended.
	restarts chan chan ControlAnswer
	done     chan struct{}
	// superseded carries a newer generation of the request, which the
	// host's agent said was placed, to the loop (handleSuperseded).
	superseded chan int
}

// Supervise runs the interpreter spec describes in env until it ends, and
// returns its exit code. See RunSupervisor for what a supervisor does.
func Supervise(spec Spec, env SupervisorEnv, out io.Writer, logger *slog.Logger) int {
	s := &supervisor{spec: spec, env: env, out: out, logger: logger.With("interpreter", spec.Name),
		end: Exit{Name: spec.Name, RequestID: spec.RequestID, Restarts: spec.Restarts}, tracker: NewTracker(spec.backoff()),
		restarts: make(chan chan ControlAnswer), done: make(chan struct{}), superseded: make(chan int, 1)}
	var err error
	if s.checks, err = newSupervisorChecks(spec, wallClock{}, checks.OSProber{Env: identityEnv(spec)}); err != nil {
		env.Ready(Readiness{Error: err.Error()})
		s.logger.Error("the interpreter's checks cannot run", "err", err)
		return 1
	}
	if code, ok := s.start(); !ok {
		return code
	}
	defer s.ctl.Close()
	defer s.node.Shutdown()
	s.startChecks()
	end := s.loop()
	s.stopChecks()
	close(s.done)
	switch end {
	case endKilled:
		return 137 // killed on the spot: no record, no leave
	case endLost:
		return 1
	}
	return s.finish()
}

// How the loop ended.
type loopEnd int

const (
	endDone   loopEnd = iota // the interpreter is done: record it and leave
	endLost                  // the membership is lost: recorded, nothing to leave
	endKilled                // the supervisor was killed on the spot
)

// start runs the child, waits for it to settle, then makes the supervisor
// a member. It reports false, with the exit code, when the interpreter
// never got that far.
func (s *supervisor) start() (int, bool) {
	s.enter(stateStarting)
	child, err := s.env.StartChild(s.spec, s.out)
	if err != nil {
		s.env.Ready(Readiness{Error: fmt.Sprintf("start %s: %v", s.spec.Argv[0], err)})
		s.logger.Error("interpreter did not start", "argv", s.spec.Argv, "err", err)
		return 1, false
	}
	s.child, s.exited = child, child.Exited()
	// One that exits at once did not start: say so instead of joining.
	select {
	case waitErr := <-s.exited:
		s.end.How = HowExited
		s.writeExit(waitErr)
		s.env.Ready(Readiness{Died: describeExit(waitErr), Output: outputHead(s.spec.OutputLog)})
		s.logger.Error("interpreter exited at once", "argv", s.spec.Argv, "status", describeExit(waitErr))
		return exitCode(waitErr), false
	case <-s.env.Killed():
		child.Signal(syscall.SIGKILL)
		return 137, false
	case <-time.After(settle):
	}
	s.setCurrent(child)
	s.tags = gossip.Tags{Role: gossip.RoleInterpreter, Kind: s.spec.Kind, Host: s.spec.Host, RequestID: s.spec.RequestID,
		Endpoint: s.spec.Endpoint, PID: child.PID(), Gen: s.spec.Gen, Restarts: s.spec.Restarts}
	if s.spec.Restart == RestartOnFailure {
		s.tags.Restart, s.tags.Args = s.spec.Restart, s.spec.Args
	}
	if s.checks != nil {
		s.tags.Critical = checks.TagValue(s.checks.runner.Critical(), checks.MaxTag)
	}
	fail := func(err error, what string) (int, bool) {
		s.stopChild(0)
		s.env.Ready(Readiness{Error: err.Error()})
		s.logger.Error(what, "err", err)
		return 1, false
	}
	ctl, err := s.env.ServeSignals(s.spec, s.deliver)
	if err != nil {
		return fail(err, "no control socket")
	}
	node, err := s.join()
	if err != nil {
		ctl.Close()
		return fail(err, "could not join the mesh")
	}
	s.node, s.ctl = node, ctl
	node.HandleQuery(querySuperseded, s.handleSuperseded)
	s.enter(stateRunning)
	s.env.Ready(Readiness{PID: child.PID()})
	s.logger.Info("interpreter running", "pid", child.PID(), "endpoint", s.spec.Endpoint, "argv", s.spec.Argv,
		"restart", s.spec.Restart, "gen", s.spec.Gen)
	return 0, true
}

// join starts the supervisor's member, with the interpreter's tags and a
// reaper that forgets ended interpreters after the window, and joins it to
// its server.
func (s *supervisor) join() (*gossip.Node, error) {
	var keys [][]byte
	for _, k := range s.spec.Keys {
		key, err := gossip.DecodeKey(k)
		if err != nil {
			return nil, err
		}
		keys = append(keys, key)
	}
	node, err := s.env.StartNode(s.spec, gossip.Config{Name: s.spec.Name, Profile: s.spec.Profile, Tags: s.tags.Map(),
		Keys: keys, Logger: s.logger, Reap: gossip.IsInterpreter, ReapAfter: s.spec.Reap})
	if err != nil {
		return nil, err
	}
	// The server is normally right there; a few quick tries cover a busy one.
	for attempt := 1; ; attempt++ {
		n, err := node.Join(s.spec.Join, false)
		if n > 0 {
			return node, nil
		}
		if attempt == 5 {
			node.Shutdown()
			return nil, fmt.Errorf("join %v: %w", s.spec.Join, err)
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
}

// loop runs while the interpreter is a member: it restarts the child when
// the policy says so, and ends on a stop, a lost membership, a better
// duplicate, or the child's end.
func (s *supervisor) loop() loopEnd {
	// Every membership change may reveal a duplicate of this request.
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	cancel := s.node.Subscribe(func(e gossip.Event) {
		if e.Type != gossip.EventUser && e.Type != gossip.EventQuery {
			poke()
		}
	})
	defer cancel()
	rejoin := time.NewTicker(rejoinInterval)
	defer rejoin.Stop()
	for s.state != stateEnded {
		select {
		case <-s.env.Killed():
			s.child.Signal(syscall.SIGKILL) // its Pdeathsig
			return endKilled
		case waitErr := <-s.exited:
			s.childExited(waitErr)
		case <-s.restartAt:
			s.restart()
		case reply := <-s.restarts:
			reply <- s.restartInPlace()
		case critical := <-s.checkChanges():
			s.checksChanged(critical)
		case sig := <-s.env.Stops():
			s.logger.Info("stopping the interpreter", "signal", sig.String())
			s.end.How = HowStopped
			if why, ok := readSuperseded(s.spec); ok {
				// Its server stopped it for a newer generation: a duplicate.
				s.end.How, s.end.Reason = HowDuplicate, why
			}
			s.stopChild(s.spec.StopGrace)
			s.enter(stateEnded)
		case <-s.node.Lost():
			// Not a member any more, so nothing lists this interpreter: stop it.
			s.end.How, s.end.Reason = HowLost, s.node.LostErr().Error()
			s.logger.Error("stopping the interpreter: this supervisor is no longer a member of the mesh", "err", s.node.LostErr())
			s.stopChild(s.spec.StopGrace)
			s.writeExit(s.waitErr)
			return endLost
		case newer := <-s.superseded:
			s.end.How = HowDuplicate
			s.end.Reason = fmt.Sprintf("superseded by generation %d of request %s (told by its host, whose registry lost it)",
				newer, s.spec.RequestID)
			s.logger.Warn("interpreter-duplicate: stopping this interpreter, superseded by a newer generation of its request",
				"request", s.spec.RequestID, "gen", s.spec.Gen, "newer_gen", newer)
			s.stopChild(s.spec.StopGrace)
			s.enter(stateEnded)
		case <-changed:
			if d, lost := lostDuplicate(s.node, s.spec.Name); lost {
				s.end.How = HowDuplicate
				s.end.Reason = fmt.Sprintf("request %s has a better interpreter, %s on %s (generation %d)",
					d.RequestID, d.Winner.Name, d.Winner.Host, d.Winner.Tags.Gen)
				s.logger.Warn("interpreter-duplicate: stopping this interpreter, a duplicate of its request", "request", d.RequestID,
					"winner", d.Winner.Name, "winner_host", d.Winner.Host)
				s.stopChild(s.spec.StopGrace)
				s.enter(stateEnded)
			}
		case <-rejoin.C:
			rejoinIfServerGone(s.node, s.spec.Host, s.spec.Join, s.logger)
			poke() // look for duplicates now and then, events or not
		}
	}
	return endDone
}

// handleSuperseded answers the host's word that a newer generation of
// the request was placed (tellUnlisted): the host's agent restarted
// without its data dir, lost this supervisor from its registry, and
// cannot stop it itself. The loop stops the interpreter, as a duplicate.
func (s *supervisor) handleSuperseded(q *gossip.Query) {
	var o stopOrder
	var ans stopAnswer
	switch err := msgpack.Unmarshal(q.Payload, &o); {
	case err != nil || o.Name != s.spec.Name:
		ans.Error = fmt.Sprintf("this is the supervisor of %s, not of %q", s.spec.Name, o.Name)
	case o.Superseded <= s.spec.Gen:
		ans.Error = fmt.Sprintf("%s is generation %d, not older than %d", s.spec.Name, s.spec.Gen, o.Superseded)
	default:
		select {
		case s.superseded <- o.Superseded:
		default: // told already
		}
	}
	respond(q, ans, s.logger)
}

// childExited moves on after the child ended by itself: a restart after
// the policy's delay, or the end.
func (s *supervisor) childExited(waitErr error) {
	s.exited, s.waitErr = nil, waitErr
	s.setCurrent(nil)
	if waitErr == nil || s.spec.Restart != RestartOnFailure {
		s.end.How = HowExited
		s.enter(stateEnded)
		return
	}
	delay, ok := s.tracker.Next(time.Now())
	if !ok {
		s.end.How, s.end.GaveUp = HowExited, true
		s.enter(stateEnded)
		b := s.spec.backoff()
		s.logger.Error("interpreter-gave-up: it failed too often, not restarting it", "status", describeExit(waitErr),
			"restarts", s.end.Restarts, "attempts", b.Attempts, "window", b.Window)
		return
	}
	s.logger.Warn("interpreter failed; restarting it", "status", describeExit(waitErr), "in", delay, "restarts", s.end.Restarts)
	s.restartAt = time.After(delay)
	s.enter(stateRestarting)
}

// restart starts the child again, once its delay is over.
func (s *supervisor) restart() {
	s.restartAt = nil
	child, err := s.env.StartChild(s.spec, s.out)
	if err != nil {
		s.end.How, s.waitErr = HowExited, err
		s.enter(stateEnded)
		s.logger.Error("interpreter-gave-up: it could not be started again", "err", err)
		return
	}
	s.child, s.exited = child, child.Exited()
	s.enter(stateRunning)
	s.end.Restarts++
	s.setCurrent(child)
	s.tags.PID, s.tags.Restarts = child.PID(), s.end.Restarts
	if err := s.node.SetTags(s.tags.Map()); err != nil {
		s.logger.Warn("restart count not published", "err", err)
	}
	s.logger.Info("interpreter-restart: interpreter restarted", "pid", child.PID(), "restarts", s.end.Restarts)
}

// finish records how the interpreter ended, publishes it, and leaves.
func (s *supervisor) finish() int {
	code := exitCode(s.waitErr)
	s.writeExit(s.waitErr)
	s.logger.Info("interpreter ended; leaving the mesh", "pid", s.child.PID(), "how", s.end.How, "status", describeExit(s.waitErr), "code", code)
	// Say how it ended before leaving, so that every list can show it.
	s.tags.End = s.end.How
	switch {
	case s.end.GaveUp:
		s.tags.End = "gave up (" + describeExit(s.waitErr) + ")"
	case s.end.How == HowExited:
		s.tags.End = describeExit(s.waitErr)
	}
	if s.killedNow() {
		return 137
	}
	if err := s.node.SetTags(s.tags.Map()); err != nil {
		s.logger.Warn("how it ended not published", "err", err)
	}
	if s.killedNow() {
		return 137
	}
	if err := s.node.Leave(); err != nil {
		s.logger.Warn("leave failed", "err", err)
	}
	return code
}

// stopChild asks the running child's process group to stop, kills it
// after grace, and keeps its exit.
func (s *supervisor) stopChild(grace time.Duration) {
	if s.exited == nil {
		return // not running
	}
	s.child.Signal(syscall.SIGTERM)
	s.child.Signal(syscall.SIGCONT) // a stopped (hung) one takes its SIGTERM now, not at the kill
	if grace <= 0 {
		grace = 10 * time.Second
	}
	select {
	case s.waitErr = <-s.exited:
		s.child.Signal(syscall.SIGKILL) // anything it left in its group
	case <-time.After(grace):
		s.child.Signal(syscall.SIGKILL)
		s.waitErr = <-s.exited
	case <-s.env.Killed():
		s.child.Signal(syscall.SIGKILL)
		s.waitErr = <-s.exited
	}
	s.exited = nil
	s.setCurrent(nil)
}

// enter moves the supervisor to st and tells its env.
func (s *supervisor) enter(st supervisorState) {
	s.state = st
	s.env.Phase(string(st))
}

func (s *supervisor) setCurrent(c Child) {
	s.mu.Lock()
	s.current = c
	s.mu.Unlock()
}

// deliver passes an allowlisted signal to the interpreter running now,
// or hands a restart-in-place request to the loop.
func (s *supervisor) deliver(sig string) ControlAnswer {
	if sig == ControlRestart {
		return s.requestRestart()
	}
	s.mu.Lock()
	c := s.current
	s.mu.Unlock()
	return deliver(sig, c)
}

func (s *supervisor) writeExit(waitErr error) {
	if s.killedNow() {
		return // a killed process writes nothing
	}
	writeExit(s.spec, s.end, waitErr)
}

// killedNow reports whether the supervisor was killed on the spot.
func (s *supervisor) killedNow() bool {
	select {
	case <-s.env.Killed():
		return true
	default:
		return false
	}
}
