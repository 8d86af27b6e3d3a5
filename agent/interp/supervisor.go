package interp

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/internal/durable"
)

// Spec is everything a supervisor needs, written by the server into the
// interpreter's directory (mode 0600: it may hold the gossip keys) and read
// by `agent interpreter --spec FILE`.
type Spec struct {
	Name      string        `json:"name"`
	Kind      string        `json:"kind"`
	Host      string        `json:"host"` // the server that started it
	RequestID string        `json:"rid"`
	Argv      []string      `json:"argv"`
	Env       []string      `json:"env"` // the child's whole environment
	Dir       string        `json:"dir"`
	Endpoint  string        `json:"endpoint"`    // where the interpreter serves
	Gossip    string        `json:"gossip_bind"` // the supervisor's own member address
	Join      []string      `json:"join"`
	Profile   string        `json:"profile"`
	Keys      []string      `json:"keys,omitempty"`
	OutputLog string        `json:"output_log"`
	StopGrace time.Duration `json:"stop_grace"`
	// Restart is the restart policy; Args the request's extra arguments
	// (published with the policy, so another server can place it again);
	// Gen how often the mesh re-placed it; Backoff bounds its restarts
	// (zero: DefaultBackoff).
	Restart string   `json:"restart,omitempty"`
	Args    []string `json:"args,omitempty"`
	Gen     int      `json:"gen,omitempty"`
	Backoff *Backoff `json:"backoff,omitempty"`
	// Restarts is how often the host already restarted this request.
	Restarts int `json:"restarts,omitempty"`
	// Reap is how long interpreter members stay listed after they ended.
	Reap time.Duration `json:"reap,omitempty"`
	// User, UID and GID, when User is set, are the account the
	// interpreter runs as.
	User string `json:"user,omitempty"`
	UID  uint32 `json:"uid,omitempty"`
	GID  uint32 `json:"gid,omitempty"`
	// Asker is the agent that asked for it, the only one a re-sent order
	// may hand the connection to; ConnectionFile is the connection file,
	// when the kind has one.
	Asker          string `json:"asker,omitempty"`
	ConnectionFile string `json:"connection_file,omitempty"`
}

// readiness is what a supervisor writes on its readiness pipe (fd 3) once
// the interpreter runs and the supervisor's member is up, or why it failed.
type readiness struct {
	PID   int    `json:"pid"`
	Error string `json:"error,omitempty"`
	// Died is set when the interpreter exited before it settled: its
	// exit status; Output, the first lines it wrote.
	Died   string `json:"died,omitempty"`
	Output string `json:"output,omitempty"`
}

// safeEnv is the environment passed from the server to interpreters: enough
// for a program to run, nothing that leaks the agent's own settings.
var safeEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"}

