package simulation

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
)

// Figures are one failure detector's results in a run. Times are in
// seconds; a nil time was not measured (no crash, no heal) or not reached
// within the run.
type Figures struct {
	// DetectionP50 and DetectionP99 rank, over every (crashed node, live
	// observer) pair, the time from the crash until the observer marked the
	// node failed. For the baseline the one observer is the monitor. In a
	// partition scenario (no crash) they rank, over the live nodes, the time
	// from the split until the node saw every node across it failed; the
	// baseline's stay nil there.
	DetectionP50 *float64 `json:"detection_p50_s"`
	DetectionP99 *float64 `json:"detection_p99_s"`
	// DetectionAll is until every live observer saw every crash (in a
	// partition, every node across the split failed); nil when one never
	// did.
	DetectionAll *float64 `json:"detection_all_s"`
	// Undetected counts the (observer, crashed node) pairs where the
	// observer never saw the crash within the run; in a partition scenario,
	// the pairs of live nodes across the split where the observer had not
	// seen the other failed by the heal.
	Undetected int `json:"undetected"`
	// FirstSuspicion is, for the median crash, the time until the first
	// node suspected the crashed one. nil for the baseline, which does not
	// suspect.
	FirstSuspicion *float64 `json:"first_suspicion_s"`
	// FalseSuspicions and FalseFailures count suspicions started and
	// failures declared about a node that was not crashed, while observer
	// and node could reach each other (directly or through one relay) and
	// had for FaultGrace. nil suspicions for the baseline.
	FalseSuspicions *int `json:"false_suspicions"`
	FalseFailures   int  `json:"false_failures"`
	// HealS is from the heal (or resume) until every live node sees every
	// live node alive; for the baseline, until the monitor does.
	HealS *float64 `json:"heal_s"`
	// Traffic the nodes sent (payload bytes, no IP or UDP headers), per
	// node and second alive during the schedule.
	BytesPerNodePerS   float64 `json:"bytes_per_node_per_s"`
	PacketsPerNodePerS float64 `json:"packets_per_node_per_s"`
	// MaxViews is the most distinct member views among live nodes at one
	// sample; the baseline has one view, the monitor's.
	MaxViews int `json:"max_distinct_views"`
	// WallS is the run's wall time, not dilated; gossip and baseline
	// share the run.
	WallS float64 `json:"wall_s"`
}

