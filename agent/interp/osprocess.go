package interp

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/meshagent/agent/gossip"
)

// This file is the real world of interpreters: a server starts each
// supervisor as `agent interpreter` (a process of its own session, so that
// it outlives the agent), reaches it with signals and its control socket,
// and the supervisor runs the interpreter as a child process in its own
// process group.

// Processes is where a server's supervisors run: real processes
// (OSProcesses), or the simulation's in-memory double. Safe for concurrent
// use.
type Processes interface {
	// Launch starts the supervisor of spec, whose file is at specPath.
	// The supervisor reports on Started.Ready how its start went.
	Launch(specPath string, spec Spec) (Started, error)
	// Running reports whether the supervisor with pid runs spec (after an
	// agent restart, the pid may belong to another process by now).
	Running(pid int, specPath string) bool
	// Terminate asks a supervisor to stop its interpreter and leave the
	// mesh (SIGTERM); Kill ends it at once (SIGKILL).
	Terminate(pid int) error
	Kill(pid int) error
	// SignalInterpreter passes an allowlisted signal to the interpreter
	// through its supervisor.
	SignalInterpreter(spec Spec, sig string) ControlAnswer
	// FreePort finds a free port on ip for an interpreter (udpToo: for a
	// member's gossip too).
	FreePort(ip string, udpToo bool) (int, error)
}

// Started is a supervisor just launched.
type Started struct {
	PID   int
	Ready <-chan Readiness // one report
	Done  <-chan struct{}  // closed when it exits, while this agent runs
}

// OSProcesses runs supervisors as processes of the binary Self.
type OSProcesses struct{ Self string }

// Launch starts `agent interpreter --spec specPath` detached: its own
// session, so it outlives this agent and is not hit by the terminal's
// Ctrl-C. Its readiness report comes on a pipe (its fd 3).
func (p OSProcesses) Launch(specPath string, spec Spec) (Started, error) {
	dir := filepath.Dir(specPath)
	log, err := os.OpenFile(filepath.Join(dir, "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Started{}, err
	}
	defer log.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return Started{}, err
	}
	cmd := exec.Command(p.Self, "interpreter", "--spec", specPath)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		r.Close()
		return Started{}, fmt.Errorf("start supervisor: %w", err)
	}
	w.Close()
	done := make(chan struct{})
	// Reap it when it exits while this agent runs; after a restart of the
	// agent it belongs to init, which reaps it.
	go func() { cmd.Wait(); close(done) }()
	ready := make(chan Readiness, 1)
	go func() {
		defer r.Close()
		var rd Readiness
		line, err := bufio.NewReader(r).ReadString('\n')
		if err != nil {
			rd.Error = "supervisor exited before it was ready (see " + filepath.Join(dir, "supervisor.log") + ")"
		} else if err := json.Unmarshal([]byte(line), &rd); err != nil {
			rd.Error = "supervisor's readiness report is garbled"
		}
		ready <- rd
	}()
	return Started{PID: cmd.Process.Pid, Ready: ready, Done: done}, nil
}

// Running reports whether pid is alive and is the supervisor of the given
// spec, not some process that reused the pid.
func (OSProcesses) Running(pid int, specPath string) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	for i, a := range args {
		if a == "--spec" && i+1 < len(args) && args[i+1] == specPath {
			return len(args) > 1 && args[1] == "interpreter"
		}
	}
	return false
}

// Terminate sends the supervisor SIGTERM.
func (OSProcesses) Terminate(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }

// Kill ends the supervisor's process group (its session) at once; its
// interpreter dies with it (Pdeathsig).
func (OSProcesses) Kill(pid int) error { return syscall.Kill(-pid, syscall.SIGKILL) }

// SignalInterpreter asks the supervisor over its control socket.
func (OSProcesses) SignalInterpreter(spec Spec, sig string) ControlAnswer {
	return askSupervisor(filepath.Join(filepath.Dir(spec.OutputLog), controlSocket), sig)
}

