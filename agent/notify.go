package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/meshagent/agent/state"
)

// Notifier speaks systemd's notify protocol (sd_notify(3)): one datagram of
// KEY=VALUE lines to the unix socket named by $NOTIFY_SOCKET. The agent
// says READY=1 once it has joined (or retried its first join), WATCHDOG=1
// while its gossip answers, RELOADING=1 around a reload and STOPPING=1 when
// it leaves. Safe for concurrent use.
type Notifier struct {
	addr *net.UnixAddr
	// Watchdog is systemd's WatchdogSec ($WATCHDOG_USEC); zero: none.
	Watchdog time.Duration

	mu   sync.Mutex
	conn *net.UnixConn
}

// NewNotifier sends to the socket at path ("@name" is an abstract socket,
// as systemd writes it).
func NewNotifier(path string, watchdog time.Duration) *Notifier {
	name := path
	if len(name) > 0 && name[0] == '@' {
		name = "\x00" + name[1:]
	}
	return &Notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}, Watchdog: watchdog}
}

// NotifierFromEnv is the notifier systemd asked for, or nil when the agent
// does not run under a Type=notify unit. It clears the variables, so that
// the processes the agent starts (interpreter supervisors, event handlers)
// do not speak for it.
func NotifierFromEnv() (*Notifier, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	usec, pid := os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID")
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		os.Unsetenv(k)
	}
	if path == "" {
		return nil, nil
	}
	var watchdog time.Duration
	if usec != "" && (pid == "" || pid == strconv.Itoa(os.Getpid())) {
		n, err := strconv.ParseUint(usec, 10, 63)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("WATCHDOG_USEC=%q is not a positive number of microseconds: fix WatchdogSec= in the unit", usec)
		}
		watchdog = time.Duration(n) * time.Microsecond
	}
	return NewNotifier(path, watchdog), nil
}

// Send sends one state message, such as "READY=1\nSTATUS=joined".
func (n *Notifier) Send(msg string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		c, err := net.DialUnix("unixgram", nil, n.addr)
		if err != nil {
			return fmt.Errorf("notify socket %s: %w", n.addr.Name, err)
		}
		n.conn = c
	}
	if _, err := n.conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("notify socket %s: %w", n.addr.Name, err)
	}
	return nil
}

// Close closes the socket.
func (n *Notifier) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		return nil
	}
	err := n.conn.Close()
	n.conn = nil
	return err
}

// Watchdog feeds systemd's watchdog every Every while Alive answers true
// within Every: a gossip that no longer answers stops the pings, and
// systemd restarts the agent after WatchdogSec. Time comes from Clock.
type Watchdog struct {
	Clock state.Clock
	Every time.Duration
	// Alive reports whether the gossip answers; it may block, which is
	// what a stuck loop does.
	Alive func() bool
	Send  func(string) error
	// Missed is called once per ping that was not sent, with why.
	Missed func(error)
}

// errNoAnswer is a liveness probe that did not answer within a period.
var errNoAnswer = errors.New("the gossip did not answer within the watchdog period")

// Run pings until done is closed. A probe still blocked from an earlier
// period is not started again: one stuck probe, no pile of goroutines.
func (w Watchdog) Run(done <-chan struct{}) {
	var pending chan bool
	for {
		if pending == nil {
			pending = make(chan bool, 1)
			go func(ch chan bool) { ch <- w.Alive() }(pending)
		}
		deadline := w.Clock.After(w.Every)
		select {
		case <-done:
			return
		case ok := <-pending:
			pending = nil
			if !ok {
				w.Missed(errors.New("the gossip reports it is not running"))
			} else if err := w.Send("WATCHDOG=1"); err != nil {
				w.Missed(err)
			}
			select {
			case <-done:
				return
			case <-deadline:
			}
		case <-deadline:
			w.Missed(errNoAnswer)
		}
	}
}

// markReady records that the agent has joined the mesh, or has tried to
// once and is retrying: systemd's READY. Once.
func (a *Agent) markReady() { a.readyOnce.Do(func() { close(a.readyCh) }) }

// Ready is closed once the agent has joined the mesh it was told to join,
// has retried its first join, or was told to join none.
func (a *Agent) Ready() <-chan struct{} { return a.readyCh }

// notify sends a state to systemd, when the agent runs under it.
func (a *Agent) notify(msg string) {
	if a.deps.Notifier == nil {
		return
	}
	if err := a.deps.Notifier.Send(msg); err != nil {
		a.logger.Warn("could not tell systemd", "state", msg, "err", err)
	}
}

// runNotify tells systemd the agent is ready, then feeds its watchdog
// while the gossip answers, until the agent shuts down.
func (a *Agent) runNotify(n *Notifier) {
	select {
	case <-a.shutdownCh:
		return
	case <-a.readyCh:
	}
	status := "joined the mesh"
	if !a.joined.Load() {
		status = "first join failed; retrying"
	}
	a.notify("READY=1\nSTATUS=" + status)
	if n.Watchdog <= 0 {
		return
	}
	stuck := false
	Watchdog{Clock: a.clock, Every: n.Watchdog / 2, Alive: a.gossipAlive,
		Send: func(msg string) error {
			if stuck {
				stuck = false
				a.logger.Info("the gossip answers again: the systemd watchdog is fed again")
			}
			return n.Send(msg)
		},
		Missed: func(err error) {
			if !stuck {
				stuck = true
				a.logger.Error("systemd watchdog not fed: systemd restarts the agent if this lasts", "err", err,
					"watchdog", n.Watchdog)
			}
		}}.Run(a.shutdownCh)
}

// gossipAlive asks the gossip node for what takes its locks: a node whose
// loops deadlocked does not answer, and the watchdog call blocks with it.
func (a *Agent) gossipAlive() bool {
	_ = a.node.Members()
	return a.node.LocalMember().Name != ""
}
