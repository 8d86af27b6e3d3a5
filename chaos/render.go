package chaos

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// line is one entry of a history, rendered, with the moment it belongs to.
type line struct {
	at   time.Duration
	rank int // at one moment: faults, then answers, then events, then snapshots
	text string
}

const (
	rankFault = iota
	rankOp
	rankEvent
	rankSnapshot
)

// stamp is a moment in a line: seconds in a fixed width, so that a slice
// reads as a column.
func stamp(d time.Duration) string { return fmt.Sprintf("%10.3fs", d.Seconds()) }

// secs is a moment inside a sentence.
func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) + "s" }

// render orders lines by time and prints them, each entry once.
func render(ls []line) []string {
	slices.SortStableFunc(ls, func(a, b line) int { return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.rank, b.rank)) })
	out := make([]string, 0, len(ls))
	seen := map[string]bool{}
	for _, l := range ls {
		s := stamp(l.at) + "  " + l.text
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// Render prints a whole history, one line per entry, in order of time: an
// operation at its answer, a fault at its start (and its end), an event,
// and each snapshot with its processes and every agent's list.
func Render(h History) []string {
	var ls []line
	for _, f := range h.Faults {
		ls = append(ls, faultLine(f))
		if f.Until > 0 {
			ls = append(ls, line{f.Until, rankFault, faultText(f) + " ends"})
		}
	}
	for _, o := range h.Ops {
		ls = append(ls, opLine(o))
	}
	for _, e := range h.Events {
		ls = append(ls, eventLine(e))
	}
	for _, s := range h.Snapshots {
		ls = append(ls, snapshotLine(s))
		for _, p := range s.Processes {
			ls = append(ls, processLine(s, p))
		}
		for _, a := range sortedKeys(s.Lists) {
			var names []string
			for _, l := range s.Lists[a] {
				names = append(names, l.Name)
			}
			text := "nothing"
			if len(names) > 0 {
				text = strings.Join(names, ", ")
			}
			ls = append(ls, line{s.At, rankSnapshot, snapshotWord(s) + ": " + a + " lists " + text})
		}
	}
	return render(ls)
}

func opLine(o Op) line {
	var b strings.Builder
	fmt.Fprintf(&b, "op %d %s at %s", o.ID, o.Kind, o.Agent)
	switch o.Kind {
	case OpSpawn:
		if o.Key != "" {
			b.WriteString(" key=" + o.Key)
		}
		if o.RID != "" && o.RID != o.Key {
			b.WriteString(" rid=" + o.RID)
		}
		if o.Restart != "" {
			b.WriteString(" restart=" + o.Restart)
		}
		if o.Wait {
			b.WriteString(" wait")
		}
	default:
		if o.Signal != "" {
			b.WriteString(" " + o.Signal)
		}
		b.WriteString(" " + o.Name)
	}
	fmt.Fprintf(&b, ", invoked %s: %s", secs(o.Invoked), o.Outcome)
	switch o.Outcome {
	case OK:
		if o.Kind != OpSpawn {
			break
		}
		fmt.Fprintf(&b, " %s gen %d on %s", o.Name, o.Gen, o.Host)
		var notes []string
		if o.Existing {
			notes = append(notes, "existing")
		}
		if o.Wait && o.AliveAtAnswer {
			notes = append(notes, "alive at the answer")
		} else if o.Wait {
			notes = append(notes, "not alive at the answer")
		}
		if len(notes) > 0 {
			b.WriteString(" (" + strings.Join(notes, ", ") + ")")
		}
	case Info:
		b.WriteString(" (outcome unknown)")
	}
	if o.Code != "" {
		b.WriteString(" " + o.Code)
	}
	if o.Error != "" {
		b.WriteString(": " + o.Error)
	}
	return line{o.Completed, rankOp, b.String()}
}

func faultText(f Fault) string {
	var b strings.Builder
	b.WriteString("fault " + string(f.Kind))
	switch {
	case len(f.Groups) > 0:
		groups := make([]string, len(f.Groups))
		for i, g := range f.Groups {
			groups[i] = strings.Join(g, " ")
		}
		b.WriteString(" " + strings.Join(groups, " | "))
	case len(f.From) > 0 || len(f.To) > 0:
		b.WriteString(" " + strings.Join(f.From, " ") + " -> " + strings.Join(f.To, " "))
	case len(f.Hosts) > 0:
		b.WriteString(" " + strings.Join(f.Hosts, " "))
	}
	switch f.Kind {
	case FaultLoss:
		fmt.Fprintf(&b, " %g%%", f.Rate*100)
	case FaultFlap:
		b.WriteString(" every " + secs(f.Period))
	case FaultCrashSupervisor:
		fmt.Fprintf(&b, " pick %d", f.Pick)
	case FaultDrain:
		if f.Stop {
			b.WriteString(" --stop")
		}
	case FaultRestartHost, FaultRestartAgent, FaultClusterRestart:
		if f.KeepData {
			b.WriteString(" with its data dir")
		} else {
			b.WriteString(" without its data dir")
		}
	}
	return b.String()
}

func faultLine(f Fault) line {
	text := faultText(f)
	if f.Until > 0 {
		text += " until " + secs(f.Until)
	}
	return line{f.At, rankFault, text}
}

func eventLine(e Event) line {
	text := fmt.Sprintf("event from %s: %s %s rid=%s gen %d", e.Agent, e.Type, e.Name, e.RID, e.Gen)
	if e.Host != "" {
		text += " on " + e.Host
	}
	return line{e.At, rankEvent, text}
}

func snapshotWord(s Snapshot) string {
	if s.Quiet {
		return "quiet snapshot"
	}
	return "snapshot"
}

func snapshotLine(s Snapshot) line {
	return line{s.At, rankSnapshot, fmt.Sprintf("%s: %d %s; lists from %s", snapshotWord(s), len(s.Processes),
		plural(len(s.Processes), "process", "processes"),
		orNone(strings.Join(sortedKeys(s.Lists), ", ")))}
}

func processLine(s Snapshot, p Process) line {
	return line{s.At, rankSnapshot, fmt.Sprintf("%s: process %s rid=%s gen %d on %s", snapshotWord(s), p.Name, p.RID, p.Gen, p.Host)}
}

func listedLine(s Snapshot, agent string, l Listed) line {
	return line{s.At, rankSnapshot, fmt.Sprintf("%s: %s lists %s rid=%s gen %d on %s", snapshotWord(s), agent, l.Name, l.RID, l.Gen, l.Host)}
}

func unlistedLine(s Snapshot, agent, name string) line {
	return line{s.At, rankSnapshot, fmt.Sprintf("%s: %s does not list %s", snapshotWord(s), agent, name)}
}

// absentLine says no host runs what: "demo-x", or "rid k-1".
func absentLine(s Snapshot, what string) line {
	return line{s.At, rankSnapshot, fmt.Sprintf("%s: no process %s on any host", snapshotWord(s), what)}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
