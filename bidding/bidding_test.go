package bidding

import (
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/placement"
)

func TestBidRoundTrip(t *testing.T) {
	in := placement.Bid{Node: "s1", CPU: 12.5, Mem: 99.9, Running: 3, Pending: 1, Capacity: 8, Healthy: true,
		OffersKind: true, Tags: map[string]string{"role": "server", "dc": "east"}, Refusal: "busy", Kinds: []string{"demo", "python"}}
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
		Kinds: strings.Split(strings.Repeat("kind-with-a-long-name,", 40), ",")}
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
