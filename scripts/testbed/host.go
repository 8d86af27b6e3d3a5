package testbed

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StartTimeout bounds how long Start waits for a new agent to answer RPC.
const StartTimeout = 20 * time.Second

// process is one program the bed started in a namespace.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

func (p *process) signal(s syscall.Signal) error {
	return p.cmd.Process.Signal(s)
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) wait(limit time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(limit):
		return false
	}
}

// cleanEnv is the environment of the bed's agents and clients: the
// caller's, minus AGENT_* settings, which would override the bed's flags.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AGENT_") {
			env = append(env, kv)
		}
	}
	return env
}

// inNS starts the agent binary in h's namespace. `ip netns exec` execs it,
// so the process is the agent itself and signals reach it directly. It gets
// its own process group, so a terminal's Ctrl-C reaches only the bed
// (which then kills it), and it dies with the bed's process.
func (h *Host) inNS(out io.Writer, args ...string) (*process, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, h.bed.agent}, args...)...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent in %s: %w", h.NS, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

// Start runs `agent run` on h: node name h.Name, gossip on h.Gossip, RPC on
// the namespace's loopback, its data dir, the bed's profile and arguments,
// a --join for each host of join, then extra. It returns once the agent
// answers RPC, or with an error and the tail of its log.
func (b *Testbed) Start(h *Host, join []*Host, extra ...string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc != nil && !h.proc.exited() {
		return fmt.Errorf("%s already runs an agent (pid %d)", h.Name, h.proc.cmd.Process.Pid)
	}
	args := []string{"run", "--node", h.Name, "--bind", h.Gossip, "--rpc-addr", h.RPC,
		"--data-dir", h.DataDir, "--encrypt", b.key, "--log-level", "debug"}
	if b.cfg.Profile != "" {
		args = append(args, "--profile", b.cfg.Profile)
	}
	args = append(args, b.cfg.Args...)
	for _, j := range join {
		if j != h {
			args = append(args, "--join", j.Gossip)
		}
	}
	args = append(args, extra...)
	log, err := os.OpenFile(h.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own copy
	fmt.Fprintf(log, "=== testbed %s: agent %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	p, err := h.inNS(log, args...)
	if err != nil {
		return err
	}
	h.proc, h.extra = p, extra
	b.logf("testbed: %s: agent started (pid %d) at %s", h.Name, p.cmd.Process.Pid, h.Gossip)

	deadline := time.Now().Add(StartTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		res, err := h.CLI(ctx, "info")
		cancel()
		if err == nil && res.Code == 0 {
			return nil
		}
		if p.exited() {
			h.proc = nil
			return fmt.Errorf("agent on %s exited at start; its log ends:\n%s", h.Name, h.LogTail(30))
		}
		if time.Now().After(deadline) {
			p.signal(syscall.SIGKILL)
			<-p.done
			h.proc = nil
			return fmt.Errorf("agent on %s did not answer RPC within %s; its log ends:\n%s", h.Name, StartTimeout, h.LogTail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StartAll starts h1, then every other host joining h1, each with extra.
func (b *Testbed) StartAll(extra ...string) error {
	for i, h := range b.Hosts {
		var join []*Host
		if i > 0 {
			join = b.Hosts[:1]
		}
		if err := b.Start(h, join, extra...); err != nil {
			return err
		}
	}
	return nil
}

// Restart starts h's agent again with its data dir and the extra arguments
// of its last Start, but no --join: it must find the mesh by itself. A
// running agent is killed first (kill -9), as in a crash and reboot.
func (b *Testbed) Restart(h *Host) error {
	if h.Running() {
		if err := h.Kill(); err != nil {
			return err
		}
	}
	h.mu.Lock()
	extra := h.extra
	h.mu.Unlock()
	return b.Start(h, nil, extra...)
}

// Running reports whether h's agent process is alive (stopped counts).
func (h *Host) Running() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proc != nil && !h.proc.exited()
}

// PID is the agent's process id, 0 when none runs.
func (h *Host) PID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil || h.proc.exited() {
		return 0
	}
	return h.proc.cmd.Process.Pid
}

func (h *Host) running() (*process, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil || h.proc.exited() {
		return nil, fmt.Errorf("no agent runs on %s", h.Name)
	}
	return h.proc, nil
}

// Kill sends SIGKILL to h's agent (kill -9: no leave, no cleanup) and waits
// until it is gone. Interpreters it started keep running, as on a real host
// whose agent crashed.
func (h *Host) Kill() error {
	p, err := h.running()
	if err != nil {
		return err
	}
	p.signal(syscall.SIGKILL)
	if !p.wait(10 * time.Second) {
		return fmt.Errorf("agent on %s survived SIGKILL for 10s", h.Name)
	}
	h.bed.logf("testbed: %s: agent killed (SIGKILL)", h.Name)
	return nil
}

// Crash kills every process of h with SIGKILL, the agent and the
// interpreters it started alike, as when the host loses power. Its data dir
// stays, so Restart boots it again.
func (h *Host) Crash() error {
	h.mu.Lock()
	p := h.proc
	h.mu.Unlock()
	if err := killAllIn(h.NS); err != nil {
		return err
	}
	if p != nil && !p.wait(10*time.Second) {
		return fmt.Errorf("agent on %s survived SIGKILL for 10s", h.Name)
	}
	h.bed.logf("testbed: %s: crashed (every process in it killed with SIGKILL)", h.Name)
	return nil
}

// Terminate sends SIGTERM (a graceful leave) and waits for the agent to
// exit, at most limit; then it kills it and says so.
func (h *Host) Terminate(limit time.Duration) error {
	p, err := h.running()
	if err != nil {
		return err
	}
	p.signal(syscall.SIGTERM)
	if p.wait(limit) {
		h.bed.logf("testbed: %s: agent left and exited (SIGTERM)", h.Name)
		return nil
	}
	p.signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("agent on %s did not exit within %s of SIGTERM; killed it", h.Name, limit)
}

// Pause stops h's agent with SIGSTOP: it neither sends nor answers, its
// timers stand still, and the kernel still queues what arrives for it.
func (h *Host) Pause() error {
	p, err := h.running()
	if err != nil {
		return err
	}
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	h.bed.logf("testbed: %s: agent paused (SIGSTOP)", h.Name)
	return nil
}

// Resume continues a paused agent with SIGCONT.
func (h *Host) Resume() error {
	p, err := h.running()
	if err != nil {
		return err
	}
	if err := p.signal(syscall.SIGCONT); err != nil {
		return err
	}
	h.bed.logf("testbed: %s: agent resumed (SIGCONT)", h.Name)
	return nil
}

// Result is what a client command printed and its exit code.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// CLI runs the agent binary as a client in h's namespace (so the default
// --rpc-addr reaches h's agent), bounded by ctx. A non-zero exit code is a
// Result, not an error; an error means it could not run or ran out of time.
func (h *Host) CLI(ctx context.Context, args ...string) (Result, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, h.bed.agent}, args...)...)
	cmd.Env = cleanEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	if ctx.Err() != nil {
		return res, fmt.Errorf("agent %s on %s: %w", strings.Join(args, " "), h.Name, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.Code = ee.ExitCode()
		return res, nil
	}
	return res, err
}

// Member is one row of `agent members --format json`.
type Member struct {
	Name   string            `json:"name"`
	Addr   string            `json:"addr"`
	Port   int               `json:"port"`
	Status string            `json:"status"`
	Tags   map[string]string `json:"tags"`
	Role   string            `json:"role"`
}

// Members is h's member list, by name, as `agent members` prints it.
func (h *Host) Members(ctx context.Context) (map[string]Member, error) {
	res, err := h.CLI(ctx, "members", "--format", "json")
	if err != nil {
		return nil, err
	}
	if res.Code != 0 {
		return nil, fmt.Errorf("agent members on %s: exit code %d: %s", h.Name, res.Code, strings.TrimSpace(res.Stderr))
	}
	var resp struct{ Members []Member }
	if err := json.Unmarshal([]byte(res.Stdout), &resp); err != nil {
		return nil, fmt.Errorf("agent members on %s: %w: %s", h.Name, err, res.Stdout)
	}
	out := make(map[string]Member, len(resp.Members))
	for _, m := range resp.Members {
		out[m.Name] = m
	}
	return out, nil
}

// LogTail is the last n lines of h's agent log, without the line each
// closed CLI connection logs: a test that polls the agent writes one of
// those every few hundred milliseconds, and they would hide the rest.
func (h *Host) LogTail(n int) string {
	return fileTail(h.LogPath, n)
}

// StoryTail is the last n lines of h's agent log that tell what the
// agent decided: without the gossip layers' debug lines, member updates
// (every load change makes one) and load publications, which fill a
// plain tail within seconds.
func (h *Host) StoryTail(n int) string {
	data, err := os.ReadFile(h.LogPath)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		noise := strings.Contains(l, `msg="rpc client disconnected"`) || strings.Contains(l, "EventMemberUpdate") ||
			strings.Contains(l, `msg="load published"`) ||
			strings.Contains(l, "level=DEBUG") && (strings.Contains(l, "component=serf") || strings.Contains(l, "component=memberlist"))
		if !noise {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// SupervisorLogTails is the last n lines of the supervisor log of every
// interpreter h has run, by interpreter name.
func (h *Host) SupervisorLogTails(n int) map[string]string {
	paths, _ := filepath.Glob(filepath.Join(h.DataDir, "interpreters", "*", "supervisor.log"))
	out := make(map[string]string, len(paths))
	for _, p := range paths {
		out[filepath.Base(filepath.Dir(p))] = fileTail(p, n)
	}
	return out
}

func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if !strings.Contains(l, `msg="rpc client disconnected"`) {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Log is h's whole agent log, every start of it.
func (h *Host) Log() (string, error) {
	data, err := os.ReadFile(h.LogPath)
	return string(data), err
}

// Event is one member event an agent streamed to `agent monitor`.
type Event struct {
	At      time.Time
	Type    string            // member-join, member-failed, member-leave, member-update, member-reap
	Members map[string]string // name → status it was reported with
}

// Monitor runs `agent monitor` against one agent and keeps the member
// events it prints, with the time each arrived. Its methods may be called
// concurrently.
type Monitor struct {
	host *Host
	proc *process
	pipe *os.File

	mu     sync.Mutex
	events []Event
	read   chan struct{} // closed when the output is drained
}

// Monitor starts watching h's member events. Close stops it; Close of the
// bed kills it too.
func (h *Host) Monitor() (*Monitor, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p, err := h.inNS(w, "monitor", "--log-level", "error")
	w.Close()
	if err != nil {
		r.Close()
		return nil, err
	}
	m := &Monitor{host: h, proc: p, pipe: r, read: make(chan struct{})}
	go m.scan()
	return m, nil
}

func (m *Monitor) scan() {
	defer close(m.read)
	sc := bufio.NewScanner(m.pipe)
	for sc.Scan() {
		if e, ok := parseEvent(sc.Text()); ok {
			e.At = time.Now()
			m.mu.Lock()
			m.events = append(m.events, e)
			m.mu.Unlock()
		}
	}
}

// parseEvent reads `event=member-failed members=h3 (failed),h4 (failed)`.
func parseEvent(line string) (Event, bool) {
	rest, ok := strings.CutPrefix(line, "event=")
	if !ok {
		return Event{}, false
	}
	typ, members, ok := strings.Cut(rest, " members=")
	if !ok {
		return Event{}, false
	}
	e := Event{Type: typ, Members: map[string]string{}}
	for _, part := range strings.Split(members, ",") {
		name, status, _ := strings.Cut(strings.TrimSpace(part), " (")
		if name != "" {
			e.Members[name] = strings.TrimSuffix(status, ")")
		}
	}
	return e, true
}

// Events is every event seen so far, oldest first.
func (m *Monitor) Events() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Event(nil), m.events...)
}

// Close stops the monitor and returns every event it saw.
func (m *Monitor) Close() []Event {
	m.proc.signal(syscall.SIGKILL)
	<-m.proc.done
	<-m.read
	m.pipe.Close()
	return m.Events()
}

// Processes lists the command lines (argv) of every process in h's network
// namespace, the agent's and everything it started: tests count
// interpreters by what runs, not only by what the mesh lists.
func (h *Host) Processes() ([][]string, error) {
	out, err := exec.Command("ip", "netns", "pids", h.NS).Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns pids %s: %w", h.NS, err)
	}
	var procs [][]string
	for _, f := range strings.Fields(string(out)) {
		cmdline, err := os.ReadFile(filepath.Join("/proc", f, "cmdline"))
		if err != nil {
			continue // it exited meanwhile
		}
		procs = append(procs, strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"))
	}
	return procs, nil
}
