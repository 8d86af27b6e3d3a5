package interp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshagent/agent/agent/checks"
)

// This file is the kinds' health checks. A kind may list checks (script,
// http or tcp, with the hysteresis of agent/checks) that each of its
// interpreters' supervisors runs: the supervisor outlives its agent, owns
// the child and restarts it in place, so a hung kernel is restarted even
// while its agent is down, through the same restart as `agent restart`.
// The supervisor publishes the critical checks in its member's hc tag and
// writes every check's status to checks.json beside its spec, where its
// server reads them for `agent checks` and /v1/checks.

// KindCheck is one check of a kind, as a template: {addr}, {port},
// {port:NAME}, {name} and {connection_file} in its targets are the
// interpreter's, filled in at each start.
type KindCheck struct {
	Name     string
	template string // the check's JSON, with the defaults filled in
}

// kindChecksFile, in an interpreter's directory, holds its checks' views.
const kindChecksFile = "checks.json"

// parseKindChecks checks a kind's checks with sample values for the
// placeholders: an unknown type, a zero interval, a script that does not
// exist and a placeholder the kind cannot fill are refused, naming the
// check. A tcp check without a target probes the interpreter's endpoint.
func parseKindChecks(k Kind, raws []json.RawMessage) ([]KindCheck, error) {
	var out []KindCheck
	var samples []string
	for _, raw := range raws {
		var fields map[string]any
		if err := json.Unmarshal(raw, &fields); err != nil {
			return nil, fmt.Errorf("%w %s: a check is a JSON object with name, type (script, http or tcp), interval and its target",
				checks.ErrBadCheck, raw)
		}
		name, _ := fields["name"].(string)
		if fields["type"] == string(checks.TTL) {
			return nil, fmt.Errorf("%w %q: a kind's check is script, http or tcp; nothing reports to an interpreter's ttl check",
				checks.ErrBadCheck, name)
		}
		if fields["type"] == string(checks.TCP) && fields["tcp"] == nil {
			fields["tcp"] = "{addr}"
		}
		data, err := json.Marshal(fields)
		if err != nil {
			return nil, err
		}
		template := string(data)
		for _, m := range portPlaceholder.FindAllStringSubmatch(template, -1) {
			if !slices.Contains(k.Ports, m[1]) {
				return nil, fmt.Errorf("%w %q names {port:%s}, but the kind has no port %q: add it to \"ports\"", checks.ErrBadCheck, name, m[1], m[1])
			}
		}
		if strings.Contains(template, "{connection_file}") && k.Connection == "" {
			return nil, fmt.Errorf("%w %q names {connection_file}, but the kind writes none: add \"connection\": %q",
				checks.ErrBadCheck, name, ConnectionJupyter)
		}
		ports := map[string]string{}
		for _, p := range k.Ports {
			ports[p] = "1"
		}
		samples = append(samples, render(template, "x", "127.0.0.1:1", "1", ports, "/dev/null"))
		out = append(out, KindCheck{Name: name, template: template})
	}
	if _, err := checks.ParseAll(samples); err != nil {
		return nil, err
	}
	return out, nil
}

// render fills a check's placeholders, each value escaped for the JSON
// string it lands in.
func render(template, name, addr, port string, ports map[string]string, connFile string) string {
	pairs := []string{"{name}", name, "{addr}", addr, "{port}", port, "{connection_file}", connFile}
	for n, p := range ports {
		pairs = append(pairs, "{port:"+n+"}", p)
	}
	for i := 1; i < len(pairs); i += 2 {
		q, _ := json.Marshal(pairs[i])
		pairs[i] = string(q[1 : len(q)-1])
	}
	return strings.NewReplacer(pairs...).Replace(template)
}

// checksFor renders the kind's checks for the interpreter spec describes
// (its name, endpoint, named ports and connection file).
func (k Kind) checksFor(spec Spec) []json.RawMessage {
	if len(k.Checks) == 0 {
		return nil
	}
	port := spec.Endpoint[strings.LastIndexByte(spec.Endpoint, ':')+1:]
	ports := map[string]string{}
	for _, p := range k.Ports {
		prefix := "AGENT_INTERPRETER_PORT_" + strings.ToUpper(p) + "="
		for _, e := range spec.Env {
			if v, ok := strings.CutPrefix(e, prefix); ok {
				ports[p] = v
			}
		}
	}
	out := make([]json.RawMessage, 0, len(k.Checks))
	for _, c := range k.Checks {
		out = append(out, json.RawMessage(render(c.template, spec.Name, spec.Endpoint, port, ports, spec.ConnectionFile)))
	}
	return out
}

// checkEpisodes tells when a check begins a critical episode: it became
// critical after it was passing or warning. A check that was never
// passing (critical until its first result, or an interpreter that does
// not come up) begins none, and a check stays in its episode until it
// passes again, so one episode restarts an interpreter once.
type checkEpisodes struct{ critical map[string]bool }

func newCheckEpisodes(critical []string) checkEpisodes {
	e := checkEpisodes{critical: map[string]bool{}}
	for _, c := range critical {
		e.critical[c] = true
	}
	return e
}

