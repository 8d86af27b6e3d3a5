package chaos

import "time"

// rng is splitmix64: a tiny seeded generator, so that a schedule is a pure
// function of its seed on every platform and Go version (math/rand's
// streams are not promised to stay the same, and its global source is
// shared).
type rng struct{ state uint64 }

// The streams of one seed: the nemesis and the clients draw apart, so
// restricting the faults leaves the client operations of a seed as they
// were.
const (
	streamFaults  uint64 = 0x6a09e667f3bcc909
	streamClients uint64 = 0xbb67ae8584caa73b
)

func newRNG(seed int64, stream uint64) *rng {
	r := &rng{state: uint64(seed) ^ stream}
	r.next() // a seed of 0 and its neighbours start apart
	return r
}

func (r *rng) next() uint64 {
	r.state += 0x9e3779b97f4a7c15
	z := r.state
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// intn is uniform in [0, n); n must be positive. The modulo bias is below
// 2^-40 for the small n drawn here.
func (r *rng) intn(n int) int { return int(r.next() % uint64(n)) }

// chance is true with probability num/den.
func (r *rng) chance(num, den int) bool { return r.intn(den) < num }

// between is uniform in [lo, hi], in whole milliseconds so that a plan
// reads well.
func (r *rng) between(lo, hi time.Duration) time.Duration {
	ms := int((hi - lo) / time.Millisecond)
	return lo + time.Duration(r.intn(ms+1))*time.Millisecond
}

// shuffle returns a shuffled copy of s (Fisher-Yates).
func shuffle[T any](r *rng, s []T) []T {
	out := append([]T(nil), s...)
	for i := len(out) - 1; i > 0; i-- {
		j := r.intn(i + 1)
		out[i], out[j] = out[j], out[i]
	}
	return out
}
