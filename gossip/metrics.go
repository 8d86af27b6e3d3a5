package gossip

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"

	metrics "github.com/hashicorp/go-metrics"
)

// MetricsSink collects what serf and memberlist report through go-metrics
// (probe times, gossip and push/pull counts, queue depths, member changes)
// in Prometheus terms: counters keep running totals, samples become
// summaries (count and sum), gauges keep their last value. Safe for
// concurrent use.
type MetricsSink struct {
	mu       sync.Mutex
	gauges   map[string]float64
	counters map[string]float64
	samples  map[string]*summary
}

type summary struct{ count, sum float64 }

var (
	sinkOnce   sync.Once
	globalSink *MetricsSink
)

// EnableMetrics installs the process-wide sink serf and memberlist report
// to, once, and returns it. Every node of the process shares it.
func EnableMetrics() *MetricsSink {
	sinkOnce.Do(func() {
		globalSink = &MetricsSink{gauges: map[string]float64{}, counters: map[string]float64{}, samples: map[string]*summary{}}
		cfg := metrics.DefaultConfig("")
		cfg.EnableHostname = false
		cfg.EnableHostnameLabel = false
		cfg.EnableRuntimeMetrics = false
		cfg.EnableServiceLabel = false
		cfg.ServiceName = ""
		metrics.NewGlobal(cfg, globalSink)
	})
	return globalSink
}

// metricKey renders a go-metrics key and labels as a Prometheus series.
func metricKey(key []string, labels []metrics.Label) string {
	name := promName(strings.Join(key, "_"))
	if len(labels) == 0 {
		return name
	}
	parts := make([]string, 0, len(labels))
	for _, l := range labels {
		parts = append(parts, fmt.Sprintf("%s=%q", promName(l.Name), l.Value))
	}
	sort.Strings(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

func promName(s string) string {
	var b strings.Builder
	for i, r := range s {
		ok := r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9'
		if ok {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// The go-metrics sink interface.

func (s *MetricsSink) SetGauge(key []string, val float32) { s.SetGaugeWithLabels(key, val, nil) }
func (s *MetricsSink) SetGaugeWithLabels(key []string, val float32, labels []metrics.Label) {
	s.mu.Lock()
	s.gauges[metricKey(key, labels)] = float64(val)
	s.mu.Unlock()
}
func (s *MetricsSink) SetPrecisionGauge(key []string, val float64) {
	s.SetPrecisionGaugeWithLabels(key, val, nil)
}
func (s *MetricsSink) SetPrecisionGaugeWithLabels(key []string, val float64, labels []metrics.Label) {
	s.mu.Lock()
	s.gauges[metricKey(key, labels)] = val
	s.mu.Unlock()
}
func (s *MetricsSink) EmitKey(key []string, val float32)     {}
func (s *MetricsSink) IncrCounter(key []string, val float32) { s.IncrCounterWithLabels(key, val, nil) }
func (s *MetricsSink) IncrCounterWithLabels(key []string, val float32, labels []metrics.Label) {
	s.mu.Lock()
	s.counters[metricKey(key, labels)] += float64(val)
	s.mu.Unlock()
}
func (s *MetricsSink) AddSample(key []string, val float32) { s.AddSampleWithLabels(key, val, nil) }
func (s *MetricsSink) AddSampleWithLabels(key []string, val float32, labels []metrics.Label) {
	s.mu.Lock()
	k := metricKey(key, labels)
	sm := s.samples[k]
	if sm == nil {
		sm = &summary{}
		s.samples[k] = sm
	}
	sm.count++
	sm.sum += float64(val)
	s.mu.Unlock()
}

// WritePrometheus writes every series in Prometheus text format, names
// prefixed with prefix (e.g. "agent_").
func (s *MetricsSink) WritePrometheus(w io.Writer, prefix string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	typed := func(kind string, m map[string]float64) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		declared := map[string]bool{}
		for _, k := range keys {
			name, _, _ := strings.Cut(k, "{")
			if !declared[name] {
				fmt.Fprintf(w, "# TYPE %s%s %s\n", prefix, name, kind)
				declared[name] = true
			}
			fmt.Fprintf(w, "%s%s %s\n", prefix, k, formatFloat(m[k]))
		}
	}
	typed("gauge", s.gauges)
	counters := make(map[string]float64, len(s.counters))
	for k, v := range s.counters {
		name, labels, _ := strings.Cut(k, "{")
		if labels != "" {
			labels = "{" + labels
		}
		counters[name+"_total"+labels] = v
	}
	typed("counter", counters)
	keys := make([]string, 0, len(s.samples))
	for k := range s.samples {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	declared := map[string]bool{}
	for _, k := range keys {
		name, labels, _ := strings.Cut(k, "{")
		if labels != "" {
			labels = "{" + labels
		}
		if !declared[name] {
			fmt.Fprintf(w, "# TYPE %s%s summary\n", prefix, name)
			declared[name] = true
		}
		fmt.Fprintf(w, "%s%s_count%s %s\n", prefix, name, labels, formatFloat(s.samples[k].count))
		fmt.Fprintf(w, "%s%s_sum%s %s\n", prefix, name, labels, formatFloat(s.samples[k].sum))
	}
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return fmt.Sprintf("%g", v)
}
