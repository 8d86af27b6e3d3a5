package simulation

import (
	"bytes"
	"compress/lzw"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Compression.
//
// memberlist compresses every packet and stream it sends with a fresh LZW
// writer (EnableCompression, on by default). A real node pays that on its
// own core; a thousand simulated nodes pay it on two: profiled at 600
// nodes, LZW was 60% of the process's CPU, and the starved timers turned
// into hundreds of false suspicions while the mesh formed.
//
// So by default the simulated nodes send uncompressed (gossip.Config's
// Uncompressed) and the network estimates what memberlist would have put
// on the wire: it compresses, as memberlist would, one packet in
// packetSample and one stream message in streamSample, and scales the
// rest by the ratios found. The packets themselves are the same either
// way: memberlist fills a packet before it compresses it. What compressing
// everything would have cost in CPU is estimated from a calibration at
// start (compressing a full packet, and a large message, on a quiet
// process). RunConfig.ExactCompression has memberlist compress for real.

const (
	packetSample = 256 // one packet in this many is compressed for the ratio
	streamSample = 16  // one stream message in this many
	bucketWarmup = 16  // the first messages of each size class are all compressed
)

// sizeBuckets split messages by size: LZW's gain depends on it (a probe of
// 80 bytes does not shrink, a full gossip packet halves), and the mix of
// sizes changes over a run (big gossip while the mesh forms, small probes
// after), so one ratio for all would be biased.
var sizeBuckets = [...]int{128, 256, 512, 1024, 4096, 16384, 65536}

func bucketOf(n int) int {
	for i, limit := range sizeBuckets {
		if n < limit {
			return i
		}
	}
	return len(sizeBuckets)
}

// ratioTable is compressed over sent bytes per size class, learnt from
// samples. Safe for concurrent use.
type ratioTable struct {
	seen [len(sizeBuckets) + 1]atomic.Uint64
	mu   sync.Mutex
	raw  [len(sizeBuckets) + 1]uint64
	wire [len(sizeBuckets) + 1]uint64
	// ratio holds each class's ratio as float64 bits, 1 until sampled.
	ratio [len(sizeBuckets) + 1]atomic.Uint64
}

// note estimates b's compressed size, compressing it when sampled; keep
// says which of the two memberlist would send (packets: the smaller).
func (t *ratioTable) note(b []byte, every uint64, packet bool) float64 {
	k := bucketOf(len(b))
	n := t.seen[k].Add(1)
	if n <= bucketWarmup || n%every == 0 {
		wire := compressedSize(b)
		if packet {
			wire = min(wire, len(b))
		}
		t.mu.Lock()
		t.raw[k] += uint64(len(b))
		t.wire[k] += uint64(wire)
		t.ratio[k].Store(math.Float64bits(float64(t.wire[k]) / float64(t.raw[k])))
		t.mu.Unlock()
		return float64(wire)
	}
	r := 1.0
	if bits := t.ratio[k].Load(); bits != 0 {
		r = math.Float64frombits(bits)
	}
	return float64(len(b)) * r
}

// overall is the ratio over every sample.
func (t *ratioTable) overall() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var raw, wire uint64
	for k := range t.raw {
		raw += t.raw[k]
		wire += t.wire[k]
	}
	if raw == 0 {
		return 1
	}
	return float64(wire) / float64(raw)
}

// wireEstimate estimates compressed sizes; a nil one means memberlist
// compresses for real and bytes count as sent. Safe for concurrent use.
type wireEstimate struct {
	packets, streams ratioTable
	nPackets         atomic.Uint64
	streamBytes      atomic.Uint64 // every stream message's, for the CPU estimate
	ppWire, ppCount  atomic.Uint64 // push/pull messages: estimated wire bytes, count

	perPacket, perByteRaw float64 // calibrated CPU seconds: a full packet; a byte of a large message
}

func newWireEstimate() *wireEstimate {
	e := &wireEstimate{}
	e.calibrate()
	return e
}

