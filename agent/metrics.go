package agent

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshagent/agent/gossip"
)

// agentMetrics are the agent's own figures, next to serf's and memberlist's.
type agentMetrics struct {
	registry     *prometheus.Registry
	handler      http.Handler // /metrics
	placements   *prometheus.CounterVec
	spawns       *prometheus.CounterVec
	spawnLatency prometheus.Histogram
	placeLatency prometheus.Histogram
	bidsRefused  *prometheus.CounterVec
	rpcRequests  *prometheus.CounterVec
	httpRequests *prometheus.CounterVec
	// interpreterEvents counts the lifecycle's events by type: started,
	// exited, stopped, restart, gave-up, replaced, duplicate, reaped.
	interpreterEvents *prometheus.CounterVec
}

// newAgentMetrics builds the agent's registry: its own series, Go's and
// the process's (the collectors every Prometheus dashboard expects), and,
// once the node starts, serf's and memberlist's through go-metrics.
func newAgentMetrics() *agentMetrics {
	counter := func(name, help, label string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
	}
	m := &agentMetrics{
		registry:   prometheus.NewRegistry(),
		placements: counter("agent_placements_total", "Elections this agent ran as the asker, by outcome.", "outcome"),
		spawns:     counter("agent_spawns_total", "Spawn requests this agent handled as the asker, by outcome.", "outcome"),
		spawnLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "agent_spawn_seconds",
			Help:    "Time from a spawn request to its answer (to alive, with --wait).",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 1.5, 2.5, 5, 10, 30}}),
		placeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "agent_place_seconds",
			Help: "Time to collect bids and elect.", Buckets: []float64{0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2}}),
		bidsRefused:  counter("agent_bids_refused_total", "Place queries this server answered with a refusal, by reason.", "reason"),
		rpcRequests:  counter("agent_rpc_requests_total", "RPC requests served, by command.", "command"),
		httpRequests: counter("agent_http_requests_total", "HTTP requests served, by path.", "path"),
		interpreterEvents: counter("agent_interpreter_events_total", "Interpreter lifecycle events this agent saw or caused, "+
			"by type (started, exited, stopped, restart, gave-up, replaced, duplicate, reaped).", "type"),
	}
	m.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.placements, m.spawns, m.spawnLatency, m.placeLatency, m.bidsRefused, m.rpcRequests, m.httpRequests, m.interpreterEvents)
	// Every event type is a series from the start, at 0, so that a rate
	// over it works before the first event.
	for _, t := range []string{"started", "exited", "stopped", "restart", "gave-up", "replaced", "duplicate", "reaped"} {
		m.interpreterEvents.WithLabelValues(t)
	}
	m.handler = promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
	return m
}

// register adds the agent's gauges, read at each scrape, and serf's and
// memberlist's figures.
func (a *Agent) registerMetrics(gossipMetrics prometheus.Collector) error {
	gauge := func(name, help string, value func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, value)
	}
	members := prometheus.NewDesc("agent_members", "Members this agent sees, by status.", []string{"status"}, nil)
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "agent_tag_updates_total", Help: "Load publications to this agent's tags."},
			func() float64 { return float64(a.loadUpdates()) }),
		gauge("agent_interpreters", "Interpreters this server runs.", func() float64 { return float64(a.runningInterpreters()) }),
		gauge("agent_draining", "1 while this server is draining.", func() float64 {
			if a.draining() {
				return 1
			}
			return 0
		}),
		gauge("agent_health_score", "memberlist's health score (Lifeguard local awareness): 0 is healthy; "+
			"from 4 the node counts itself unheard and holds its load updates.", func() float64 { return float64(a.node.HealthScore()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "agent_heal_pings_total",
			Help: "Pings the heal prober sent to failed members."}, func() float64 { return float64(a.node.HealStats().Pings) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "agent_heal_answers_total",
			Help: "Heal prober pings a failed member answered."}, func() float64 { return float64(a.node.HealStats().Answers) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "agent_heal_joins_total",
			Help: "Push/pulls the heal prober started on an answer."}, func() float64 { return float64(a.node.HealStats().Joins) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "agent_heal_renewals_total",
			Help: "Incarnations this node renewed on seeing a split, so that the other side's death verdicts are stale at the heal."},
			func() float64 { return float64(a.node.HealStats().Renewals) }),
		collectorFunc{desc: members, collect: func(ch chan<- prometheus.Metric) {
			counts := map[gossip.Status]int{}
			for _, mem := range a.node.Members() {
				counts[mem.Status]++
			}
			for _, s := range []gossip.Status{gossip.StatusAlive, gossip.StatusLeaving, gossip.StatusLeft, gossip.StatusFailed} {
				ch <- prometheus.MustNewConstMetric(members, prometheus.GaugeValue, float64(counts[s]), string(s))
			}
		}},
		gossipMetrics,
	} {
		if err := a.metrics.registry.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// collectorFunc is a collector of one family computed at each scrape.
type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

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
	a.metrics.handler.ServeHTTP(w, r)
}
