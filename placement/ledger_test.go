package placement

import (
	"strings"
	"testing"
	"time"
)

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func mustLedger(t testing.TB, ttl time.Duration, size int) *Ledger {
	t.Helper()
	l, err := NewLedger(ttl, size)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// open is an eligible bid with no limit, so reservations never make it full.
func open(node string, running, pending int) Bid {
	return Bid{Node: node, CPU: 10, Mem: 10, Running: running, Pending: pending, Healthy: true, OffersKind: true}
}

// reservedIn runs an election over bids and returns what it counted as
// reserved against each node.
func reservedIn(t *testing.T, l *Ledger, bids []Bid, now time.Time) map[string]int {
	t.Helper()
	d, err := Elect(Request{ID: "probe", Kind: "k"}, bids, l, now)
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]int)
	for _, c := range d.Ranked {
		got[c.Bid.Node] = c.Reserved
	}
	return got
}

func TestNewLedger_RejectsBadArguments(t *testing.T) {
	for _, tt := range []struct {
		ttl  time.Duration
		size int
		want string
	}{{0, 10, "ttl 0s"}, {-time.Second, 10, "ttl -1s"}, {time.Second, 0, "size 0"}} {
		_, err := NewLedger(tt.ttl, tt.size)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewLedger(%v, %d) error = %v, want one naming %q", tt.ttl, tt.size, err, tt.want)
		}
	}
}

func TestLedger_Rule(t *testing.T) {
	const ttl = 30 * time.Second
	type step struct {
		at      time.Duration
		reserve string // request id to reserve on node "a" from bid
		release string
		bid     Bid   // node "a"'s bid at this step
		want    int   // reserved against "a" in an election right after the step
		ahead   []int // Ahead of the ledger's reservations after the step, oldest first
	}
	tests := []struct {
		name  string
		steps []step
	}{{
		name: "counts until the node shows it",
		steps: []step{
			{reserve: "r1", bid: open("a", 3, 0), want: 1, ahead: []int{0}},
			{at: time.Second, bid: open("a", 3, 0), want: 1, ahead: []int{0}},
			{at: 2 * time.Second, bid: open("a", 3, 1), want: 0, ahead: []int{}},
		},
	}, {
		name: "a burst from one stale bid settles one by one",
		steps: []step{
			{reserve: "r1", bid: open("a", 3, 0), want: 1},
			{reserve: "r2", bid: open("a", 3, 0), want: 2},
			{reserve: "r3", bid: open("a", 3, 0), want: 3, ahead: []int{0, 1, 2}},
			{at: time.Second, bid: open("a", 3, 0), want: 3},
			{at: time.Second, bid: open("a", 4, 0), want: 2},
			{at: time.Second, bid: open("a", 4, 1), want: 1},
			{at: time.Second, bid: open("a", 6, 0), want: 0, ahead: []int{}},
		},
	}, {
		name: "a shown reservation stays gone when interpreters exit",
		steps: []step{
			{reserve: "r1", bid: open("a", 3, 0), want: 1},
			{at: time.Second, bid: open("a", 4, 0), want: 0},
			{at: 2 * time.Second, bid: open("a", 2, 0), want: 0, ahead: []int{}},
		},
	}, {
		name: "a reservation made after an earlier one was shown needs only its own",
		steps: []step{
			{reserve: "r1", bid: open("a", 3, 0), want: 1},
			{at: time.Second, bid: open("a", 4, 0), want: 0},
			{at: time.Second, reserve: "r2", bid: open("a", 4, 0), want: 1, ahead: []int{0}},
			{at: 2 * time.Second, bid: open("a", 5, 0), want: 0, ahead: []int{}},
		},
	}, {
		name: "expires at ttl",
		steps: []step{
			{reserve: "r1", bid: open("a", 0, 0), want: 1},
			{at: ttl - time.Nanosecond, bid: open("a", 0, 0), want: 1},
			{at: ttl, bid: open("a", 0, 0), want: 0, ahead: []int{}},
		},
	}, {
		name: "an expired unseen reservation no longer holds back later ones",
		steps: []step{
			{reserve: "r1", bid: open("a", 3, 0), want: 1},
			{at: 10 * time.Second, reserve: "r2", bid: open("a", 3, 0), want: 2, ahead: []int{0, 1}},
			{at: ttl, bid: open("a", 3, 0), want: 1, ahead: []int{0}},
			{at: ttl, bid: open("a", 4, 0), want: 0, ahead: []int{}},
		},
	}, {
		name: "release forgets and lowers ahead of later ones",
		steps: []step{
			{reserve: "r1", bid: open("a", 3, 0), want: 1},
			{reserve: "r2", bid: open("a", 3, 0), want: 2, ahead: []int{0, 1}},
			{release: "r1", bid: open("a", 3, 0), want: 1, ahead: []int{0}},
			{bid: open("a", 4, 0), want: 0},
		},
	}, {
		name: "reserving a request again replaces its reservation",
		steps: []step{
			{reserve: "r1", bid: open("a", 3, 0), want: 1},
			{reserve: "r1", bid: open("a", 3, 0), want: 1, ahead: []int{0}},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := mustLedger(t, ttl, 100)
			for i, s := range tt.steps {
				now := epoch.Add(s.at)
				switch {
				case s.reserve != "":
					l.Reserve(s.reserve, s.bid, now)
				case s.release != "":
					if !l.Release(s.release) {
						t.Fatalf("step %d: Release(%q) found nothing", i, s.release)
					}
				}
				if got := reservedIn(t, l, []Bid{s.bid}, now)["a"]; got != s.want {
					t.Fatalf("step %d: reserved against a = %d, want %d", i, got, s.want)
				}
				if s.ahead != nil {
					var ahead []int
					for _, r := range l.Reservations() {
						ahead = append(ahead, r.Ahead)
					}
					if len(ahead) != len(s.ahead) || !equalInts(ahead, s.ahead) {
						t.Fatalf("step %d: ahead = %v, want %v", i, ahead, s.ahead)
					}
				}
			}
		})
	}
}

