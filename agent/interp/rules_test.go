package interp

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
)

func inst(name, rid string, gen int, status, host, hostStatus gossip.Status) Instance {
	return Instance{Name: name, Status: status, Host: string(host), HostStatus: hostStatus,
		Tags: gossip.Tags{Role: gossip.RoleInterpreter, RequestID: rid, Gen: gen, Host: string(host), Kind: "demo", Restart: RestartOnFailure}}
}

const (
	alive  = gossip.StatusAlive
	failed = gossip.StatusFailed
	left   = gossip.StatusLeft
)

func TestDuplicateRule(t *testing.T) {
	for _, tc := range []struct {
		name   string
		view   []Instance
		winner string // "" when no duplicate
		losers []string
	}{
		{"one alive: no duplicate", []Instance{inst("a-1", "r", 0, alive, "h1", alive)}, "", nil},
		{"two alive, same generation: the first name", []Instance{
			inst("a-9", "r", 0, alive, "h4", alive), inst("a-1", "r", 0, alive, "h1", alive)}, "a-1", []string{"a-9"}},
		{"the higher generation wins over the name", []Instance{
			inst("a-1", "r", 0, alive, "h1", alive), inst("a-9", "r", 1, alive, "h4", alive)}, "a-9", []string{"a-1"}},
		{"failed and left ones are not duplicates", []Instance{
			inst("a-1", "r", 0, failed, "h1", failed), inst("a-2", "r", 0, left, "h2", alive), inst("a-3", "r", 0, alive, "h3", alive)}, "", nil},
		{"three alive", []Instance{
			inst("a-3", "r", 0, alive, "h3", alive), inst("a-2", "r", 0, alive, "h2", alive), inst("a-1", "r", 0, alive, "h1", alive)},
			"a-1", []string{"a-2", "a-3"}},
		{"other requests do not mix", []Instance{
			inst("a-1", "r", 0, alive, "h1", alive), inst("b-1", "s", 0, alive, "h2", alive)}, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Duplicates(tc.view)
			if tc.winner == "" {
				if len(d) != 0 {
					t.Fatalf("duplicates %+v, want none", d)
				}
				return
			}
			if len(d) != 1 || d[0].Winner.Name != tc.winner {
				t.Fatalf("duplicates %+v, want winner %s", d, tc.winner)
			}
			var losers []string
			for _, l := range d[0].Losers {
				losers = append(losers, l.Name)
			}
			if !slices.Equal(losers, tc.losers) {
				t.Fatalf("losers %v, want %v", losers, tc.losers)
			}
		})
	}
}

// TestALoserYieldsToAWinnerWhoseHostIsNotGone: a supervisor stops its
// interpreter for a better duplicate only when the winner's host is listed
// alive or leaving. A serf view can keep a live host "leaving" for good
// (a leave intent newer than its last join intent, after a restart whose
// Lamport clock started over): the chaos checker found an old copy that
// never yielded for that (seed 17: one-per-key).
func TestALoserYieldsToAWinnerWhoseHostIsNotGone(t *testing.T) {
	const leaving = gossip.StatusLeaving
	for _, tc := range []struct {
		winnerHost gossip.Status
		yields     bool
	}{
		{alive, true},
		{leaving, true},
		{failed, false},            // the winner may be a stale entry
		{left, false},              // its host left: the same
		{gossip.StatusNone, false}, // a host this view never heard of
	} {
		// Two copies of one generation: the name decides, and the loser
		// yields only to a winner whose host is not gone.
		view := []Instance{inst("a-2", "r", 0, alive, "h1", alive), inst("a-1", "r", 0, alive, "h2", tc.winnerHost)}
		d, lost := yieldsTo(view, "a-2")
		if lost != tc.yields || lost && d.Winner.Name != "a-1" {
			t.Errorf("winner's host %q: yields %v to %+v, want %v", tc.winnerHost, lost, d.Winner.Name, tc.yields)
		}
		if _, lost := yieldsTo(view, "a-1"); lost {
			t.Errorf("winner's host %q: the winner yields", tc.winnerHost)
		}
	}
}

