package interp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

// This file delivers signals to interpreters through the mesh: the asker
// sends the order to the interpreter's server, the server asks the
// supervisor over its control socket, and the supervisor signals the
// interpreter's process group. Only rpc.AllowedSignals pass, checked again
// at each hop. The supervisor itself is never the target, so an interrupt
// (SIGINT) reaches the interpreter as an interrupt and does not stop it.

const querySignal = "signal-interpreter"

// controlSocket is the supervisor's control socket, in the interpreter's
// directory (mode 0700: only the agent's user reaches it).
const controlSocket = "control.sock"

// signalOrder carries an id: the asker re-sends an order its target did
// not acknowledge within a second, and a signal, unlike a stop, must not
// be delivered twice.
type signalOrder struct {
	ID     string `msgpack:"i"`
	Name   string `msgpack:"n"`
	Signal string `msgpack:"s"`
}

// recentOrders remembers the answers to the orders of the last minute
// (or keep) by order id, so that a re-sent order (askOne sends an order
// again when its first send is not acknowledged) is answered again, not
// carried out again. Safe for concurrent use.
type recentOrders[T any] struct {
	mu      sync.Mutex
	keep    time.Duration // zero: a minute
	answers map[string]recentOrder[T]
}

type recentOrder[T any] struct {
	at   time.Time
	done chan struct{} // closed once ans is set
	ans  T
}

// recentSignals are the signal (and restart) orders answered lately.
type recentSignals = recentOrders[signalAnswer]

// once runs deliver for the first order with id and returns its answer;
// a later order with the same id waits for and returns the same answer.
// An empty id is never remembered.
func (r *recentOrders[T]) once(id string, now time.Time, deliver func() T) T {
	r.mu.Lock()
	if r.answers == nil {
		r.answers = map[string]recentOrder[T]{}
	}
	keep := r.keep
	if keep == 0 {
		keep = time.Minute
	}
	for k, v := range r.answers {
		if now.Sub(v.at) > keep {
			delete(r.answers, k)
		}
	}
	if prev, ok := r.answers[id]; ok && id != "" {
		r.mu.Unlock()
		<-prev.done
		r.mu.Lock()
		ans := r.answers[id].ans
		r.mu.Unlock()
		return ans
	}
	if id == "" {
		r.mu.Unlock()
		return deliver()
	}
	entry := recentOrder[T]{at: now, done: make(chan struct{})}
	r.answers[id] = entry
	r.mu.Unlock()
	ans := deliver()
	r.mu.Lock()
	entry.ans = ans
	r.answers[id] = entry
	r.mu.Unlock()
	close(entry.done)
	return ans
}

type signalAnswer struct {
	Delivered bool   `msgpack:"d,omitempty"`
	PID       int    `msgpack:"p,omitempty"`
	Reason    string `msgpack:"r,omitempty"`
}

// Signal delivers an allowlisted signal to an interpreter wherever it
// runs, and says whether it reached the interpreter's process group.
func (l *Lifecycle) Signal(ctx context.Context, req rpc.SignalRequest) (rpc.SignalResponse, error) {
	sig, _, err := rpc.ParseSignal(req.Signal)
	if err != nil {
		return rpc.SignalResponse{}, err
	}
	in, err := l.findInstance(req.Name)
	if err != nil {
		return rpc.SignalResponse{}, err
	}
	resp := rpc.SignalResponse{Name: in.Name, Host: in.Host, Signal: sig}
	if in.Status != gossip.StatusAlive {
		resp.Reason = "the interpreter is " + string(in.Status)
		return resp, nil
	}
	if err := hostUnreachable(in, "signal"); err != nil {
		return resp, err
	}
	ans, err := l.askServerOf(ctx, in, "signal", querySignal, signalOrder{ID: NewRequestID(), Name: req.Name, Signal: sig})
	if err != nil {
		return resp, err
	}
	resp.Delivered, resp.PID, resp.Reason = ans.Delivered, ans.PID, ans.Reason
	return resp, nil
}

// askServerOf sends order (what: "signal", "restart") to the server of
// interpreter in, for its supervisor, and returns the answer.
func (l *Lifecycle) askServerOf(ctx context.Context, in Instance, what, query string, order any) (signalAnswer, error) {
	payload, _ := msgpack.Marshal(order)
	raw, err := l.askOne(ctx, in.Host, query, payload, orderTimeout)
	if err != nil {
		return signalAnswer{}, fmt.Errorf("%s %s: its server %w", what, in.Name, err)
	}
	var ans signalAnswer
	if err := msgpack.Unmarshal(raw, &ans); err != nil {
		return signalAnswer{}, fmt.Errorf("%s %s: %s answered garbage: %w", what, in.Name, in.Host, err)
	}
	return ans, nil
}

