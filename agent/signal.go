package agent

import (
	"context"
	"fmt"

	"github.com/meshagent/agent/agent/rpc"
)

// handleSignalInterpreter delivers an allowlisted signal to an interpreter
// wherever it runs.
func (a *Agent) handleSignalInterpreter(body rpc.Body) (any, error) {
	var req rpc.SignalRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad signal request: %w", err)
	}
	return a.interps.Signal(context.Background(), req)
}
