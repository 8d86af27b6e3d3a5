package chaos

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func sec(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }

var three = []string{"h1", "h2", "h3"}

// spawned is op id: agent asked for key (its request id) and was answered
// name on host at gen, at answered.
func spawned(id int, agent, key, name, host string, gen int, answered float64) Op {
	return Op{ID: id, Kind: OpSpawn, Agent: agent, Key: key, RID: key, Name: name, Host: host, Gen: gen,
		Invoked: sec(answered - 0.5), Completed: sec(answered), Outcome: OK}
}

func onFailure(o Op) Op { o.Restart = "on-failure"; return o }

func outcome(o Op, out Outcome) Op {
	o.Outcome = out
	if out != OK {
		o.Name, o.Host, o.Gen = "", "", 0
	}
	return o
}

func stopOp(id int, agent, name string, answered float64, out Outcome) Op {
	return Op{ID: id, Kind: OpStop, Agent: agent, Name: name, Invoked: sec(answered - 0.2), Completed: sec(answered), Outcome: out}
}

func signalOp(id int, agent, name, signal string, answered float64) Op {
	return Op{ID: id, Kind: OpSignal, Agent: agent, Name: name, Signal: signal, Invoked: sec(answered - 0.2),
		Completed: sec(answered), Outcome: OK}
}

func proc(name, rid, host string, gen int) Process {
	return Process{Name: name, RID: rid, Host: host, Gen: gen}
}

// snap is a snapshot in which every agent lists every process.
func snap(at float64, quiet bool, ps ...Process) Snapshot {
	s := Snapshot{At: sec(at), Processes: ps, Lists: map[string][]Listed{}, Quiet: quiet}
	for _, a := range three {
		s.Lists[a] = []Listed{}
		for _, p := range ps {
			s.Lists[a] = append(s.Lists[a], Listed(p))
		}
	}
	return s
}

func quiet(at float64, ps ...Process) Snapshot { return snap(at, true, ps...) }
func loud(at float64, ps ...Process) Snapshot  { return snap(at, false, ps...) }

func event(at float64, agent, typ, name, rid, host string, gen int) Event {
	return Event{At: sec(at), Agent: agent, Type: typ, Name: name, RID: rid, Host: host, Gen: gen}
}

// history is a run on three hosts with a 10 s settle time; it ends at its
// last snapshot.
func history(lastHeal float64, ops []Op, faults []Fault, events []Event, snaps ...Snapshot) History {
	h := History{Seed: 1, Agents: three, Settle: 10 * time.Second, LastHeal: sec(lastHeal),
		Ops: ops, Faults: faults, Events: events, Snapshots: snaps}
	if len(snaps) > 0 {
		h.End = snaps[len(snaps)-1].At
	}
	return h
}

// checkCase is a history and what Check must say of it: the invariants
// broken (none: it holds), and for the first violation of the invariant
// under test, what its slice must show and must not.
type checkCase struct {
	name    string
	h       History
	want    []string
	show    []string
	notShow []string
	detail  []string
}

func runCheckCases(t *testing.T, invariant string, cases []checkCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vs := Check(tc.h)
			var got []string
			for _, v := range vs {
				got = append(got, v.Invariant)
			}
			if !slices.Equal(got, tc.want) {
				for _, v := range vs {
					t.Log(v)
				}
				t.Fatalf("Check gave %q, want %q", got, tc.want)
			}
			i := slices.IndexFunc(vs, func(v Violation) bool { return v.Invariant == invariant })
			if i < 0 {
				return
			}
			v := vs[i]
			all := strings.Join(v.Slice, "\n")
			for _, w := range tc.show {
				if !strings.Contains(all, w) {
					t.Errorf("the slice does not show %q:\n%s", w, v)
				}
			}
			for _, w := range tc.notShow {
				if strings.Contains(all, w) {
					t.Errorf("the slice shows %q, which has nothing to do with it:\n%s", w, v)
				}
			}
			for _, w := range tc.detail {
				if !strings.Contains(v.Detail, w) {
					t.Errorf("the detail does not say %q:\n%s", w, v)
				}
			}
			if !slices.IsSortedFunc(v.Slice, func(a, b string) int { return strings.Compare(a[:11], b[:11]) }) {
				t.Errorf("the slice is not in order of time:\n%s", v)
			}
		})
	}
}