// calibrate times LZW on a gossip-like full packet and a 64 KiB message.
func (e *wireEstimate) calibrate() {
	var msg bytes.Buffer
	for i := 0; msg.Len() < 64<<10; i++ {
		fmt.Fprintf(&msg, "\x82\xa4Node\xa9node-%04d\xa4Addr\xc4\x04\x0a\x00%c%c\xa4Meta\xc4\x28role=server,load=%d,%d,cap=8", i, byte(i>>8), byte(i), 40+i%50, 20+i%70)
	}
	b := msg.Bytes()
	const rounds = 20
	start := time.Now()
	for range rounds {
		compressAsMemberlist(b[:1374])
	}
	e.perPacket = time.Since(start).Seconds() / rounds
	start = time.Now()
	compressAsMemberlist(b)
	e.perByteRaw = time.Since(start).Seconds() / float64(len(b))
}

// compressAsMemberlist compresses b as memberlist does, with a new writer
// and buffer each time: what the CPU estimate is calibrated on.
func compressAsMemberlist(b []byte) int {
	var buf bytes.Buffer
	w := lzw.NewWriter(&buf, lzw.LSB, 8)
	w.Write(b)
	w.Close()
	return buf.Len()
}

// compressedSize is the size of memberlist's compressed message for b: a
// message type byte, then a msgpack map {Algo: 0, Buf: <lzw bytes>}.
func compressedSize(b []byte) int {
	n := lzwSize(b)
	hdr := 5 // msgpack's raw header for the Buf bytes
	switch {
	case n < 32:
		hdr = 1
	case n < 1<<8:
		hdr = 2
	case n < 1<<16:
		hdr = 3
	}
	return 1 + 1 + 5 + 1 + 4 + hdr + n
}

// lzwSize is the length of b compressed with LZW as memberlist does it.
func lzwSize(b []byte) int {
	var n byteCount
	w := lzwWriters.Get().(*lzw.Writer)
	w.Reset(&n, lzw.LSB, 8)
	w.Write(b)
	w.Close()
	lzwWriters.Put(w)
	return int(n)
}

// lzwWriters are reused: a new LZW writer allocates a 64 KiB table, which
// at one sample in 256 packets of a 1,000-node mesh was more garbage than
// the sample was worth.
var lzwWriters = sync.Pool{New: func() any { return lzw.NewWriter(io.Discard, lzw.LSB, 8).(*lzw.Writer) }}

// byteCount is a writer that only counts; as an io.ByteWriter it spares
// the LZW writer a buffer of its own.
type byteCount int

func (c *byteCount) Write(p []byte) (int, error) {
	*c += byteCount(len(p))
	return len(p), nil
}

func (c *byteCount) WriteByte(byte) error {
	*c++
	return nil
}

// packet is the estimated size on the wire of one packet as sent;
// memberlist keeps the smaller of the packet and its compression.
func (e *wireEstimate) packet(b []byte) float64 {
	if e == nil {
		return float64(len(b))
	}
	e.nPackets.Add(1)
	return e.packets.note(b, packetSample, true)
}

// stream is the estimated size on the wire of one stream message
// (memberlist writes each whole, and always compressed).
func (e *wireEstimate) stream(b []byte) float64 {
	if e == nil {
		return float64(len(b))
	}
	e.streamBytes.Add(uint64(len(b)))
	w := e.streams.note(b, streamSample, false)
	if len(b) > 0 && b[0] == mlPushPull {
		e.ppWire.Add(uint64(math.Round(w)))
		e.ppCount.Add(1)
	}
	return w
}

// ratios are compressed over sent bytes over every sample, packets and
// streams; 1 before any sample, and for a nil estimate.
func (e *wireEstimate) ratios() (packets, streams float64) {
	if e == nil {
		return 1, 1
	}
	return e.packets.overall(), e.streams.overall()
}

// compressCPU estimates the CPU that compressing every packet and stream
// so far would have taken.
func (e *wireEstimate) compressCPU() time.Duration {
	if e == nil {
		return 0
	}
	s := float64(e.nPackets.Load())*e.perPacket + float64(e.streamBytes.Load())*e.perByteRaw
	return time.Duration(s * float64(time.Second))
}

// pushPulls is the estimated wire bytes and the count of the push/pull
// messages sent so far: each is one side's whole state. The other stream
// messages (joins' replies aside, TCP pings of a few dozen bytes) are not
// counted.
func (e *wireEstimate) pushPulls() (wire, count uint64) {
	if e == nil {
		return 0, 0
	}
	return e.ppWire.Load(), e.ppCount.Load()
}