// Report is a run's results: the gossip's figures at the top level, the
// heartbeat baseline's under Baseline, and the timeline.
type Report struct {
	Nodes    int    `json:"nodes"`
	Scenario string `json:"scenario"`
	Seed     int64  `json:"seed"`
	Profile  string `json:"profile"`
	Figures
	Baseline Figures `json:"baseline"`

	// Dilation is the run's time dilation (clock.go): every time in the
	// report is protocol time, the wall time divided by it, but WallS.
	Dilation float64 `json:"dilation"`
	// VirtualTime says the run's clock was virtual (RunConfig.VirtualTime):
	// no timer was late, so the report has no timer lag.
	VirtualTime bool `json:"virtual_time,omitempty"`
	// CompressionEstimated says the nodes sent uncompressed and the bytes
	// are memberlist's compressed bytes estimated from a sample, at
	// CompressionRatio (compressed over uncompressed packet bytes).
	CompressionEstimated bool    `json:"compression_estimated"`
	CompressionRatio     float64 `json:"compression_ratio,omitempty"`
	// CPUS is the process's CPU time (user and system) during the
	// schedule; CompressCPUEstS what compressing every packet would have
	// added (estimated; zero with exact compression). CPUMSPerNodePerS is
	// both per node and protocol second: an upper bound on one node's cost,
	// since it includes the simulated network and the harness.
	CPUS             float64 `json:"cpu_s"`
	CompressCPUEstS  float64 `json:"compress_cpu_est_s,omitempty"`
	CPUMSPerNodePerS float64 `json:"cpu_ms_per_node_per_s"`
	// PushPullBytes is the mean estimated size on the wire of a push/pull
	// message (one side's whole state, an entry for every member it knows)
	// sent during the schedule; zero with exact compression, or when none
	// was sent.
	PushPullBytes float64 `json:"push_pull_bytes,omitempty"`
	// PushPullsPerNodePerS is how many push/pull messages (each exchange
	// sends two) a node sent a second of the schedule, on average: a
	// node starts one every PushPullInterval, scaled up with the mesh's
	// size (memberlist's pushPullScale: 30 s × 6 at 1,000 nodes), so
	// about 0.011 at 1,000 nodes; more means the nodes' push/pull timers
	// fell together in the schedule. Zero with exact compression.
	PushPullsPerNodePerS float64 `json:"push_pulls_per_node_per_s,omitempty"`
	// FullQueueDrops counts the packets of the schedule dropped because the
	// receiver's queue (NetworkConfig.QueueLen) was full, as a socket
	// buffer drops them; FullQueueDropsForming those of the forming and
	// the drain before it.
	FullQueueDrops        uint64  `json:"full_queue_drops"`
	FullQueueDropsForming uint64  `json:"full_queue_drops_forming"`
	ConvergeS             float64 `json:"converge_s"` // from start until the mesh agreed
	DrainS                float64 `json:"drain_s"`    // then until it had gossiped its forming (protocol time)
	LengthS               float64 `json:"length_s"`   // the fault schedule's length, as run
	// EndedEarly says the schedule ended once the mesh had healed and
	// stayed whole for a while (Plan.HealedFor), before its full length.
	EndedEarly  bool     `json:"ended_early,omitempty"`
	PeakRSSMB   *float64 `json:"peak_rss_mb"`    // the process's peak resident set during the run (Linux)
	PeakGoMemMB float64  `json:"peak_go_mem_mb"` // the Go runtime's peak memory, sampled
	// How late a 50 ms timer fired during the schedule: when the machine
	// is short of CPU, every node's timers are late and probes time out.
	TimerLagP99MS float64 `json:"timer_lag_p99_ms"`
	TimerLagMaxMS float64 `json:"timer_lag_max_ms"`

	// NoHeal is set when the nodes ran without the heal prober.
	NoHeal bool `json:"no_heal,omitempty"`
	// Partition is what a partition scenario measured about its split and
	// heal, for the gossip.
	Partition *PartitionRecord `json:"partition,omitempty"`

	// Churn is what every run measures second by second: per node the
	// most push/pulls and bytes received in one second, the heal prober's
	// pings and the bytes sent each second; the restart, rolling and churn
	// scenarios read their figures from it.
	Churn *ChurnRecord `json:"churn,omitempty"`

	// Placements are the bursts of the burst scenario: per side of the
	// partition, how many elections decided, next to how many askers could
	// have reached the baseline's central monitor (the old system places
	// only through it).
	Placements []BurstRecord `json:"placements,omitempty"`

	Faults               []FaultRecord `json:"faults"`
	FalseFailureExamples []string      `json:"false_failure_examples,omitempty"`
	Groups               []GroupRecord `json:"groups"`
	Timeline             []Sample      `json:"timeline"`
}

// ChurnRecord is a run's traffic second by second (protocol seconds from
// the start of the schedule). Bytes received are as the application read
// them, uncompressed; bytes sent are on the wire (estimated when the
// network estimates compression).
type ChurnRecord struct {
	// MostPushPulls is the node that received the most push/pull messages
	// in one second, MostBytes the one that received the most bytes.
	MostPushPulls NodePeak `json:"most_push_pulls"`
	MostBytes     NodePeak `json:"most_bytes_received"`
	// Returning is, per node that restarted, its busiest second since its
	// latest restart: its own join's reply and what the mesh sent it.
	Returning []NodePeak `json:"returning,omitempty"`
	// HealPingsMostPerSAfterRestart is the most pings the whole mesh's
	// heal prober sent in one second within 40 s of a restart of two or
	// more nodes at once (the prober's follow-up lasts 30 s).
	HealPingsMostPerSAfterRestart *int `json:"heal_pings_most_per_s_after_restart,omitempty"`
	// BytesPerNodePerSSteady is the mean bytes a live node sent a second
	// before the first fault; BytesPerNodePerSChurn from the first fault
	// until a crash watch after the last.
	BytesPerNodePerSSteady *float64 `json:"bytes_per_node_per_s_steady,omitempty"`
	BytesPerNodePerSChurn  *float64 `json:"bytes_per_node_per_s_churn,omitempty"`
	// Renewals counts the incarnations the nodes renewed on seeing a
	// split (gossip/split.go) during the schedule.
	Renewals uint64 `json:"renewals"`
	// HealPingsPerS and BytesSentPerNodePerS are the series, one value a
	// second.
	HealPingsPerS        []int     `json:"heal_pings_per_s"`
	BytesSentPerNodePerS []float64 `json:"bytes_sent_per_node_per_s"`
	// PerNode is every node's busiest second.
	PerNode []NodePeak `json:"per_node"`
}

