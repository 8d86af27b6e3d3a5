package agent

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshagent/agent/gossip"
)

// counterVec is a Prometheus counter with one label. Safe for concurrent use.
type counterVec struct {
	name, help, label string
	mu                sync.Mutex
	m                 map[string]uint64
}

func newCounterVec(name, help, label string) *counterVec {
	return &counterVec{name: name, help: help, label: label, m: map[string]uint64{}}
}

func (c *counterVec) inc(value string) {
	c.mu.Lock()
	c.m[value]++
	c.mu.Unlock()
}

func (c *counterVec) write(w io.Writer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", c.name, c.help, c.name)
	keys := make([]string, 0, len(c.m))
	for k := range c.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s{%s=%q} %d\n", c.name, c.label, k, c.m[k])
	}
}

// histogram is a Prometheus histogram of seconds. Safe for concurrent use.
type histogram struct {
	name, help string
	bounds     []float64
	mu         sync.Mutex
	counts     []uint64 // per bound, not cumulative; the last is +Inf
	sum        float64
	count      uint64
}

func newHistogram(name, help string, bounds ...float64) *histogram {
	return &histogram{name: name, help: help, bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (h *histogram) observe(d time.Duration) {
	v := d.Seconds()
	h.mu.Lock()
	defer h.mu.Unlock()
	i := sort.SearchFloat64s(h.bounds, v)
	h.counts[i]++
	h.sum += v
	h.count++
}

func (h *histogram) write(w io.Writer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", h.name, h.help, h.name)
	var cum uint64
	for i, b := range h.bounds {
		cum += h.counts[i]
		fmt.Fprintf(w, "%s_bucket{le=\"%g\"} %d\n", h.name, b, cum)
	}
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n%s_sum %g\n%s_count %d\n", h.name, h.count, h.name, h.sum, h.name, h.count)
}

// agentMetrics are the agent's own figures, next to serf's and memberlist's.
type agentMetrics struct {
	placements   *counterVec
	spawns       *counterVec
	spawnLatency *histogram
	placeLatency *histogram
	bidsRefused  *counterVec
	rpcRequests  *counterVec
	httpRequests *counterVec
	// interpreterEvents counts the lifecycle's events: started, exited,
	// restart, gave-up, replaced, duplicate.
	interpreterEvents *counterVec
}

func newAgentMetrics() *agentMetrics {
	return &agentMetrics{
		placements:   newCounterVec("agent_placements_total", "Elections this agent ran as the asker, by outcome.", "outcome"),
		spawns:       newCounterVec("agent_spawns_total", "Spawn requests this agent handled as the asker, by outcome.", "outcome"),
		spawnLatency: newHistogram("agent_spawn_seconds", "Time from a spawn request to its answer (to alive, with --wait).", 0.1, 0.25, 0.5, 1, 1.5, 2.5, 5, 10, 30),
		placeLatency: newHistogram("agent_place_seconds", "Time to collect bids and elect.", 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2),
		bidsRefused:  newCounterVec("agent_bids_refused_total", "Place queries this server answered with a refusal, by reason.", "reason"),
		rpcRequests:  newCounterVec("agent_rpc_requests_total", "RPC requests served, by command.", "command"),
		httpRequests: newCounterVec("agent_http_requests_total", "HTTP requests served, by path.", "path"),
		interpreterEvents: newCounterVec("agent_interpreter_events_total",
			"Interpreter lifecycle events this agent saw or caused, by type (started, exited, restart, gave-up, replaced, duplicate).", "type"),
	}
}

// refusalReason turns a refusal sentence into a short metric label.
func refusalReason(refusal string) string {
	for _, r := range []string{"rate limited", "at capacity", "at the limit", "shutting down", "not offered", "cannot decode"} {
		if strings.HasPrefix(refusal, r) || strings.Contains(refusal, r) {
			return strings.ReplaceAll(r, " ", "_")
		}
	}
	return "other"
}

func (a *Agent) httpMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	m := a.metrics
	m.placements.write(w)
	m.spawns.write(w)
	m.spawnLatency.write(w)
	m.placeLatency.write(w)
	m.bidsRefused.write(w)
	m.rpcRequests.write(w)
	m.httpRequests.write(w)
	m.interpreterEvents.write(w)
	fmt.Fprintf(w, "# HELP agent_tag_updates_total Load publications to this agent's tags.\n# TYPE agent_tag_updates_total counter\nagent_tag_updates_total %d\n", a.loadUpdates())
	fmt.Fprintf(w, "# HELP agent_interpreters Interpreters this server runs.\n# TYPE agent_interpreters gauge\nagent_interpreters %d\n", a.runningInterpreters())
	counts := map[gossip.Status]int{}
	for _, mem := range a.node.Members() {
		counts[mem.Status]++
	}
	fmt.Fprintf(w, "# HELP agent_members Members this agent sees, by status.\n# TYPE agent_members gauge\n")
	for _, s := range []gossip.Status{gossip.StatusAlive, gossip.StatusLeaving, gossip.StatusLeft, gossip.StatusFailed} {
		fmt.Fprintf(w, "agent_members{status=%q} %d\n", s, counts[s])
	}
	if a.gossipMetrics != nil {
		a.gossipMetrics.WritePrometheus(w, "")
	}
}
