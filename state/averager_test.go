package state

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return epoch.Add(d) }

func mustAverager(t testing.TB, window time.Duration) *Averager {
	t.Helper()
	a, err := NewAverager(window)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestNewAverager_RejectsNonPositiveWindow(t *testing.T) {
	for _, w := range []time.Duration{0, -time.Second} {
		_, err := NewAverager(w)
		if !errors.Is(err, ErrInvalidWindow) {
			t.Fatalf("NewAverager(%v) error = %v, want ErrInvalidWindow", w, err)
		}
		if !strings.Contains(err.Error(), w.String()) {
			t.Errorf("error %q does not name the window %v", err, w)
		}
	}
}

func TestAverager_EmptyHasNoLoad(t *testing.T) {
	a := mustAverager(t, 30*time.Second)
	if l, ok := a.Load(); ok || l != (Load{}) {
		t.Fatalf("Load() = %+v, %v before any sample; want zero, false", l, ok)
	}
}

func TestAverager_Add(t *testing.T) {
	const window = 30 * time.Second
	e1 := 1 - 1/math.E // weight of a sample one window after the previous
	tests := []struct {
		name    string
		samples []Sample
		want    Load
	}{{
		name:    "first sample initialises",
		samples: []Sample{{At: at(0), CPU: 42, Mem: 7}},
		want:    Load{CPU: 42, Mem: 7, At: at(0)},
	}, {
		name:    "one window later moves 1-1/e of the way",
		samples: []Sample{{At: at(0), CPU: 0, Mem: 100}, {At: at(window), CPU: 100, Mem: 0}},
		want:    Load{CPU: 100 * e1, Mem: 100 * (1 - e1), At: at(window)},
	}, {
		name:    "gap far longer than the window: the new sample dominates",
		samples: []Sample{{At: at(0), CPU: 90, Mem: 90}, {At: at(1000 * window), CPU: 10, Mem: 20}},
		want:    Load{CPU: 10, Mem: 20, At: at(1000 * window)},
	}, {
		name:    "same instant carries no weight",
		samples: []Sample{{At: at(0), CPU: 10, Mem: 10}, {At: at(0), CPU: 90, Mem: 90}},
		want:    Load{CPU: 10, Mem: 10, At: at(0)},
	}, {
		name:    "clock stepped back: no weight, reference moves back",
		samples: []Sample{{At: at(time.Hour), CPU: 10, Mem: 10}, {At: at(0), CPU: 90, Mem: 90}},
		want:    Load{CPU: 10, Mem: 10, At: at(0)},
	}, {
		name: "after a backward step sampling is weighted from the new reference",
		samples: []Sample{
			{At: at(time.Hour), CPU: 0, Mem: 0},
			{At: at(0), CPU: 100, Mem: 100},
			{At: at(window), CPU: 100, Mem: 100},
		},
		want: Load{CPU: 100 * e1, Mem: 100 * e1, At: at(window)},
	}, {
		name:    "bounds 0 and 100 are accepted",
		samples: []Sample{{At: at(0), CPU: 0, Mem: 100}},
		want:    Load{CPU: 0, Mem: 100, At: at(0)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustAverager(t, window)
			for _, s := range tt.samples {
				if err := a.Add(s); err != nil {
					t.Fatalf("Add(%+v): %v", s, err)
				}
			}
			got, ok := a.Load()
			if !ok {
				t.Fatal("Load() not ok after samples")
			}
			if !near(got.CPU, tt.want.CPU, 1e-9) || !near(got.Mem, tt.want.Mem, 1e-9) || !got.At.Equal(tt.want.At) {
				t.Errorf("Load() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAverager_RejectsInvalidSample(t *testing.T) {
	tests := []struct {
		name  string
		s     Sample
		names string // what the error must mention
	}{
		{"cpu NaN", Sample{At: at(time.Second), CPU: math.NaN(), Mem: 1}, "cpu NaN"},
		{"cpu +Inf", Sample{At: at(time.Second), CPU: math.Inf(1), Mem: 1}, "cpu +Inf"},
		{"mem -Inf", Sample{At: at(time.Second), CPU: 1, Mem: math.Inf(-1)}, "mem -Inf"},
		{"cpu negative", Sample{At: at(time.Second), CPU: -0.5, Mem: 1}, "cpu -0.5"},
		{"mem above 100", Sample{At: at(time.Second), CPU: 1, Mem: 100.5}, "mem 100.5"},
		{"no time", Sample{CPU: 1, Mem: 1}, "no time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Rejected as the first sample: still no load.
			a := mustAverager(t, 30*time.Second)
			err := a.Add(tt.s)
			if !errors.Is(err, ErrInvalidSample) {
				t.Fatalf("Add(%+v) error = %v, want ErrInvalidSample", tt.s, err)
			}
			if !strings.Contains(err.Error(), tt.names) {
				t.Errorf("error %q does not mention %q", err, tt.names)
			}
			if _, ok := a.Load(); ok {
				t.Error("rejected first sample initialised the average")
			}

			// Rejected later: the average and its time are untouched.
			if err := a.Add(Sample{At: at(0), CPU: 50, Mem: 50}); err != nil {
				t.Fatal(err)
			}
			before, _ := a.Load()
			if err := a.Add(tt.s); !errors.Is(err, ErrInvalidSample) {
				t.Fatalf("Add(%+v) error = %v, want ErrInvalidSample", tt.s, err)
			}
			if after, _ := a.Load(); after != before {
				t.Errorf("rejected sample changed the average: %+v -> %+v", before, after)
			}
		})
	}
}

// randomSample draws a sample up to maxStep after prev; one in ten steps goes
// backward, to exercise clock steps.
func randomSample(r *rand.Rand, prev time.Time, maxStep time.Duration) Sample {
	step := time.Duration(r.Int64N(int64(maxStep)))
	if r.IntN(10) == 0 {
		step = -step
	}
	return Sample{At: prev.Add(step), CPU: r.Float64() * 100, Mem: r.Float64() * 100}
}

func TestAverager_StaysWithinSamples(t *testing.T) {
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 1))
		window := time.Duration(1+r.IntN(60)) * time.Second
		a := mustAverager(t, window)
		lo := Load{CPU: math.Inf(1), Mem: math.Inf(1)}
		hi := Load{CPU: math.Inf(-1), Mem: math.Inf(-1)}
		now := epoch
		for i := range 500 {
			s := randomSample(r, now, 3*window)
			now = s.At
			if err := a.Add(s); err != nil {
				t.Fatal(err)
			}
			lo.CPU, hi.CPU = min(lo.CPU, s.CPU), max(hi.CPU, s.CPU)
			lo.Mem, hi.Mem = min(lo.Mem, s.Mem), max(hi.Mem, s.Mem)
			l, _ := a.Load()
			if l.CPU < lo.CPU || l.CPU > hi.CPU || l.Mem < lo.Mem || l.Mem > hi.Mem {
				t.Fatalf("seed %d sample %d: average %+v outside samples cpu [%v, %v] mem [%v, %v]",
					seed, i, l, lo.CPU, hi.CPU, lo.Mem, hi.Mem)
			}
		}
	}
}

func TestAverager_ConstantInputStaysExact(t *testing.T) {
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 2))
		c := r.Float64() * 100
		a := mustAverager(t, 30*time.Second)
		now := epoch
		for i := range 300 {
			s := randomSample(r, now, time.Minute)
			s.CPU, s.Mem = c, c
			now = s.At
			if err := a.Add(s); err != nil {
				t.Fatal(err)
			}
			if l, _ := a.Load(); l.CPU != c || l.Mem != c {
				t.Fatalf("seed %d sample %d: average %+v drifted from constant %v", seed, i, l, c)
			}
		}
	}
}