func TestCheckOnePerKey(t *testing.T) {
	a := proc("demo-a", "k-1", "h1", 0)
	b := proc("demo-b", "k-1", "h3", 0)
	c := proc("demo-c", "k-2", "h2", 0)
	ops := []Op{
		spawned(1, "h1", "k-1", "demo-a", "h1", 0, 2),
		spawned(2, "h2", "k-2", "demo-c", "h2", 0, 3),
	}
	partition := []Fault{{Kind: FaultPartition, At: sec(5), Until: sec(20), Groups: [][]string{{"h1"}, {"h2", "h3"}}}}
	runCheckCases(t, OnePerKey, []checkCase{
		{
			name: "two copies during a partition and before the settle time, one after",
			h: history(20, ops, partition, nil,
				loud(15, a, b, c), quiet(25, a, b, c), quiet(31, a, c), quiet(40, a, c)),
		},
		{
			name: "two answers for one key both run after the settle time",
			h: history(20, append(slices.Clone(ops), spawned(3, "h2", "k-1", "demo-b", "h3", 0, 4)), partition, nil,
				quiet(35, a, b, c), quiet(40, b, c)),
			want:    []string{OnePerKey},
			show:    []string{"quiet snapshot: process demo-a rid=k-1", "quiet snapshot: process demo-b rid=k-1", "op 1 spawn", "op 3 spawn"},
			notShow: []string{"demo-c", "k-2", "partition"},
			detail:  []string{"rid k-1 has 2 processes", "demo-a (gen 0 on h1)", "demo-b (gen 0 on h3)"},
		},
		{
			name: "a copy started by a spawn that timed out, reported once for two snapshots",
			h: history(20, append(slices.Clone(ops), outcome(spawned(3, "h3", "k-1", "", "", 0, 9), Info)), partition, nil,
				quiet(35, a, proc("demo-x", "k-1", "h3", 0), c), quiet(38, a, proc("demo-x", "k-1", "h3", 0), c), quiet(40, a, c)),
			want:    []string{OnePerKey},
			show:    []string{"process demo-x", "op 3 spawn at h3 key=k-1, invoked 8.500s: info", "35.000s"},
			notShow: []string{"38.000s", "demo-c"},
		},
	})
}