// TestACopyYieldsToANewerGenerationWhateverItsStatus: a copy stops for
// any newer generation of its request its view shows, alive or not: the
// newer one was placed because this one was lost to its placer, and a
// client was given it, so nothing older runs again though the newer one
// ended since (chaos seed 161: a copy whose host's agent lost its data
// dir outlived the newer one and won).
func TestACopyYieldsToANewerGenerationWhateverItsStatus(t *testing.T) {
	for _, st := range []gossip.Status{alive, failed, left, gossip.StatusLeaving} {
		view := []Instance{inst("a-1", "r", 0, alive, "h1", alive), inst("a-9", "r", 1, st, "h2", failed)}
		d, lost := yieldsTo(view, "a-1")
		if !lost || d.Winner.Name != "a-9" {
			t.Errorf("newer generation %s: yields %v to %q, want it to yield to a-9", st, lost, d.Winner.Name)
		}
		if _, lost := yieldsTo(view, "a-9"); lost && st == alive {
			t.Errorf("newer generation %s: the newer one yields", st)
		}
	}
	other := []Instance{inst("a-1", "r", 0, alive, "h1", alive), inst("b-9", "s", 5, left, "h2", alive)}
	if _, lost := yieldsTo(other, "a-1"); lost {
		t.Error("a newer generation of another request made a copy yield")
	}
}

// TestDuplicateRuleIgnoresOrder: every node sees the members in its own
// order; the verdict must not depend on it, and exactly one stays.
func TestDuplicateRuleIgnoresOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 500 {
		var view []Instance
		for i := range 2 + r.IntN(5) {
			view = append(view, inst(fmt.Sprintf("x-%04x", r.IntN(1<<16))+fmt.Sprint(i), "r", r.IntN(3), alive, "h", alive))
		}
		want := Duplicates(view)
		for range 5 {
			r.Shuffle(len(view), func(i, j int) { view[i], view[j] = view[j], view[i] })
			got := Duplicates(view)
			if len(got) != 1 || got[0].Winner.Name != want[0].Winner.Name || len(got[0].Losers) != len(view)-1 {
				t.Fatalf("trial %d: %+v then %+v", trial, want, got)
			}
			for _, l := range got[0].Losers {
				if !Beats(got[0].Winner, l) || Beats(l, got[0].Winner) {
					t.Fatalf("trial %d: loser %s beats winner %s", trial, l.Name, got[0].Winner.Name)
				}
			}
		}
	}
}

func TestOwner(t *testing.T) {
	if _, ok := Owner("r", nil); ok {
		t.Fatal("an owner among no servers")
	}
	if o, _ := Owner("r", []string{"h1"}); o != "h1" {
		t.Fatalf("the only server is not the owner: %s", o)
	}
	// Properties: any view yields exactly one owner, among the servers;
	// equal views (in any order) yield the same owner; removing a server
	// that is not the owner keeps the owner.
	r := rand.New(rand.NewPCG(3, 4))
	owners := map[string]int{}
	for trial := range 2000 {
		var servers []string
		for i := range 1 + r.IntN(8) {
			servers = append(servers, fmt.Sprintf("h%d", i))
		}
		rid := fmt.Sprintf("k%x", r.Uint64())
		o, ok := Owner(rid, servers)
		if !ok || !slices.Contains(servers, o) {
			t.Fatalf("trial %d: owner %q of %v", trial, o, servers)
		}
		if len(servers) == 4 {
			owners[o]++
		}
		r.Shuffle(len(servers), func(i, j int) { servers[i], servers[j] = servers[j], servers[i] })
		if again, _ := Owner(rid, servers); again != o {
			t.Fatalf("trial %d: owner %s, then %s for the same servers", trial, o, again)
		}
		if i := slices.IndexFunc(servers, func(s string) bool { return s != o }); i >= 0 {
			fewer := slices.Delete(slices.Clone(servers), i, i+1)
			if still, _ := Owner(rid, fewer); still != o {
				t.Fatalf("trial %d: removing %s moved the owner from %s to %s", trial, servers[i], o, still)
			}
		}
	}
	for s, n := range owners {
		if n < 50 {
			t.Errorf("server %s owns %d of the 4-server trials: the hash is not spreading owners", s, n)
		}
	}
}

