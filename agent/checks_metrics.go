package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshagent/agent/agent/checks"
)

// checkCollector exports the health checks at each scrape:
// agent_check_status{check,status} is 1 for each check's current status
// (and 0 for the others, so that a dashboard can graph any of them),
// agent_checks_critical counts the critical ones, and
// agent_check_changes_total counts status changes;
// agent_interpreter_checks_critical counts the critical kind checks of
// the interpreters here (one series: per-interpreter series would grow
// with every spawn).
type checkCollector struct {
	a        *Agent
	status   *prometheus.Desc
	critical *prometheus.Desc
	changes  *prometheus.Desc
	interp   *prometheus.Desc
}

func newCheckCollector(a *Agent) *checkCollector {
	return &checkCollector{a: a,
		status: prometheus.NewDesc("agent_check_status", "1 for each health check's current status (passing, warning, critical).",
			[]string{"check", "status"}, nil),
		critical: prometheus.NewDesc("agent_checks_critical", "Health checks of this server that are critical; "+
			"while any is, the server takes no new interpreters.", nil, nil),
		changes: prometheus.NewDesc("agent_check_changes_total", "Status changes of this server's health checks.", nil, nil),
		interp: prometheus.NewDesc("agent_interpreter_checks_critical", "Kind checks of the interpreters on this server "+
			"that are critical.", nil, nil),
	}
}

func (c *checkCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.status
	ch <- c.critical
	ch <- c.changes
	ch <- c.interp
}

func (c *checkCollector) Collect(ch chan<- prometheus.Metric) {
	critical := 0
	for _, v := range c.a.checkViews() {
		for _, s := range []checks.Status{checks.Passing, checks.Warning, checks.Critical} {
			value := 0.0
			if v.Status == s {
				value = 1
			}
			ch <- prometheus.MustNewConstMetric(c.status, prometheus.GaugeValue, value, v.Name, string(s))
		}
		if v.Status == checks.Critical {
			critical++
		}
	}
	ch <- prometheus.MustNewConstMetric(c.critical, prometheus.GaugeValue, float64(critical))
	ch <- prometheus.MustNewConstMetric(c.changes, prometheus.CounterValue, float64(c.a.checkChanges.Load()))
	critical = 0
	for _, v := range c.a.interps.KindCheckViews() {
		if v.Status == checks.Critical {
			critical++
		}
	}
	ch <- prometheus.MustNewConstMetric(c.interp, prometheus.GaugeValue, float64(critical))
}

// registerCheckMetrics adds the checks' series to the agent's registry.
func (a *Agent) registerCheckMetrics() error {
	return a.metrics.registry.Register(newCheckCollector(a))
}
