package testbed_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/agent/scripts/testbed"
)

// TestADeafHostWhoseTagsChangeDoesNotFlap: a host that hears no one for
// 40 s while its user tags change every second (`agent tags --set`, each
// change an incarnation bump if it were gossiped). The healthy hosts fail
// it at most once each and never bring it back before the repair, never
// fail one another, and after the repair see its last change.
func TestADeafHostWhoseTagsChangeDoesNotFlap(t *testing.T) {
	b := newBed(t, "fast", testbed.Filters)
	victim, rest := b.Hosts[4:], b.Hosts[:4]
	v5 := victim[0]
	if err := b.Cut(rest, victim); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	last, changes := "", 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			res, err := v5.CLI(cctx, "tags", "--set", "turn="+strconv.Itoa(i))
			cancel()
			if err != nil || res.Code != 0 {
				if ctx.Err() == nil {
					t.Errorf("agent tags --set turn=%d on %s: %v, exit %d: %s", i, v5.Name, err, res.Code, res.Stderr)
				}
				continue
			}
			mu.Lock()
			last, changes = strconv.Itoa(i), changes+1
			mu.Unlock()
		}
	}()
	polls := observe(t, b, 40*time.Second, rest)
	stop()
	wg.Wait()

	failures, revivals := 0, 0
	for _, o := range rest {
		prev, fails := "alive", 0
		for _, p := range polls {
			st := p.v[o.Name][v5.Name]
			if st == "" {
				continue
			}
			if prev != "failed" && st == "failed" {
				failures++
				fails++
			}
			if prev == "failed" && st == "alive" {
				revivals++
				t.Errorf("%s saw %s alive again at +%.1fs, before the repair", o.Name, v5.Name, p.at.Seconds())
			}
			prev = st
		}
		if fails > 1 {
			t.Errorf("%s failed %s %d times in 40 s, want at most once", o.Name, v5.Name, fails)
		}
	}
	if at := firstWhen(polls, func(v testbed.View) bool { return v.Any(rest, rest, "failed") }); at >= 0 {
		t.Errorf("a healthy host saw another healthy host failed at +%.1fs", at.Seconds())
	}
	mu.Lock()
	want, n := last, changes
	mu.Unlock()
	if n < 30 {
		t.Errorf("only %d tag changes went through on the deaf host in 40 s, want one a second", n)
	}
	t.Logf("measure: deaf host, tags every 1s: %d tag changes, %d failures and %d revivals of %s in the views of %d healthy hosts",
		n, failures, revivals, v5.Name, len(rest))

	if err := b.Heal(); err != nil {
		t.Fatal(err)
	}
	repaired := waitView(t, b, "one view everywhere after the repair", 30*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(b.Hosts, b.Hosts, "alive")
	})
	measure(t, "deaf host, tags every 1s", "repair to one view everywhere", repaired)
	// The change held while deaf is published once the host hears again.
	pollUntil(t, "every healthy host to see the deaf host's last tag turn="+want, 30*time.Second, func() bool {
		for _, o := range rest {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ms, err := o.Members(cctx)
			cancel()
			if err != nil || ms[v5.Name].Tags["turn"] != want {
				return false
			}
		}
		return true
	})
}