// handleSignalOrder answers the signal query: pass the signal to the
// interpreter's supervisor.
func (l *Lifecycle) handleSignalOrder(q *gossip.Query) {
	var o signalOrder
	var ans signalAnswer
	if err := msgpack.Unmarshal(q.Payload, &o); err != nil {
		ans.Reason = "cannot decode the signal order: " + err.Error()
	} else if sig, _, err := rpc.ParseSignal(o.Signal); err != nil {
		ans.Reason = err.Error()
	} else {
		ans = l.tellSupervisor(o.Name, o.ID, sig)
		l.logger.Info("signal for interpreter", "interpreter", o.Name, "signal", sig, "asker", q.From,
			"delivered", ans.Delivered, "pid", ans.PID, "reason", ans.Reason)
	}
	respond(q, ans, l.logger)
}

// tellSupervisor passes word (a signal name, or ControlRestart) to the
// supervisor of this host's interpreter called name, once per order id: a
// re-sent order gets the first answer.
func (l *Lifecycle) tellSupervisor(name, id, word string) signalAnswer {
	l.regMu.Lock()
	i, ok := l.registry.Get(name)
	l.regMu.Unlock()
	if !ok {
		return signalAnswer{Reason: fmt.Sprintf("no interpreter %s runs on %s", name, l.cfg.Node)}
	}
	return l.signals.once(id, l.clock.Now(), func() signalAnswer {
		spec, err := LoadSpec(i.Spec)
		if err != nil {
			return signalAnswer{Reason: "its supervisor cannot be reached: " + err.Error()}
		}
		a := l.procs.SignalInterpreter(spec, word)
		return signalAnswer{Delivered: a.Delivered, PID: a.PID, Reason: a.Reason}
	})
}

// askSupervisor sends one signal name over a supervisor's control socket
// and reads its answer.
func askSupervisor(path, sig string) ControlAnswer {
	var c net.Conn
	err := viaShortPath(path, func(p string) (err error) {
		c, err = net.DialTimeout("unix", p, 2*time.Second)
		return err
	})
	if err != nil {
		return ControlAnswer{Reason: "its supervisor does not answer: " + err.Error()}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, sig); err != nil {
		return ControlAnswer{Reason: "its supervisor does not answer: " + err.Error()}
	}
	var ans ControlAnswer
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil {
		err = json.Unmarshal([]byte(line), &ans)
	}
	if err != nil {
		return ControlAnswer{Reason: "its supervisor's answer is garbled: " + err.Error()}
	}
	return ans
}

// ControlAnswer is a supervisor's answer to a signal for its interpreter.
type ControlAnswer struct {
	Delivered bool   `json:"delivered"`
	PID       int    `json:"pid,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// serveControl listens on the supervisor's control socket and signals the
// process group of the interpreter running at that moment (pid holds it;
// 0 between a failure and its restart). It returns the listener, which
// the caller closes.
func serveControl(path string, deliver func(string) ControlAnswer, logger *slog.Logger) (io.Closer, error) {
	os.Remove(path) // left by a supervisor of the same name that crashed
	var l *net.UnixListener
	err := viaShortPath(path, func(p string) (err error) {
		l, err = net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// Removed by its full path below, never by the short one, which may
	// name another directory once its descriptor is closed.
	l.SetUnlinkOnClose(false)
	os.Chmod(path, 0o600)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				ans := deliver(strings.TrimSpace(line))
				logger.Info("signal for the interpreter", "signal", strings.TrimSpace(line), "pid", ans.PID,
					"delivered", ans.Delivered, "reason", ans.Reason)
				data, _ := json.Marshal(ans)
				c.Write(append(data, '\n'))
			}()
		}
	}()
	return closerFunc(func() error { err := l.Close(); os.Remove(path); return err }), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// viaShortPath calls use with path, or, when path is too long for a Unix
// socket address (107 bytes), with the same file reached through an open
// descriptor of its directory (/proc/self/fd/N/NAME), so that a long
// --data-dir still works.
func viaShortPath(path string, use func(string) error) error {
	if len(path) < 108 {
		return use(path)
	}
	dir, err := os.OpenFile(filepath.Dir(path), os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer dir.Close()
	return use(fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(path)))
}

// deliver signals the interpreter's process group with an allowlisted
// signal; c is nil when no interpreter runs.
func deliver(name string, c Child) ControlAnswer {
	sig, n, err := rpc.ParseSignal(name)
	if err != nil {
		return ControlAnswer{Reason: err.Error()}
	}
	if c == nil {
		return ControlAnswer{Reason: "the interpreter is not running (it exited; a restart may be pending)"}
	}
	pid := c.PID()
	if err := c.Signal(syscall.Signal(n)); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return ControlAnswer{PID: pid, Reason: "the interpreter's process group is gone"}
		}
		return ControlAnswer{PID: pid, Reason: fmt.Sprintf("%s to process group %d: %v", sig, pid, err)}
	}
	return ControlAnswer{Delivered: true, PID: pid}
}