func TestQuorum(t *testing.T) {
	m := func(name string, st gossip.Status) gossip.Member {
		return gossip.Member{Name: name, Status: st, Tags: map[string]string{"role": "server"}}
	}
	for _, tc := range []struct {
		name    string
		members []gossip.Member
		want    bool
	}{
		{"all alive", []gossip.Member{m("a", alive), m("b", alive), m("c", alive)}, true},
		{"3 of 5", []gossip.Member{m("a", alive), m("b", alive), m("c", alive), m("d", failed), m("e", failed)}, true},
		{"2 of 5", []gossip.Member{m("a", alive), m("b", alive), m("c", failed), m("d", failed), m("e", failed)}, false},
		{"half is not a majority", []gossip.Member{m("a", alive), m("b", failed)}, false},
		{"left servers do not count", []gossip.Member{m("a", alive), m("b", left), m("c", left)}, true},
		{"interpreters do not count", []gossip.Member{m("a", alive), m("b", failed),
			{Name: "i", Status: alive, Tags: map[string]string{"role": "interpreter"}}}, false},
	} {
		if got := ServerQuorum(tc.members).Majority(); got != tc.want {
			t.Errorf("%s: majority %v, want %v (%s)", tc.name, got, tc.want, ServerQuorum(tc.members))
		}
	}
}

func TestOrphans(t *testing.T) {
	for _, tc := range []struct {
		name    string
		view    []Instance
		want    string // the request re-placed, "" for none
		nextGen int
	}{
		{"failed with its host: re-place", []Instance{inst("a-1", "r", 0, failed, "h1", failed)}, "r", 1},
		{"host left: re-place", []Instance{inst("a-1", "r", 0, failed, "h1", left)}, "r", 1},
		{"host alive: it restarts it", []Instance{inst("a-1", "r", 0, failed, "h1", alive)}, "", 0},
		{"it left: stopped on purpose", []Instance{inst("a-1", "r", 0, left, "h1", failed)}, "", 0},
		{"an alive one exists", []Instance{inst("a-1", "r", 0, failed, "h1", failed), inst("a-2", "r", 1, alive, "h2", alive)}, "", 0},
		{"the newer generation failed too", []Instance{inst("a-1", "r", 0, failed, "h1", failed), inst("a-2", "r", 1, failed, "h2", failed)}, "r", 2},
		{"the newer generation left", []Instance{inst("a-1", "r", 0, failed, "h1", failed), inst("a-2", "r", 1, left, "h2", alive)}, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Orphans(tc.view)
			if tc.want == "" {
				if len(got) != 0 {
					t.Fatalf("orphans %+v, want none", got)
				}
				return
			}
			if len(got) != 1 || got[0].Last.Tags.RequestID != tc.want || got[0].NextGen != tc.nextGen {
				t.Fatalf("orphans %+v, want %s at generation %d", got, tc.want, tc.nextGen)
			}
		})
	}
	noPolicy := inst("a-1", "r", 0, failed, "h1", failed)
	noPolicy.Tags.Restart = ""
	if got := Orphans([]Instance{noPolicy}); len(got) != 0 {
		t.Fatalf("an interpreter without a restart policy was re-placed: %+v", got)
	}
}