// NodePeak is one node's busiest second: the most push/pull messages it
// received in one protocol second and when, and the same for bytes.
type NodePeak struct {
	Name          string  `json:"name"`
	RestartS      float64 `json:"restart_s,omitempty"` // Returning: when the node came back
	PushPulls     uint64  `json:"push_pulls"`
	PushPullsAtS  float64 `json:"push_pulls_at_s"`
	BytesReceived uint64  `json:"bytes_received"`
	BytesAtS      float64 `json:"bytes_at_s"`
}

// PartitionRecord is a partition and its heal as the gossip lived them.
// Bytes are per live node and second, payload only.
type PartitionRecord struct {
	HeldS float64 `json:"held_s"` // from the split to the heal
	// HealP50 and HealP99 rank, over the live nodes, the time from the heal
	// until the node saw every live node alive (HealS is until all did).
	HealP50 *float64 `json:"heal_p50_s"`
	HealP99 *float64 `json:"heal_p99_s"`
	// BytesBefore is from the start of the schedule to the split (short:
	// the schedule's lead); BytesDuring while the split lasted;
	// BytesHealing the first 10 s after the heal; BytesAfter from then on,
	// the steady state of the whole mesh.
	BytesBefore  float64 `json:"bytes_per_node_per_s_before"`
	BytesDuring  float64 `json:"bytes_per_node_per_s_during"`
	BytesHealing float64 `json:"bytes_per_node_per_s_first_10s_after"`
	BytesAfter   float64 `json:"bytes_per_node_per_s_after"`
	// The heal prober's pings and joins (push/pulls) during the split and
	// from the heal to the end; the push/pull bytes sent from the heal on.
	HealPingsDuring    uint64 `json:"heal_pings_during"`
	HealJoinsDuring    uint64 `json:"heal_joins_during"`
	HealJoinsAfter     uint64 `json:"heal_joins_after"`
	PushPullBytesAfter uint64 `json:"push_pull_bytes_after"`
}

// FaultRecord is a fault as it was applied.
type FaultRecord struct {
	AtS   float64 `json:"at_s"`
	Kind  string  `json:"kind"`
	Label string  `json:"label"`
}

// GroupRecord names a group of nodes the timeline summarises.
type GroupRecord struct {
	Name    string `json:"name"`
	Nodes   int    `json:"nodes"`
	members []int
}

// Sample is the mesh at one moment of the schedule.
type Sample struct {
	T       float64     `json:"t_s"`
	Views   int         `json:"views"`         // distinct member views among live nodes
	Monitor int         `json:"monitor_alive"` // nodes the baseline's monitor holds alive
	Groups  []GroupSeen `json:"groups"`        // per group of the report, what its live nodes see
	alive   []int       // per node: members it sees alive; -1 once crashed
}

// GroupSeen is how many members a group's live nodes see alive.
type GroupSeen struct {
	Live   int `json:"live"`
	Min    int `json:"min"`
	Median int `json:"median"`
	Max    int `json:"max"`
}

