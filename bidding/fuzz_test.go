package bidding

import (
	"reflect"
	"testing"

	"github.com/meshagent/agent/placement"
)

// FuzzDecodeBid: a bid is a query response from the network. No input may
// panic the decoder, and a decoded bid must encode and decode to itself.
func FuzzDecodeBid(f *testing.F) {
	for _, b := range []placement.Bid{
		{CPU: 12.5, Mem: 40, Running: 2, Capacity: 8, Healthy: true, OffersKind: true, Tags: map[string]string{"role": "server"}},
		{Refusal: "at capacity: 8 of 8", Kinds: []string{"demo", "python"}},
		{},
	} {
		data, err := EncodeBid(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{0xde, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		bid, err := DecodeBid("s1", data)
		if err != nil {
			return
		}
		again, err := EncodeBid(bid)
		if err != nil {
			return // a decoded bid may be too large to send again; that is fine
		}
		back, err := DecodeBid("s1", again)
		if err != nil {
			t.Fatalf("re-encoded bid does not decode: %v", err)
		}
		if len(bid.Refusal) <= maxRefusal && len(bid.Kinds) == len(back.Kinds) && !reflect.DeepEqual(normal(bid), normal(back)) {
			t.Fatalf("round trip changed the bid:\n%+v\n%+v", bid, back)
		}
	})
}

// normal makes empty and nil maps and slices compare equal.
func normal(b placement.Bid) placement.Bid {
	if len(b.Tags) == 0 {
		b.Tags = nil
	}
	if len(b.Kinds) == 0 {
		b.Kinds = nil
	}
	if b.CPU != b.CPU || b.Mem != b.Mem { // NaN never equals itself
		b.CPU, b.Mem = 0, 0
	}
	return b
}
