package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshagent/agent/gossip"

	"github.com/meshagent/agent/internal/procgroup"
)

// EventHandler runs an operator's script on the events its filter names,
// as serf's event handlers do: same filter syntax, same SERF_* variables,
// members (or the payload) on stdin.
type EventHandler struct {
	Filters []EventFilter
	Script  string
}

// EventFilter matches one kind of event; Name narrows user and query
// events to one name.
type EventFilter struct {
	Type string // "*", a member event type, "user" or "query"
	Name string
}

var memberEventTypes = map[string]bool{
	"member-join": true, "member-leave": true, "member-failed": true, "member-update": true, "member-reap": true,
}

func parseFilter(s string) (EventFilter, bool) {
	if s == "*" || memberEventTypes[s] || s == "user" || s == "query" {
		return EventFilter{Type: s}, true
	}
	for _, t := range []string{"user:", "query:"} {
		if name, ok := strings.CutPrefix(s, t); ok && name != "" {
			return EventFilter{Type: strings.TrimSuffix(t, ":"), Name: name}, true
		}
	}
	return EventFilter{}, false
}

// ParseEventHandler reads --event-handler: "[filter[,filter…]=]script".
// The part before the first '=' is a filter only when every comma-separated
// piece of it is one; otherwise the whole value is the script (which may
// then contain '=' freely) and the handler sees every event.
func ParseEventHandler(s string) (EventHandler, error) {
	if strings.TrimSpace(s) == "" {
		return EventHandler{}, errors.New("empty event handler: give a script, e.g. member-join=/usr/local/bin/on-join")
	}
	if head, script, ok := strings.Cut(s, "="); ok {
		if strings.TrimSpace(head) == "" {
			return EventHandler{}, fmt.Errorf("event handler %q starts with '=': put the filter before it, e.g. member-join=/usr/local/bin/on-join, or give the script alone", s)
		}
		var filters []EventFilter
		all := true
		for _, part := range strings.Split(head, ",") {
			f, ok := parseFilter(strings.TrimSpace(part))
			if !ok {
				all = false
				break
			}
			filters = append(filters, f)
		}
		if all {
			if strings.TrimSpace(script) == "" {
				return EventHandler{}, fmt.Errorf("event handler %q has a filter but no script", s)
			}
			return EventHandler{Filters: filters, Script: script}, nil
		}
		if !strings.ContainsAny(head, " /\t") && strings.Contains(head, "-") {
			return EventHandler{}, fmt.Errorf("event handler %q: %q is not an event filter: use member-join, member-leave, member-failed, member-update, member-reap, user[:NAME], query[:NAME] or *", s, head)
		}
	}
	return EventHandler{Filters: []EventFilter{{Type: "*"}}, Script: s}, nil
}

// Matches reports whether the handler wants the event.
func (h EventHandler) Matches(e gossip.Event) bool {
	for _, f := range h.Filters {
		switch {
		case f.Type == "*":
			return true
		case f.Type == string(e.Type) && (f.Name == "" || f.Name == e.Name):
			return true
		}
	}
	return false
}

// handlerQueue bounds the events waiting for handlers: a burst of member
// changes must not pile up forever behind a slow script.
const handlerQueue = 256

// runEventHandlers feeds events to the handlers, one at a time in order, as
// serf does, until the agent stops.
// The handlers are read at each event, so that a reload's take effect at
// the next one.
func (a *Agent) runEventHandlers(events <-chan gossip.Event) {
	for {
		select {
		case <-a.shutdownCh:
			return
		case e := <-events:
			handlers, timeout := a.currentHandlers()
			for _, h := range handlers {
				if h.Matches(e) {
					a.invokeHandler(h, e, timeout)
				}
			}
		}
	}
}

// invokeHandler runs one script for one event through the shell, with the
// event in its environment and on stdin, killing it (and what it started)
// after the handler timeout. A query's answer is the script's stdout.
func (a *Agent) invokeHandler(h EventHandler, e gossip.Event, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.Command("/bin/sh", "-c", h.Script)
	cmd.Env = append(os.Environ(), a.handlerEnv(e)...)
	cmd.Stdin = bytes.NewReader(handlerInput(e))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	killed, err := procgroup.Run(ctx, cmd)
	if killed {
		a.logger.Error("event handler timed out and was killed", "script", h.Script, "event", e.Type,
			"timeout", timeout)
		return
	}
	if cmd.Process == nil {
		a.logger.Error("event handler did not start", "script", h.Script, "event", e.Type, "err", err)
		return
	}
	if err != nil {
		a.logger.Warn("event handler failed", "script", h.Script, "event", e.Type, "err", err,
			"stderr", strings.TrimSpace(lastBytes(stderr.Bytes(), 512)))
	} else {
		a.logger.Debug("event handler ran", "script", h.Script, "event", e.Type, "took", time.Since(start))
	}
	if e.Query != nil && stdout.Len() > 0 {
		if rerr := e.Query.Respond(stdout.Bytes()); rerr != nil {
			a.logger.Warn("event handler's query answer not sent", "query", e.Name, "err", rerr)
		}
	}
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// handlerEnv describes the event in serf's variables.
func (a *Agent) handlerEnv(e gossip.Event) []string {
	env := []string{
		"SERF_EVENT=" + string(e.Type),
		"SERF_SELF_NAME=" + a.cfg.NodeName,
		"SERF_SELF_ROLE=" + string(a.cfg.Role),
	}
	tags := a.node.Tags()
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, "SERF_TAG_"+envName(k)+"="+tags[k])
	}
	switch e.Type {
	case gossip.EventUser:
		env = append(env, "SERF_USER_EVENT="+e.Name, "SERF_USER_LTIME="+strconv.FormatUint(e.LTime, 10))
	case gossip.EventQuery:
		env = append(env, "SERF_QUERY_NAME="+e.Name, "SERF_QUERY_LTIME="+strconv.FormatUint(e.LTime, 10))
	}
	return env
}

func envName(k string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(k) {
		if r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// handlerInput is the script's stdin: for member events one line per member,
// "name<TAB>address<TAB>role<TAB>k=v,k=v", as serf writes; for user events
// and queries the payload.
func handlerInput(e gossip.Event) []byte {
	if e.Type == gossip.EventUser || e.Type == gossip.EventQuery {
		return e.Payload
	}
	var b bytes.Buffer
	for _, m := range e.Members {
		keys := make([]string, 0, len(m.Tags))
		for k := range m.Tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		kv := make([]string, 0, len(keys))
		for _, k := range keys {
			kv = append(kv, gossip.OneLine(k)+"="+gossip.OneLine(m.Tags[k]))
		}
		// A foreign member's tags are unchecked: one member, one line.
		fmt.Fprintf(&b, "%s\t%s\t%s\t%s\n", gossip.OneLine(m.Name), m.Addr, gossip.OneLine(m.Tags[gossip.TagRole]), strings.Join(kv, ","))
	}
	return b.Bytes()
}
