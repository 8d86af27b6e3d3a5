package state

import (
	"testing"
	"time"
)

func TestRateLimiterBurstThenRate(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := NewRateLimiter(10, 20, 100)
	allowed := 0
	for i := 0; i < 50; i++ {
		if r.Allow("asker", t0) {
			allowed++
		}
	}
	if allowed != 20 {
		t.Fatalf("a burst at one instant allowed %d, want the burst of 20", allowed)
	}
	if r.Allow("asker", t0.Add(50*time.Millisecond)) {
		t.Fatal("half a token after 50 ms was enough")
	}
	if !r.Allow("asker", t0.Add(100*time.Millisecond)) {
		t.Fatal("one token after 100 ms at 10/s was refused")
	}
	if !r.Allow("other", t0) {
		t.Fatal("one asker's burst limited another")
	}
	// Over 10 s at a steady 20/s, about 10/s get through.
	allowed = 0
	for i := 0; i < 200; i++ {
		if r.Allow("steady", t0.Add(time.Duration(i)*50*time.Millisecond)) {
			allowed++
		}
	}
	if allowed < 115 || allowed > 125 {
		t.Fatalf("%d of 200 allowed over 10 s at 10/s with burst 20", allowed)
	}
}

func TestRateLimiterClockBackAndKeyBound(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := NewRateLimiter(1, 1, 2)
	r.Allow("a", t0)
	if r.Allow("a", t0.Add(-time.Hour)) {
		t.Fatal("a clock stepping back refilled the bucket")
	}
	r.Allow("b", t0.Add(time.Second))
	r.Allow("c", t0.Add(2*time.Second)) // evicts a, the idlest
	if len(r.buckets) != 2 {
		t.Fatalf("%d keys tracked, bound is 2", len(r.buckets))
	}
	if _, ok := r.buckets["a"]; ok {
		t.Fatal("the idlest key was kept")
	}
}
