package simulation

import (
	"bytes"
	"fmt"
	"math"
	"testing"
)

// gossipLike is a packet shaped like memberlist's alive messages.
func gossipLike(i int) []byte {
	var b bytes.Buffer
	for b.Len() < 1300 {
		fmt.Fprintf(&b, "\x82\xa4Node\xa9node-%04d\xa4Meta\xc4\x28role=server,load=%d,cap=8", i, 40+i%50)
		i++
	}
	return b.Bytes()
}

func TestEstimatedBytesFollowTheSample(t *testing.T) {
	n, ep := testNet(t, NetworkConfig{Seed: 1, EstimateCompression: true})
	var sent, compressed float64
	for i := 0; i < 4*packetSample; i++ {
		p := gossipLike(i)
		sent += float64(len(p))
		compressed += float64(min(compressedSize(p), len(p)))
		if _, err := ep["a"].WriteTo(p, ep["b"].Addr()); err != nil {
			t.Fatal(err)
		}
	}
	got := n.WireBytes(ep["a"].Stats())
	if want := compressed; math.Abs(got-want)/want > 0.1 {
		t.Errorf("estimated %.0f bytes on the wire, compressing each packet gives %.0f (sent %.0f)", got, want, sent)
	}
	if got >= sent {
		t.Errorf("the estimate %.0f is not below the %.0f bytes sent uncompressed", got, sent)
	}
	if n.est.compressCPU() <= 0 {
		t.Error("no CPU estimated for compressing what was sent")
	}

	exact, ep2 := testNet(t, NetworkConfig{Seed: 1})
	p := gossipLike(0)
	ep2["a"].WriteTo(p, ep2["b"].Addr())
	if got := exact.WireBytes(ep2["a"].Stats()); got != float64(len(p)) {
		t.Errorf("without the estimate, %v bytes count as %v", len(p), got)
	}
}

func TestAReusedWriterCompressesAsAFreshOne(t *testing.T) {
	for i := range 40 {
		p := gossipLike(i)[:100+i*30]
		if got, want := lzwSize(p), compressAsMemberlist(p); got != want {
			t.Fatalf("%d bytes: a reused writer gives %d bytes, a fresh one %d", len(p), got, want)
		}
	}
}

func TestPushPullsAreCountedApartFromOtherStreams(t *testing.T) {
	e := newWireEstimate()
	state := append([]byte{mlPushPull}, gossipLike(0)...)
	ping := []byte{mlPing, 0x81, 0xa5, 'S', 'e', 'q', 'N', 'o', 0x01} // a TCP ping
	e.stream(state)
	e.stream(ping)
	e.stream(state)
	if w, n := e.pushPulls(); n != 2 || w == 0 || w >= 2*uint64(len(state)) {
		t.Errorf("two push/pulls of %d bytes and a ping counted as %d push/pulls, %d bytes on the wire", len(state), n, w)
	}

	// A real forming: every join is a push/pull each way.
	c := startTestCluster(t, 5)
	if _, n := c.net.est.pushPulls(); n < 2*4 {
		t.Errorf("5 nodes formed with %d push/pull messages counted, want at least 8 (4 joins, each way)", n)
	}
}
