// Command chaosrun plays one seeded chaos schedule on the test bed (five
// hosts in network namespaces, real agents, supervisors and interpreters,
// nftables faults and kill -9), checks its history with the simulation's
// checker and prints a report: seed, minutes, operations, faults by kind,
// T_settle observed, and every violation with the slice of history that
// shows it. It exits 1 on a violation. It needs root; `make chaos` runs
// it. Everything it made is removed when it ends, also on Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/meshagent/agent/chaos"
	"github.com/meshagent/agent/scripts/testbed"
)

func main() {
	agent := flag.String("agent", "bin/agent", "the agent binary")
	seed := flag.Int64("seed", 1, "the schedule's seed: the same seed plays the same faults and operations")
	duration := flag.Duration("duration", 3*time.Minute, "how long faults and operations go on; the settle and a watch follow")
	faults := flag.String("faults", "", "restrict the faults to these kinds, comma-separated (none: client operations only)")
	out := flag.String("history", "", "write the run's history here, as JSON")
	verbose := flag.Bool("v", false, "narrate every fault and step as it happens")
	flag.Parse()
	if *duration <= 0 {
		fail(fmt.Errorf("-duration %s: give a positive duration, e.g. 3m", *duration))
	}
	kinds, err := chaos.ParseFaultKinds(*faults)
	if err != nil {
		fail(fmt.Errorf("-faults: %w", err))
	}
	if err := testbed.Check(testbed.Filters); err != nil {
		fail(err)
	}
	cfg := testbed.ChaosConfig{Seed: *seed, Duration: *duration, Faults: kinds, Agent: *agent}
	start := time.Now()
	if *verbose {
		cfg.Logf = func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "%7.1fs "+format+"\n", append([]any{time.Since(start).Seconds()}, args...)...)
		}
	}
	fmt.Fprintf(os.Stderr, "chaos on the test bed: seed %d, %s of faults and operations, then %s of settle and a watch...\n",
		*seed, *duration, testbed.DefaultSettle)
	res, err := testbed.RunChaos(context.Background(), cfg)
	if err != nil {
		fail(err)
	}
	if *out != "" {
		data, err := json.MarshalIndent(res.History, "", "  ")
		if err == nil {
			err = os.WriteFile(*out, data, 0o644)
		}
		if err != nil {
			fail(fmt.Errorf("-history: %w", err))
		}
	}
	var report strings.Builder
	res.Report(&report)
	fmt.Print(report.String())
	if len(res.Orphans) > 0 {
		fmt.Fprintf(os.Stderr, "\n%d interpreters run without their supervisors at the end\n", len(res.Orphans))
	}
	if len(res.Violations) > 0 || len(res.Orphans) > 0 {
		fmt.Fprintf(os.Stderr, "\n%d violations: replay with make chaos SEED=%d DURATION=%s\n", len(res.Violations), *seed, *duration)
		if *out == "" {
			fmt.Fprintln(os.Stderr, "(HISTORY=FILE keeps the whole history)")
		}
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "chaos:", err)
	os.Exit(1)
}
