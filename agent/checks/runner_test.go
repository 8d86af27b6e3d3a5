package checks

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/agent/state"
)

// scriptedProber answers each probe of a check with the next of its
// results (the last one repeats): a stand-in for the probe's I/O.
type scriptedProber struct {
	mu      sync.Mutex
	results []Status
	calls   int
}

func (p *scriptedProber) Probe(ctx context.Context, d Definition) Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := min(p.calls, len(p.results)-1)
	p.calls++
	return Result{Status: p.results[i], Output: string(p.results[i])}
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// step waits until the check has taken its result at the clock's present
// time, then moves the clock one interval.
func step(t *testing.T, r *Runner, clk *state.FakeClock, d time.Duration) {
	t.Helper()
	poll(t, "the check to run at "+clk.Now().String(), func() bool {
		return r.Views()[0].Checked.Equal(clk.Now()) && clk.Waiters() >= 2
	})
	clk.Advance(d)
}

// TestRunnerGoesCriticalAfterFailuresInARow: a check that starts failing
// goes critical at its third failure (failures_before_critical 3), that is
// within interval x failures of the first one, and the change is reported
// with the check's name.
func TestRunnerGoesCriticalAfterFailuresInARow(t *testing.T) {
	clk := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	prober := &scriptedProber{results: []Status{Passing, Passing, Critical}}
	d := Definition{Name: "disk", Type: TCP, TCP: "127.0.0.1:1", Interval: 10 * time.Second, Timeout: time.Second,
		FailuresBeforeCritical: 3, SuccessesBeforePassing: 1}
	var mu sync.Mutex
	var reports [][]string
	r := NewRunner([]Definition{d}, clk, prober, func(c []string) { mu.Lock(); reports = append(reports, c); mu.Unlock() })
	if got := r.Critical(); !slices.Equal(got, []string{"disk"}) {
		t.Fatalf("before its first result a check is critical; Critical() = %v", got)
	}
	r.Start()
	defer r.Stop()
	step(t, r, clk, d.Interval) // pass: passing
	step(t, r, clk, d.Interval) // pass
	firstFailure := clk.Now()
	step(t, r, clk, d.Interval) // fail 1
	step(t, r, clk, d.Interval) // fail 2
	if len(r.Critical()) != 0 {
		t.Fatalf("critical after 2 failures of 3")
	}
	poll(t, "the third failure to make it critical", func() bool { return len(r.Critical()) == 1 })
	v := r.Views()[0]
	if v.Status != Critical || v.Since.Sub(firstFailure) > time.Duration(d.FailuresBeforeCritical)*d.Interval {
		t.Fatalf("view %+v: critical since %s, first failure at %s", v, v.Since, firstFailure)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 2 || len(reports[0]) != 0 || !slices.Equal(reports[1], []string{"disk"}) {
		t.Fatalf("reported changes %v, want [] (passing) then [disk]", reports)
	}
}

// TestRunnerTTL: a ttl check passes while reports arrive within its ttl
// and goes critical when none does.
func TestRunnerTTL(t *testing.T) {
	clk := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	d := Definition{Name: "backup", Type: TTL, TTL: 30 * time.Second, FailuresBeforeCritical: 1, SuccessesBeforePassing: 1}
	r := NewRunner([]Definition{d}, clk, nil, nil)
	r.Start()
	defer r.Stop()
	if err := r.Report("backup", Passing, "ran at 02:00"); err != nil {
		t.Fatal(err)
	}
	poll(t, "the report to pass the check", func() bool { return r.Views()[0].Status == Passing })
	if v := r.Views()[0]; v.Output != "ran at 02:00" {
		t.Fatalf("output %q", v.Output)
	}
	poll(t, "the ttl loop to wait", func() bool { return clk.Waiters() > 0 })
	clk.Advance(d.TTL)
	poll(t, "the missed ttl to make it critical", func() bool { return r.Views()[0].Status == Critical })
	if err := r.Report("nope", Passing, ""); err == nil {
		t.Fatal("a report for an unknown check was taken")
	}
}

// TestOSProber probes real loopback targets and scripts.
func TestOSProber(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("fine")) }))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "disk full", 500) }))
	defer bad.Close()
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		d    Definition
		want Status
	}{
		{Definition{Type: TCP, TCP: ln.Addr().String()}, Passing},
		{Definition{Type: TCP, TCP: closed}, Critical},
		{Definition{Type: HTTP, HTTP: ok.URL}, Passing},
		{Definition{Type: HTTP, HTTP: bad.URL}, Critical},
		{Definition{Type: Script, Args: []string{script("ok", "echo fine")}}, Passing},
		{Definition{Type: Script, Args: []string{script("warn", "echo low; exit 1")}}, Warning},
		{Definition{Type: Script, Args: []string{script("crit", "echo gone; exit 2")}}, Critical},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got := OSProber{}.Probe(ctx, tc.d)
		cancel()
		if got.Status != tc.want {
			t.Errorf("%s %v%s%s: %s (%q), want %s", tc.d.Type, tc.d.Args, tc.d.TCP, tc.d.HTTP, got.Status, got.Output, tc.want)
		}
	}
	// A script past its deadline is killed, with what it started.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if got := (OSProber{}).Probe(ctx, Definition{Type: Script, Args: []string{script("hang", "sleep 60")}}); got.Status != Critical {
		t.Errorf("a hung script: %+v", got)
	}
}

// TestTCPSendExpectFindsAHungServer: a tcp check with send and expect
// passes on a server that answers and goes critical at its deadline on
// one whose socket accepts (as the kernel does for a stopped program) but
// that never answers; a bare connect passes on both.
func TestTCPSendExpectFindsAHungServer(t *testing.T) {
	answering, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer answering.Close()
	go func() {
		for {
			c, err := answering.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				c.Write(buf[:n])
			}()
		}
	}()
	hung, err := net.Listen("tcp", "127.0.0.1:0") // never accepted from: the backlog answers the connect
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	for _, tc := range []struct {
		addr, send, expect string
		want               Status
	}{
		{answering.Addr().String(), "ping\n", "ping", Passing},
		{hung.Addr().String(), "", "", Passing},
		{hung.Addr().String(), "ping\n", "ping", Critical},
		{answering.Addr().String(), "ping\n", "pong", Critical},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		got := OSProber{}.Probe(ctx, Definition{Type: TCP, TCP: tc.addr, Send: tc.send, Expect: tc.expect})
		cancel()
		if got.Status != tc.want {
			t.Errorf("tcp %s send %q expect %q: %s (%q), want %s", tc.addr, tc.send, tc.expect, got.Status, got.Output, tc.want)
		}
	}
}