// FreePort asks the system for a port free on ip (for TCP, and for UDP too
// when udpToo), for an interpreter or a supervisor's member to listen on.
// The port is released before use, so a race with another process is
// possible but rare; the supervisor then fails to start and the spawn is
// refused with the reason.
func (OSProcesses) FreePort(ip string, udpToo bool) (int, error) {
	if udpToo {
		return gossip.FreePort(ip)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RunSupervisor is `agent interpreter`: it starts the interpreter in its own
// process group, joins the mesh as a member with the interpreter's tags,
// passes stop signals on, restarts the interpreter when it fails and the
// policy says so, and leaves the mesh when the interpreter is done. It stops
// the interpreter itself when it cannot stay a member (its name is taken)
// or when the mesh holds a better interpreter for the same request (a
// duplicate after a partition healed): a process the mesh does not list, or
// a second one for a key, is a bug. It records how the interpreter ended in
// exit.json beside the spec, and returns the interpreter's exit code.
func RunSupervisor(specPath string, logger *slog.Logger) int {
	env := &osEnv{ready: os.NewFile(3, "readiness"), stops: make(chan os.Signal, 2), logger: logger}
	signal.Notify(env.stops, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	spec, err := LoadSpec(specPath)
	if err != nil {
		env.Ready(Readiness{Error: err.Error()})
		logger.Error("cannot supervise", "err", err)
		return 1
	}
	out, err := os.OpenFile(spec.OutputLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		env.Ready(Readiness{Error: fmt.Sprintf("open output log: %v", err)})
		return 1
	}
	defer out.Close()
	env.logger = logger.With("interpreter", spec.Name)
	return Supervise(spec, env, out, logger)
}

// osEnv is a real supervisor's world.
type osEnv struct {
	ready  *os.File
	stops  chan os.Signal
	logger *slog.Logger
}

// StartChild starts the interpreter: in its own process group, so a stop
// reaches everything it started; killed if the supervisor dies, so an
// interpreter is never left without a member.
func (e *osEnv) StartChild(spec Spec, out io.Writer) (Child, error) {
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = spec.Env, spec.Dir, out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if spec.User != "" {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: spec.UID, Gid: spec.GID}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return osChild{pid: cmd.Process.Pid, exited: exited}, nil
}

// StartNode binds the member to spec's gossip address.
func (e *osEnv) StartNode(spec Spec, cfg gossip.Config) (*gossip.Node, error) {
	host, p, err := net.SplitHostPort(spec.Gossip)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q is not host:port", spec.Gossip)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: bad port", spec.Gossip)
	}
	cfg.BindAddr, cfg.BindPort = host, port
	return gossip.Start(cfg)
}

// ServeSignals listens on the control socket beside the spec.
func (e *osEnv) ServeSignals(spec Spec, deliver func(string) ControlAnswer) (io.Closer, error) {
	return serveControl(filepath.Join(filepath.Dir(spec.OutputLog), controlSocket), deliver, e.logger)
}

// Ready writes the report on the readiness pipe, once.
func (e *osEnv) Ready(r Readiness) {
	if e.ready == nil {
		return
	}
	data, _ := json.Marshal(r)
	e.ready.Write(append(data, '\n'))
	e.ready.Close()
	e.ready = nil
}

func (e *osEnv) Phase(st string)         { e.logger.Debug("supervisor state", "state", st) }
func (e *osEnv) Stops() <-chan os.Signal { return e.stops }
func (e *osEnv) Killed() <-chan struct{} { return nil }

// osChild is an interpreter process.
type osChild struct {
	pid    int
	exited chan error
}

func (c osChild) PID() int                        { return c.pid }
func (c osChild) Exited() <-chan error            { return c.exited }
func (c osChild) Signal(sig syscall.Signal) error { return syscall.Kill(-c.pid, sig) }
