package placement

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// server is an eligible bid with room for 8 interpreters.
func server(node string, cpu, mem float64, running int) Bid {
	return Bid{Node: node, CPU: cpu, Mem: mem, Running: running, Capacity: 8, Healthy: true, OffersKind: true}
}

func with(b Bid, change func(*Bid)) Bid {
	change(&b)
	return b
}

func TestElect_Filters(t *testing.T) {
	good := server("good", 50, 50, 4) // more loaded than every rejected bid
	tests := []struct {
		name   string
		req    Request
		bid    Bid
		ledger func(*Ledger)
		rule   Rule
		reason string
	}{
		{name: "refusing", bid: with(server("x", 1, 1, 0), func(b *Bid) { b.Refusal = "draining" }),
			rule: RuleRefused, reason: "refused: draining"},
		{name: "unhealthy", bid: with(server("x", 1, 1, 0), func(b *Bid) { b.Healthy = false }),
			rule: RuleUnhealthy, reason: "unhealthy"},
		{name: "kind not offered", bid: with(server("x", 1, 1, 0), func(b *Bid) { b.OffersKind = false }),
			rule: RuleKind, reason: `does not offer kind "python"`},
		{name: "constraint value does not match", req: Request{Constraints: []Constraint{{"zone", "eu-.*"}}},
			bid:  with(server("x", 1, 1, 0), func(b *Bid) { b.Tags = map[string]string{"zone": "us-1"} }),
			rule: RuleConstraint, reason: `constraint zone=eu-.*: tag zone is "us-1"`},
		{name: "constraint is anchored", req: Request{Constraints: []Constraint{{"zone", "eu-1"}}},
			bid:  with(server("x", 1, 1, 0), func(b *Bid) { b.Tags = map[string]string{"zone": "eu-10"} }),
			rule: RuleConstraint, reason: `constraint zone=eu-1: tag zone is "eu-10"`},
		{name: "constraint tag missing", req: Request{Constraints: []Constraint{{"zone", ".*"}}},
			bid:  server("x", 1, 1, 0),
			rule: RuleConstraint, reason: "constraint zone=.*: no tag zone"},
		{name: "full by running", bid: server("x", 1, 1, 8),
			rule: RuleFull, reason: "full: 8/8 interpreters"},
		{name: "full by running and pending", bid: with(server("x", 1, 1, 6), func(b *Bid) { b.Pending = 2 }),
			rule: RuleFull, reason: "full: 8/8 interpreters (6 running, 2 pending, 0 reserved)"},
		{name: "full by this asker's reservations", bid: server("x", 1, 1, 7),
			ledger: func(l *Ledger) { l.Reserve("earlier", server("x", 1, 1, 7), epoch) },
			rule:   RuleFull, reason: "full: 8/8 interpreters (7 running, 0 pending, 1 reserved)"},
		{name: "running past capacity", bid: server("x", 1, 1, 9),
			rule: RuleFull, reason: "full: 9/8 interpreters"},
		{name: "cpu NaN", bid: server("x", math.NaN(), 1, 0),
			rule: RuleMalformed, reason: "malformed bid: cpu NaN outside [0, 100]"},
		{name: "mem above 100", bid: server("x", 1, 100.5, 0),
			rule: RuleMalformed, reason: "malformed bid: mem 100.5 outside [0, 100]"},
		{name: "negative pending", bid: with(server("x", 1, 1, 0), func(b *Bid) { b.Pending = -1 }),
			rule: RuleMalformed, reason: "malformed bid: negative count (running 0, pending -1, capacity 8)"},
		{name: "no node name", bid: server("", 1, 1, 0),
			rule: RuleMalformed, reason: "malformed bid: no node name"},
		{name: "second bid from a node", bid: server("good", 1, 1, 0),
			rule: RuleDuplicate, reason: "duplicate bid: the first one counts"},
		{name: "refusal comes before other faults", bid: with(server("x", 1, 1, 8), func(b *Bid) { b.Refusal = "busy"; b.Healthy = false }),
			rule: RuleRefused, reason: "refused: busy"},
	}
	for _, tt := range tests {
		for _, policy := range []Policy{Spread, Binpack} {
			t.Run(tt.name+"/"+string(policy), func(t *testing.T) {
				req := tt.req
				req.ID, req.Kind, req.Policy = "req-1", "python", policy
				ok := with(good, func(b *Bid) {
					b.Tags = map[string]string{"zone": "eu-1"}
				})
				l := mustLedger(t, time.Minute, 10)
				if tt.ledger != nil {
					tt.ledger(l)
				}
				d, err := Elect(req, []Bid{ok, tt.bid}, l, epoch)
				if err != nil {
					t.Fatal(err)
				}
				if d.Winner != "good" || len(d.Ranked) != 1 {
					t.Errorf("winner %q with %d candidates, want good alone", d.Winner, len(d.Ranked))
				}
				want := []Rejection{{Node: tt.bid.Node, Rule: tt.rule, Reason: tt.reason}}
				if fmt.Sprint(d.Rejected) != fmt.Sprint(want) {
					t.Errorf("rejected = %+v, want %+v", d.Rejected, want)
				}
			})
		}
	}
}

