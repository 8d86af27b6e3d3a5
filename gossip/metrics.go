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
// still a total. So the series serf names after user event and query
// names are folded before they reach the sink (foldSink): their number
// stays bounded whatever names the mesh uses.
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
		if _, err := metrics.NewGlobal(cfg, foldSink{globalSink}); err != nil {
			sinkErr = fmt.Errorf("gossip metrics: %w", err)
		}
	})
	return globalSink, sinkErr
}

// foldSink passes go-metrics' figures on, but for the series serf names
// after a user event or a query (serf.events.NAME, serf.queries.NAME): each
// new name was a new series, for ever, on every member that saw it (300
// names took an agent's /metrics from 105 series to 405). serf.events
// already counts every user event, so serf.events.NAME is dropped;
// serf.queries.NAME is counted in serf.queries, one series. memberlist names
// none of its series after anything a member chooses.
type foldSink struct{ sink metrics.MetricSink }

// fold is the key a figure goes to, and whether it goes anywhere.
func fold(key []string) ([]string, bool) {
	if len(key) == 3 && key[0] == "serf" {
		switch key[1] {
		case "events":
			return nil, false
		case "queries":
			return key[:2], true
		}
	}
	return key, true
}

func (f foldSink) SetGauge(key []string, val float32) {
	if k, ok := fold(key); ok {
		f.sink.SetGauge(k, val)
	}
}

func (f foldSink) SetGaugeWithLabels(key []string, val float32, labels []metrics.Label) {
	if k, ok := fold(key); ok {
		f.sink.SetGaugeWithLabels(k, val, labels)
	}
}

func (f foldSink) EmitKey(key []string, val float32) {
	if k, ok := fold(key); ok {
		f.sink.EmitKey(k, val)
	}
}

func (f foldSink) IncrCounter(key []string, val float32) {
	if k, ok := fold(key); ok {
		f.sink.IncrCounter(k, val)
	}
}

func (f foldSink) IncrCounterWithLabels(key []string, val float32, labels []metrics.Label) {
	if k, ok := fold(key); ok {
		f.sink.IncrCounterWithLabels(k, val, labels)
	}
}

func (f foldSink) AddSample(key []string, val float32) {
	if k, ok := fold(key); ok {
		f.sink.AddSample(k, val)
	}
}

func (f foldSink) AddSampleWithLabels(key []string, val float32, labels []metrics.Label) {
	if k, ok := fold(key); ok {
		f.sink.AddSampleWithLabels(k, val, labels)
	}
}