func equalInts(a, b []int) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

func TestLedger_KeepsReservationsOfNodesThatDidNotBid(t *testing.T) {
	l := mustLedger(t, time.Minute, 10)
	l.Reserve("r1", open("a", 0, 0), epoch)
	reservedIn(t, l, []Bid{open("b", 0, 0)}, epoch.Add(time.Second))
	if l.Len() != 1 {
		t.Fatalf("reservation on a silent node was dropped: %+v", l.Reservations())
	}
}

func TestLedger_EvictsOldestWhenFull(t *testing.T) {
	l := mustLedger(t, time.Minute, 2)
	l.Reserve("r1", open("a", 0, 0), epoch)
	l.Reserve("r2", open("a", 0, 0), epoch)
	r3 := l.Reserve("r3", open("a", 0, 0), epoch)
	got := l.Reservations()
	if len(got) != 2 || got[0].RequestID != "r2" || got[1].RequestID != "r3" {
		t.Fatalf("reservations = %+v, want r2 and r3", got)
	}
	// r1 was evicted unseen, so r3 waits only for r2.
	if r3.Ahead != 1 || got[0].Ahead != 0 {
		t.Errorf("ahead after eviction: r2 %d, r3 %d; want 0 and 1", got[0].Ahead, r3.Ahead)
	}
}

func TestLedger_ReserveRecordsTheBid(t *testing.T) {
	l := mustLedger(t, 30*time.Second, 10)
	got := l.Reserve("r1", open("a", 2, 1), epoch)
	want := Reservation{RequestID: "r1", Node: "a", Seen: 3, Ahead: 0, Expires: epoch.Add(30 * time.Second)}
	if got != want {
		t.Fatalf("Reserve = %+v, want %+v", got, want)
	}
}