func TestElect_NoLimitIsNeverFull(t *testing.T) {
	b := with(server("a", 1, 1, 1000), func(b *Bid) { b.Capacity = 0 })
	d, err := Elect(Request{ID: "r", Kind: "k"}, []Bid{b}, nil, epoch)
	if err != nil || d.Winner != "a" {
		t.Fatalf("Elect = %+v, %v; want a", d, err)
	}
	if want := 100 * 1000.0 / NominalCapacity; d.Ranked[0].Slots != want {
		t.Errorf("slots = %v, want %v (against NominalCapacity)", d.Ranked[0].Slots, want)
	}
}

func TestScore(t *testing.T) {
	for _, tt := range []struct {
		cpu, mem, slots, want float64
	}{
		{0, 0, 0, 0},
		{100, 100, 100, 100},
		{10, 20, 12.5, (20 + 42.5/3) / 2},
		{5, 95, 0, (95 + 100.0/3) / 2},
		{40, 40, 25, 37.5},
	} {
		if got := score(tt.cpu, tt.mem, tt.slots); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("score(%v, %v, %v) = %v, want %v", tt.cpu, tt.mem, tt.slots, got, tt.want)
		}
	}
}

func TestElect_Policies(t *testing.T) {
	tests := []struct {
		name   string
		policy Policy
		bids   []Bid
		want   string
	}{
		{"spread picks the least loaded", Spread,
			[]Bid{server("a", 60, 60, 2), server("b", 20, 30, 2), server("c", 40, 40, 2)}, "b"},
		{"empty policy is spread", "",
			[]Bid{server("a", 60, 60, 2), server("b", 20, 30, 2)}, "b"},
		{"spread avoids the exhausted resource", Spread,
			[]Bid{server("mem-bound", 5, 95, 0), server("even", 40, 40, 2)}, "even"},
		{"spread counts interpreters against capacity", Spread,
			[]Bid{server("crowded", 10, 10, 6), server("roomy", 20, 20, 0)}, "roomy"},
		{"binpack picks the most loaded", Binpack,
			[]Bid{server("a", 60, 60, 2), server("b", 20, 30, 2), server("c", 40, 40, 2)}, "a"},
		{"binpack skips the full", Binpack,
			[]Bid{server("full", 90, 90, 8), server("b", 20, 30, 2), server("c", 40, 40, 2)}, "c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Elect(Request{ID: "req-1", Kind: "k", Policy: tt.policy}, tt.bids, nil, epoch)
			if err != nil {
				t.Fatal(err)
			}
			if d.Winner != tt.want {
				t.Errorf("winner = %s, want %s (%s)", d.Winner, tt.want, d.Reason)
			}
		})
	}
}

func TestElect_Reason(t *testing.T) {
	tests := []struct {
		name   string
		policy Policy
		bids   []Bid
		want   string
	}{
		{"clear winner", Spread,
			[]Bid{server("a", 10, 20, 1), server("b", 30, 20, 1)},
			"lowest load 17.1 (cpu 10.0, mem 20.0, 1/8 interpreters); runner-up b 25.4"},
		{"only one", Spread,
			[]Bid{server("a", 10, 20, 1)},
			"lowest load 17.1 (cpu 10.0, mem 20.0, 1/8 interpreters); the only eligible server"},
		{"binpack", Binpack,
			[]Bid{server("a", 10, 20, 1), server("b", 30, 20, 1)},
			"highest load with room 25.4 (cpu 30.0, mem 20.0, 1/8 interpreters); runner-up a 17.1"},
		{"no limit", Spread,
			[]Bid{with(server("a", 10, 20, 3), func(b *Bid) { b.Capacity = 0; b.Pending = 1 })},
			"lowest load 17.1 (cpu 10.0, mem 20.0, 4 interpreters, no cap (3 running, 1 pending, 0 reserved)); the only eligible server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Elect(Request{ID: "req-1", Kind: "k", Policy: tt.policy}, tt.bids, nil, epoch)
			if err != nil {
				t.Fatal(err)
			}
			if d.Reason != tt.want {
				t.Errorf("reason:\n got %s\nwant %s", d.Reason, tt.want)
			}
		})
	}
}