func TestCheckTheAnswerStands(t *testing.T) {
	old := proc("demo-a", "k-1", "h3", 0)
	newer := proc("demo-b", "k-1", "h1", 1)
	other := proc("demo-c", "k-2", "h2", 0)
	partition := []Fault{{Kind: FaultPartition, At: sec(10), Until: sec(30), Groups: [][]string{{"h3"}, {"h1", "h2"}}}}
	ops := []Op{
		spawned(1, "h3", "k-1", "demo-a", "h3", 0, 5),
		spawned(2, "h2", "k-2", "demo-c", "h2", 0, 6),
		spawned(3, "h1", "k-1", "demo-b", "h1", 1, 15), // the majority places it anew
	}
	runCheckCases(t, TheAnswerStands, []checkCase{
		{
			name: "the newer answer survives the heal",
			h:    history(30, ops, partition, nil, loud(20, old, newer, other), quiet(45, newer, other)),
		},
		{
			name: "a re-placement after the answer survives",
			h: history(30, ops[:2], []Fault{{Kind: FaultCrashHost, At: sec(10), Hosts: []string{"h3"}},
				{Kind: FaultRestartHost, At: sec(30), Hosts: []string{"h3"}}},
				[]Event{event(14, "h1", "interpreter-replaced", "demo-r", "k-1", "h1", 1)},
				quiet(45, proc("demo-r", "k-1", "h1", 1), other)),
		},
		{
			name: "a newer copy a timed-out spawn may have placed",
			h: history(30, append(slices.Clone(ops[:2]), outcome(spawned(4, "h1", "k-1", "", "", 0, 20), Info)), partition, nil,
				quiet(45, proc("demo-z", "k-1", "h1", 1), other)),
		},
		{
			name: "the answer was stopped since",
			h: history(30, append(slices.Clone(ops), stopOp(4, "h1", "demo-b", 35, OK)), partition, nil,
				quiet(45, old, other)),
		},
		{
			name: "an answer after the final snapshot, which it cannot show",
			h: history(30, append(slices.Clone(ops), spawned(4, "h2", "k-1", "demo-y", "h2", 2, 50)), partition, nil,
				quiet(45, newer, other)),
		},
		{
			name:    "the stale minority copy wins the heal",
			h:       history(30, ops, partition, nil, loud(20, old, newer, other), quiet(45, old, other)),
			want:    []string{TheAnswerStands},
			show:    []string{"op 3 spawn at h1 key=k-1", "quiet snapshot: process demo-a rid=k-1 gen 0", "no process demo-b on any host", "op 1 spawn"},
			notShow: []string{"demo-c", "k-2", "20.000s"},
			detail:  []string{"rid k-1", "demo-a (gen 0 on h3)", "older than demo-b (gen 1 on h1)", "op 3", "a stale copy won"},
		},
		{
			name: "two askers at once, the other copy of the same generation survives",
			h: history(0, []Op{spawned(1, "h1", "k-1", "demo-a", "h3", 0, 5), spawned(2, "h2", "k-1", "demo-x", "h2", 0, 5.2)},
				nil, nil, quiet(45, old)),
			want:   []string{TheAnswerStands},
			show:   []string{"op 1 spawn", "op 2 spawn", "no process demo-x on any host"},
			detail: []string{"latest answer (op 2) named demo-x (gen 0 on h2) of the same generation"},
		},
		{
			name: "an answer that began before a newer one and ended after it",
			h: history(0, []Op{
				spawned(1, "h1", "k-1", "demo-b", "h1", 1, 20),
				func() Op { o := spawned(2, "h3", "k-1", "demo-a", "h3", 0, 22); o.Invoked = sec(10); return o }(),
			}, nil, nil, quiet(45, newer)),
		},
		{
			name: "an answer that ended before an older one began",
			h: history(0, []Op{
				spawned(1, "h1", "k-1", "demo-b", "h1", 1, 20),
				spawned(2, "h3", "k-1", "demo-a", "h3", 0, 22),
			}, nil, nil, quiet(45, newer)),
			want:   []string{TheAnswerStands},
			detail: []string{"newer than the latest answer (op 2, demo-a)"},
		},
		{
			name:    "a newer copy nobody named",
			h:       history(0, ops[:2], nil, nil, quiet(45, proc("demo-q", "k-1", "h2", 2), other)),
			want:    []string{TheAnswerStands},
			show:    []string{"op 1 spawn", "process demo-q"},
			notShow: []string{"demo-c"},
			detail:  []string{"newer than the latest answer (op 1, demo-a)", "no answer, re-placement or restart named it"},
		},
	})
}

func TestCheckNothingUnlisted(t *testing.T) {
	a := proc("demo-a", "k-1", "h1", 0)
	b := proc("demo-b", "k-2", "h2", 0)
	ops := []Op{spawned(1, "h1", "k-1", "demo-a", "h1", 0, 2), spawned(2, "h2", "k-2", "demo-b", "h2", 0, 3)}
	unlistedByH2 := quiet(40, a, b)
	unlistedByH2.Lists["h2"] = []Listed{Listed(b)}
	ghost := quiet(40, a, b)
	ghost.Lists["h1"] = append(ghost.Lists["h1"], Listed(proc("demo-ghost", "k-3", "h3", 0)))
	fresh := quiet(40, a, b, proc("demo-new", "k-3", "h3", 0))
	fresh.Lists["h2"] = []Listed{Listed(a), Listed(b)}
	fresh.Lists["h3"] = []Listed{Listed(a), Listed(b)}
	fresh.Processes = []Process{a, proc("demo-new", "k-3", "h3", 0)}
	restarted := quiet(40, a, b, proc("demo-new", "k-3", "h3", 1))
	restarted.Lists["h2"] = []Listed{Listed(a), Listed(b)}
	notQuiet := unlistedByH2
	notQuiet.Quiet = false
	early := unlistedByH2
	early.At = sec(25)
	runCheckCases(t, NothingUnlisted, []checkCase{
		{name: "every process listed by every agent", h: history(20, ops, nil, nil, quiet(40, a, b))},
		{name: "unlisted while not quiet, or before the settle time", h: history(20, ops, nil, nil, early, notQuiet, quiet(45, a, b))},
		{
			name: "a process a timed-out spawn started, listed",
			h: history(20, append(slices.Clone(ops), outcome(spawned(3, "h3", "k-3", "", "", 0, 9), Info)), nil, nil,
				quiet(40, a, b, proc("demo-x", "k-3", "h3", 0))),
		},
		{
			name: "a process just spawned, or just stopped, that the lists have not caught up with",
			h: history(20, append(slices.Clone(ops), spawned(3, "h3", "k-3", "demo-new", "h3", 0, 38),
				stopOp(4, "h1", "demo-b", 36, OK)), nil, nil, fresh),
		},
		{
			name: "a process an agent restarted a moment ago",
			h: history(20, ops, nil, []Event{event(41, "h1", "interpreter-restart", "demo-new", "k-3", "h3", 1)},
				restarted, quiet(60, a, b, proc("demo-new", "k-3", "h3", 1))),
		},
		{
			name:    "a process one agent does not list",
			h:       history(20, ops, nil, nil, unlistedByH2),
			want:    []string{NothingUnlisted},
			show:    []string{"process demo-a rid=k-1", "h2 does not list demo-a", "op 1 spawn"},
			notShow: []string{"h1 does not list", "h3 does not list", "demo-b"},
			detail:  []string{"demo-a (rid k-1, gen 0) runs on h1", "but h2 does not list it"},
		},
		{
			name:    "an agent lists an interpreter no host runs",
			h:       history(20, ops, nil, []Event{event(25, "h3", "interpreter-exited", "demo-ghost", "k-3", "h3", 0)}, ghost),
			want:    []string{NothingUnlisted},
			show:    []string{"h1 lists demo-ghost", "no process demo-ghost on any host", "interpreter-exited demo-ghost"},
			notShow: []string{"h2", "demo-a", "demo-b"},
			detail:  []string{"h1 lists demo-ghost (on h3) alive", "no host runs it"},
		},
	})
}

