package state

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrInvalidSample is returned by Averager.Add for a sample that must not
// enter the average (NaN, infinite, outside [0, 100], or without a time).
var ErrInvalidSample = errors.New("invalid load sample")

// ErrInvalidWindow is returned by NewAverager for a window that is not
// positive.
var ErrInvalidWindow = errors.New("invalid load window")

// Sample is one reading of a server's resource use, in percent.
type Sample struct {
	At  time.Time
	CPU float64
	Mem float64
}

// Load is an averaged resource use, in percent, as of At (the time of the
// newest accepted sample).
type Load struct {
	CPU float64
	Mem float64
	At  time.Time
}

// Averager is a time-based exponential moving average of CPU and memory use.
// A sample taken dt after the previous one moves the average by
// alpha = 1 - exp(-dt/window) of the way toward it, so the weight depends on
// elapsed time, not on how many samples arrived: irregular or missed
// sampling does not bend the average, and after a gap much longer than the
// window the new sample all but replaces it.
//
// The first sample initialises the average. A sample whose time is at or
// before the previous one's (a clock stepped back, or a duplicate) carries no
// weight, since no time is known to have passed; it becomes the new
// reference time, so that sampling after a backward step is weighted
// normally again rather than frozen until the clock catches up.
//
// An Averager is not safe for concurrent use.
type Averager struct {
	window time.Duration
	load   Load
	ok     bool
}

// NewAverager returns an empty Averager over window, which must be positive.
func NewAverager(window time.Duration) (*Averager, error) {
	if window <= 0 {
		return nil, fmt.Errorf("%w %v: the window must be positive, e.g. 30s", ErrInvalidWindow, window)
	}
	return &Averager{window: window}, nil
}

// Window returns the averaging window.
func (a *Averager) Window() time.Duration { return a.window }

// Add folds s into the average. A rejected sample (ErrInvalidSample) leaves
// the average unchanged.
func (a *Averager) Add(s Sample) error {
	if err := checkPercent("cpu", s.CPU); err != nil {
		return err
	}
	if err := checkPercent("mem", s.Mem); err != nil {
		return err
	}
	if s.At.IsZero() {
		return fmt.Errorf("%w: sample has no time", ErrInvalidSample)
	}
	if !a.ok {
		a.load = Load{CPU: s.CPU, Mem: s.Mem, At: s.At}
		a.ok = true
		return nil
	}
	alpha := 0.0
	if dt := s.At.Sub(a.load.At); dt > 0 {
		// -Expm1 keeps alpha accurate when dt is tiny against the window.
		alpha = -math.Expm1(-float64(dt) / float64(a.window))
	}
	a.load.CPU = ewma(a.load.CPU, s.CPU, alpha)
	a.load.Mem = ewma(a.load.Mem, s.Mem, alpha)
	a.load.At = s.At
	return nil
}

// Load returns the current average; ok is false until a sample is accepted.
func (a *Averager) Load() (l Load, ok bool) { return a.load, a.ok }

func checkPercent(name string, v float64) error {
	if math.IsNaN(v) || v < 0 || v > 100 { // also catches ±Inf
		return fmt.Errorf("%w: %s %v is outside [0, 100]", ErrInvalidSample, name, v)
	}
	return nil
}

// ewma moves avg by alpha toward x, clamped between the two so that
// rounding can never carry the average outside the samples seen.
func ewma(avg, x, alpha float64) float64 {
	v := avg + alpha*(x-avg)
	lo, hi := min(avg, x), max(avg, x)
	return min(max(v, lo), hi)
}
