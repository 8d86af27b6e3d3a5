package bidding

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
)

func TestBidRoundTrip(t *testing.T) {
	in := placement.Bid{Node: "s1", CPU: 12.5, Mem: 99.9, Running: 3, Pending: 1, Capacity: 8, Healthy: true,
		OffersKind: true, Tags: map[string]string{"role": "server", "dc": "east"}, Refusal: "busy", Kinds: []string{"demo", "python"},
		Holds: "demo-r1-ab12", HoldsGen: 2, Known: true, KnownGen: 0, Claimer: "s9", Claimed: true, ClaimGen: 3, Servers: 7,
		Ended: "demo-r1-cd34"}
	data, err := EncodeBid(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeBid("s1", data)
	if err != nil || !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in %+v\nout %+v\nerr %v", in, out, err)
	}
}

// The largest bid a server can send fits serf's query response limit: tags
// at memberlist's cap, the longest refusal, the largest numbers.
func TestWorstCaseBidFitsAResponse(t *testing.T) {
	tags := map[string]string{}
	for i := 0; gossip.EncodedTagSize(tags) < gossip.MaxTagBytes-40; i++ {
		tags[strings.Repeat(string(rune('a'+i%26)), 1+i/26)+"k"] = strings.Repeat("v", 30)
	}
	b := placement.Bid{Node: strings.Repeat("n", 128), CPU: 100.0000001, Mem: 99.999999, Running: 1 << 40, Pending: 1 << 40,
		Capacity: 1 << 40, Healthy: true, OffersKind: true, Tags: tags, Refusal: strings.Repeat("r", 5000),
		Kinds: strings.Split(strings.Repeat("kind-with-a-long-name,", 40), ","),
		Holds: strings.Repeat("h", 32+1+17+1+4), HoldsGen: 1 << 40, Known: true, KnownGen: 1 << 40, Claimer: strings.Repeat("c", 128), Claimed: true, ClaimGen: 1 << 40, Servers: 1 << 20,
		Ended: strings.Repeat("e", 32+1+17+1+4)} // the longest interpreter name and node name
	data, err := EncodeBid(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > MaxResponseBytes {
		t.Fatalf("worst-case bid is %d bytes, over %d", len(data), MaxResponseBytes)
	}
	t.Logf("worst-case bid: %d of %d bytes (tags %d bytes)", len(data), MaxResponseBytes, gossip.EncodedTagSize(tags))
}

func TestDecodeBidRejectsGarbageAndOtherVersions(t *testing.T) {
	if _, err := DecodeBid("s1", []byte{0xc1, 0x00}); err == nil || !strings.Contains(err.Error(), "s1") {
		t.Fatalf("garbage: %v", err)
	}
	v2, _ := msgpack.Marshal(wireBid{Version: 2})
	if _, err := DecodeBid("s1", v2); err == nil || !strings.Contains(err.Error(), "wire version 2") {
		t.Fatalf("version 2: %v", err)
	}
}

func TestServersIgnoresRolelessAndDeadMembers(t *testing.T) {
	got := Servers([]gossip.Member{
		{Name: "b", Status: gossip.StatusAlive, Tags: map[string]string{"role": "server"}},
		{Name: "a", Status: gossip.StatusAlive, Tags: map[string]string{"role": "server"}},
		{Name: "plain", Status: gossip.StatusAlive, Tags: map[string]string{}},
		{Name: "interp", Status: gossip.StatusAlive, Tags: map[string]string{"role": "interpreter"}},
		{Name: "dead", Status: gossip.StatusFailed, Tags: map[string]string{"role": "server"}},
	})
	if !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("servers %v", got)
	}
}

// startNode starts a gossip node on loopback with the local profile.
func startNode(t *testing.T, name string, tags gossip.Tags) *gossip.Node {
	t.Helper()
	port, err := gossip.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	n, err := gossip.Start(gossip.Config{Name: name, BindAddr: "127.0.0.1", BindPort: port, Profile: "local", Tags: tags.Map()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Shutdown() })
	return n
}

// A server that misses the place query (here: ignores it, as if the gossip
// never reached it) is asked again once answers stop, up to maxReasks
// times; one that misses every query is reported missing.
func TestCollectReasksAServerThatMissedTheQuery(t *testing.T) {
	for _, missed := range []int{1, maxReasks, maxReasks + 1} {
		t.Run(fmt.Sprintf("missed=%d", missed), func(t *testing.T) {
			asker := startNode(t, "asker", gossip.Tags{Role: gossip.RoleServer})
			deaf := startNode(t, "deaf", gossip.Tags{Role: gossip.RoleServer})
			Serve(asker, func(string, Request) placement.Bid { return placement.Bid{Healthy: true, OffersKind: true} },
				slog.New(slog.DiscardHandler))
			var mu sync.Mutex
			heard := 0
			deaf.HandleQuery(QueryName, func(q *gossip.Query) {
				mu.Lock()
				heard++
				lost := heard <= missed
				mu.Unlock()
				if lost {
					return
				}
				data, _ := EncodeBid(placement.Bid{Healthy: true, OffersKind: true})
				q.Respond(data)
			})
			if _, err := asker.Join([]string{deaf.Addr()}, false); err != nil {
				t.Fatal(err)
			}
			res, err := Collect(context.Background(), asker, Request{ID: "r1", Kind: "demo"}, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			wantBids, wantMissing, wantHeard := 2, 0, missed+1
			if missed > maxReasks {
				wantBids, wantMissing, wantHeard = 1, 1, maxReasks+1
			}
			if len(res.Bids) != wantBids || len(res.Missing) != wantMissing || heard != wantHeard {
				t.Fatalf("bids %d, missing %v, the deaf server heard %d queries; want %d bids, %d missing, %d queries",
					len(res.Bids), res.Missing, heard, wantBids, wantMissing, wantHeard)
			}
		})
	}
}

// A re-ask names the silent servers while their names fit serf's query size
// limit, and goes to every server when they do not.
func TestReaskFitsSerfsQueryLimit(t *testing.T) {
	n := startNode(t, "asker", gossip.Tags{Role: gossip.RoleServer})
	payload := []byte("a place request")
	params := func(nodes []string) gossip.QueryParams {
		return gossip.QueryParams{FilterNodes: nodes, FilterTags: map[string]string{gossip.TagRole: "^server$"}}
	}
	few := []string{"s2", "s1"}
	if got := reaskParams(n, payload, few, params).FilterNodes; !reflect.DeepEqual(got, []string{"s1", "s2"}) {
		t.Fatalf("a short silent list: filter %v, want it named, sorted", got)
	}
	var many []string
	for i := 0; i < 40; i++ {
		many = append(many, fmt.Sprintf("ip-10-0-%d-17.eu-west-1.compute.internal", i))
	}
	if n.QuerySize(QueryName, payload, params(many)) <= gossip.QuerySizeLimit {
		t.Fatal("the test's long list fits; make it longer")
	}
	if got := reaskParams(n, payload, many, params); got.FilterNodes != nil || got.FilterTags[gossip.TagRole] == "" {
		t.Fatalf("a silent list over the limit: params %+v, want every server asked", got)
	}
}
