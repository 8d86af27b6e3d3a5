package agent

import (
	"fmt"
	"maps"
	"net/http"
	"strings"

	"github.com/meshagent/agent/agent/checks"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

// healthChecks is the server's check runner, swapped whole by a reload.
// Guarded by Agent.checksMu.
type healthChecks struct {
	runner *checks.Runner
	defs   []checks.Definition
}

// newChecks prepares the runner for defs (nothing runs yet); a status
// change republishes the hc tag.
func (a *Agent) newChecks(defs []checks.Definition) *checks.Runner {
	if len(defs) == 0 {
		return nil
	}
	var r *checks.Runner
	r = checks.NewRunner(defs, a.clock, checks.OSProber{Env: []string{"AGENT_NODE=" + a.cfg.NodeName}},
		func(critical []string) { a.checksChanged(r, critical) })
	return r
}

// checksChanged publishes the critical checks of r, when r is still the
// agent's runner (a reload may have replaced it).
func (a *Agent) checksChanged(r *checks.Runner, critical []string) {
	a.checksMu.Lock()
	current := a.checks.runner == r
	a.checksMu.Unlock()
	if !current {
		return
	}
	a.checkChanges.Add(1)
	if len(critical) > 0 {
		a.logger.Warn("health check critical: this server takes no new interpreters", "critical", strings.Join(critical, ","))
	} else {
		a.logger.Info("no health check is critical: this server takes interpreters")
	}
	a.publishChecks(critical)
}

// publishChecks sets the hc tag. The tag rides on the base of the user's
// tags (cfg.Tags), which every tag rebuild starts from, so no other tag
// change can drop it; hc is reserved, so no user can set it.
func (a *Agent) publishChecks(critical []string) {
	a.tagsMu.Lock()
	defer a.tagsMu.Unlock()
	base := withCheckTag(a.userTags, critical)
	if maps.Equal(base, a.cfg.Tags) {
		return // a warning, say: no tag to gossip
	}
	a.cfg.Tags = base
	a.tags.extra = a.tags.changes.apply(a.cfg.Tags)
	if a.node == nil || a.leaving.Load() {
		return
	}
	if err := a.node.SetTags(a.buildTagsLocked()); err != nil {
		a.logger.Error("could not publish the health checks' status in the tags", "err", err)
	}
}

// withCheckTag is the user's tags plus the hc summary of critical.
func withCheckTag(user map[string]string, critical []string) map[string]string {
	base := maps.Clone(user)
	if base == nil {
		base = map[string]string{}
	}
	if v := checks.TagValue(critical, checks.MaxTag); v != "" {
		base[gossip.TagChecks] = v
	}
	return base
}

// criticalChecks lists this server's critical checks.
func (a *Agent) criticalChecks() []string {
	a.checksMu.Lock()
	r := a.checks.runner
	a.checksMu.Unlock()
	if r == nil {
		return nil
	}
	return r.Critical()
}

// checkViews lists this server's checks with their status and output.
func (a *Agent) checkViews() []checks.View {
	a.checksMu.Lock()
	r := a.checks.runner
	a.checksMu.Unlock()
	if r == nil {
		return []checks.View{}
	}
	return r.Views()
}

// stopChecks ends the runner's loops.
func (a *Agent) stopChecks() {
	a.checksMu.Lock()
	r := a.checks.runner
	a.checksMu.Unlock()
	if r != nil {
		r.Stop()
	}
}

// handleChecks is the checks RPC command: every check with its status,
// and with a report, a ttl check's new status first.
func (a *Agent) handleChecks(body rpc.Body) (any, error) {
	var req rpc.ChecksRequest
	if err := body.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad checks request: %w", err)
	}
	if req.Report != "" {
		a.checksMu.Lock()
		r := a.checks.runner
		a.checksMu.Unlock()
		if r == nil {
			return nil, fmt.Errorf("%s has no health checks: add a ttl check to its config, e.g. "+
				`"check": [{"name": "%s", "type": "ttl", "ttl": "30s"}]`, a.cfg.NodeName, req.Report)
		}
		if err := r.Report(req.Report, checks.Status(req.Status), req.Note); err != nil {
			return nil, err
		}
	}
	resp := rpc.ChecksResponse{Node: a.cfg.NodeName}
	for _, v := range a.allCheckViews() {
		resp.Checks = append(resp.Checks, rpc.CheckView{Interpreter: v.Interpreter, Name: v.Name, Type: string(v.Type),
			Status: string(v.Status), Output: v.Output, Since: v.Since, Checked: v.Checked})
	}
	return resp, nil
}

// allCheckViews are this server's checks, then its interpreters' kind
// checks (Interpreter set), as their supervisors last wrote them.
func (a *Agent) allCheckViews() []checks.View {
	return append(a.checkViews(), a.interps.KindCheckViews()...)
}

func checkNames(defs []checks.Definition) []string {
	names := make([]string, 0, len(defs))
	for _, d := range defs {
		names = append(names, d.Name)
	}
	return names
}

// httpChecks is GET /v1/checks: this server's checks and its
// interpreters' kind checks, as agent checks --format json lists them.
func (a *Agent) httpChecks(w http.ResponseWriter, r *http.Request) {
	writeJSONResponse(w, map[string]any{"node": a.cfg.NodeName, "checks": a.allCheckViews()})
}