func TestParseRestart(t *testing.T) {
	for in, want := range map[string]string{"": RestartNo, "no": RestartNo, "on-failure": RestartOnFailure} {
		if got, err := ParseRestart(in); err != nil || got != want {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
	if _, err := ParseRestart("always"); err == nil || err.Error() != `restart policy "always" is not known: use "no" or "on-failure"` {
		t.Errorf("always: %v", err)
	}
}

func TestTracker(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tr := NewTracker(Backoff{Attempts: 3, Window: time.Minute, Delay: time.Second, MaxDelay: 3 * time.Second})
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		d, ok := tr.Next(t0.Add(time.Duration(i) * time.Second))
		if !ok || d != want {
			t.Fatalf("attempt %d: %s %v, want %s", i+1, d, ok, want)
		}
	}
	if _, ok := tr.Next(t0.Add(10 * time.Second)); ok {
		t.Fatal("a fourth attempt within the window")
	}
	if d, ok := tr.Next(t0.Add(61 * time.Second)); !ok || d != 2*time.Second {
		t.Fatalf("after the first attempt left the window: %s %v", d, ok)
	}
}

// TestInstancesTrustTheEndTag: a member serf shows failed whose supervisor
// published how it ended is an interpreter that left (its leave intent was
// missed), so it is neither an orphan nor "supervisor failed".
func TestInstancesTrustTheEndTag(t *testing.T) {
	tags := gossip.Tags{Role: gossip.RoleInterpreter, RequestID: "r", Host: "h1", Restart: RestartOnFailure, End: "stopped"}.Map()
	members := []gossip.Member{
		{Name: "h1", Status: failed, Tags: map[string]string{"role": "server"}},
		{Name: "a-1", Status: failed, Tags: tags},
	}
	view := Instances(members)
	if len(view) != 1 || view[0].Status != left {
		t.Fatalf("view %+v, want a-1 left", view)
	}
	if o := Orphans(view); len(o) != 0 {
		t.Fatalf("an interpreter that ended on purpose was re-placed: %+v", o)
	}
}

func TestOwnerRankOrdersTheServersLikeOwner(t *testing.T) {
	servers := []string{"s1", "s2", "s3", "s4", "s5"}
	for _, rid := range []string{"r1", "k0123456789abcdef", "x"} {
		owner, _ := Owner(rid, servers)
		seen := map[int]string{}
		for _, s := range servers {
			r := OwnerRank(rid, s, servers)
			if r < 0 || r >= len(servers) || seen[r] != "" {
				t.Fatalf("%s: rank %d of %s (taken by %q)", rid, r, s, seen[r])
			}
			seen[r] = s
		}
		if seen[0] != owner {
			t.Errorf("%s: rank 0 is %s, the owner %s", rid, seen[0], owner)
		}
		rest := slices.DeleteFunc(slices.Clone(servers), func(s string) bool { return s == owner })
		if next, _ := Owner(rid, rest); seen[1] != next {
			t.Errorf("%s: rank 1 is %s, but without the owner the owner would be %s", rid, seen[1], next)
		}
	}
	if r := OwnerRank("r1", "nobody", servers); r != -1 {
		t.Errorf("a server not alive has rank %d", r)
	}
}

func TestRequestIDsThatBecomePathsAreChecked(t *testing.T) {
	for rid, want := range map[string]bool{
		RequestIDFor("k1"): true, NewRequestID(): true, "r": true,
		"": false, "../etc": false, "a/b": false, "k-1": false, strings.Repeat("a", 65): false,
	} {
		if got := validRequestID(rid); got != want {
			t.Errorf("validRequestID(%q) = %v, want %v", rid, got, want)
		}
	}
}

// TestTheViewIsParsedAgainOnlyWhenTheMeshChanged: an agent's passes over
// the view share one parse of it while no member changes, and see a
// change at the next pass after it.
func TestTheViewIsParsedAgainOnlyWhenTheMeshChanged(t *testing.T) {
	port, err := gossip.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tags := gossip.Tags{Role: gossip.RoleInterpreter, Kind: "demo", Host: "s1", RequestID: "r1", Gen: 1}
	node, err := gossip.Start(gossip.Config{Name: "demo-r1-aaaa", BindAddr: "127.0.0.1", BindPort: port, Profile: "local",
		Tags: tags.Map()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Shutdown()
	var c viewCache
	_, first := c.of(node)
	_, again := c.of(node)
	if len(first) != 1 || first[0].Tags.Gen != 1 || len(again) != 1 {
		t.Fatalf("views %+v and %+v, want the one interpreter at generation 1", first, again)
	}
	if &first[0] != &again[0] {
		t.Error("an unchanged mesh was parsed again")
	}
	if cap(first) != len(first) {
		t.Errorf("the shared view has room past its end (%d of %d): an append would write into it", len(first), cap(first))
	}
	tags.Gen = 2
	if err := node.SetTags(tags.Map()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, v := c.of(node)
		if len(v) == 1 && v[0].Tags.Gen == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the tag change the view is %+v", v)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if first[0].Tags.Gen != 1 {
		t.Error("the change was written into the view an earlier pass holds")
	}
}
