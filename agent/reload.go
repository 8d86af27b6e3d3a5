package agent

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/meshagent/agent/agent/checks"
	"github.com/meshagent/agent/agent/interp"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/state"
)

// reloadable are the settings a reload applies at once; any other setting
// that changed is reported as taking effect at the next start.
var reloadable = map[string]bool{
	"log-level": true, "tag": true, "event-handler": true, "event-handler-timeout": true,
	"place-rate-limit": true, "spawn-rate-limit": true, "check": true, "interpreters": true,
}

// ErrReload wraps every reason a reload changed nothing.
var ErrReload = errors.New("config not reloaded; the running config stays")

// Reload re-reads the configuration (Deps.LoadConfig: the files, the
// environment and the flags the agent was started with) and applies what
// can change while it runs: the log level, tags, event handlers, checks,
// rate limits and the interpreter kinds (the file is read again even when
// its name did not change; see interp.Lifecycle.SetKinds for what the new
// kinds apply to). Settings that need a restart (bind, data dir, key, …)
// are listed, not applied. A bad file changes nothing: everything is
// checked before anything is applied. SIGHUP and the reload RPC command
// call it; reloads run one at a time.
func (a *Agent) Reload() (rpc.ReloadResponse, error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	if a.deps.LoadConfig == nil {
		return rpc.ReloadResponse{}, fmt.Errorf("%w: this agent was started without a way to re-read its config", ErrReload)
	}
	a.notify("RELOADING=1\nSTATUS=reloading the config")
	defer a.notify("READY=1\nSTATUS=config reloaded")
	next, err := a.deps.LoadConfig()
	if err == nil {
		var resp rpc.ReloadResponse
		if resp, err = a.applyConfig(next); err == nil {
			a.logger.Info("config reloaded", "applied", strings.Join(resp.Applied, "; "), "restart_needed", strings.Join(resp.Restart, "; "))
			return resp, nil
		}
	}
	err = fmt.Errorf("%w: %w", ErrReload, err)
	a.logger.Error("config reload failed", "err", err)
	return rpc.ReloadResponse{}, err
}

// handleReload is the reload RPC command.
func (a *Agent) handleReload(rpc.Body) (any, error) { return a.Reload() }

// applyConfig checks next whole, then applies its reloadable settings.
func (a *Agent) applyConfig(next Config) (rpc.ReloadResponse, error) {
	resp := rpc.ReloadResponse{Node: a.cfg.NodeName, Applied: []string{}, Restart: []string{}}
	if err := next.Validate(); err != nil {
		return resp, err
	}
	// Check everything first.
	level, err := ParseLevel(next.LogLevel)
	if err != nil {
		return resp, err
	}
	var handlers []EventHandler
	for _, spec := range next.EventHandlers {
		h, err := ParseEventHandler(spec)
		if err != nil {
			return resp, err
		}
		handlers = append(handlers, h)
	}
	defs, err := checks.ParseAll(next.Checks)
	if err != nil {
		return resp, err
	}
	kinds, kindsSum, err := readKinds(next.InterpretersFile)
	if err != nil {
		return resp, err
	}
	kindsChanged := next.InterpretersFile != a.given.InterpretersFile || kindsSum != a.kindsSum

	var applied []string
	for _, o := range options {
		old, now := o.get(&a.given), o.get(&next)
		if slices.Equal(old, now) {
			continue
		}
		what := "--" + o.Name
		if !o.Secret && !reloadable[o.Name] {
			what = fmt.Sprintf("--%s %s (running with %s)", o.Name, orNone(now), orNone(old))
		}
		if reloadable[o.Name] {
			applied = append(applied, o.Name)
			resp.Applied = append(resp.Applied, what)
		} else {
			resp.Restart = append(resp.Restart, what+": takes effect at the next start")
		}
	}
	if kindsChanged {
		if next.InterpretersFile == a.given.InterpretersFile {
			resp.Applied = append(resp.Applied, "--interpreters "+next.InterpretersFile+": the file changed")
		}
		resp.Applied = append(resp.Applied, "kinds "+strings.Join(interp.Names(kinds), ", ")+
			" for new spawns (running interpreters keep the kind they started with)")
	}
	if slices.Contains(applied, "log-level") && !a.logs.SetLevel(level) {
		return resp, fmt.Errorf("--log-level: this agent's logger was not made to change its level: restart it")
	}

	// Tags go first: gossiping them is the one step that can still fail
	// (over the 512-byte budget), and then nothing has changed.
	if slices.Contains(applied, "tag") {
		if err := a.reloadTags(next.Tags); err != nil {
			if slices.Contains(applied, "log-level") {
				a.logs.SetLevel(mustLevel(a.given.LogLevel))
			}
			return resp, err
		}
	}
	a.handlersMu.Lock()
	a.handlers, a.handlerTimeout = handlers, next.EventHandlerTimeout
	a.handlersMu.Unlock()
	a.limitMu.Lock()
	if next.PlaceRate != a.given.PlaceRate {
		a.placeLimit, a.placeRate = state.NewRateLimiter(next.PlaceRate, 2*next.PlaceRate, 4096), next.PlaceRate
	}
	if next.SpawnRate != a.given.SpawnRate {
		a.spawnLimit = state.NewRateLimiter(next.SpawnRate, 2*next.SpawnRate, 4096)
	}
	a.limitMu.Unlock()
	if slices.Contains(applied, "check") {
		a.reloadChecks(defs)
	}
	if kindsChanged {
		a.interps.SetKinds(kinds)
		a.kindsSum = kindsSum
	}

	a.given.LogLevel = next.LogLevel
	a.given.Tags = maps.Clone(next.Tags)
	a.given.EventHandlers, a.given.EventHandlerTimeout = next.EventHandlers, next.EventHandlerTimeout
	a.given.PlaceRate, a.given.SpawnRate = next.PlaceRate, next.SpawnRate
	a.given.Checks = next.Checks
	a.given.InterpretersFile = next.InterpretersFile
	return resp, nil
}

