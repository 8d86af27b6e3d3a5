package agent

import (
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/agent/internal/notifytest"
	"github.com/meshagent/agent/state"
)

// TestNotifyReadyAfterJoinWatchdogAndStopping: under a Type=notify unit
// (a fake notify socket) the agent says READY=1 once it has joined, pings
// the watchdog while its gossip answers, and says STOPPING=1 when it leaves.
func TestNotifyReadyAfterJoinWatchdogAndStopping(t *testing.T) {
	first := startAgent(t, "seed", "127.0.0.1", nil)
	sock, msgs := notifytest.Socket(t)
	n := NewNotifier(sock, 200*time.Millisecond)
	a := startAgentWith(t, "notified", "127.0.0.2", Deps{Notifier: n}, func(c *Config) {
		c.Join = []string{first.Node().Addr()}
	})
	msg, _ := notifytest.Next(t, msgs, "READY=1", 15*time.Second)
	if !strings.HasPrefix(msg, "READY=1\n") || !strings.Contains(msg, "STATUS=joined the mesh") {
		t.Fatalf("first message %q, want READY=1 with STATUS=joined the mesh", msg)
	}
	if !a.joined.Load() {
		t.Fatal("READY=1 came before the agent had joined")
	}
	pings := 0
	for pings < 3 {
		select {
		case m := <-msgs:
			if m != "WATCHDOG=1" {
				t.Fatalf("message %q between READY and the leave", m)
			}
			pings++
		case <-time.After(10 * time.Second):
			t.Fatalf("%d watchdog pings in 10 s with a 200 ms watchdog", pings)
		}
	}
	if err := a.Leave(); err != nil {
		t.Fatal(err)
	}
	msg, _ = notifytest.Next(t, msgs, "STOPPING=1", 10*time.Second)
	if !strings.HasPrefix(msg, "STOPPING=1") {
		t.Fatalf("message on leave %q, want STOPPING=1", msg)
	}
}

// TestNotifyReadyAfterFirstJoinFails: with nobody to join, the agent is
// ready once its first join has failed and it retries: systemd does not
// wait for the mesh.
func TestNotifyReadyAfterFirstJoinFails(t *testing.T) {
	sock, msgs := notifytest.Socket(t)
	dead := freeLoopbackAddr(t, "127.0.0.1") // nothing listens there
	a := startAgentWith(t, "lonely", "127.0.0.1", Deps{Notifier: NewNotifier(sock, 0)}, func(c *Config) {
		c.Join = []string{dead}
	})
	msg, _ := notifytest.Next(t, msgs, "READY=1", 15*time.Second)
	if msg != "READY=1\nSTATUS=first join failed; retrying" {
		t.Fatalf("message %q, want READY=1 saying the first join failed", msg)
	}
	if a.joined.Load() {
		t.Fatal("joined a mesh nobody runs")
	}
}

// TestWatchdogStopsWhileTheGossipIsStuck: the watchdog pings every period
// while the gossip answers, sends nothing while a probe hangs (a
// deadlocked gossip), and pings again once it answers.
func TestWatchdogStopsWhileTheGossipIsStuck(t *testing.T) {
	clk := state.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var stuck atomic.Bool
	release := make(chan struct{})
	var pings, missed atomic.Int64
	w := Watchdog{Clock: clk, Every: 5 * time.Second,
		Alive: func() bool {
			if stuck.Load() {
				<-release
			}
			return true
		},
		Send:   func(string) error { pings.Add(1); return nil },
		Missed: func(error) { missed.Add(1) }}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() { w.Run(done); close(finished) }()
	defer func() { close(done); <-finished }()

	period := func() {
		t.Helper()
		poll(t, "the watchdog to wait for its period", func() bool { return clk.Waiters() > 0 })
		clk.Advance(w.Every)
	}
	poll(t, "the first ping", func() bool { return pings.Load() == 1 })
	period()
	poll(t, "the second ping", func() bool { return pings.Load() == 2 })
	stuck.Store(true)
	period() // the next probe hangs
	for range 5 {
		period()
	}
	poll(t, "the missed periods to be reported", func() bool { return missed.Load() >= 5 })
	if got := pings.Load(); got != 2 {
		t.Fatalf("%d pings while the gossip was stuck, want none after the 2 before", got)
	}
	stuck.Store(false)
	close(release)
	poll(t, "a ping once the gossip answers again", func() bool { return pings.Load() == 3 })
}

// TestNotifierFromEnv reads systemd's variables and clears them, so that
// the processes the agent starts do not inherit them.
func TestNotifierFromEnv(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "@agent-test")
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", "1") // another process's watchdog: not ours
	n, err := NotifierFromEnv()
	if err != nil || n == nil || n.Watchdog != 0 {
		t.Fatalf("notifier %+v, %v; want one without a watchdog", n, err)
	}
	if os.Getenv("NOTIFY_SOCKET") != "" || os.Getenv("WATCHDOG_USEC") != "" {
		t.Fatal("the variables are still set")
	}
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("WATCHDOG_USEC", "30000000")
	if n, err = NotifierFromEnv(); err != nil || n.Watchdog != 30*time.Second {
		t.Fatalf("watchdog %v, %v; want 30s", n.Watchdog, err)
	}
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("WATCHDOG_USEC", "soon")
	if _, err = NotifierFromEnv(); err == nil || !strings.Contains(err.Error(), `WATCHDOG_USEC="soon"`) {
		t.Fatalf("a bad WATCHDOG_USEC: %v", err)
	}
}