// childEnv builds an interpreter's environment: the safe variables of the
// server's environment, the kind's own, then the interpreter's identity.
func childEnv(k Kind, name, addr, port string) []string {
	var env []string
	for _, key := range safeEnv {
		if v, ok := os.LookupEnv(key); ok {
			env = append(env, key+"="+v)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(k.Env)) {
		env = append(env, key+"="+k.Env[key])
	}
	return append(env,
		"AGENT_INTERPRETER_NAME="+name,
		"AGENT_INTERPRETER_KIND="+k.Name,
		"AGENT_INTERPRETER_ADDR="+addr,
		"AGENT_INTERPRETER_PORT="+port,
	)
}

func (s Spec) backoff() Backoff {
	if s.Backoff != nil {
		return *s.Backoff
	}
	return DefaultBackoff
}

// LoadSpec reads a supervisor spec.
func LoadSpec(path string) (Spec, error) {
	var s Spec
	data, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("interpreter spec: %w", err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("interpreter spec %s is damaged: %w", path, err)
	}
	if s.Name == "" || len(s.Argv) == 0 || s.Gossip == "" {
		return s, fmt.Errorf("interpreter spec %s lacks a name, a command or a gossip address", path)
	}
	return s, nil
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
	spec, err := LoadSpec(specPath)
	ready := os.NewFile(3, "readiness")
	if err != nil {
		reportReady(ready, readiness{Error: err.Error()})
		logger.Error("cannot supervise", "err", err)
		return 1
	}
	logger = logger.With("interpreter", spec.Name)
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	out, err := os.OpenFile(spec.OutputLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		reportReady(ready, readiness{Error: fmt.Sprintf("open output log: %v", err)})
		return 1
	}
	defer out.Close()

	pid, exited, err := startChild(spec, out)
	if err != nil {
		reportReady(ready, readiness{Error: fmt.Sprintf("start %s: %v", spec.Argv[0], err)})
		logger.Error("interpreter did not start", "argv", spec.Argv, "err", err)
		return 1
	}
	end := Exit{Name: spec.Name, RequestID: spec.RequestID, Restarts: spec.Restarts}
	// One that exits at once did not start: say so instead of joining.
	select {
	case waitErr := <-exited:
		end.How = HowExited
		writeExit(spec, end, waitErr)
		reportReady(ready, readiness{Died: describeExit(waitErr), Output: outputHead(spec.OutputLog)})
		logger.Error("interpreter exited at once", "argv", spec.Argv, "status", describeExit(waitErr))
		return exitCode(waitErr)
	case <-time.After(settle):
	}
	tags := gossip.Tags{Role: gossip.RoleInterpreter, Kind: spec.Kind, Host: spec.Host, RequestID: spec.RequestID,
		Endpoint: spec.Endpoint, PID: pid, Gen: spec.Gen, Restarts: spec.Restarts}
	if spec.Restart == RestartOnFailure {
		tags.Restart, tags.Args = spec.Restart, spec.Args
	}
	// Signals through the mesh reach whichever child runs now.
	var current atomic.Int64
	current.Store(int64(pid))
	ctl, err := serveControl(filepath.Join(filepath.Dir(spec.OutputLog), controlSocket), &current, logger)
	if err != nil {
		stopGroup(pid, exited, 0)
		reportReady(ready, readiness{Error: err.Error()})
		logger.Error("no control socket", "err", err)
		return 1
	}
	defer ctl.Close()
	node, err := startSupervisorNode(spec, tags.Map(), logger)
	if err != nil {
		stopGroup(pid, exited, 0)
		reportReady(ready, readiness{Error: err.Error()})
		logger.Error("could not join the mesh", "err", err)
		return 1
	}
	reportReady(ready, readiness{PID: pid})
	logger.Info("interpreter running", "pid", pid, "endpoint", spec.Endpoint, "argv", spec.Argv, "restart", spec.Restart, "gen", spec.Gen)

	// Every membership change may reveal a duplicate of this request.
	changed := make(chan struct{}, 1)
	cancel := node.Subscribe(func(e gossip.Event) {
		if e.Type == gossip.EventUser || e.Type == gossip.EventQuery {
			return
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer cancel()

	tracker := NewTracker(spec.backoff())
	var waitErr error
	var restartAt <-chan time.Time // set while a restart waits out its delay
	rejoin := time.NewTicker(rejoinInterval)
	defer rejoin.Stop()
wait:
	for {
		select {
		case waitErr = <-exited:
			exited = nil
			current.Store(0)
			if waitErr == nil || spec.Restart != RestartOnFailure {
				end.How = HowExited
				break wait
			}
			delay, ok := tracker.Next(time.Now())
			if !ok {
				end.How, end.GaveUp = HowExited, true
				b := spec.backoff()
				logger.Error("interpreter-gave-up: it failed too often, not restarting it", "status", describeExit(waitErr),
					"restarts", end.Restarts, "attempts", b.Attempts, "window", b.Window)
				break wait
			}
			logger.Warn("interpreter failed; restarting it", "status", describeExit(waitErr), "in", delay, "restarts", end.Restarts)
			restartAt = time.After(delay)
		case <-restartAt:
			restartAt = nil
			if pid, exited, err = startChild(spec, out); err != nil {
				end.How, waitErr = HowExited, err
				logger.Error("interpreter-gave-up: it could not be started again", "err", err)
				break wait
			}
			end.Restarts++
			current.Store(int64(pid))
			tags.PID, tags.Restarts = pid, end.Restarts
			if err := node.SetTags(tags.Map()); err != nil {
				logger.Warn("restart count not published", "err", err)
			}
			logger.Info("interpreter-restart: interpreter restarted", "pid", pid, "restarts", end.Restarts)
		case sig := <-signals:
			logger.Info("stopping the interpreter", "signal", sig.String())
			end.How = HowStopped
			if exited != nil {
				waitErr = stopGroup(pid, exited, spec.StopGrace)
			}
			break wait
		case <-node.Lost():
			// Not a member any more, so nothing lists this interpreter: stop it.
			end.How, end.Reason = HowLost, node.LostErr().Error()
			logger.Error("stopping the interpreter: this supervisor is no longer a member of the mesh", "err", node.LostErr())
			if exited != nil {
				waitErr = stopGroup(pid, exited, spec.StopGrace)
			}
			node.Shutdown()
			writeExit(spec, end, waitErr)
			return 1
		case <-changed:
			if d, lost := lostDuplicate(node, spec.Name); lost {
				end.How = HowDuplicate
				end.Reason = fmt.Sprintf("request %s has a better interpreter, %s on %s (generation %d)",
					d.RequestID, d.Winner.Name, d.Winner.Host, d.Winner.Tags.Gen)
				logger.Warn("interpreter-duplicate: stopping this interpreter, a duplicate of its request", "request", d.RequestID,
					"winner", d.Winner.Name, "winner_host", d.Winner.Host)
				if exited != nil {
					waitErr = stopGroup(pid, exited, spec.StopGrace)
				}
				break wait
			}
		case <-rejoin.C:
			rejoinIfServerGone(node, spec.Host, spec.Join, logger)
			select {
			case changed <- struct{}{}: // look for duplicates now and then, events or not
			default:
			}
		}
	}
	code := exitCode(waitErr)
	writeExit(spec, end, waitErr)
	logger.Info("interpreter ended; leaving the mesh", "pid", pid, "how", end.How, "status", describeExit(waitErr), "code", code)
	// Say how it ended before leaving, so that every list can show it.
	tags.End = end.How
	switch {
	case end.GaveUp:
		tags.End = "gave up (" + describeExit(waitErr) + ")"
	case end.How == HowExited:
		tags.End = describeExit(waitErr)
	}
	if err := node.SetTags(tags.Map()); err != nil {
		logger.Warn("how it ended not published", "err", err)
	}
	if err := node.Leave(); err != nil {
		logger.Warn("leave failed", "err", err)
	}
	node.Shutdown()
	return code
}

// startChild starts the interpreter: in its own process group, so a stop
// reaches everything it started; killed if the supervisor dies, so an
// interpreter is never left without a member.
func startChild(spec Spec, out *os.File) (int, chan error, error) {
	child := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	child.Env, child.Dir, child.Stdout, child.Stderr = spec.Env, spec.Dir, out, out
	child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if spec.User != "" {
		child.SysProcAttr.Credential = &syscall.Credential{Uid: spec.UID, Gid: spec.GID}
	}
	if err := child.Start(); err != nil {
		return 0, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	return child.Process.Pid, exited, nil
}

// lostDuplicate reports whether the member called self is a loser of a
// duplicate in node's view. It yields only to an alive winner whose host is
// alive too, so that a stale entry never stops the one that runs.
func lostDuplicate(node *gossip.Node, self string) (Duplicate, bool) {
	for _, d := range Duplicates(Instances(node.Members())) {
		if d.Winner.HostStatus != gossip.StatusAlive {
			continue
		}
		for _, l := range d.Losers {
			if l.Name == self {
				return d, true
			}
		}
	}
	return Duplicate{}, false
}

// How an interpreter ended, in its exit record.
const (
	HowExited    = "exited"    // the program exited (GaveUp: and was not restarted again)
	HowStopped   = "stopped"   // it was told to stop
	HowDuplicate = "duplicate" // the mesh held a better interpreter for its request
	HowLost      = "lost"      // its supervisor lost its membership
)

// Exit is how an interpreter ended, written by its supervisor to exit.json
// beside the spec, so that its server can say so after the member left.
type Exit struct {
	Name      string    `json:"name"`
	RequestID string    `json:"rid"`
	How       string    `json:"how"`
	Status    string    `json:"status"` // "exit status 3", "signal: killed"
	Code      int       `json:"code"`
	GaveUp    bool      `json:"gave_up,omitempty"`
	Restarts  int       `json:"restarts"`
	Reason    string    `json:"reason,omitempty"`
	At        time.Time `json:"at"`
}

// exitFile is the exit record's name in an interpreter's directory.
const exitFile = "exit.json"

func writeExit(spec Spec, e Exit, waitErr error) {
	e.Status, e.Code, e.At = describeExit(waitErr), exitCode(waitErr), time.Now().UTC()
	data, _ := json.MarshalIndent(e, "", "  ")
	durable.WriteFile(filepath.Join(filepath.Dir(spec.OutputLog), exitFile), data, 0o600)
}

// ReadExit reads an interpreter's exit record from its directory.
func ReadExit(dir string) (Exit, error) {
	var e Exit
	data, err := os.ReadFile(filepath.Join(dir, exitFile))
	if err != nil {
		return e, err
	}
	return e, json.Unmarshal(data, &e)
}

// rejoinInterval is how often a supervisor that does not see its server
// alive tries the server again.
const rejoinInterval = 5 * time.Second

// rejoinIfServerGone contacts the interpreter's server again when the
// server is not alive in the supervisor's view. When every server left (an
// operator stopped them all), the interpreters still see each other, but
// nobody tells a restarted server about them: its peers file is gone with
// the leave, and serf reconnects only to failed members, never to left
// ones. Without this they would stay a mesh of their own.
func rejoinIfServerGone(node *gossip.Node, server string, join []string, logger *slog.Logger) {
	for _, m := range node.Members() {
		if m.Name == server && m.Status == gossip.StatusAlive {
			return
		}
	}
	if n, err := node.Join(join, false); n > 0 {
		logger.Info("rejoined the mesh through the server", "server", server, "addr", join)
	} else {
		logger.Debug("server not reachable yet", "server", server, "addr", join, "err", err)
	}
}

func reportReady(w *os.File, r readiness) {
	if w == nil {
		return
	}
	data, _ := json.Marshal(r)
	w.Write(append(data, '\n'))
	w.Close()
}

func startSupervisorNode(spec Spec, tags map[string]string, logger *slog.Logger) (*gossip.Node, error) {
	host, p, err := net.SplitHostPort(spec.Gossip)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q is not host:port", spec.Gossip)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: bad port", spec.Gossip)
	}
	var keys [][]byte
	for _, k := range spec.Keys {
		key, err := gossip.DecodeKey(k)
		if err != nil {
			return nil, err
		}
		keys = append(keys, key)
	}
	node, err := gossip.Start(gossip.Config{Name: spec.Name, BindAddr: host, BindPort: port, Profile: spec.Profile,
		Tags: tags, Keys: keys, Logger: logger, Reap: gossip.IsInterpreter, ReapAfter: spec.Reap})
	if err != nil {
		return nil, err
	}
	// The server is normally right there; a few quick tries cover a busy one.
	for attempt := 1; ; attempt++ {
		n, err := node.Join(spec.Join, false)
		if n > 0 {
			return node, nil
		}
		if attempt == 5 {
			node.Shutdown()
			return nil, fmt.Errorf("join %v: %w", spec.Join, err)
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
}

// stopGroup asks the interpreter's process group to stop, and kills it after
// grace. It returns the interpreter's exit.
func stopGroup(pid int, exited <-chan error, grace time.Duration) error {
	syscall.Kill(-pid, syscall.SIGTERM)
	if grace <= 0 {
		grace = 10 * time.Second
	}
	select {
	case err := <-exited:
		syscall.Kill(-pid, syscall.SIGKILL) // anything it left in its group
		return err
	case <-time.After(grace):
		syscall.Kill(-pid, syscall.SIGKILL)
		return <-exited
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ee.ExitCode() >= 0 {
			return ee.ExitCode()
		}
		return 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
	}
	if err != nil {
		return 1
	}
	return 0
}

func describeExit(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// startedSupervisor is a supervisor this server just launched.
type startedSupervisor struct {
	pid      int // the supervisor
	childPID int // the interpreter
	done     chan struct{}
}

// launchSupervisor writes the spec and starts `agent interpreter` detached
// (its own session, so it outlives this agent and is not hit by the
// terminal's Ctrl-C), then waits for its readiness report.
func launchSupervisor(self, dir string, spec Spec, timeout time.Duration) (startedSupervisor, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return startedSupervisor{}, err
	}
	specPath := filepath.Join(dir, "spec.json")
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return startedSupervisor{}, err
	}
	if err := durable.WriteFile(specPath, data, 0o600); err != nil {
		return startedSupervisor{}, err
	}
	log, err := os.OpenFile(filepath.Join(dir, "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return startedSupervisor{}, err
	}
	defer log.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return startedSupervisor{}, err
	}
	defer r.Close()
	cmd := exec.Command(self, "interpreter", "--spec", specPath)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return startedSupervisor{}, fmt.Errorf("start supervisor: %w", err)
	}
	w.Close()
	s := startedSupervisor{pid: cmd.Process.Pid, done: make(chan struct{})}
	// Reap it when it exits while this agent runs; after a restart of the
	// agent it belongs to init, which reaps it.
	go func() { cmd.Wait(); close(s.done) }()

	lines := make(chan readiness, 1)
	go func() {
		var rd readiness
		line, err := bufio.NewReader(r).ReadString('\n')
		if err != nil {
			rd.Error = "supervisor exited before it was ready (see " + filepath.Join(dir, "supervisor.log") + ")"
		} else if err := json.Unmarshal([]byte(line), &rd); err != nil {
			rd.Error = "supervisor's readiness report is garbled"
		}
		lines <- rd
	}()
	select {
	case rd := <-lines:
		if rd.Died != "" {
			return s, &diedError{status: rd.Died, output: rd.Output}
		}
		if rd.Error != "" {
			syscall.Kill(s.pid, syscall.SIGKILL)
			return s, errors.New(rd.Error)
		}
		s.childPID = rd.PID
		return s, nil
	case <-time.After(timeout):
		syscall.Kill(-s.pid, syscall.SIGKILL)
		return s, fmt.Errorf("supervisor not ready within %s", timeout)
	}
}

// isOurSupervisor reports whether pid is alive and is the supervisor of the
// given spec, not some process that reused the pid.
func isOurSupervisor(pid int, specPath string) bool {
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

// freePort asks the system for a port free on ip (for TCP, and for UDP too
// when udpToo), for an interpreter or a supervisor's member to listen on.
// The port is released before use, so a race with another process is
// possible but rare; the supervisor then fails to start and the spawn is
// refused with the reason.
func freePort(ip string, udpToo bool) (int, error) {
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

// RunEchoServer is the built-in demo interpreter: it echoes every line it
// receives on addr until SIGTERM or SIGINT.
func RunEchoServer(addr string, stderr io.Writer) int {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(stderr, "echo-server: %v\n", err)
		return 1
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-signals; l.Close() }()
	fmt.Fprintf(stderr, "echo-server: listening on %s\n", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			return 0
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if _, err := fmt.Fprintf(c, "%s\n", sc.Text()); err != nil {
					return
				}
			}
		}()
	}
}