func TestElect_NearTie(t *testing.T) {
	// Scores 17.08 and 17.75: within NearTie, so the hash decides, and
	// over many requests each side wins some.
	bids := []Bid{server("a", 10, 20, 1), server("b", 10, 21, 1)}
	wins := map[string]int{}
	for i := range 100 {
		d, err := Elect(Request{ID: fmt.Sprintf("req-%d", i), Kind: "k"}, bids, nil, epoch)
		if err != nil {
			t.Fatal(err)
		}
		if d.Ranked[0].Hash < d.Ranked[1].Hash || d.Ranked[0].TieGroup != d.Ranked[1].TieGroup {
			t.Fatalf("near-tie not won by the higher hash: %+v", d.Ranked)
		}
		if !strings.Contains(d.Reason, "won on request hash") {
			t.Fatalf("reason %q does not say the hash decided", d.Reason)
		}
		wins[d.Winner]++
	}
	if wins["a"] < 30 || wins["b"] < 30 {
		t.Errorf("near-tie wins %v: the hash does not spread", wins)
	}

	// Beyond NearTie the lower score always wins.
	bids = []Bid{server("a", 10, 20, 1), server("b", 10, 23, 1)}
	for i := range 100 {
		d, err := Elect(Request{ID: fmt.Sprintf("req-%d", i), Kind: "k"}, bids, nil, epoch)
		if err != nil {
			t.Fatal(err)
		}
		if d.Winner != "a" || d.Ranked[1].TieGroup != 1 {
			t.Fatalf("request %d: winner %s groups %d/%d; want a, clearly ahead", i, d.Winner, d.Ranked[0].TieGroup, d.Ranked[1].TieGroup)
		}
	}
}

func TestElect_NoEligibleServer(t *testing.T) {
	bids := []Bid{
		with(server("a", 1, 1, 0), func(b *Bid) { b.Refusal = "draining" }),
		server("b", 1, 1, 8),
		with(server("c", 1, 1, 0), func(b *Bid) { b.OffersKind = false }),
	}
	d, err := Elect(Request{ID: "r", Kind: "python"}, bids, nil, epoch)
	if !errors.Is(err, ErrNoEligibleServer) {
		t.Fatalf("error = %v, want ErrNoEligibleServer", err)
	}
	want := `no eligible server for kind "python": a refused: draining; b full: 8/8 interpreters; c does not offer kind "python"`
	if err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
	if d.Winner != "" || len(d.Rejected) != 3 {
		t.Errorf("decision = %+v, want no winner and three rejections", d)
	}

	_, err = Elect(Request{ID: "r", Kind: "python"}, nil, nil, epoch)
	if !errors.Is(err, ErrNoEligibleServer) || !strings.Contains(err.Error(), "no server answered") {
		t.Errorf("no bids: error = %v", err)
	}
}

func TestElect_InvalidRequest(t *testing.T) {
	bids := []Bid{server("a", 1, 1, 0)}
	for _, tt := range []struct {
		name string
		req  Request
		want error
		text string
	}{
		{"no id", Request{Kind: "k"}, ErrInvalidRequest, "empty request id"},
		{"no kind", Request{ID: "r"}, ErrInvalidRequest, "empty interpreter kind"},
		{"unknown policy", Request{ID: "r", Kind: "k", Policy: "random"}, ErrInvalidPolicy, `"random"`},
		{"bad constraint", Request{ID: "r", Kind: "k", Constraints: []Constraint{{"zone", "("}}}, ErrInvalidConstraint, `"zone=("`},
		{"empty constraint key", Request{ID: "r", Kind: "k", Constraints: []Constraint{{"", "x"}}}, ErrInvalidConstraint, "empty tag key"},
	} {
		_, err := Elect(tt.req, bids, nil, epoch)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
			t.Errorf("%s: error = %v, want %v mentioning %s", tt.name, err, tt.want, tt.text)
		}
	}
}

func TestElect_DryRunLeavesReservationsCounted(t *testing.T) {
	// Elect never reserves; only Reserve does.
	l := mustLedger(t, time.Minute, 10)
	bids := []Bid{server("a", 1, 1, 0), server("b", 1, 1, 0)}
	for range 3 {
		if _, err := Elect(Request{ID: "r", Kind: "k"}, bids, l, epoch); err != nil {
			t.Fatal(err)
		}
	}
	if l.Len() != 0 {
		t.Fatalf("Elect recorded reservations: %+v", l.Reservations())
	}
}

func BenchmarkElect(b *testing.B) {
	for _, n := range []int{5, 100, 1000} {
		b.Run(fmt.Sprintf("bids=%d", n), func(b *testing.B) {
			bids := make([]Bid, n)
			for i := range bids {
				bids[i] = server(fmt.Sprintf("node-%04d", i), float64(i%97), float64(i%89), i%8)
				bids[i].Tags = map[string]string{"zone": []string{"eu-1", "eu-2", "us-1"}[i%3]}
			}
			l := mustLedger(b, time.Minute, 1024)
			for i := range n / 5 {
				l.Reserve(fmt.Sprintf("old-%d", i), bids[i*5%n], epoch)
			}
			req := Request{ID: "req", Kind: "k", Constraints: []Constraint{{"zone", "eu-.*"}}}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				req.ID = fmt.Sprintf("req-%d", i)
				if _, err := Elect(req, bids, l, epoch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
