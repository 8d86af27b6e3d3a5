package state

import (
	"testing"
	"time"
)

func TestPublishDecide(t *testing.T) {
	p := DefaultPublishPolicy()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	last := Published{CPU: 40, Mem: 30, Interpreters: 2, At: t0, Valid: true}
	cases := []struct {
		name     string
		last     Published
		cpu, mem float64
		ni       int
		after    time.Duration
		want     bool
	}{
		{"first publication", Published{}, 10, 10, 0, 0, true},
		{"steady load", last, 40, 30, 2, 30 * time.Second, false},
		{"noise below a decimal", last, 40.04, 29.96, 2, 10 * time.Second, false},
		{"cpu past threshold", last, 42.1, 30, 2, 3 * time.Second, true},
		{"mem past threshold, down", last, 40, 27.9, 2, 3 * time.Second, true},
		{"exactly the threshold is not past it", last, 42, 30, 2, 3 * time.Second, false},
		{"big move inside min interval waits", last, 90, 90, 2, time.Second, false},
		{"interpreter count inside min interval waits", last, 40, 30, 3, time.Second, false},
		{"interpreter count changed", last, 40, 30, 3, 2 * time.Second, true},
		{"small drift before max interval", last, 41, 30, 2, 59 * time.Second, false},
		{"small drift at max interval", last, 41, 30, 2, 60 * time.Second, true},
		{"no drift at max interval", last, 40, 30, 2, 10 * time.Minute, false},
		{"clock stepped back", last, 90, 30, 2, -time.Hour, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, why := p.Decide(c.last, c.cpu, c.mem, c.ni, t0.Add(c.after))
			if got != c.want {
				t.Fatalf("Decide = %v (%s), want %v", got, why, c.want)
			}
		})
	}
}

// A constant load after the first publication never publishes again, over
// any number of samples.
func TestPublishSteadyLoadNeverRepublishes(t *testing.T) {
	p := DefaultPublishPolicy()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	last := Published{}
	updates := 0
	for i := 0; i < 3600; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		if ok, _ := p.Decide(last, 37.25, 61.04, 1, now); ok {
			updates++
			last = Published{CPU: Round1(37.25), Mem: Round1(61.04), Interpreters: 1, At: now, Valid: true}
		}
	}
	if updates != 1 {
		t.Fatalf("%d updates in an hour of steady load, want 1", updates)
	}
}

func TestPublishPolicyValidate(t *testing.T) {
	for _, p := range []PublishPolicy{
		{Threshold: -1, MinInterval: time.Second, MaxInterval: time.Minute},
		{Threshold: 1, MinInterval: 0, MaxInterval: time.Minute},
		{Threshold: 1, MinInterval: time.Minute, MaxInterval: time.Second},
	} {
		if p.Validate() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if err := DefaultPublishPolicy().Validate(); err != nil {
		t.Fatal(err)
	}
}
