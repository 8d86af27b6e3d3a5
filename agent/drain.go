package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/internal/durable"
)

// drainState is a server's drain: it takes no new interpreters, and with a
// stop time its running ones are stopped then. It is kept in the data dir,
// so a restart does not end a drain by surprise. Guarded by Agent.drainMu.
type drainState struct {
	Draining bool      `json:"draining"`
	StopAt   time.Time `json:"stop_at,omitzero"`
}

func (a *Agent) drainPath() string { return filepath.Join(a.interpDir(), "drain.json") }

// loadDrain reads the drain state a server had before it restarted.
func (a *Agent) loadDrain() error {
	data, err := os.ReadFile(a.drainPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read drain state: %w", err)
	}
	var d drainState
	if err := json.Unmarshal(data, &d); err != nil {
		return fmt.Errorf("%s is damaged (%v): remove it to end the drain", a.drainPath(), err)
	}
	a.drainMu.Lock()
	a.drain = d
	a.drainMu.Unlock()
	if d.Draining {
		a.logger.Warn("this server is draining, as before the restart: it takes no new interpreters (agent drain --undo ends it)",
			"stop_at", d.StopAt)
	}
	return nil
}

// armRestoredDrain arms the stop of a drain restored from before a restart
// (a deadline already passed stops the interpreters at once). Start calls
// it once the interpreters are adopted.
func (a *Agent) armRestoredDrain() {
	a.drainMu.Lock()
	d, gen := a.drain, a.drainGen
	a.drainMu.Unlock()
	if !d.Draining || d.StopAt.IsZero() {
		return
	}
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.stopAtDeadline(gen, d.StopAt) }()
}

// draining reports whether the server takes no new interpreters. Safe for
// concurrent use.
func (a *Agent) draining() bool {
	a.drainMu.Lock()
	defer a.drainMu.Unlock()
	return a.drain.Draining
}

// handleDrain is the drain RPC command.
func (a *Agent) handleDrain(body rpc.Body) (any, error) {
	var req rpc.DrainRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad drain request: %w", err)
	}
	if a.cfg.Role != gossip.RoleServer {
		return nil, fmt.Errorf("%s is not a server (its role is %s), so it runs no interpreters to drain: "+
			"point --rpc-addr at a server's agent", a.cfg.NodeName, a.cfg.Role)
	}
	switch {
	case req.Undo && (req.Stop || req.NoStop || req.Deadline != 0):
		return nil, errors.New("--undo ends a drain: give it alone, without --stop or --deadline")
	case req.Stop && req.NoStop:
		return nil, errors.New("--stop and --stop=false together: give one")
	case req.NoStop && req.Deadline != 0:
		return nil, errors.New("--stop=false cancels a pending stop, so it takes no --deadline")
	case req.Deadline < 0:
		return nil, fmt.Errorf("--deadline %s is negative: give how long from now, e.g. 10m", req.Deadline)
	case req.Deadline > 0 && !req.Stop:
		return nil, errors.New("--deadline says when to stop the running interpreters: add --stop " +
			"(without it they run until they exit by themselves)")
	}
	a.drainMu.Lock()
	prev := a.drain
	a.drainMu.Unlock()
	next := drainState{Draining: !req.Undo}
	var kept bool
	switch {
	case req.Stop:
		next.StopAt = a.clock.Now().Add(req.Deadline)
	case !req.Undo && !req.NoStop && prev.Draining:
		// Draining again never cancels a stop by surprise: it stands
		// until --stop replaces it, --stop=false cancels it or --undo.
		next.StopAt = prev.StopAt
		kept = !prev.StopAt.IsZero()
	}
	if err := a.setDrain(next); err != nil {
		return nil, err
	}
	resp := a.drainResponse()
	resp.Kept = kept
	if !kept && !prev.StopAt.IsZero() && prev.Draining {
		resp.Replaced = prev.StopAt
	}
	return resp, nil
}

func (a *Agent) drainResponse() rpc.DrainResponse {
	a.drainMu.Lock()
	d := a.drain
	a.drainMu.Unlock()
	return rpc.DrainResponse{Node: a.cfg.NodeName, Draining: d.Draining, Running: a.interps.Running(), StopAt: d.StopAt}
}

// setDrain records the state, publishes it in the tags and (re)arms the
// stop.
func (a *Agent) setDrain(d drainState) error {
	data, _ := json.Marshal(d)
	if err := os.MkdirAll(a.interpDir(), 0o700); err != nil {
		return err
	}
	if err := durable.WriteFile(a.drainPath(), data, 0o600); err != nil {
		return fmt.Errorf("drain state not saved: %w", err)
	}
	a.drainMu.Lock()
	a.drain = d
	a.drainGen++
	gen := a.drainGen
	a.drainMu.Unlock()
	a.republishTags()
	if d.Draining {
		a.logger.Warn("draining: this server takes no new interpreters", "stop_at", d.StopAt)
	} else {
		a.logger.Info("drain ended: this server takes interpreters again")
	}
	if d.Draining && !d.StopAt.IsZero() {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.stopAtDeadline(gen, d.StopAt) }()
	}
	return nil
}

// stopAtDeadline stops every interpreter here at the drain's deadline,
// unless the drain changed (undone, or a new deadline) before then.
func (a *Agent) stopAtDeadline(gen uint64, at time.Time) {
	select {
	case <-a.shutdownCh:
		return
	case <-a.clock.After(max(at.Sub(a.clock.Now()), 0)):
	}
	a.drainMu.Lock()
	current := a.drainGen == gen
	a.drainMu.Unlock()
	if !current {
		return
	}
	n := a.interps.StopAll("the server's drain deadline passed")
	a.logger.Warn("drain deadline: stopping the interpreters still running here", "count", n)
}
