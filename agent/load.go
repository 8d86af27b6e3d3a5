package agent

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/mem"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/state"
)

// LoadSource produces one CPU and memory sample, in percent. since is the
// time since the agent started, for sources that follow a script. It is
// called from one goroutine only.
type LoadSource interface {
	Sample(since time.Duration) (cpuPct, memPct float64, err error)
	String() string
}

// ParseLoadSource reads --load-source:
//
//	host                          this machine, through gopsutil
//	fixed:cpu=40,mem=30           a constant load (tests, demos)
//	script:0s=10/20,30s=80/50     cpu/mem from each offset since start on
func ParseLoadSource(s string) (LoadSource, error) {
	kind, arg, _ := strings.Cut(s, ":")
	switch kind {
	case "host":
		if arg != "" {
			return nil, fmt.Errorf("load source %q: host takes no argument", s)
		}
		return &hostLoad{}, nil
	case "fixed":
		l, err := parseFixed(arg)
		if err != nil {
			return nil, fmt.Errorf("load source %q: %w; write it like fixed:cpu=40,mem=30", s, err)
		}
		return l, nil
	case "script":
		l, err := parseScript(arg)
		if err != nil {
			return nil, fmt.Errorf("load source %q: %w; write it like script:0s=10/20,30s=80/50", s, err)
		}
		return l, nil
	}
	return nil, fmt.Errorf("load source %q is not known: use host, fixed:cpu=40,mem=30 or script:0s=10/20,30s=80/50", s)
}

func parsePct(what, v string) (float64, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 100 {
		return 0, fmt.Errorf("%s %q is not a percentage from 0 to 100", what, v)
	}
	return f, nil
}

// hostLoad samples this machine. CPU is the busy share since the previous
// sample, across all cores; memory is the used share of physical memory.
type hostLoad struct{ primed bool }

func (h *hostLoad) Sample(time.Duration) (float64, float64, error) {
	// The first reading measures over a short interval of its own; later
	// ones measure since the previous reading, a second before.
	interval := time.Duration(0)
	if !h.primed {
		interval = firstCPUInterval
		h.primed = true
	}
	c, err := cpu.Percent(interval, false)
	if err != nil {
		return 0, 0, fmt.Errorf("read cpu: %w", err)
	}
	if len(c) == 0 {
		return 0, 0, errors.New("read cpu: no value")
	}
	vm, err := mem.VirtualMemory()
	if err != nil {
		return 0, 0, fmt.Errorf("read memory: %w", err)
	}
	return c[0], vm.UsedPercent, nil
}

func (h *hostLoad) String() string { return "host" }

type fixedLoad struct{ cpu, mem float64 }

func parseFixed(arg string) (*fixedLoad, error) {
	l := &fixedLoad{}
	seen := map[string]bool{}
	for _, kv := range strings.Split(arg, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		f, err := parsePct(k, v)
		if err != nil {
			return nil, err
		}
		switch k {
		case "cpu":
			l.cpu = f
		case "mem":
			l.mem = f
		default:
			return nil, fmt.Errorf("unknown key %q (use cpu and mem)", k)
		}
		seen[k] = true
	}
	if !seen["cpu"] || !seen["mem"] {
		return nil, errors.New("give both cpu and mem")
	}
	return l, nil
}

func (l *fixedLoad) Sample(time.Duration) (float64, float64, error) { return l.cpu, l.mem, nil }
func (l *fixedLoad) String() string {
	return fmt.Sprintf("fixed:cpu=%g,mem=%g", l.cpu, l.mem)
}

// scriptLoad follows a schedule: each step holds from its offset until the
// next step's.
type scriptLoad struct {
	steps []scriptStep
}

type scriptStep struct {
	at       time.Duration
	cpu, mem float64
}

func parseScript(arg string) (*scriptLoad, error) {
	l := &scriptLoad{}
	for _, part := range strings.Split(arg, ",") {
		at, vals, ok := strings.Cut(part, "=")
		c, m, ok2 := strings.Cut(vals, "/")
		if !ok || !ok2 {
			return nil, fmt.Errorf("step %q is not OFFSET=CPU/MEM", part)
		}
		d, err := time.ParseDuration(at)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("step %q: offset %q is not a duration like 30s", part, at)
		}
		cpuPct, err := parsePct("cpu", c)
		if err != nil {
			return nil, err
		}
		memPct, err := parsePct("mem", m)
		if err != nil {
			return nil, err
		}
		l.steps = append(l.steps, scriptStep{at: d, cpu: cpuPct, mem: memPct})
	}
	sort.SliceStable(l.steps, func(i, j int) bool { return l.steps[i].at < l.steps[j].at })
	if l.steps[0].at != 0 {
		return nil, errors.New("the first step must start at 0s")
	}
	return l, nil
}

func (l *scriptLoad) Sample(since time.Duration) (float64, float64, error) {
	cur := l.steps[0]
	for _, s := range l.steps {
		if s.at <= since {
			cur = s
		}
	}
	return cur.cpu, cur.mem, nil
}

func (l *scriptLoad) String() string {
	parts := make([]string, 0, len(l.steps))
	for _, s := range l.steps {
		parts = append(parts, fmt.Sprintf("%s=%g/%g", s.at, s.cpu, s.mem))
	}
	return "script:" + strings.Join(parts, ",")
}

// sampleInterval is how often a server samples its load; the first sample
// is taken at start, so a server can bid at once.
const sampleInterval = time.Second

// firstCPUInterval is what the first CPU reading measures over.
const firstCPUInterval = 200 * time.Millisecond

// runLoad samples the load every second, averages it, and publishes the
// averages in the tags when the publish policy says they are worth it.
func (a *Agent) runLoad(src LoadSource, started time.Time) {
	avg, err := state.NewAverager(a.cfg.LoadWindow)
	if err != nil {
		a.logger.Error("load telemetry disabled", "err", err)
		return
	}
	failing := a.sampleLoad(src, avg, started, false)
	a.samples.Add(1)
	for {
		select {
		case <-a.shutdownCh:
			return
		case <-a.clock.After(sampleInterval):
		}
		failing = a.sampleLoad(src, avg, started, failing)
		a.samples.Add(1)
	}
}

// sampleLoad takes one sample and reports whether sampling is failing.
func (a *Agent) sampleLoad(src LoadSource, avg *state.Averager, started time.Time, failing bool) bool {
	now := a.clock.Now()
	cpuPct, memPct, err := src.Sample(now.Sub(started))
	if err == nil {
		err = avg.Add(state.Sample{At: now, CPU: cpuPct, Mem: memPct})
	}
	if err != nil {
		if !failing {
			a.logger.Warn("load sample failed; this server bids as unhealthy until sampling works", "source", src.String(), "err", err)
		}
		a.setLoadHealthy(false)
		return true
	}
	if failing {
		a.logger.Info("load sampling works again", "source", src.String())
	}
	l, _ := avg.Load()
	a.setLoadHealthy(true)
	a.observeLoad(gossip.Load{CPU: l.CPU, Mem: l.Mem}, now)
	return false
}