func groupStats(alive []int, groups []GroupRecord) []GroupSeen {
	out := make([]GroupSeen, len(groups))
	for g, gr := range groups {
		var v []int
		for _, i := range gr.members {
			if i < len(alive) && alive[i] >= 0 {
				v = append(v, alive[i])
			}
		}
		if len(v) == 0 {
			continue
		}
		sort.Ints(v)
		out[g] = GroupSeen{Live: len(v), Min: v[0], Median: v[len(v)/2], Max: v[len(v)-1]}
	}
	return out
}

// StarvedLagMS is the p99 timer lag above which a run's timings are
// suspect: a quarter of lan's probe timeout.
const StarvedLagMS = 125

// WriteText prints the report for a person: the run, the faults, then the
// gossip's and the baseline's figures side by side.
func WriteText(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d nodes, profile %s, seed %d — %s\n", r.Scenario, r.Nodes, r.Profile, r.Seed, ScenarioSummary(r.Scenario))
	if r.NoHeal {
		b.WriteString("the heal prober was off: serf and memberlist alone\n")
	}
	if r.VirtualTime {
		b.WriteString("virtual time (testing/synctest): the clock jumped ahead whenever every node waited, so no timer was late\n")
	}
	if r.Dilation > 1 {
		fmt.Fprintf(&b, "time dilated %g: every time below is protocol time, the wall time divided by %g\n", r.Dilation, r.Dilation)
	}
	fmt.Fprintf(&b, "converged in %.1f s, drained in %.1f s, then %.0f s of schedule", r.ConvergeS, r.DrainS, r.LengthS)
	if r.EndedEarly {
		b.WriteString(" (ended once healed)")
	}
	fmt.Fprintf(&b, "; wall %.1f s", r.WallS)
	if r.PeakRSSMB != nil {
		fmt.Fprintf(&b, ", peak RSS %.0f MiB", *r.PeakRSSMB)
	}
	fmt.Fprintf(&b, ", Go memory %.0f MiB\n", r.PeakGoMemMB)
	fmt.Fprintf(&b, "CPU during the schedule %.0f s", r.CPUS)
	if r.CompressionEstimated {
		fmt.Fprintf(&b, " (+%.0f s that compressing every packet would have cost)", r.CompressCPUEstS)
	}
	fmt.Fprintf(&b, ": %.2f ms per node per second\n", r.CPUMSPerNodePerS)
	if r.CompressionEstimated {
		fmt.Fprintf(&b, "bytes: memberlist's compression estimated from a sample (compressed/sent %.2f)\n", r.CompressionRatio)
	}
	if r.FullQueueDrops+r.FullQueueDropsForming > 0 {
		fmt.Fprintf(&b, "packets dropped at a full receive queue: %d while forming, %d during the schedule\n",
			r.FullQueueDropsForming, r.FullQueueDrops)
	}
	if len(r.Faults) > 0 {
		parts := make([]string, len(r.Faults))
		for i, f := range r.Faults {
			parts[i] = fmt.Sprintf("%.1f s %s", f.AtS, f.Label)
		}
		fmt.Fprintf(&b, "faults: %s\n", strings.Join(parts, " · "))
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 3, ' ', 0)
	fmt.Fprintf(tw, "\tgossip (%s)\theartbeat baseline\n", r.Profile)
	row := func(name string, g, h string) { fmt.Fprintf(tw, "%s\t%s\t%s\n", name, g, h) }
	g, h := r.Figures, r.Baseline
	row("detection p50", secs(g.DetectionP50), secs(h.DetectionP50))
	row("detection p99", secs(g.DetectionP99), secs(h.DetectionP99))
	row("every node knows", secs(g.DetectionAll), secs(h.DetectionAll))
	row("first suspicion", secs(g.FirstSuspicion), "-")
	row("false suspicions", count(g.FalseSuspicions), "-")
	row("false failures", fmt.Sprint(g.FalseFailures), fmt.Sprint(h.FalseFailures))
	row("heal", secs(g.HealS), secs(h.HealS))
	row("bytes per node per s", fmt.Sprintf("%.0f", g.BytesPerNodePerS), fmt.Sprintf("%.0f", h.BytesPerNodePerS))
	row("packets per node per s", fmt.Sprintf("%.1f", g.PacketsPerNodePerS), fmt.Sprintf("%.1f", h.PacketsPerNodePerS))
	row("most distinct views", fmt.Sprint(g.MaxViews), fmt.Sprint(h.MaxViews))
	if p := r.Partition; p != nil {
		row("heal p50 / p99 per node", secs(p.HealP50)+" / "+secs(p.HealP99), "-")
		row("bytes per node per s: before / during / 10 s after / then",
			fmt.Sprintf("%.0f / %.0f / %.0f / %.0f", p.BytesBefore, p.BytesDuring, p.BytesHealing, p.BytesAfter), "-")
		row("heal pings during / joins during / joins after",
			fmt.Sprintf("%d / %d / %d", p.HealPingsDuring, p.HealJoinsDuring, p.HealJoinsAfter), "-")
	}
	if c := r.Churn; c != nil {
		row("most push/pulls received in a second", fmt.Sprintf("%d (%s at %.0f s)", c.MostPushPulls.PushPulls, c.MostPushPulls.Name, c.MostPushPulls.PushPullsAtS), "-")
		row("most bytes received in a second", fmt.Sprintf("%d (%s at %.0f s)", c.MostBytes.BytesReceived, c.MostBytes.Name, c.MostBytes.BytesAtS), "-")
		for _, p := range c.Returning {
			row("returning "+p.Name+" (back at "+fmt.Sprintf("%.0f s", p.RestartS)+"): push/pulls, bytes in its busiest second",
				fmt.Sprintf("%d, %d", p.PushPulls, p.BytesReceived), "-")
		}
		if c.HealPingsMostPerSAfterRestart != nil {
			row("heal pings a second, mesh-wide, after two came back", fmt.Sprintf("at most %d", *c.HealPingsMostPerSAfterRestart), "-")
		}
		if c.BytesPerNodePerSSteady != nil && c.BytesPerNodePerSChurn != nil {
			row("bytes sent per node per s: steady / under churn",
				fmt.Sprintf("%.0f / %.0f", *c.BytesPerNodePerSSteady, *c.BytesPerNodePerSChurn), "-")
		}
		row("incarnations renewed on a split", fmt.Sprint(c.Renewals), "-")
	}
	if g.Undetected > 0 || h.Undetected > 0 {
		if r.Partition != nil && !slices.ContainsFunc(r.Faults, func(f FaultRecord) bool { return f.Kind == string(FaultCrash) }) {
			// The baseline's detection is not measured across a split.
			row("pairs across the split not seen failed by the heal", fmt.Sprint(g.Undetected), "-")
		} else {
			row("crashes never seen", fmt.Sprint(g.Undetected), fmt.Sprint(h.Undetected))
		}
	}
	tw.Flush()
	for _, bu := range r.Placements {
		fmt.Fprintf(&b, "\n%s at %.1f s:\n", bu.Label, bu.AtS)
		for _, sd := range bu.Sides {
			fmt.Fprintf(&b, "  %s: %d of %d placed (median %.0f ms, %d bids missing, %d winners across the partition); baseline: %d of %d\n",
				sd.Side, sd.Decided, sd.Asked, sd.MedianMS, sd.MissingBids, sd.Elsewhere, sd.BaselineCould, sd.Asked)
		}
		if len(bu.Notes) > 0 {
			fmt.Fprintf(&b, "  failures: %s\n", strings.Join(bu.Notes, "; "))
		}
	}
	if r.TimerLagP99MS > StarvedLagMS {
		fmt.Fprintf(&b, "\nwarning: the machine was short of CPU: timers fired up to %.0f ms late (p99 %.0f ms), so probes\n"+
			"timed out for want of CPU, not of network; the timings and false verdicts above overstate the mesh's.\n"+
			"Run it again with a larger --dilation (this run's: %g).\n",
			r.TimerLagMaxMS, r.TimerLagP99MS, max(r.Dilation, 1))
	}
	if len(r.FalseFailureExamples) > 0 {
		fmt.Fprintf(&b, "\nfalse failures, first few: %s\n", strings.Join(r.FalseFailureExamples, "; "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func secs(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f s", *v)
}

func count(v *int) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprint(*v)
}
