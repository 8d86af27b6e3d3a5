package interp

import (
	"context"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

// This file restarts an interpreter in place: its supervisor stops the
// child and starts it again with the same spec, so the same ports and the
// same connection file (a Jupyter kernel keeps its HMAC key, and a client
// connected to it reconnects to the new process by itself). No election,
// no new member: the order travels as a signal does (asker, server,
// supervisor's control socket), and the answer comes once the new child
// runs. Jupyter's kernel restart uses it (contrib/jupyter).

// ControlRestart is the control socket's word for a restart in place. It
// is not a signal: rpc.ParseSignal refuses it, so `agent signal` cannot
// send it.
const ControlRestart = "RESTART"

const queryRestart = "restart-interpreter"

// restartWait bounds how long the control socket waits for the loop to
// take a restart request and answer it; askSupervisor's own deadline is 5 s.
const restartWait = 4 * time.Second

type restartOrder struct {
	ID   string `msgpack:"i"`
	Name string `msgpack:"n"`
}

// requestRestart hands a restart to the supervisor's loop and waits for its
// answer. Called from the control socket's goroutine.
func (s *supervisor) requestRestart() ControlAnswer {
	reply := make(chan ControlAnswer, 1)
	select {
	case s.restarts <- reply:
	case <-s.done:
		return ControlAnswer{Reason: "the interpreter has ended"}
	case <-time.After(restartWait):
		return ControlAnswer{Reason: "its supervisor is busy"}
	}
	select {
	case ans := <-reply:
		return ans
	case <-time.After(restartWait):
		return ControlAnswer{Reason: "its supervisor did not finish the restart in time"}
	}
}

// restartInPlace stops the child, if it runs, and starts it again at once
// (a pending on-failure restart is done now). Loop goroutine only.
func (s *supervisor) restartInPlace() ControlAnswer {
	if s.state == stateEnded {
		return ControlAnswer{Reason: "the interpreter has ended"}
	}
	s.logger.Info("interpreter-restart: restarting in place on request")
	s.stopChild(s.spec.StopGrace) // nothing when it is not running
	s.restart()
	if s.state == stateEnded {
		return ControlAnswer{Reason: fmt.Sprintf("it could not be started again: %v", s.waitErr)}
	}
	return ControlAnswer{Delivered: true, PID: s.child.PID()}
}

// Restart restarts an interpreter in place, wherever it runs: same host,
// same ports, same connection file.
func (l *Lifecycle) Restart(ctx context.Context, req rpc.RestartRequest) (rpc.RestartResponse, error) {
	in, err := l.findInstance(req.Name)
	if err != nil {
		return rpc.RestartResponse{}, err
	}
	resp := rpc.RestartResponse{Name: in.Name, Host: in.Host}
	if in.Status != gossip.StatusAlive {
		resp.Reason = "the interpreter is " + string(in.Status)
		return resp, nil
	}
	if err := hostUnreachable(in, "restart"); err != nil {
		return resp, err
	}
	ans, err := l.askServerOf(ctx, in, "restart", queryRestart, restartOrder{ID: NewRequestID(), Name: req.Name})
	if err != nil {
		return resp, err
	}
	resp.Restarted, resp.PID, resp.Reason = ans.Delivered, ans.PID, ans.Reason
	return resp, nil
}

// handleRestartOrder answers the restart query: ask the interpreter's
// supervisor to restart it. A re-sent order (same id) is answered again,
// not restarted twice.
func (l *Lifecycle) handleRestartOrder(q *gossip.Query) {
	var o restartOrder
	var ans signalAnswer
	if err := msgpack.Unmarshal(q.Payload, &o); err != nil {
		ans.Reason = "cannot decode the restart order: " + err.Error()
	} else {
		ans = l.tellSupervisor(o.Name, "restart-"+o.ID, ControlRestart)
		l.logger.Info("restart in place", "interpreter", o.Name, "asker", q.From, "restarted", ans.Delivered,
			"pid", ans.PID, "reason", ans.Reason)
	}
	respond(q, ans, l.logger)
}
