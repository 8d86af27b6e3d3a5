package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/chaos"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/simulation"
)

func simulateCommand() *ucli.Command {
	var scenarios strings.Builder
	for _, s := range simulation.Scenarios() {
		fmt.Fprintf(&scenarios, "  %-11s %s\n", s, simulation.ScenarioSummary(s))
	}
	fmt.Fprintf(&scenarios, "  %-11s %s\n", scenarioChaos, "whole agents (5 to 9, by the seed) under a seeded random schedule of partitions, crashes, "+
		"pauses, loss, drains and restarts, with client spawns, stops and signals; every run checked against the rules for "+
		"interpreters under faults (--seeds, --duration, --faults)")
	return &ucli.Command{
		Name:  "simulate",
		Usage: "run N real gossip nodes in one process over a simulated network with faults, next to a heartbeat baseline",
		Description: "Every node is a real memberlist and serf. By default (--time virtual) the run's clock is virtual: it\n" +
			"stands still while any node works and jumps to the next timer once all of them wait (Go's testing/synctest, in a\n" +
			"child process of this command). No timer is ever late, whatever the mesh's size, and a run costs its CPU only:\n" +
			"on two cores, a second at 20 nodes, 10 to 30 s at 300, 3 to 4 minutes and 3.6 GB for a crash at 1,000, 8 to 12\n" +
			"minutes and 3.7 GB for a partition at 1,000 (by the host: docs/scale.md), 23 minutes and 6.3 to 7.4 GB for a crash at\n" +
			"2,000. --time real runs on the machine's clock instead, as a deployment does; past 100 nodes it dilates time\n" +
			"(--dilation): every timer and link delay lasts D times longer so that two cores keep up, and the report gives\n" +
			"protocol time. The same seed replays the same faults.\n\n" +
			"Scenarios:\n" + scenarios.String() +
			"\nExamples:\n" +
			"  agent simulate --nodes 100 --scenario partition --svg timeline.svg\n" +
			"  agent simulate --nodes 100 --scenario loss --loss 0.15 --format json --out report.json\n" +
			"  agent simulate --nodes 1000 --scenario crash --seed 1       # about 3.5 minutes on two cores",
		Flags: []ucli.Flag{
			&ucli.IntFlag{Name: "nodes", Value: 20, Usage: fmt.Sprintf("number of nodes, 3 to %d", simulation.MaxNodes)},
			&ucli.StringFlag{Name: "scenario", Value: simulation.ScenarioCrash, Usage: "one of " + strings.Join(append(simulation.Scenarios(), scenarioChaos), ", ")},
			&ucli.IntFlag{Name: "seeds", Value: 1, Usage: "chaos: how many seeds to run, from --seed on"},
			&ucli.DurationFlag{Name: "duration", Value: 10 * time.Minute, Usage: "chaos: how long faults and operations go on in each run (then the mesh heals and settles)"},
			&ucli.StringFlag{Name: "faults", Usage: "chaos: the faults to draw from, comma-separated (default: all): " + strings.Join(faultNames(), ", ")},
			&ucli.Int64Flag{Name: "seed", Value: 1, Usage: "seed of the fault schedule and of the network's randomness"},
			&ucli.StringFlag{Name: "profile", Value: gossip.DefaultProfile, Usage: "gossip profile: " + strings.Join(gossip.Profiles(), ", ")},
			&ucli.Float64Flag{Name: "loss", Usage: fmt.Sprintf("packet loss of the loss scenario, 0 to 1 (default %g)", simulation.LossRate)},
			&ucli.DurationFlag{Name: "partition-for", Usage: "how long the partition scenarios keep the sides apart",
				DefaultText: "the scenario's, about 34 s at 100 nodes"},
			&ucli.BoolFlag{Name: "no-heal", Usage: "turn the nodes' heal prober off, to compare with serf and memberlist alone"},
			&ucli.BoolFlag{Name: "exact-compression", Usage: "have memberlist compress every packet, as a real node does (by default the bytes are estimated from a sample: compressing is most of a large run's CPU)"},
			&ucli.StringFlag{Name: "time", Value: "virtual", Usage: "the run's clock: virtual (no timer is ever late; the default) or real (the machine's, dilated past 100 nodes)"},
			&ucli.Float64Flag{Name: "dilation", Usage: fmt.Sprintf("with --time real (which it implies): stretch every timer by this factor, 1 (real time) to %d; default: 1 up to 100 nodes, then nodes/125, at least 2 (8 at 1,000), twice that for a scenario that splits and heals the mesh (16 at 1,000)", simulation.MaxDilation)},
			formatFlag(),
			&ucli.StringFlag{Name: "out", Usage: "also write the JSON report to this file"},
			&ucli.StringFlag{Name: "svg", Usage: "write the timeline as an SVG picture to this file"},
		},
		Action: simulate,
	}
}

