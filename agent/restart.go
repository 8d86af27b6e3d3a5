package agent

import (
	"context"
	"fmt"

	"github.com/meshagent/agent/agent/rpc"
)

// handleRestartInterpreter restarts an interpreter in place wherever it
// runs.
func (a *Agent) handleRestartInterpreter(body rpc.Body) (any, error) {
	var req rpc.RestartRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad restart request: %w", err)
	}
	return a.interps.Restart(context.Background(), req)
}
