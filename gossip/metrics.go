package gossip

import (
	"fmt"
	"sync"

	metrics "github.com/hashicorp/go-metrics"
	promsink "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	sinkOnce   sync.Once
	globalSink *promsink.PrometheusSink
	sinkErr    error
)

// EnableMetrics installs, once, the process-wide sink that serf and
// memberlist report to through go-metrics (probe times, gossip and
// push/pull counts and sizes, queue depths, member changes), and returns it
// as a Prometheus collector for the caller's registry. Every node of the
// process shares it. Figures never expire: a counter that stops moving is
// still a total.
func EnableMetrics() (prometheus.Collector, error) {
	sinkOnce.Do(func() {
		globalSink, sinkErr = promsink.NewPrometheusSinkFrom(promsink.PrometheusOpts{
			Name: "gossip_metrics_sink",
			// Registered by each caller in its own registry, not here.
			Registerer: prometheus.NewRegistry(),
		})
		if sinkErr != nil {
			sinkErr = fmt.Errorf("gossip metrics: %w", sinkErr)
			return
		}
		cfg := metrics.DefaultConfig("")
		cfg.EnableHostname = false
		cfg.EnableHostnameLabel = false
		cfg.EnableRuntimeMetrics = false // the Go collector reports those
		cfg.EnableServiceLabel = false
		cfg.ServiceName = ""
		if _, err := metrics.NewGlobal(cfg, globalSink); err != nil {
			sinkErr = fmt.Errorf("gossip metrics: %w", err)
		}
	})
	return globalSink, sinkErr
}