// next takes the critical checks now and returns those that just began
// an episode.
func (e *checkEpisodes) next(critical []string) []string {
	var began []string
	now := map[string]bool{}
	for _, c := range critical {
		now[c] = true
		if !e.critical[c] {
			began = append(began, c)
		}
	}
	e.critical = now
	sort.Strings(began)
	return began
}

// wallClock is the supervisor's clock for its checks.
type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// supervisorChecks are one supervisor's running checks.
type supervisorChecks struct {
	runner   *checks.Runner
	changes  chan []string // the latest critical list not yet taken by the loop
	episodes checkEpisodes
	file     string
	writeMu  sync.Mutex
}

// newSupervisorChecks parses spec's checks and prepares their runner.
func newSupervisorChecks(spec Spec, clock checks.Clock, prober checks.Prober) (*supervisorChecks, error) {
	if len(spec.Checks) == 0 {
		return nil, nil
	}
	raws := make([]string, len(spec.Checks))
	for i, r := range spec.Checks {
		raws[i] = string(r)
	}
	defs, err := checks.ParseAll(raws)
	if err != nil {
		return nil, err
	}
	c := &supervisorChecks{changes: make(chan []string, 1), file: filepath.Join(filepath.Dir(spec.OutputLog), kindChecksFile)}
	c.runner = checks.NewRunner(defs, clock, prober, func(critical []string) {
		// The loop wants the latest list; an older one it did not take yet
		// is dropped.
		for {
			select {
			case c.changes <- critical:
				return
			default:
			}
			select {
			case <-c.changes:
			default:
			}
		}
	})
	c.episodes = newCheckEpisodes(c.runner.Critical())
	return c, nil
}

// write saves the checks' views for the interpreter's server. Called
// after each result, from the runner's goroutines.
func (c *supervisorChecks) write() {
	data, err := json.Marshal(c.runner.Views())
	if err != nil {
		return
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	tmp := c.file + ".tmp"
	if os.WriteFile(tmp, data, 0o600) == nil {
		os.Rename(tmp, c.file)
	}
}

// startChecks runs the spec's checks, if any; critical checks show in the
// member's hc tag from the start (a check is critical until its first
// result).
func (s *supervisor) startChecks() {
	if s.checks == nil {
		return
	}
	s.checks.runner.OnResult(s.checks.write)
	s.checks.write()
	s.checks.runner.Start()
}

// checkChanges delivers the critical checks at each status change; nil
// (never) without checks.
func (s *supervisor) checkChanges() <-chan []string {
	if s.checks == nil {
		return nil
	}
	return s.checks.changes
}

// checksChanged publishes the critical checks and, when one began a
// critical episode, restarts the interpreter in place under the on-failure
// policy, counted by its restart tracker. Loop goroutine only.
func (s *supervisor) checksChanged(critical []string) {
	began := s.checks.episodes.next(critical)
	s.tags.Critical = checks.TagValue(critical, checks.MaxTag)
	if err := s.node.SetTags(s.tags.Map()); err != nil {
		s.logger.Warn("the checks' status not published", "err", err)
	}
	if len(critical) == 0 {
		s.logger.Info("interpreter checks passing")
		return
	}
	if len(began) == 0 {
		return
	}
	switch {
	case s.spec.Restart != RestartOnFailure:
		s.logger.Warn("interpreter-check-critical: its restart policy is no, so it is only reported", "checks", strings.Join(began, ","))
	case s.state != stateRunning:
		s.logger.Warn("interpreter-check-critical: not running now, nothing to restart", "checks", strings.Join(began, ","),
			"state", s.state)
	default:
		if _, ok := s.tracker.Next(time.Now()); !ok {
			b := s.spec.backoff()
			s.logger.Error("interpreter-check-critical: it was restarted too often, not restarting it again", "checks",
				strings.Join(began, ","), "attempts", b.Attempts, "window", b.Window)
			return
		}
		s.logger.Warn("interpreter-check-critical: restarting it in place", "checks", strings.Join(began, ","))
		if ans := s.restartInPlace(); !ans.Delivered {
			s.logger.Error("restart for a critical check failed", "reason", ans.Reason)
		}
	}
}

// stopChecks ends the checks' loops.
func (s *supervisor) stopChecks() {
	if s.checks != nil {
		s.checks.runner.Stop()
	}
}

// KindCheckViews lists the kind checks of this server's interpreters, as
// their supervisors last wrote them, by interpreter name. Safe for
// concurrent use.
func (l *Lifecycle) KindCheckViews() []checks.View {
	l.regMu.Lock()
	list := l.registry.List()
	l.regMu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	var out []checks.View
	for _, i := range list {
		data, err := os.ReadFile(filepath.Join(filepath.Dir(i.Spec), kindChecksFile))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		var views []checks.View
		if err != nil || json.Unmarshal(bytes.TrimSpace(data), &views) != nil {
			continue
		}
		for _, v := range views {
			v.Interpreter = i.Name
			out = append(out, v)
		}
	}
	return out
}
