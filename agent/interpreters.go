package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/meshagent/agent/agent/interp"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/placement"
)

// This file wires the interpreter lifecycle (agent/interp) into the agent:
// the RPC commands, the election and ledger it borrows, and the events it
// hands to operators.

// BuiltinKind is the interpreter kind every server offers.
const BuiltinKind = interp.BuiltinKind

// reservationTTL is how long the asker counts a spawn against a server
// whose tags do not show it yet.
const reservationTTL = 30 * time.Second

// CheckKindName refuses a name no interpreter kind can have (1 to 32
// letters, digits, '-' and '_'), as an --interpreters file does.
func CheckKindName(name string) error { return interp.CheckKindName(name) }

// RunSupervisor is `agent interpreter`, the supervisor of one interpreter.
func RunSupervisor(specPath string, logger *slog.Logger) int {
	return interp.RunSupervisor(specPath, logger)
}

// RunEchoServer is the built-in demo interpreter.
func RunEchoServer(addr string, stderr io.Writer) int { return interp.RunEchoServer(addr, stderr) }

// interpDir holds the registry, the drain state and one directory per
// interpreter: the data dir, which a server must have. An agent of the
// interpreter role may have none (""): it starts no interpreters and
// cannot drain, so it never writes there.
func (a *Agent) interpDir() string { return a.cfg.DataDir }

// runningInterpreters counts the live interpreters this server started.
func (a *Agent) runningInterpreters() int { return a.interps.Running() }

// electForSpawn is the election a spawn runs, counted in the asker's ledger.
// A spawn cancelled meanwhile (its client hung up, or the agent is
// stopping) ends with its election: no server is told to start an
// interpreter nobody waits for, to be taken back at once.
func (a *Agent) electForSpawn(ctx context.Context, req placement.Request) interp.Election {
	e := a.elect(ctx, req, 0, a.ledger)
	if err := ctx.Err(); err != nil && e.Err == nil {
		e.Err = fmt.Errorf("spawn cancelled during the election (its client went away, or the agent is stopping): %w", err)
	}
	return e
}

func (a *Agent) reserve(rid string, b placement.Bid) {
	a.ledgerMu.Lock()
	a.ledger.Reserve(rid, b, a.clock.Now())
	a.ledgerMu.Unlock()
}

func (a *Agent) release(rid string) {
	a.ledgerMu.Lock()
	a.ledger.Release(rid)
	a.ledgerMu.Unlock()
}

// publishCounts gossips a changed interpreter count as soon as the publish
// policy allows.
func (a *Agent) publishCounts() {
	if l, ok := a.currentLoad(); ok {
		a.observeLoad(l, a.clock.Now())
	}
}

// emitInterpreterEvent hands a lifecycle event to the HTTP event stream and
// the metrics; the lifecycle has logged it already, which `agent monitor`
// shows.
func (a *Agent) emitInterpreterEvent(e interp.Event) {
	a.metrics.interpreterEvents.WithLabelValues(strings.TrimPrefix(e.Type, "interpreter-")).Inc()
	a.events.publish(e)
}

// handleSpawn is the spawn RPC command.
func (a *Agent) handleSpawn(body rpc.Body) (any, error) {
	var req rpc.SpawnRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad spawn request: %w", err)
	}
	start := time.Now()
	// The client's context: a client that hangs up cancels its spawn.
	resp := a.interps.Spawn(body.Context(), req)
	a.metrics.spawnLatency.Observe(time.Since(start).Seconds())
	switch {
	case resp.Code != "":
		a.metrics.spawns.WithLabelValues(strings.ReplaceAll(resp.Code, "-", "_")).Inc()
	case resp.Existing:
		a.metrics.spawns.WithLabelValues("existing").Inc()
	default:
		a.metrics.spawns.WithLabelValues("started").Inc()
	}
	return resp, nil
}

// handleInterpreters lists every interpreter in this agent's view.
func (a *Agent) handleInterpreters(body rpc.Body) (any, error) {
	var req rpc.InterpretersRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad interpreters request: %w", err)
	}
	return rpc.InterpretersResponse{Interpreters: a.interps.List(req.All)}, nil
}

// handleStopInterpreter stops an interpreter wherever it runs.
func (a *Agent) handleStopInterpreter(body rpc.Body) (any, error) {
	var req rpc.StopRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad stop request: %w", err)
	}
	return a.interps.Stop(context.Background(), req)
}

// eventFeed fans the lifecycle's events out to the HTTP event streams. A
// stream that reads too slowly loses events, never holds up the lifecycle.
// Safe for concurrent use.
type eventFeed struct {
	mu   sync.Mutex
	subs map[chan []byte]struct{}
}

func newEventFeed() *eventFeed { return &eventFeed{subs: map[chan []byte]struct{}{}} }

func (f *eventFeed) publish(e interp.Event) {
	data, _ := json.Marshal(e)
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		select {
		case ch <- data:
		default:
		}
	}
}

// subscribe returns a channel of JSON events and its cancel.
func (f *eventFeed) subscribe() (<-chan []byte, func()) {
	ch := make(chan []byte, 64)
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}
}
