package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshagent/agent/internal/notifytest"
)

// startService runs `agent run` as systemd would under the packaged unit:
// a notify socket, a watchdog, a config dir. The test stops it.
func startService(t *testing.T, a *testAgent, env []string, args ...string) (*exec.Cmd, *lockedBuffer, <-chan error) {
	t.Helper()
	cmd := exec.Command(agentBin, append([]string{"run", "--node", a.name, "--bind", a.gossip, "--rpc-addr", a.rpc,
		"--http-addr", a.http, "--data-dir", a.dataDir}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var log lockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("log of %s:\n%s", a.name, log.String())
		}
	})
	return cmd, &log, exited
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestServiceNotifyReloadAndStop: the real binary under a fake systemd
// (NOTIFY_SOCKET, WATCHDOG_USEC) says READY=1 once it has joined, pings
// the watchdog, reloads its config dir on SIGHUP (RELOADING=1, then READY=1)
// and on agent reload, refuses a bad file over RPC while it keeps running
// with the old config, and says STOPPING=1 on SIGTERM, leaving gracefully.
func TestServiceNotifyReloadAndStop(t *testing.T) {
	seed := newTestAgent(t, 1)
	seed.start(t)
	svc := newTestAgent(t, 2)
	conf := t.TempDir()
	writeFile(t, filepath.Join(conf, "10-agent.json"), `{"tag": {"dc": "east"}, "log_level": "info"}`)
	sock, msgs := notifytest.Socket(t)
	started := time.Now()
	cmd, _, exited := startService(t, svc, []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=400000"},
		"--config-file", conf, "--join", seed.gossip)
	msg, _ := notifytest.Next(t, msgs, "READY=1", 20*time.Second)
	ready := time.Since(started)
	if msg != "READY=1\nSTATUS=joined the mesh" {
		t.Fatalf("first message %q, want READY=1 once joined", msg)
	}
	t.Logf("start to READY=1: %s", ready.Round(time.Millisecond))
	if m := membersOf(t, seed)[svc.name]; m.Status != "alive" {
		t.Fatalf("READY=1, but the seed sees %s as %q", svc.name, m.Status)
	}

	for pings := 0; pings < 2; {
		select {
		case m := <-msgs:
			if m != "WATCHDOG=1" {
				t.Fatalf("after READY=1 %q, want watchdog pings", m)
			}
			pings++
		case <-time.After(10 * time.Second):
			t.Fatalf("%d watchdog pings in 10 s with WATCHDOG_USEC=400000", pings)
		}
	}

	writeFile(t, filepath.Join(conf, "10-agent.json"), `{"tag": {"dc": "west"}, "log_level": "debug", "capacity": 4}`)
	cmd.Process.Signal(syscall.SIGHUP)
	if msg, _ = notifytest.Next(t, msgs, "RELOADING=1", 20*time.Second); !strings.HasPrefix(msg, "RELOADING=1") {
		t.Fatalf("after SIGHUP %q, want RELOADING=1", msg)
	}
	if msg, _ = notifytest.Next(t, msgs, "READY=1 after the reload", 20*time.Second); !strings.HasPrefix(msg, "READY=1") {
		t.Fatalf("after RELOADING %q", msg)
	}
	waitFor(t, "the reloaded tag in the seed's view", 10*time.Second, func() bool {
		return membersOf(t, seed)[svc.name].Tags["dc"] == "west"
	})

	// agent reload over RPC: the capacity needs a restart, and says so.
	out, stderr, code := runCLI(t, "reload", "--rpc-addr", svc.rpc, "--format", "json")
	var resp struct{ Applied, Restart []string }
	if code != 0 || json.Unmarshal([]byte(out), &resp) != nil {
		t.Fatalf("agent reload: exit %d %s %s", code, out, stderr)
	}
	if len(resp.Applied) != 0 || len(resp.Restart) != 1 || !strings.Contains(resp.Restart[0], "--capacity 4") {
		t.Fatalf("reload of an unchanged dir: applied %v, restart %v; want nothing applied and the capacity listed", resp.Applied, resp.Restart)
	}
	writeFile(t, filepath.Join(conf, "10-agent.json"), `{"tag": {"dc": "north"}, "check": [{"name": "gpu", "type": "smoke", "interval": "5s"}]}`)
	_, stderr, code = runCLI(t, "reload", "--rpc-addr", svc.rpc)
	if code != 1 || !strings.Contains(stderr, "config not reloaded; the running config stays") || !strings.Contains(stderr, `"gpu": type "smoke" is not known`) {
		t.Fatalf("reload of a bad file: exit %d, %s", code, stderr)
	}
	if got := membersOf(t, seed)[svc.name].Tags["dc"]; got != "west" {
		t.Fatalf("after a refused reload dc=%q, want west", got)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	for {
		msg, _ = notifytest.Next(t, msgs, "STOPPING=1", 20*time.Second)
		if strings.HasPrefix(msg, "STOPPING=1") {
			break
		}
		if !strings.HasPrefix(msg, "RELOADING=1") && !strings.HasPrefix(msg, "READY=1") {
			t.Fatalf("on SIGTERM %q, want STOPPING=1", msg)
		}
	}
	if err := <-exited; err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	waitFor(t, svc.name+" to be left in the seed's view", 10*time.Second, func() bool {
		return membersOf(t, seed)[svc.name].Status == "left"
	})
}

// TestServerCheckMovesPlacementProcess: two real servers; the less loaded
// one wins until its script check fails, then bids "unhealthy: disk" and
// the other one wins. Ten times, each after the check passed again; it
// logs the time from the failure to the move (p50), which the interval
// (200 ms) x failures_before_critical (2) bounds, plus a probe's run.
func TestServerCheckMovesPlacementProcess(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	check := fmt.Sprintf(`{"name":"disk","type":"script","args":["/bin/sh","-c","test ! -e %s || exit 2"],`+
		`"interval":"200ms","failures_before_critical":2}`, broken)
	s1, s2 := newTestAgent(t, 1), newTestAgent(t, 2)
	s1.start(t, "--load-source", "fixed:cpu=10,mem=10", "--check", check)
	s2.start(t, "--load-source", "fixed:cpu=60,mem=60", "--join", s1.gossip)
	type bid struct{ Node, Refusal string }
	var last struct {
		Winner string
		Bids   []bid
	}
	var calls int
	var spent time.Duration
	winner := func() string {
		start := time.Now()
		defer func() { calls++; spent += time.Since(start) }()
		out, _, code := runCLI(t, "place", "--kind", "demo", "--rpc-addr", s2.rpc, "--format", "json")
		last.Winner, last.Bids = "", nil
		if code == 0 {
			json.Unmarshal([]byte(out), &last)
		}
		return last.Winner
	}
	var moves []time.Duration
	for i := range 10 {
		os.Remove(broken)
		waitFor(t, fmt.Sprintf("s1 to win (round %d)", i+1), 15*time.Second, func() bool { return winner() == s1.name })
		writeFile(t, broken, "")
		failed := time.Now()
		waitFor(t, fmt.Sprintf("placement to move to s2 (round %d)", i+1), 15*time.Second, func() bool { return winner() == s2.name })
		moves = append(moves, time.Since(failed))
		if !slices.Contains(last.Bids, bid{Node: s1.name, Refusal: "unhealthy: disk"}) {
			t.Fatalf("bids %+v: s1 does not refuse with unhealthy: disk", last.Bids)
		}
	}
	m := membersOf(t, s2)[s1.name]
	if m.Tags["hc"] != "disk" {
		t.Fatalf("s1's tags in s2's view: %v, want hc=disk", m.Tags)
	}
	out, _, _ := runCLI(t, "members", "--rpc-addr", s2.rpc)
	if !strings.Contains(out, "server (unhealthy: disk)") {
		t.Fatalf("agent members does not show s1 unhealthy:\n%s", out)
	}
	out, _, code := runCLI(t, "checks", "--rpc-addr", s1.rpc, "--format", "json")
	if code != 0 || !strings.Contains(out, `"status": "critical"`) {
		t.Fatalf("agent checks: exit %d\n%s", code, out)
	}
	slices.Sort(moves)
	t.Logf("check failure to placement move, 10 rounds: p50 %s, min %s, max %s (interval 200ms x 2 failures; "+
		"polled with agent place, %s a call)", moves[4].Round(time.Millisecond), moves[0].Round(time.Millisecond),
		moves[9].Round(time.Millisecond), (spent / time.Duration(calls)).Round(time.Millisecond))
}

// TestRunRefusesBadChecksNamingThem: agent run stops before it starts
// anything when a check has an unknown type, a zero interval or a script
// that does not exist, and says which check and how to fix it.
func TestRunRefusesBadChecksNamingThem(t *testing.T) {
	for _, tc := range []struct{ check, want string }{
		{`{"name":"gpu","type":"smoke","interval":"5s"}`, `bad check "gpu": type "smoke" is not known: use script, http, tcp or ttl`},
		{`{"name":"db","type":"tcp","tcp":"127.0.0.1:5432","interval":"0s"}`, `bad check "db": interval "0s" is not a positive duration`},
		{`{"name":"disk","type":"script","args":["/nonexistent/check-disk"],"interval":"10s"}`,
			`bad check "disk": script /nonexistent/check-disk: no such file or directory: install it, or fix args`},
	} {
		_, stderr, code := runCLI(t, "run", "--node", "bad", "--bind", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0",
			"--http-addr", "", "--data-dir", t.TempDir(), "--check", tc.check)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("agent run --check %s: exit %d, %s; want exit 1 saying %q", tc.check, code, stderr, tc.want)
		}
	}
}
