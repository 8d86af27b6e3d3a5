package chaos

import (
	"reflect"
	"slices"
	"testing"
	"time"
)

// byteSource hands out the fuzzer's bytes, then zeros.
type byteSource struct{ b []byte }

func (s *byteSource) next() byte {
	if len(s.b) == 0 {
		return 0
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c
}

func (s *byteSource) pick(from []string) string { return from[int(s.next())%len(from)] }

// at is a moment, negative ones included: a driver's history may be wrong.
func (s *byteSource) at() time.Duration {
	return time.Duration(int8(s.next())) * 500 * time.Millisecond
}

// historyFromBytes builds a history of few names, so that random bytes
// make entries that refer to each other.
func historyFromBytes(data []byte) History {
	s := &byteSource{data}
	names := []string{"", "i0", "i1", "i2", "i3"}
	rids := []string{"", "k-1", "k-2", "r-1"}
	hosts := []string{"", "h1", "h2", "h3"}
	outcomes := []string{string(OK), string(Fail), string(Info), ""}
	h := History{Seed: int64(s.next()), Agents: three, Settle: s.at(), LastHeal: s.at(), End: s.at()}
	for len(s.b) > 0 {
		switch s.next() % 4 {
		case 0:
			o := Op{ID: int(s.next()), Kind: OpKind(s.pick([]string{"spawn", "stop", "signal", "x"})), Agent: s.pick(hosts),
				Key: s.pick(rids), Restart: s.pick([]string{"", "on-failure"}), Wait: s.next()%2 == 0, Name: s.pick(names),
				Host: s.pick(hosts), Gen: int(s.next() % 4), Existing: s.next()%2 == 0, RID: s.pick(rids),
				Signal: s.pick([]string{"", "SIGTERM", "SIGKILL"}), Invoked: s.at(), Completed: s.at(),
				Outcome: Outcome(s.pick(outcomes)), AliveAtAnswer: s.next()%2 == 0}
			h.Ops = append(h.Ops, o)
		case 1:
			f := Fault{Kind: FaultKind(s.pick([]string{"partition", "crash-host", "restart-host", "drain", "undrain",
				"cluster-restart", "crash-supervisor", "one-way", "loss", "?"})), At: s.at(), Until: s.at(),
				Rate: float64(s.next()) / 255, Period: s.at(), KeepData: s.next()%2 == 0, Pick: int(s.next())}
			for range s.next() % 3 {
				f.Hosts = append(f.Hosts, s.pick(hosts))
			}
			for range s.next() % 3 {
				f.Groups = append(f.Groups, []string{s.pick(hosts), s.pick(hosts)})
			}
			f.From, f.To = []string{s.pick(hosts)}, []string{s.pick(hosts)}
			h.Faults = append(h.Faults, f)
		case 2:
			h.Events = append(h.Events, Event{At: s.at(), Agent: s.pick(hosts), Type: s.pick([]string{eventGaveUp,
				eventReplaced, eventRestarted, "interpreter-stopped"}), Name: s.pick(names), RID: s.pick(rids),
				Host: s.pick(hosts), Gen: int(s.next() % 4)})
		case 3:
			snap := Snapshot{At: s.at(), Quiet: s.next()%2 == 0}
			for range s.next() % 4 {
				snap.Processes = append(snap.Processes, Process{Name: s.pick(names), RID: s.pick(rids), Host: s.pick(hosts),
					Gen: int(s.next() % 4)})
			}
			if s.next()%4 != 0 {
				snap.Lists = map[string][]Listed{}
				for range s.next() % 4 {
					a := s.pick(hosts)
					snap.Lists[a] = append(snap.Lists[a], Listed{Name: s.pick(names), RID: s.pick(rids),
						Host: s.pick(hosts), Gen: int(s.next() % 4)})
				}
			}
			h.Snapshots = append(h.Snapshots, snap)
		}
	}
	return h
}

// FuzzCheck: whatever a driver records, Check does not panic, names only
// its invariants, judges the same way twice and leaves the history as it
// was.
func FuzzCheck(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 20, 40, 100, 0, 1, 0, 1, 1, 0, 1, 2, 1, 1, 0, 10, 12, 0, 3, 60, 1, 3, 1, 1, 1, 1, 3, 1, 2})
	f.Add([]byte("a snapshot, an op, a fault and an event, in some order: enough bytes for each"))
	known := []string{OnePerKey, TheAnswerStands, NothingUnlisted, EveryAnswerTrue, NothingLost, StopMeansStopped, NoQuietEnd}
	f.Fuzz(func(t *testing.T, data []byte) {
		h := historyFromBytes(data)
		before := historyFromBytes(data)
		vs := Check(h)
		if !reflect.DeepEqual(h, before) {
			t.Fatal("Check changed the history it judged")
		}
		if again := Check(h); !reflect.DeepEqual(vs, again) {
			t.Fatalf("Check judged one history two ways:\n%v\n%v", vs, again)
		}
		for _, v := range vs {
			if !slices.Contains(known, v.Invariant) {
				t.Errorf("unknown invariant %q", v.Invariant)
			}
			if v.String() == "" {
				t.Error("a violation prints as nothing")
			}
		}
		_ = Render(h)
	})
}