func orNone(v []string) string {
	if len(v) == 0 || len(v) == 1 && v[0] == "" {
		return "(none)"
	}
	return strings.Join(v, ",")
}

func mustLevel(s string) slog.Level {
	l, _ := ParseLevel(s)
	return l
}

// reloadTags makes tags the user's base tags (the changes made with agent
// tags still apply on top) and gossips them; on failure nothing changed.
func (a *Agent) reloadTags(tags map[string]string) error {
	critical := a.criticalChecks()
	a.tagsMu.Lock()
	defer a.tagsMu.Unlock()
	if a.leaving.Load() {
		return errors.New("this agent is leaving the mesh: its tags no longer change")
	}
	oldUser, oldBase, oldExtra := a.userTags, a.cfg.Tags, a.tags.extra
	a.userTags = maps.Clone(tags)
	a.cfg.Tags = withCheckTag(a.userTags, critical)
	a.tags.extra = a.tags.changes.apply(a.cfg.Tags)
	if err := a.node.SetTags(a.buildTagsLocked()); err != nil {
		a.userTags, a.cfg.Tags, a.tags.extra = oldUser, oldBase, oldExtra
		return fmt.Errorf("--tag: %w", err)
	}
	return nil
}

// reloadChecks replaces the runner. A check whose definition did not
// change keeps its status and counts, so a reload never resets a critical
// check to a fresh start, nor a passing one to critical.
func (a *Agent) reloadChecks(defs []checks.Definition) {
	next := a.newChecks(defs)
	a.checksMu.Lock()
	prev := a.checks.runner
	if next != nil && prev != nil {
		next.Carry(prev)
	}
	a.checks = healthChecks{runner: next, defs: defs}
	a.checksMu.Unlock()
	if prev != nil {
		prev.Stop()
	}
	var critical []string
	if next != nil {
		critical = next.Critical()
		next.Start()
	}
	a.publishChecks(critical)
}

// readKinds loads the interpreters file (without the built-in demo) and
// identifies its content, so that a reload applies the kinds only when
// the file changed; no file is no kinds and the zero sum.
func readKinds(path string) (map[string]interp.Kind, [32]byte, error) {
	if path == "" {
		return map[string]interp.Kind{}, [32]byte{}, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("interpreters file: %w", err)
	}
	kinds, err := interp.LoadKinds(path)
	if err != nil {
		return nil, [32]byte{}, err
	}
	return kinds, sha256.Sum256(bytes.TrimSpace(data)), nil
}

// allowPlace and allowSpawn take a token from the current limiters, which
// a reload replaces.
func (a *Agent) allowPlace(asker string) bool {
	a.limitMu.Lock()
	l := a.placeLimit
	a.limitMu.Unlock()
	return a.allow(l, asker)
}

func (a *Agent) allowSpawn(asker string) bool {
	a.limitMu.Lock()
	l := a.spawnLimit
	a.limitMu.Unlock()
	return a.allow(l, asker)
}

// currentPlaceRate is --place-rate-limit as last applied.
func (a *Agent) currentPlaceRate() float64 {
	a.limitMu.Lock()
	defer a.limitMu.Unlock()
	return a.placeRate
}

// currentHandlers are the event handlers and their timeout as last applied.
func (a *Agent) currentHandlers() ([]EventHandler, time.Duration) {
	a.handlersMu.Lock()
	defer a.handlersMu.Unlock()
	return a.handlers, a.handlerTimeout
}