// scenarioChaos is the chaos scenario's name.
const scenarioChaos = "chaos"

func faultNames() []string {
	var out []string
	for _, k := range chaos.FaultKinds {
		out = append(out, string(k))
	}
	return out
}

func simulate(c *ucli.Context) error {
	format, err := checkFormat(c)
	if err != nil {
		return err
	}
	if c.String("scenario") == scenarioChaos {
		return simulateChaos(c, format)
	}
	for _, name := range []string{"seeds", "duration", "faults"} {
		if c.IsSet(name) {
			return fmt.Errorf("--%s applies to the %s scenario only: drop it or use --scenario %s", name, scenarioChaos, scenarioChaos)
		}
	}
	cfg := simulation.RunConfig{
		Scenario: c.String("scenario"),
		Nodes:    c.Int("nodes"),
		Seed:     c.Int64("seed"),
		Profile:  c.String("profile"),
		Loss:     c.Float64("loss"),

		PartitionFor: c.Duration("partition-for"),
		NoHeal:       c.Bool("no-heal"),
		Dilation:     c.Float64("dilation"),

		ExactCompression: c.Bool("exact-compression"),
	}
	virtual := c.String("time") == "virtual"
	switch {
	case c.String("time") != "virtual" && c.String("time") != "real":
		return fmt.Errorf("--time %q: use virtual (the default) or real", c.String("time"))
	case virtual && c.IsSet("dilation") && c.IsSet("time"):
		return fmt.Errorf("--dilation %v with --time virtual: a virtual clock is never late, so it needs no dilation; drop --dilation, or use --time real", cfg.Dilation)
	case c.IsSet("dilation"):
		virtual = false
	}
	if d := cfg.Dilation; c.IsSet("dilation") && (d < 1 || d > simulation.MaxDilation || d != d) {
		return fmt.Errorf("--dilation %v: use 1 (real time) to %d; leave it out to choose by --nodes and --scenario", d, simulation.MaxDilation)
	}
	if c.IsSet("partition-for") && cfg.Scenario != simulation.ScenarioPartition && cfg.Scenario != simulation.ScenarioPartition3 {
		return fmt.Errorf("--partition-for applies to the %s and %s scenarios only", simulation.ScenarioPartition, simulation.ScenarioPartition3)
	}
	if c.IsSet("partition-for") && cfg.PartitionFor <= 0 {
		return fmt.Errorf("--partition-for %s is not a duration to hold a partition: give a positive one, e.g. 5m", cfg.PartitionFor)
	}
	if c.IsSet("loss") && cfg.Scenario != simulation.ScenarioLoss {
		return fmt.Errorf("--loss applies to the %s scenario only: drop it or use --scenario %s", simulation.ScenarioLoss, simulation.ScenarioLoss)
	}
	if cfg.Loss < 0 || cfg.Loss >= 1 || (c.IsSet("loss") && cfg.Loss == 0) {
		return fmt.Errorf("--loss %g is not a loss rate: use a value above 0 and below 1, e.g. 0.05", cfg.Loss)
	}
	if err := gossip.CheckProfile(cfg.Profile); err != nil {
		return fmt.Errorf("--profile: %w", err)
	}
	if _, err := simulation.PlanScenario(cfg.Scenario, cfg.Profile, cfg.Nodes, cfg.Seed); err != nil {
		if errors.Is(err, simulation.ErrUnknownScenario) {
			return fmt.Errorf("--scenario %q is not known: use one of %s", cfg.Scenario,
				strings.Join(append(simulation.Scenarios(), scenarioChaos), ", "))
		}
		return fmt.Errorf("--nodes: %w", err)
	}
	for _, name := range []string{"out", "svg"} {
		if path := c.String(name); path != "" {
			if err := checkWritableDir(path); err != nil {
				return fmt.Errorf("--%s: %w", name, err)
			}
		}
	}

	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	bar := progressBar(c.App.ErrWriter, cfg.Nodes)
	if bar != nil {
		cfg.Progress = bar.show
	} else if cfg.Nodes > 100 {
		// A long run to a file or pipe: a line now and then.
		cfg.Progress = progressLines(c.App.ErrWriter, cfg.Nodes, virtual)
	}
	run := simulation.Run
	if virtual {
		run = simulation.RunVirtual
	}
	r, err := run(ctx, cfg)
	if bar != nil {
		bar.done()
	}
	if err != nil && ctx.Err() != nil && c.Context.Err() == nil {
		return fmt.Errorf("simulate %s on %d nodes: interrupted; nothing was written", cfg.Scenario, cfg.Nodes)
	}
	if err != nil {
		return fmt.Errorf("simulate %s on %d nodes: %w", cfg.Scenario, cfg.Nodes, err)
	}

	if path := c.String("out"); path != "" {
		var buf bytes.Buffer
		if err := writeJSON(&buf, r); err != nil {
			return err
		}
		if err := writeFileAtomically(path, buf.Bytes()); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
	}
	if path := c.String("svg"); path != "" {
		var buf bytes.Buffer
		if err := simulation.WriteSVG(&buf, r); err != nil {
			return err
		}
		if err := writeFileAtomically(path, buf.Bytes()); err != nil {
			return fmt.Errorf("--svg: %w", err)
		}
	}
	if format == "json" {
		return writeJSON(c.App.Writer, r)
	}
	return simulation.WriteText(c.App.Writer, r)
}