func TestAverager_ConstantInputConverges(t *testing.T) {
	const window = 30 * time.Second
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 3))
		start, c := r.Float64()*100, r.Float64()*100
		a := mustAverager(t, window)
		if err := a.Add(Sample{At: epoch, CPU: start, Mem: start}); err != nil {
			t.Fatal(err)
		}
		now := epoch
		for now.Sub(epoch) < 30*window { // e^-30 of the gap remains
			now = now.Add(time.Duration(1 + r.Int64N(int64(2*time.Second))))
			if err := a.Add(Sample{At: now, CPU: c, Mem: c}); err != nil {
				t.Fatal(err)
			}
		}
		if l, _ := a.Load(); !near(l.CPU, c, 1e-9) || !near(l.Mem, c, 1e-9) {
			t.Errorf("seed %d: average %+v did not converge from %v to %v", seed, l, start, c)
		}
	}
}

func TestAverager_StepMovesMonotonically(t *testing.T) {
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 4))
		from, to := r.Float64()*100, r.Float64()*100
		a := mustAverager(t, time.Duration(1+r.IntN(60))*time.Second)
		now := epoch
		if err := a.Add(Sample{At: now, CPU: from, Mem: from}); err != nil {
			t.Fatal(err)
		}
		prev := from
		for i := range 300 {
			s := randomSample(r, now, 5*time.Second)
			s.CPU, s.Mem = to, to
			now = s.At
			if err := a.Add(s); err != nil {
				t.Fatal(err)
			}
			l, _ := a.Load()
			// Never away from the new level, never past it.
			if math.Abs(to-l.CPU) > math.Abs(to-prev) || (l.CPU-to)*(from-to) < 0 {
				t.Fatalf("seed %d sample %d: step %v -> %v went %v -> %v", seed, i, from, to, prev, l.CPU)
			}
			prev = l.CPU
		}
	}
}

func TestAverager_OneWindowOfStepIs63Percent(t *testing.T) {
	const window = 30 * time.Second
	for _, n := range []int{1, 2, 30, 300, 3000} {
		a := mustAverager(t, window)
		if err := a.Add(Sample{At: epoch, CPU: 0, Mem: 100}); err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= n; i++ {
			if err := a.Add(Sample{At: epoch.Add(window * time.Duration(i) / time.Duration(n)), CPU: 100, Mem: 0}); err != nil {
				t.Fatal(err)
			}
		}
		want := 100 * (1 - 1/math.E)
		if l, _ := a.Load(); !near(l.CPU, want, 1e-6) || !near(l.Mem, 100-want, 1e-6) {
			t.Errorf("%d samples over one window: cpu %v mem %v, want %v and %v", n, l.CPU, l.Mem, want, 100-want)
		}
	}
}

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func BenchmarkAverager_Add(b *testing.B) {
	a := mustAverager(b, 30*time.Second)
	now := epoch
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Second)
		if err := a.Add(Sample{At: now, CPU: float64(i % 100), Mem: 50}); err != nil {
			b.Fatal(err)
		}
	}
}