func TestCheckEveryAnswerTrue(t *testing.T) {
	waited := spawned(1, "h1", "k-1", "demo-a", "h1", 0, 2)
	waited.Wait = true
	waited.AliveAtAnswer = true
	notAlive := waited
	notAlive.AliveAtAnswer = false
	failed := Op{ID: 2, Kind: OpSpawn, Agent: "h2", RID: "r-9", Invoked: sec(4), Completed: sec(5), Outcome: Fail,
		Code: "no-server", Error: "no server took it"}
	timedOut := failed
	timedOut.Outcome = Info
	keyedFail := outcome(spawned(3, "h3", "k-1", "", "", 0, 6), Fail)
	a := proc("demo-a", "k-1", "h1", 0)
	leftover := proc("demo-r9", "r-9", "h2", 0)
	runCheckCases(t, EveryAnswerTrue, []checkCase{
		{
			name: "a waited answer alive; a failed spawn's start undone within the settle time",
			h:    history(0, []Op{waited, failed}, nil, nil, loud(6, a, leftover), quiet(40, a)),
		},
		{
			name: "a keyed spawn that failed while another's copy runs",
			h:    history(0, []Op{waited, keyedFail}, nil, nil, quiet(40, a)),
		},
		{
			name: "an unkeyed spawn that timed out left a process",
			h:    history(0, []Op{waited, timedOut}, nil, nil, quiet(40, a, leftover)),
		},
		{
			name:    "a waited answer not alive",
			h:       history(0, []Op{notAlive}, nil, nil, quiet(40, a)),
			want:    []string{EveryAnswerTrue},
			show:    []string{"op 1 spawn at h1 key=k-1 wait", "not alive at the answer"},
			notShow: []string{"snapshot"},
			detail:  []string{"op 1 waited", "not alive at the answer"},
		},
		{
			name:    "a failed spawn started a process after all",
			h:       history(0, []Op{waited, failed}, nil, nil, loud(6, a), quiet(16, a, leftover), quiet(40, a, leftover)),
			want:    []string{EveryAnswerTrue},
			show:    []string{"op 2 spawn at h2 rid=r-9", "fail no-server: no server took it", "process demo-r9 rid=r-9"},
			notShow: []string{"demo-a", "40.000s"},
			detail:  []string{"op 2 failed", "r-9", "must start nothing"},
		},
	})
}

