package interp

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
	"github.com/meshagent/agent/state"
)

// serverOnDir is a server's lifecycle on data dir dir, loaded as the agent
// loads it at start, with no node (its bids see no members). stop ends it
// as the agent's shutdown does.
func serverOnDir(t *testing.T, dir string, clock *state.FakeClock) (l *Lifecycle, stop func()) {
	t.Helper()
	done := make(chan struct{})
	l, err := New(Config{Node: "s1", Server: true, Dir: dir, Kinds: map[string]Kind{BuiltinKind: Demo("agent")}},
		Deps{Clock: clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Done: done, Processes: &fakeSupervisors{},
			Elect:   func(context.Context, placement.Request) Election { return Election{} },
			Reserve: func(string, placement.Bid) {}, Release: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.LoadRegistry(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			close(done)
			l.journal.close()
		}
	}
	t.Cleanup(stop)
	return l, stop
}

// TestTheAnswerStandsThoughAServerRestarts: a server granted a request to
// one asker and saw generation 3 of another placed; then its agent
// restarted with its data dir. It still holds the first request for that
// asker (a second asker is denied) and still knows generation 3, so that a
// majority that counts it cannot place either request anew at a
// generation that a stale copy ties or beats. Before, a restart forgot
// both: chaos seed 867 placed a key at generation 0 with four of seven
// servers' bids, one of which had granted generation 1 before its
// restart, and the stale generation 0 was the last answer
// (the-answer-stands).
func TestTheAnswerStandsThoughAServerRestarts(t *testing.T) {
	dir := t.TempDir()
	clock := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	first, stop := serverOnDir(t, dir, clock)
	claim := func(l *Lifecycle, asker, rid string, gen int, attempt uint64) placement.Bid {
		return l.Bid(asker, bidding.Request{ID: rid, Kind: BuiltinKind, Claim: gen + 1, Attempt: attempt}, placement.Bid{Node: "s1", Healthy: true})
	}
	if b := claim(first, "h2", "r1", 1, 7); b.Grant != placement.Granted {
		t.Fatalf("a fresh claim was not granted: %+v", b)
	}
	first.memory.observe([]Instance{{Name: "demo-r2-aaaa", Status: gossip.StatusAlive, Host: "h3",
		Tags: gossip.Tags{Role: gossip.RoleInterpreter, Kind: BuiltinKind, RequestID: "r2", Host: "h3", Gen: 3}}}, clock.Now())
	stop()

	clock.Advance(5 * time.Second) // an agent restart; the claim is still fresh
	second, _ := serverOnDir(t, dir, clock)
	if b := claim(second, "h4", "r1", 1, 9); b.Grant != placement.Denied || b.Claimer != "h2" {
		t.Errorf("after the restart, a second asker's claim got grant %v (holder %q); want denied, held for h2", b.Grant, b.Claimer)
	}
	if g := second.KnownGen("r2"); g != 3 {
		t.Errorf("after the restart the server knows generation %d of r2, want 3", g)
	}
	if g := second.KnownGen("r1"); g != NoGen {
		t.Errorf("a claim is no placement: after the restart the server knows generation %d of r1, want none", g)
	}
}

// TestTheRequestsJournalSurvivesATornLineAndStaysSmall: a line cut short
// by a crash is skipped, not an error; and a journal of many changes to
// few requests is written anew, compact.
func TestTheRequestsJournalSurvivesATornLineAndStaysSmall(t *testing.T) {
	dir := t.TempDir()
	clock := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l, stop := serverOnDir(t, dir, clock)
	l.memory.placed("r1", 4, clock.Now())
	stop()
	path := filepath.Join(dir, journalName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"k":"g","r":"r9","g":`) // torn
	f.Close()
	l, stop = serverOnDir(t, dir, clock)
	if g := l.KnownGen("r1"); g != 4 {
		t.Fatalf("after a torn last line the server knows generation %d of r1, want 4", g)
	}
	for gen := 5; gen < 20_000; gen++ {
		l.memory.placed("r1", gen, clock.Now())
		if gen%1000 == 0 {
			if err := compactJournal(l.journal, l.memory, &l.claims); err != nil {
				t.Fatal(err)
			}
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > 1<<20 {
		t.Errorf("the journal of one request is %d bytes after 20,000 changes; compaction should keep it small", st.Size())
	}
	stop()
	l, _ = serverOnDir(t, dir, clock)
	if g := l.KnownGen("r1"); g != 19_999 {
		t.Errorf("after compactions and a restart the server knows generation %d of r1, want 19999", g)
	}
}

// TestAMajorityCountsTheServersARestartedServerKnew: a server listed seven
// servers, one of which then left; its agent restarted with its data dir
// during a partition, and its fresh view lists only itself and one other.
// A majority is still counted of the six it knew, so the two of them are
// no majority. Before, the two saw two of two and placed a key the other
// side ran at the same generation (chaos seed 867: the-answer-stands).
func TestAMajorityCountsTheServersARestartedServerKnew(t *testing.T) {
	dir := t.TempDir()
	clock := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	first, stop := serverOnDir(t, dir, clock)
	var members []gossip.Member
	for _, name := range []string{"h1", "h2", "h3", "h4", "h5", "h6", "h7"} {
		members = append(members, gossip.Member{Name: name, Status: gossip.StatusAlive, Tags: gossip.Tags{Role: gossip.RoleServer}.Map()})
	}
	members = append(members, gossip.Member{Name: "demo-r1-aaaa", Status: gossip.StatusAlive,
		Tags: gossip.Tags{Role: gossip.RoleInterpreter, RequestID: "r1", Host: "h1"}.Map()})
	first.memory.observeServers(members, clock.Now())
	members[6].Status = gossip.StatusLeft // h7 left for good
	first.memory.observeServers(members, clock.Now())
	stop()

	second, _ := serverOnDir(t, dir, clock)
	fresh := Quorum{Alive: []string{"h1", "h5"}}
	if n := second.memory.serversKnown(fresh); n != 6 {
		t.Fatalf("after the restart a view of %v counts a majority of %d servers, want 6 (seven known, one left)", fresh.Alive, n)
	}
	v := votes{total: second.memory.serversKnown(fresh), answered: fresh.Alive, grants: 2}
	if v.majority() || v.granted() {
		t.Errorf("two answers of six servers made a majority: %+v", v)
	}
}

// TestTheAnswerStandsWhenAClaimOutlivedItsGrant: a server granted
// generation 2 of a key to h9, whose placement then ran where this server
// never saw it (a partition cut h9 off). Long after the claim ended, and
// after a restart of this server's agent, a bid to another asker still
// says generation 2 was claimed, so that asker places above it. Before,
// a claim was forgotten after claimKeep, and the other side of the split
// placed generation 2 again (chaos seed 60189, the-answer-stands).
func TestTheAnswerStandsWhenAClaimOutlivedItsGrant(t *testing.T) {
	dir := t.TempDir()
	clock := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	first, stop := serverOnDir(t, dir, clock)
	claim := func(l *Lifecycle, asker string, gen int, attempt uint64) placement.Bid {
		return l.Bid(asker, bidding.Request{ID: "k1", Kind: BuiltinKind, Claim: gen + 1, Attempt: attempt}, placement.Bid{Node: "s1", Healthy: true})
	}
	if b := claim(first, "h9", 2, 7); b.Grant != placement.Granted {
		t.Fatalf("a fresh claim was not granted: %+v", b)
	}
	if b := claim(first, "h9", 2, 7); b.Claimed {
		t.Errorf("the same attempt's claim asked again is told of itself: %+v", b)
	}
	clock.Advance(claimKeep + 10*time.Second)
	b := claim(first, "h4", 2, 8)
	if b.Grant != placement.Granted {
		t.Fatalf("the claim ended, but another asker is not granted the request: %+v", b)
	}
	if above, ok := aboveGen([]placement.Bid{b}); !ok || above != 2 {
		t.Fatalf("after the claim ended, a bid puts the next placement above generation %d (found %t), want above 2", above, ok)
	}
	stop()

	clock.Advance(time.Hour) // an agent restart, long after
	second, _ := serverOnDir(t, dir, clock)
	if above, ok := aboveGen([]placement.Bid{claim(second, "h5", 1, 9)}); !ok || above != 2 {
		t.Fatalf("after a restart, a bid puts the next placement above generation %d (found %t), want above 2", above, ok)
	}
	clock.Advance(genKeep + time.Minute)
	second.claims.mu.Lock()
	second.claims.pruneFloorLocked(clock.Now())
	n := len(second.claims.floor)
	second.claims.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d claim floors kept past genKeep, want none", n)
	}
}
