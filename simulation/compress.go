package simulation

import (
	"bytes"
	"compress/lzw"
	"fmt"
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
)

// wireEstimate estimates compressed sizes; a nil one means memberlist
// compresses for real and bytes count as sent. Safe for concurrent use.
type wireEstimate struct {
	packets, streams atomic.Uint64 // offered so far

	mu                    sync.Mutex
	pRaw, pWire           uint64 // the sampled packets: as sent, compressed
	sRaw, sWire           uint64 // the sampled stream messages
	sCount                uint64
	perPacket, perByteRaw float64 // calibrated CPU seconds: a full packet; a byte of a large message
	streamBytes           uint64  // every stream message's bytes, for the CPU estimate
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
		compressedSize(b[:1374])
	}
	e.perPacket = time.Since(start).Seconds() / rounds
	start = time.Now()
	compressedSize(b)
	e.perByteRaw = time.Since(start).Seconds() / float64(len(b))
}

// compressedSize is the size of memberlist's compressed message for b: a
// message type byte, then a msgpack map {Algo: 0, Buf: <lzw bytes>}.
func compressedSize(b []byte) int {
	var buf bytes.Buffer
	w := lzw.NewWriter(&buf, lzw.LSB, 8)
	w.Write(b)
	w.Close()
	n := buf.Len()
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

// packet notes one packet as sent, and samples it.
func (e *wireEstimate) packet(b []byte) {
	if e == nil || e.packets.Add(1)%packetSample != 0 {
		return
	}
	wire := min(compressedSize(b), len(b)) // memberlist keeps the smaller
	e.mu.Lock()
	e.pRaw += uint64(len(b))
	e.pWire += uint64(wire)
	e.mu.Unlock()
}

// stream notes one stream message (memberlist writes each whole), and
// samples it; memberlist always sends a stream message compressed.
func (e *wireEstimate) stream(b []byte) {
	if e == nil {
		return
	}
	k := e.streams.Add(1)
	e.mu.Lock()
	e.streamBytes += uint64(len(b))
	e.mu.Unlock()
	if k%streamSample != 1 { // the first is sampled: a short run has few
		return
	}
	wire := compressedSize(b)
	e.mu.Lock()
	e.sRaw += uint64(len(b))
	e.sWire += uint64(wire)
	e.sCount++
	e.mu.Unlock()
}

func ratio(wire, raw uint64) float64 {
	if raw == 0 {
		return 1
	}
	return float64(wire) / float64(raw)
}

// ratios are compressed over sent bytes, packets and streams; 1 before any
// sample. A nil estimate has both 1.
func (e *wireEstimate) ratios() (packets, streams float64) {
	if e == nil {
		return 1, 1
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return ratio(e.pWire, e.pRaw), ratio(e.sWire, e.sRaw)
}

// compressCPU estimates the CPU that compressing every packet and stream
// so far would have taken.
func (e *wireEstimate) compressCPU() time.Duration {
	if e == nil {
		return 0
	}
	e.mu.Lock()
	sb := e.streamBytes
	e.mu.Unlock()
	s := float64(e.packets.Load())*e.perPacket + float64(sb)*e.perByteRaw
	return time.Duration(s * float64(time.Second))
}

// streamMean is the mean size on the wire of the sampled stream messages.
func (e *wireEstimate) streamMean() float64 {
	if e == nil {
		return 0
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sCount == 0 {
		return 0
	}
	return float64(e.sWire) / float64(e.sCount)
}

// wireBytes is what the bytes sent in s stand for on the wire.
func (e *wireEstimate) wireBytes(s TrafficStats) float64 {
	if e == nil {
		return float64(s.BytesSent)
	}
	p, st := e.ratios()
	return math.Round(float64(s.BytesSent-s.StreamBytesSent)*p + float64(s.StreamBytesSent)*st)
}

// streamWire is what stream bytes stand for on the wire.
func (e *wireEstimate) streamWire(raw uint64) float64 {
	_, st := e.ratios()
	return math.Round(float64(raw) * st)
}