func TestCheckNothingLost(t *testing.T) {
	a := onFailure(spawned(1, "h1", "k-1", "demo-a", "h1", 0, 2))
	other := spawned(2, "h2", "k-2", "demo-c", "h2", 0, 3)
	c := proc("demo-c", "k-2", "h2", 0)
	crash := []Fault{
		{Kind: FaultCrashHost, At: sec(10), Hosts: []string{"h1"}},
		{Kind: FaultCrashHost, At: sec(12), Hosts: []string{"h2"}},
		{Kind: FaultRestartHost, At: sec(20), Hosts: []string{"h1"}},
		{Kind: FaultRestartHost, At: sec(22), Hosts: []string{"h2"}},
	}
	runCheckCases(t, NothingLost, []checkCase{
		{
			name: "re-placed after its host crashed",
			h: history(22, []Op{a, other}, crash, []Event{event(15, "h3", "interpreter-replaced", "demo-b", "k-1", "h3", 1)},
				quiet(40, proc("demo-b", "k-1", "h3", 1), c)),
		},
		{
			name: "an agent gave up on it",
			h: history(22, []Op{a, other}, crash, []Event{event(15, "h3", "interpreter-gave-up", "demo-a", "k-1", "h1", 0)},
				quiet(40, c)),
		},
		{name: "stopped by its client", h: history(22, []Op{a, other, stopOp(3, "h3", "demo-a", 5, OK)}, crash, nil, quiet(40, c))},
		{name: "ended by SIGTERM", h: history(22, []Op{a, other, signalOp(3, "h3", "demo-a", "SIGTERM", 5)}, crash, nil, quiet(40, c))},
		{
			// The signal ended it while its --wait spawn was still
			// answering (chaos seed 16): the client ended it, nothing lost.
			name: "ended by SIGTERM before its spawn answered",
			h: history(22, []Op{func() Op { o := a; o.Invoked, o.Completed = sec(1), sec(6); return o }(), other,
				signalOp(3, "h3", "demo-a", "SIGTERM", 5)}, crash, nil, quiet(40, c)),
		},
		{name: "no restart policy", h: history(22, []Op{spawned(1, "h1", "k-1", "demo-a", "h1", 0, 2), other}, crash, nil, quiet(40, c))},
		{
			// Every agent had listed it before its host crashed: the mesh
			// knew the request and had to start it again.
			name: "lost with its host",
			h: history(22, []Op{a, other, stopOp(3, "h3", "demo-c", 35, Fail)}, crash,
				[]Event{event(11, "h2", "interpreter-exited", "demo-a", "k-1", "h1", 0)},
				loud(5, proc("demo-a", "k-1", "h1", 0), c), quiet(40, c)),
			want:    []string{NothingLost},
			show:    []string{"op 1 spawn at h1 key=k-1 restart=on-failure", "no process for rid k-1 on any host", "fault crash-host h1", "fault restart-host h1", "interpreter-exited demo-a"},
			notShow: []string{"h2 ", "demo-c", "op 3"},
			detail:  []string{"rid k-1 asked --restart on-failure", "op 1 named demo-a on h1", "interpreter-gave-up"},
		},
		{
			// Only its own host had listed it when the host crashed and came
			// back without its data dir (chaos seed 402): the request's only
			// record went with the disk.
			name: "lost with its host's disk before another agent listed it",
			h: history(22, []Op{a, other}, crash, nil,
				func() Snapshot {
					s := loud(5, proc("demo-a", "k-1", "h1", 0), c)
					s.Lists["h2"], s.Lists["h3"] = []Listed{Listed(c)}, []Listed{Listed(c)}
					return s
				}(), quiet(40, c)),
		},
		{
			name: "lost with its host, which came back with its data dir",
			h: history(22, []Op{a, other}, []Fault{{Kind: FaultCrashHost, At: sec(10), Hosts: []string{"h1"}},
				{Kind: FaultRestartHost, At: sec(20), Hosts: []string{"h1"}, KeepData: true}}, nil, quiet(40, c)),
			want:   []string{NothingLost},
			detail: []string{"rid k-1"},
		},
		{
			name:   "SIGKILL is a failure: restarted or lost",
			h:      history(22, []Op{a, other, signalOp(3, "h3", "demo-a", "SIGKILL", 5)}, nil, nil, quiet(40, c)),
			want:   []string{NothingLost},
			show:   []string{"op 3 signal at h3 SIGKILL demo-a"},
			detail: []string{"rid k-1"},
		},
	})
}