// checkWritableDir fails early, before a run of minutes, when a report
// could not be written where asked.
func checkWritableDir(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("cannot write %s: directory %s does not exist: create it or choose another path", path, dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("cannot write %s: %s is not a directory", path, dir)
	}
	f, err := os.CreateTemp(dir, ".agent-simulate-*")
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// writeFileAtomically writes next to path, then renames, so that a reader
// never sees half a file.
func writeFileAtomically(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// bar draws the run's progress on a terminal.
type bar struct {
	mu    sync.Mutex // the joining goroutines report too
	w     io.Writer
	nodes int
}

// progressBar returns a bar when w is a terminal, else nil.
func progressBar(w io.Writer, nodes int) *bar {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return &bar{w: w, nodes: nodes}
}

func (b *bar) show(p simulation.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	const width = 30
	switch p.Phase {
	case "converging":
		fmt.Fprintf(b.w, "\r\033[Kstarting %d nodes: %d joined, %d see every node alive, %.1f gossip packets a node a second…", b.nodes, p.Joined, p.Full, p.News)
		return
	case "draining":
		fmt.Fprintf(b.w, "\r\033[Kthe mesh gossips its forming: %.1f packets a node a second (starts under %g)…", p.News, simulation.QuietNewsRate)
		return
	}
	frac := 0.0
	if p.Total > 0 {
		frac = min(1, float64(p.Elapsed)/float64(p.Total))
	}
	done := int(frac * width)
	fmt.Fprintf(b.w, "\r\033[K[%s%s] %3.0f%%  %.0f of %.0f s", strings.Repeat("#", done), strings.Repeat(".", width-done),
		frac*100, p.Elapsed.Seconds(), p.Total.Seconds())
	if p.Dilation > 1 {
		left := time.Duration(float64(p.Total-p.Elapsed) * p.Dilation)
		fmt.Fprintf(b.w, " (protocol time, dilated %g: %s left)", p.Dilation, left.Round(time.Second))
	}
}

func (b *bar) done() { fmt.Fprint(b.w, "\r\033[K") }

// progressLines writes the run's phase, and every half minute how far it
// is, one line at a time.
func progressLines(w io.Writer, nodes int, virtual bool) func(simulation.Progress) {
	clock := "virtual time"
	start := time.Now()
	var mu sync.Mutex // the joining goroutines report too
	var phase string
	var last time.Time
	return func(p simulation.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Phase == phase && time.Since(last) < 30*time.Second {
			return
		}
		phase, last = p.Phase, time.Now()
		if !virtual {
			clock = fmt.Sprintf("dilation %g", p.Dilation)
		}
		wall := time.Since(start).Round(time.Second)
		switch p.Phase {
		case "converging":
			fmt.Fprintf(w, "%s: starting %d nodes (%s): %d joined, %d see every node alive, %.1f gossip packets a node a second\n", wall, nodes, clock, p.Joined, p.Full, p.News)
			return
		case "draining":
			fmt.Fprintf(w, "%s: the mesh gossips its forming: %.1f packets a node a second, after %.0f s (protocol time)\n", wall, p.News, p.Elapsed.Seconds())
			return
		}
		fmt.Fprintf(w, "%s: %.0f of %.0f s of schedule (protocol time)\n", wall, p.Elapsed.Seconds(), p.Total.Seconds())
	}
}
