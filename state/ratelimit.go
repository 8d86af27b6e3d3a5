package state

import (
	"math"
	"time"
)

// RateLimiter is a token bucket per key (an asker's node name): each key
// may take Rate tokens per second on average and Burst at once. Time is
// passed in. The number of keys is bounded: when full, the key idle the
// longest is forgotten (a forgotten key starts again with a full bucket,
// which only ever errs toward allowing). Not safe for concurrent use.
type RateLimiter struct {
	rate, burst float64
	maxKeys     int
	buckets     map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// NewRateLimiter allows rate per second with bursts of burst, tracking at
// most maxKeys keys.
func NewRateLimiter(rate, burst float64, maxKeys int) *RateLimiter {
	return &RateLimiter{rate: rate, burst: math.Max(burst, 1), maxKeys: max(maxKeys, 1), buckets: map[string]*bucket{}}
}

// Allow takes a token for key at now, reporting whether one was left.
func (r *RateLimiter) Allow(key string, now time.Time) bool {
	b, ok := r.buckets[key]
	if !ok {
		if len(r.buckets) >= r.maxKeys {
			r.evictIdlest()
		}
		b = &bucket{tokens: r.burst, at: now}
		r.buckets[key] = b
	}
	if dt := now.Sub(b.at).Seconds(); dt > 0 {
		b.tokens = math.Min(r.burst, b.tokens+dt*r.rate)
		b.at = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (r *RateLimiter) evictIdlest() {
	var idlest string
	var at time.Time
	for k, b := range r.buckets {
		if idlest == "" || b.at.Before(at) {
			idlest, at = k, b.at
		}
	}
	delete(r.buckets, idlest)
}
