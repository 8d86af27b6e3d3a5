package testbed

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What the bed can see of its hosts without asking their agents: the
// processes in each namespace, read from /proc, and connections made from
// inside a namespace (to an agent's loopback-only HTTP API).

// NSProcess is one process found in a host's network namespace.
type NSProcess struct {
	PID   int
	PPID  int // its parent
	Argv  []string
	State byte // /proc/PID/stat's state: R, S, T (stopped), Z (zombie), …
}

// Alive reports whether the process has not exited: a zombie waits only
// for its parent to reap it.
func (p NSProcess) Alive() bool { return p.State != 'Z' && p.State != 'X' }

// SupervisorSpec is the spec path of an interpreter supervisor (`agent
// interpreter --spec PATH`), "" for any other process.
func (p NSProcess) SupervisorSpec() string {
	if len(p.Argv) < 2 || p.Argv[1] != "interpreter" {
		return ""
	}
	for i, a := range p.Argv {
		if a == "--spec" && i+1 < len(p.Argv) {
			return p.Argv[i+1]
		}
	}
	return ""
}

// nsInode is the inode of a network namespace that `ip netns` named ns.
func nsInode(ns string) (uint64, error) {
	st, err := os.Stat(filepath.Join("/run/netns", ns))
	if err != nil {
		return 0, err
	}
	return st.Sys().(*syscall.Stat_t).Ino, nil
}

// ScanProcesses lists the processes of every host, by host name, from one
// walk over /proc (no command is run, so it is cheap enough to repeat a
// few times a second). A process that exits during the walk is left out.
func (b *Testbed) ScanProcesses() (map[string][]NSProcess, error) {
	hostOf := map[uint64]string{}
	for _, h := range b.Hosts {
		ino, err := nsInode(h.NS)
		if err != nil {
			return nil, fmt.Errorf("namespace of %s: %w", h.Name, err)
		}
		hostOf[ino] = h.Name
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[string][]NSProcess{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		link, err := os.Readlink(filepath.Join(dir, "ns", "net"))
		if err != nil {
			continue
		}
		// "net:[4026532301]"
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 64)
		if err != nil {
			continue
		}
		host, ok := hostOf[ino]
		if !ok {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		// "pid (comm) S ppid …": the comm may hold spaces and parentheses.
		state, ppid := byte('?'), 0
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 {
			if f := strings.Fields(string(stat[i+1:])); len(f) >= 2 {
				state = f[0][0]
				ppid, _ = strconv.Atoi(f[1])
			}
		}
		out[host] = append(out[host], NSProcess{PID: pid, PPID: ppid, State: state,
			Argv: strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")})
	}
	for _, ps := range out {
		slices.SortFunc(ps, func(a, b NSProcess) int { return a.PID - b.PID })
	}
	return out, nil
}

// SignalAll sends sig to every process in h's namespace: SIGSTOP and
// SIGCONT pause and resume the whole host, agent, supervisors and
// interpreters alike, as a frozen virtual machine.
func (b *Testbed) SignalAll(h *Host, sig syscall.Signal) error {
	procs, err := b.ScanProcesses()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range procs[h.Name] {
		if p.PID == os.Getpid() {
			continue
		}
		if err := syscall.Kill(p.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("%v to pid %d on %s: %w", sig, p.PID, h.Name, err))
		}
	}
	b.logf("testbed: %s: %v to its %d processes", h.Name, sig, len(procs[h.Name]))
	return errors.Join(errs...)
}

// setnsCall is setns(2)'s system call number, which package syscall does
// not export; 0 where it is not known.
var setnsCall = map[string]uintptr{
	"amd64": 308, "arm64": 268, "riscv64": 268, "loong64": 268, "386": 346, "arm": 375,
	"ppc64": 350, "ppc64le": 350, "s390x": 339,
}[runtime.GOARCH]

// DialIn connects to addr from inside h's network namespace (its loopback
// included), from a thread that enters the namespace only for the
// socket's creation: a socket belongs to the namespace it was made in.
func (h *Host) DialIn(ctx context.Context, network, addr string) (net.Conn, error) {
	if setnsCall == 0 {
		return nil, fmt.Errorf("%w: setns on %s is not known to the bed", ErrUnsupported, runtime.GOARCH)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		restored := true
		c, err := func() (net.Conn, error) {
			self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
			if err != nil {
				return nil, err
			}
			defer self.Close()
			target, err := os.Open(filepath.Join("/run/netns", h.NS))
			if err != nil {
				return nil, err
			}
			defer target.Close()
			if _, _, e := syscall.RawSyscall(setnsCall, target.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
				return nil, fmt.Errorf("enter namespace %s: %w", h.NS, e)
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if _, _, e := syscall.RawSyscall(setnsCall, self.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
				// The thread stays locked, and ends with this goroutine.
				restored = false
				if c != nil {
					c.Close()
				}
				return nil, fmt.Errorf("leave namespace %s: %w", h.NS, e)
			}
			return c, err
		}()
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// HTTPAddr is where each host's agent serves its HTTP API, on the
// loopback of its namespace (reached with DialIn).
const HTTPAddr = "127.0.0.1:7374"

// LifecycleEvent is one interpreter lifecycle event of an agent's HTTP
// event stream (/v1/events).
type LifecycleEvent struct {
	At          time.Time `json:"-"` // when it arrived
	Type        string    `json:"type"`
	Interpreter string    `json:"interpreter"`
	RequestID   string    `json:"request_id"`
	Host        string    `json:"host"`
	Gen         int       `json:"gen"`
	How         string    `json:"how"`
	Reason      string    `json:"reason"`
}

// StreamEvents follows h's HTTP event stream until ctx ends and hands
// every interpreter lifecycle event to fn, as it arrives. It connects
// again whenever the stream ends (the agent was killed or restarted); an
// event the agent emits while no stream is connected is lost, so it
// tries again every 50 ms.
func (h *Host) StreamEvents(ctx context.Context, fn func(LifecycleEvent)) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return h.DialIn(ctx, network, addr)
		}}}
	defer client.CloseIdleConnections()
	for ctx.Err() == nil {
		if h.Running() {
			h.followEvents(ctx, client, fn)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (h *Host) followEvents(ctx context.Context, client *http.Client, fn func(LifecycleEvent)) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+HTTPAddr+"/v1/events", nil)
	if err != nil {
		return
	}
	resp, err := client.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var typ string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			typ = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && strings.HasPrefix(typ, "interpreter-"):
			var e LifecycleEvent
			if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e) == nil {
				e.At = time.Now()
				fn(e)
			}
		case line == "":
			typ = ""
		}
	}
}