func TestCheckStopMeansStopped(t *testing.T) {
	a := proc("demo-a", "k-1", "h1", 0)
	b := proc("demo-b", "k-2", "h2", 0)
	ops := []Op{
		spawned(1, "h1", "k-1", "demo-a", "h1", 0, 2),
		spawned(2, "h2", "k-2", "demo-b", "h2", 0, 3),
	}
	runCheckCases(t, StopMeansStopped, []checkCase{
		{
			name: "gone within the grace",
			h:    history(0, append(slices.Clone(ops), stopOp(3, "h3", "demo-a", 10, OK)), nil, nil, quiet(14, a, b), quiet(40, b)),
		},
		{
			name: "a stop that failed or timed out",
			h: history(0, append(slices.Clone(ops), stopOp(3, "h3", "demo-a", 10, Fail), stopOp(4, "h3", "demo-a", 12, Info)),
				nil, nil, quiet(40, a, b)),
		},
		{
			name: "still running after the grace",
			h: history(0, append(slices.Clone(ops), stopOp(3, "h3", "demo-a", 10, OK)), nil, nil,
				quiet(14, a, b), loud(16, a, b), quiet(40, b)),
			want:    []string{StopMeansStopped},
			show:    []string{"op 3 stop at h3 demo-a, invoked 9.800s: ok", "16.000s  snapshot: process demo-a"},
			notShow: []string{"demo-b", "14.000s"},
			detail:  []string{"op 3 stopped demo-a at 10.000s", "still runs on h1 at 16.000s"},
		},
	})
}

func TestCheckNoQuietEnd(t *testing.T) {
	partition := []Fault{{Kind: FaultPartition, At: sec(10), Until: sec(50), Groups: [][]string{{"h1"}, {"h2", "h3"}}},
		{Kind: FaultCrashHost, At: sec(5), Hosts: []string{"h2"}}}
	runCheckCases(t, NoQuietEnd, []checkCase{
		{name: "empty", h: History{}, want: []string{NoQuietEnd}, detail: []string{"no snapshot"}},
		{
			name:   "operations but no snapshot",
			h:      history(0, []Op{spawned(1, "h1", "k-1", "demo-a", "h1", 0, 2)}, nil, nil),
			want:   []string{NoQuietEnd},
			detail: []string{"no snapshot", "a run must end quiet"},
		},
		{
			name:    "ends in a partition with a host down",
			h:       history(0, nil, partition, nil, quiet(3), loud(20)),
			want:    []string{NoQuietEnd},
			show:    []string{"20.000s  snapshot: 0 processes", "fault partition h1 | h2 h3 until 50.000s", "fault crash-host h2"},
			notShow: []string{"quiet snapshot"},
			detail:  []string{"the last snapshot, at 20.000s, is not quiet"},
		},
		{
			name:   "ends quiet too early",
			h:      history(0, nil, partition[:1], nil, quiet(55)),
			want:   []string{NoQuietEnd},
			show:   []string{"quiet snapshot", "fault partition"},
			detail: []string{"before the last heal (50.000s) plus the settle time (10.000s)"},
		},
	})
}

func TestViolationString(t *testing.T) {
	v := Violation{Invariant: OnePerKey, At: sec(40), Detail: "rid k-1 has 2 processes", Slice: []string{"a", "b"}}
	if got, want := v.String(), "one-per-key at 40.000s: rid k-1 has 2 processes\n  a\n  b"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestRender(t *testing.T) {
	h := history(20, []Op{spawned(1, "h1", "k-1", "demo-a", "h1", 0, 2)},
		[]Fault{{Kind: FaultLoss, At: sec(1), Until: sec(20), Rate: 0.12}},
		[]Event{event(3, "h1", "interpreter-started", "demo-a", "k-1", "h1", 0)},
		quiet(40, proc("demo-a", "k-1", "h1", 0)))
	want := []string{
		"     1.000s  fault loss 12% until 20.000s",
		"     2.000s  op 1 spawn at h1 key=k-1, invoked 1.500s: ok demo-a gen 0 on h1",
		"     3.000s  event from h1: interpreter-started demo-a rid=k-1 gen 0 on h1",
		"    20.000s  fault loss 12% ends",
		"    40.000s  quiet snapshot: 1 process; lists from h1, h2, h3",
		"    40.000s  quiet snapshot: process demo-a rid=k-1 gen 0 on h1",
		"    40.000s  quiet snapshot: h1 lists demo-a",
		"    40.000s  quiet snapshot: h2 lists demo-a",
		"    40.000s  quiet snapshot: h3 lists demo-a",
	}
	if got := Render(h); !slices.Equal(got, want) {
		t.Errorf("Render:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(Check(h)) != 0 {
		t.Errorf("a clean history has violations: %v", Check(h))
	}
}
