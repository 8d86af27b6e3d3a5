package testbed_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshagent/agent/scripts/testbed"
)

// agentBin is the agent built once for every test (or the one agentEnv
// names); skipReason says why the end-to-end tests cannot run here, when
// they cannot.
var (
	agentBin   string
	skipReason string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		skipReason = "-short: the end-to-end test bed takes minutes"
		os.Exit(m.Run())
	}
	if err := testbed.Check(); err != nil {
		if os.Geteuid() == 0 {
			// As root (CI) the bed must run: a probe that fails is a failure,
			// not a skip that leaves `make test` saying ok.
			fmt.Fprintf(os.Stderr, "the end-to-end test bed cannot start, though this runs as root: %v\n", err)
			os.Exit(1)
		}
		skipReason = err.Error()
		os.Exit(m.Run())
	}
	if bin := os.Getenv(agentEnv); bin != "" {
		agentBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "testbed-agent")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "agent")
	build := exec.Command("go", "build", "-o", agentBin, ".")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build agent: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newBed brings up five hosts with profile, waits until every agent sees
// all five alive, and registers the teardown (with the agents' logs when the
// test failed). It skips, saying why, where the bed cannot run.
func newBed(t *testing.T, profile string, features ...testbed.Feature) *testbed.Testbed {
	t.Helper()
	if skipReason != "" {
		t.Skip("end-to-end test bed skipped: " + skipReason)
	}
	if err := testbed.Check(features...); err != nil {
		if os.Geteuid() == 0 {
			t.Fatal("the end-to-end test bed lacks what this test needs, though this runs as root: " + err.Error())
		}
		t.Skip("end-to-end test bed skipped: " + err.Error())
	}
	b, err := testbed.New(testbed.Config{Hosts: 5, Agent: agentBin, Profile: profile, Logf: t.Logf,
		Args: []string{"--tag", "test=" + t.Name()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			keepLogs(t, b)
			for _, h := range b.Hosts {
				t.Logf("log of %s, what it decided, last lines:\n%s", h.Name, h.StoryTail(60))
				t.Logf("log of %s, last lines:\n%s", h.Name, h.LogTail(20))
				for name, tail := range h.SupervisorLogTails(20) {
					t.Logf("supervisor log of %s on %s, last lines:\n%s", name, h.Name, tail)
				}
			}
		}
		if err := b.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	// Each server carries its own name as tag box, so that a spawn can
	// be aimed at one server: --constraint box=h5.
	for i, h := range b.Hosts {
		if err := b.Start(h, b.Hosts[:min(i, 1)], "--tag", "box="+h.Name); err != nil {
			t.Fatal(err)
		}
	}
	waitView(t, b, "all five hosts alive on every host", 30*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(b.Hosts, b.Hosts, "alive")
	})
	// A server bids (and so accepts spawns) once it has sampled its load
	// and published it; until then every spawn is refused.
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ms, err := b.Hosts[0].Members(ctx)
		cancel()
		ready := err == nil
		for _, h := range b.Hosts {
			ready = ready && ms[h.Name].Tags["cpu"] != ""
		}
		if ready {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the servers did not publish their load within 30s: %v %v", ms, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return b
}

// waitView polls the views of observers until cond holds, at most limit,
// and returns how long it took. Each status change seen on the way is
// logged with its time, so a failed or slow test shows what happened.
func waitView(t *testing.T, b *testbed.Testbed, what string, limit time.Duration, observers []*testbed.Host, cond func(testbed.View) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var prev testbed.View
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v := b.View(ctx, observers...)
		cancel()
		at := time.Since(start)
		if prev != nil {
			for _, c := range v.Changes(prev) {
				t.Logf("  +%5.1fs %s", at.Seconds(), c)
			}
		}
		prev = v
		if cond(v) {
			return at
		}
		if at > limit {
			t.Fatalf("timed out after %s waiting for %s; last view: %v", limit, what, v)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// seen is one poll of an observation: the views and when they were taken,
// since the observation began.
type seen struct {
	at time.Duration
	v  testbed.View
}

// observe polls the views of observers for the whole of d (an observation
// window, not a wait for gossip) and returns every poll.
func observe(t *testing.T, b *testbed.Testbed, d time.Duration, observers []*testbed.Host) []seen {
	t.Helper()
	start := time.Now()
	var polls []seen
	for time.Since(start) < d {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v := b.View(ctx, observers...)
		cancel()
		at := time.Since(start)
		if len(polls) > 0 {
			for _, c := range v.Changes(polls[len(polls)-1].v) {
				t.Logf("  +%5.1fs %s", at.Seconds(), c)
			}
		}
		polls = append(polls, seen{at, v})
		time.Sleep(250 * time.Millisecond)
	}
	return polls
}

// secs prints a time from firstWhen: seconds, or "never".
func secs(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// firstWhen is the time of the first poll where cond holds, -1 if none.
func firstWhen(polls []seen, cond func(testbed.View) bool) time.Duration {
	for _, p := range polls {
		if cond(p.v) {
			return p.at
		}
	}
	return -1
}

func hostSet(hosts []*testbed.Host) map[string]bool {
	out := map[string]bool{}
	for _, h := range hosts {
		out[h.Name] = true
	}
	return out
}

type placeResult struct {
	Winner string `json:"winner"`
	Bids   []struct {
		Node string `json:"node"`
	} `json:"bids"`
}

// placeFrom runs the election (`agent place`) on h.
func placeFrom(t *testing.T, h *testbed.Host) placeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := h.CLI(ctx, "place", "--kind", "demo", "--format", "json")
	if err != nil || res.Code != 0 {
		t.Fatalf("agent place on %s: %v, exit %d: %s%s", h.Name, err, res.Code, res.Stdout, res.Stderr)
	}
	var r placeResult
	if err := json.Unmarshal([]byte(res.Stdout), &r); err != nil {
		t.Fatalf("agent place on %s: %v: %s", h.Name, err, res.Stdout)
	}
	return r
}

// placeStaysAmong asks each asker for an election and fails unless the
// winner and every bidder are among allowed.
func placeStaysAmong(t *testing.T, askers, allowed []*testbed.Host) {
	t.Helper()
	ok := hostSet(allowed)
	for _, a := range askers {
		r := placeFrom(t, a)
		if !ok[r.Winner] {
			t.Errorf("place asked on %s elected %s, outside %v", a.Name, r.Winner, keys(ok))
		}
		for _, bid := range r.Bids {
			if !ok[bid.Node] {
				t.Errorf("place asked on %s got a bid from %s, outside %v", a.Name, bid.Node, keys(ok))
			}
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// interpreter is what `agent spawn --format json` says it started, and one
// row of `agent interpreters --format json`.
type interpreter struct {
	Name       string `json:"name"`
	Node       string `json:"node"` // spawn: the server elected
	Host       string `json:"host"` // interpreters: its server
	HostStatus string `json:"host_status"`
	Status     string `json:"status"`
	Endpoint   string `json:"endpoint"`
	PID        int    `json:"pid"`
}

// spawnFrom runs `agent spawn --kind demo --wait` on h with more arguments
// and returns what it started, failing the test unless it succeeded. The
// election waits for bids only briefly, so on this shared 2-core machine a
// busy server can miss it and every server refuse (exit 5) or the spawn time
// out (exit 6): it is then asked again, with the same idempotency key so
// that nothing starts twice, at most three times in all.
func spawnFrom(t *testing.T, h *testbed.Host, args ...string) interpreter {
	t.Helper()
	spawns++
	key := fmt.Sprintf("%s-%d", t.Name(), spawns)
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		res, err := h.CLI(ctx, append([]string{"spawn", "--kind", "demo", "--wait", "--format", "json", "--key", key}, args...)...)
		cancel()
		if err == nil && (res.Code == 5 || res.Code == 6) && attempt < 3 {
			t.Logf("spawn asked on %s: exit %d (%s); asking again", h.Name, res.Code, strings.TrimSpace(res.Stderr))
			continue
		}
		if err != nil || res.Code != 0 {
			t.Fatalf("agent spawn on %s: %v, exit %d: %s%s", h.Name, err, res.Code, res.Stdout, res.Stderr)
		}
		var in interpreter
		if err := json.Unmarshal([]byte(res.Stdout), &in); err != nil || in.Name == "" || in.Node == "" {
			t.Fatalf("agent spawn on %s: %v: %s", h.Name, err, res.Stdout)
		}
		t.Logf("spawn asked on %s: %s started on %s (pid %d)", h.Name, in.Name, in.Node, in.PID)
		return in
	}
}

// spawnUnkeyed is spawnFrom without an idempotency key, for a side of a
// partition that refuses keyed spawns. It is asked once: a retry could
// start a second interpreter.
func spawnUnkeyed(t *testing.T, h *testbed.Host) interpreter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := h.CLI(ctx, "spawn", "--kind", "demo", "--wait", "--format", "json")
	if err != nil || res.Code != 0 {
		t.Fatalf("agent spawn on %s: %v, exit %d: %s%s", h.Name, err, res.Code, res.Stdout, res.Stderr)
	}
	var in interpreter
	if err := json.Unmarshal([]byte(res.Stdout), &in); err != nil || in.Name == "" || in.Node == "" {
		t.Fatalf("agent spawn on %s: %v: %s", h.Name, err, res.Stdout)
	}
	t.Logf("spawn asked on %s: %s started on %s (pid %d)", h.Name, in.Name, in.Node, in.PID)
	return in
}

// spawns numbers the spawns of a test run, for their idempotency keys.
var spawns int

// interpretersOn is `agent interpreters` as h reports it, by name.
func interpretersOn(t *testing.T, h *testbed.Host) map[string]interpreter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := h.CLI(ctx, "interpreters", "--all", "--format", "json")
	if err != nil || res.Code != 0 {
		t.Fatalf("agent interpreters on %s: %v, exit %d: %s", h.Name, err, res.Code, res.Stderr)
	}
	var list struct{ Interpreters []interpreter }
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil {
		t.Fatalf("agent interpreters on %s: %v: %s", h.Name, err, res.Stdout)
	}
	out := map[string]interpreter{}
	for _, in := range list.Interpreters {
		out[in.Name] = in
	}
	return out
}

// oneView reports whether every observer lists the same members, all
// alive, and among them every name in also.
func oneView(v testbed.View, observers []*testbed.Host, also ...string) bool {
	var first map[string]string
	for _, o := range observers {
		st, ok := v[o.Name]
		if !ok {
			return false
		}
		for _, status := range st {
			if status != "alive" {
				return false
			}
		}
		for _, n := range also {
			if _, ok := st[n]; !ok {
				return false
			}
		}
		if first == nil {
			first = st
		} else if len(st) != len(first) {
			return false
		}
		for n := range first {
			if _, ok := st[n]; !ok {
				return false
			}
		}
	}
	return true
}

func processAlive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// measure logs one figure for the closing note in a form easy to grep.
func measure(t *testing.T, fault, what string, d time.Duration) {
	t.Helper()
	if d < 0 {
		t.Logf("measure: %-22s %-40s  never", fault, what)
		return
	}
	t.Logf("measure: %-22s %-40s %6.2fs", fault, what, d.Seconds())
}

// partitionLength is how long the simulation's partition scenario keeps
// 5 nodes apart (simulation.PlanScenario("partition", "", 5, …)).
const partitionLength = 26 * time.Second

// TestPartitionThreeTwo: hosts h1-h3 and h4-h5 cannot reach each other.
// Each side sees the other failed and keeps its own alive; an election and
// a spawn asked on any host land on its own side; after the heal (26s in,
// as in the simulation) every host has one view again: the five servers
// and the interpreters started on both sides, all alive.
func TestPartitionThreeTwo(t *testing.T) {
	b := newBed(t, "local", testbed.Filters)
	left, right := b.Hosts[:3], b.Hosts[3:]
	start := time.Now()
	if err := b.Partition(left, right); err != nil {
		t.Fatal(err)
	}
	var first time.Duration
	detect := waitView(t, b, "each side to see the other failed", 60*time.Second, b.Hosts, func(v testbed.View) bool {
		if first == 0 && (v.Any(left, right, "failed") || v.Any(right, left, "failed")) {
			first = time.Since(start)
		}
		return v.All(left, right, "failed") && v.All(right, left, "failed")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	v := b.View(ctx)
	cancel()
	if !v.All(left, left, "alive") || !v.All(right, right, "alive") {
		t.Errorf("a side lost its own members during the partition: %v", v)
	}
	placeStaysAmong(t, left, left)
	placeStaysAmong(t, right, right)
	var started []string
	for _, side := range [][]*testbed.Host{left, right} {
		ok := hostSet(side)
		for _, h := range side {
			// The minority side (h4, h5) refuses keyed spawns (exit 7)
			// and takes unkeyed ones.
			var in interpreter
			if side[0] == right[0] {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				res, err := h.CLI(ctx, "spawn", "--kind", "demo", "--key", "minority-"+h.Name, "--format", "json")
				cancel()
				if err != nil || res.Code != 7 {
					t.Errorf("a keyed spawn on the minority side (%s): %v, exit %d, want 7: %s", h.Name, err, res.Code, res.Stderr)
				}
				in = spawnUnkeyed(t, h)
			} else {
				in = spawnFrom(t, h)
			}
			if !ok[in.Node] {
				t.Errorf("a spawn asked on %s during the partition landed on %s, across it", h.Name, in.Node)
			}
			started = append(started, in.Name)
		}
	}
	measure(t, "partition 3|2", "first cross-side failed", first)
	measure(t, "partition 3|2", "every cross-side view failed", detect)

	// Heal when the simulation's partition scenario heals, 26s in: past
	// memberlist's gossip to the dead (15s in the local profile), so the
	// sides find each other again through the heal prober's pings (or
	// serf's reconnects), as after any partition that lasts.
	if hold := partitionLength - time.Since(start); hold > 0 {
		for _, p := range observe(t, b, hold, b.Hosts) {
			if p.v.Any(left, right, "alive") || p.v.Any(right, left, "alive") {
				t.Fatalf("the sides saw each other alive again during the partition: %v", p.v)
			}
		}
	}
	if err := b.Heal(); err != nil {
		t.Fatal(err)
	}
	heal := waitView(t, b, "one view everywhere after the heal, with the interpreters of both sides", 90*time.Second, b.Hosts, func(v testbed.View) bool {
		return oneView(v, b.Hosts, started...)
	})
	measure(t, "partition 3|2", "heal to one view everywhere", heal)
	placeStaysAmong(t, b.Hosts[:1], b.Hosts)
	// Each host saw the other side fail (2 or 3 of 5) and renewed its
	// incarnation, so that the other side's death verdicts about it were
	// stale at the heal (gossip/split.go).
	for _, h := range b.Hosts {
		log, err := h.Log()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log, "renewing this node's incarnation") {
			t.Errorf("%s did not renew its incarnation during the split", h.Name)
		}
	}
}

// TestKillNineServer: a server host running interpreters crashes (kill -9
// of its agent and of its interpreters, as a power loss). The server and its
// interpreters are failed on every other host, `agent interpreters` says so,
// and no election or spawn asked afterwards goes to it.
// localPushPull is memberlist's push/pull interval with the local profile:
// what repairs a gossiped message a loaded host dropped.
const localPushPull = 15 * time.Second

// lanPushPull is the same with the default profile (memberlist's LAN
// configuration, below 32 members).
const lanPushPull = 30 * time.Second

func TestKillNineServer(t *testing.T) {
	b := newBed(t, "local")
	victim, rest := b.Hosts[4], b.Hosts[:4]
	var theirs []string
	for range 2 {
		in := spawnFrom(t, victim, "--constraint", "box="+victim.Name)
		if in.Node != victim.Name {
			t.Fatalf("--constraint box=%s landed on %s", victim.Name, in.Node)
		}
		theirs = append(theirs, in.Name)
	}
	// --wait returns once the asker sees the interpreter; the crash must
	// come after every host does, or there is nothing for them to detect.
	// A host whose UDP gossip of the join was lost (a clean-clone CI run,
	// with the simulation beside it, had h2 miss one for 30 s) learns it
	// by push/pull, every 15 s with the local profile: three rounds.
	waitView(t, b, "every host to see the interpreters alive", 3*localPushPull, b.Hosts, func(v testbed.View) bool {
		return oneView(v, b.Hosts, theirs...)
	})
	if err := victim.Crash(); err != nil {
		t.Fatal(err)
	}
	var first time.Duration
	start := time.Now()
	detect := waitView(t, b, victim.Name+" and its interpreters failed everywhere", 60*time.Second, rest, func(v testbed.View) bool {
		if first == 0 && v.Any(rest, b.Hosts[4:], "failed") {
			first = time.Since(start)
		}
		if !v.All(rest, b.Hosts[4:], "failed") {
			return false
		}
		for _, o := range rest {
			for _, n := range theirs {
				if v[o.Name][n] != "failed" {
					return false
				}
			}
		}
		return true
	})
	measure(t, "kill -9 (host crash)", "first host sees it failed", first)
	measure(t, "kill -9 (host crash)", "it and its interpreters failed everywhere", detect)
	for _, o := range rest {
		list := interpretersOn(t, o)
		for _, n := range theirs {
			if in := list[n]; in.Status != "failed" || in.HostStatus != "failed" {
				t.Errorf("agent interpreters on %s shows %s as %+v, want failed on a failed host", o.Name, n, in)
			}
		}
	}
	placeStaysAmong(t, rest, rest)
	for _, o := range rest {
		if in := spawnFrom(t, o); in.Node == victim.Name {
			t.Errorf("a spawn asked on %s after the crash went to the dead %s", o.Name, in.Node)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := rest[0].CLI(ctx, "spawn", "--kind", "demo", "--constraint", "box="+victim.Name, "--format", "json")
	if err != nil || res.Code == 0 || strings.Contains(res.Stdout, `"node": "`+victim.Name+`"`) {
		t.Errorf("a spawn aimed at the dead %s: %v, exit %d, want a refusal: %s%s", victim.Name, err, res.Code, res.Stdout, res.Stderr)
	}
	t.Logf("a spawn aimed at the dead %s: exit %d: %s", victim.Name, res.Code, strings.TrimSpace(res.Stderr))
}

// TestPauseLongerThanSuspicion: an agent stopped with SIGSTOP until every
// other host has declared it failed (so for longer than the suspicion
// timeout), then continued with SIGCONT, is alive again everywhere by
// itself: nobody runs `agent join`.
func TestPauseLongerThanSuspicion(t *testing.T) {
	b := newBed(t, "local")
	victim, rest := b.Hosts[4], b.Hosts[:4]
	start := time.Now()
	if err := victim.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			victim.Resume()
		}
	})
	// Never ask the paused agent: it cannot answer.
	detect := waitView(t, b, victim.Name+" failed everywhere", 60*time.Second, rest, func(v testbed.View) bool {
		return v.All(rest, b.Hosts[4:], "failed")
	})
	measure(t, "SIGSTOP", "failed on every other host", detect)
	if err := victim.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	stopped := time.Since(start)
	back := waitView(t, b, "one view everywhere after SIGCONT", 90*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(b.Hosts, b.Hosts, "alive")
	})
	t.Logf("stopped for %.1fs", stopped.Seconds())
	measure(t, "SIGSTOP", "SIGCONT to alive everywhere", back)
}

// TestLossOnOneHost: with 20% of h5's packets lost each way for a while,
// no other host is ever marked failed, by any host. Every host's member
// events are streamed (agent monitor), so even a failure refuted within a
// second is caught.
func TestLossOnOneHost(t *testing.T) {
	b := newBed(t, "lan", testbed.Filters)
	lossy, rest := b.Hosts[4], b.Hosts[:4]
	var monitors []*testbed.Monitor
	for _, h := range b.Hosts {
		m, err := h.Monitor()
		if err != nil {
			t.Fatal(err)
		}
		monitors = append(monitors, m)
		t.Cleanup(func() { m.Close() })
	}
	if err := b.Loss(lossy, 0.20); err != nil {
		t.Fatal(err)
	}
	const window = 40 * time.Second
	polls := observe(t, b, window, b.Hosts)
	dropped, err := b.Dropped(lossy)
	if err != nil {
		t.Fatal(err)
	}
	if dropped == 0 {
		t.Fatalf("the loss on %s dropped no packet in %s", lossy.Name, window)
	}
	if err := b.Loss(lossy, 0); err != nil {
		t.Fatal(err)
	}

	healthy := hostSet(rest)
	lossyFailed := 0
	for i, m := range monitors {
		for _, e := range m.Close() {
			if e.Type != "member-failed" {
				continue
			}
			for name := range e.Members {
				if healthy[name] {
					t.Errorf("%s reported %s failed at %s, under loss on %s only", b.Hosts[i].Name, name, e.At.Format("15:04:05.000"), lossy.Name)
				} else if name == lossy.Name {
					lossyFailed++
				}
			}
		}
	}
	if at := firstWhen(polls, func(v testbed.View) bool { return v.Any(b.Hosts, rest, "failed") }); at >= 0 {
		t.Errorf("a healthy host was seen failed %.1fs into the loss", at.Seconds())
	}
	suspected := 0
	for _, h := range b.Hosts {
		log, _ := h.Log()
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "Suspect") {
				suspected++
			}
		}
	}
	t.Logf("measure: %-22s %d packets dropped at %s; %d member-failed events for %s itself; %d suspicion lines in all logs; no healthy host failed in %s",
		"loss 20% on h5", dropped, lossy.Name, lossyFailed, lossy.Name, suspected, window)
	waitView(t, b, "one view everywhere after the loss", 60*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(b.Hosts, b.Hosts, "alive")
	})
}

// TestRestartRejoinsByItself: an agent running interpreters is killed
// with SIGKILL (its interpreters keep running, in their own sessions) and
// started again with its data dir but no --join. It rejoins the mesh by
// itself, and its interpreters are still running (same pids) and listed,
// with it as their alive host, on every host.
func TestRestartRejoinsByItself(t *testing.T) {
	b := newBed(t, "local")
	victim, rest := b.Hosts[4], b.Hosts[:4]
	var theirs []interpreter
	for range 2 {
		in := spawnFrom(t, victim, "--constraint", "box="+victim.Name)
		if in.Node != victim.Name {
			t.Fatalf("--constraint box=%s landed on %s", victim.Name, in.Node)
		}
		theirs = append(theirs, in)
	}
	var names []string
	for _, in := range theirs {
		names = append(names, in.Name)
	}
	waitView(t, b, "every host to see the interpreters alive", 30*time.Second, b.Hosts, func(v testbed.View) bool {
		return oneView(v, b.Hosts, names...)
	})
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	waitView(t, b, victim.Name+" failed everywhere", 60*time.Second, rest, func(v testbed.View) bool {
		return v.All(rest, b.Hosts[4:], "failed")
	})
	start := time.Now()
	if err := b.Restart(victim); err != nil {
		t.Fatal(err)
	}
	up := time.Since(start)
	waitView(t, b, "one view everywhere after the restart", 60*time.Second, b.Hosts, func(v testbed.View) bool {
		return oneView(v, b.Hosts, names...)
	})
	measure(t, "restart (data dir)", "start to agent answering RPC", up)
	measure(t, "restart (data dir)", "start to alive everywhere", time.Since(start))
	for _, in := range theirs {
		if !processAlive(in.PID) {
			t.Errorf("interpreter %s (pid %d) did not survive its agent's restart", in.Name, in.PID)
		}
	}
	waitFor := time.Now().Add(30 * time.Second)
	for _, o := range b.Hosts {
		for {
			list, bad := interpretersOn(t, o), ""
			for _, in := range theirs {
				got := list[in.Name]
				if got.Status != "alive" || got.Host != victim.Name || got.HostStatus != "alive" || got.PID != in.PID {
					bad = fmt.Sprintf("%s lists %s as %+v, want alive on the alive %s with pid %d", o.Name, in.Name, got, victim.Name, in.PID)
				}
			}
			if bad == "" {
				break
			}
			if time.Now().After(waitFor) {
				t.Fatal(bad)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ms, err := b.Hosts[0].Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := ms[victim.Name].Tags["ni"]; got != "2" {
		t.Errorf("the restarted %s publishes ni=%q, want 2: it did not re-adopt its interpreters", victim.Name, got)
	}
}

// TestOneWayCut reports what SWIM does when packets flow one way only, and
// asserts that the view converges once the cut is repaired. First h5's
// packets to h1 are dropped (the simulation's oneway shape: a third of the
// others miss one node's packets); then h5 hears no one at all but can
// still send. Every status change is logged with its time.
func TestOneWayCut(t *testing.T) {
	b := newBed(t, "local", testbed.Filters)
	h1, h5, rest := b.Hosts[0], b.Hosts[4], b.Hosts[:4]
	deaf := b.Hosts[4:]
	anyFailed := func(v testbed.View) bool { return v.Any(b.Hosts, b.Hosts, "failed") }

	if err := b.Cut([]*testbed.Host{h5}, []*testbed.Host{h1}); err != nil {
		t.Fatal(err)
	}
	polls := observe(t, b, 15*time.Second, b.Hosts)
	t.Logf("one-way h5 → h1 for 15s: first failed status anywhere: %s", secs(firstWhen(polls, anyFailed)))

	if err := b.Cut(rest, deaf); err != nil {
		t.Fatal(err)
	}
	polls = observe(t, b, 30*time.Second, b.Hosts)
	flaps := 0
	for i := 1; i < len(polls); i++ {
		for _, o := range rest {
			if polls[i-1].v[o.Name][h5.Name] == "failed" && polls[i].v[o.Name][h5.Name] == "alive" {
				flaps++
			}
		}
	}
	falsely := firstWhen(polls, func(v testbed.View) bool { return v.Any(rest, rest, "failed") })
	t.Logf("h5 deaf for 30s: a healthy host first saw h5 failed at %s, all four at once at %s; "+
		"%d times a healthy host saw h5 alive again; h5 saw all four failed at %s; "+
		"a healthy host saw another healthy host failed: %s; h5's view at the end: %v",
		secs(firstWhen(polls, func(v testbed.View) bool { return v.Any(rest, deaf, "failed") })),
		secs(firstWhen(polls, func(v testbed.View) bool { return v.All(rest, deaf, "failed") })),
		flaps,
		secs(firstWhen(polls, func(v testbed.View) bool { return v.All(deaf, rest, "failed") })),
		secs(falsely), polls[len(polls)-1].v[h5.Name])
	measure(t, "one-way: h5 deaf", "first healthy host sees h5 failed",
		firstWhen(polls, func(v testbed.View) bool { return v.Any(rest, deaf, "failed") }))

	if err := b.Heal(); err != nil {
		t.Fatal(err)
	}
	healed := waitView(t, b, "one view everywhere after the repair", 90*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(b.Hosts, b.Hosts, "alive")
	})
	measure(t, "one-way: h5 deaf", "repair to one view everywhere", healed)
}

// agentEnv names an agent binary to test instead of building one.
const agentEnv = "TESTBED_AGENT"

// childEnv, when set, makes this test binary a child that
// TestInterruptedRunLeavesNothing interrupts.
const childEnv = "TESTBED_CHILD"

// TestChildBed is not a test on its own: run as a child (childEnv set), it brings up a bed, prints its prefix and waits to be interrupted.
func TestChildBed(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("the child of TestInterruptedRunLeavesNothing; runs only as that")
	}
	b, err := testbed.New(testbed.Config{Hosts: 2, Agent: agentBin, Profile: "local"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.StartAll(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("PREFIX=%s\n", b.Prefix())
	time.Sleep(60 * time.Second) // the parent signals it long before
}

// leftovers lists what of a run is still on the machine: namespaces,
// links, its directory, its lock, processes started from its directory.
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	if res, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, l := range strings.Split(string(res), "\n") {
			if strings.HasPrefix(l, prefix) {
				out = append(out, "namespace "+strings.Fields(l)[0])
			}
		}
	}
	if res, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, l := range strings.Split(string(res), "\n") {
			if f := strings.SplitN(l, ": ", 3); len(f) > 1 && strings.HasPrefix(f[1], prefix) {
				out = append(out, "link "+f[1])
			}
		}
	}
	for _, p := range []string{filepath.Join(os.TempDir(), prefix), "/run/agent-testbed/" + prefix + ".lock"} {
		if _, err := os.Stat(p); err == nil {
			out = append(out, "file "+p)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if cmd, err := os.ReadFile(p); err == nil && strings.Contains(string(cmd), filepath.Join(os.TempDir(), prefix)+"/") {
			out = append(out, "process "+strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	return out
}

// startChild runs TestChildBed in a child process and returns it once its
// bed is up, with the bed's prefix.
func startChild(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestChildBed$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1", agentEnv+"="+agentBin)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	prefix := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "PREFIX="); ok {
				prefix <- p
			}
		}
		close(prefix)
	}()
	select {
	case p, ok := <-prefix:
		if !ok {
			t.Fatal("the child bed ended before it was up")
		}
		return cmd, p
	case <-time.After(60 * time.Second):
		t.Fatal("the child bed was not up within 60s")
	}
	return nil, ""
}

// TestInterruptedRunLeavesNothing: a run stopped by SIGINT removes its bed
// itself; a run killed with SIGKILL leaves its namespaces, which the next
// run (Sweep) removes, and its agents die with it.
func TestInterruptedRunLeavesNothing(t *testing.T) {
	if skipReason != "" {
		t.Skip("end-to-end test bed skipped: " + skipReason)
	}
	if os.Getenv(childEnv) != "" {
		t.Skip("in the child")
	}
	t.Run("SIGINT", func(t *testing.T) {
		cmd, prefix := startChild(t)
		if left := leftovers(t, prefix); len(left) == 0 {
			t.Fatalf("the child's bed %s is not visible", prefix)
		}
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		if left := leftovers(t, prefix); len(left) > 0 {
			t.Fatalf("after SIGINT, the run left:\n%s", strings.Join(left, "\n"))
		}
	})
	t.Run("SIGKILL then Sweep", func(t *testing.T) {
		cmd, prefix := startChild(t)
		cmd.Process.Kill()
		cmd.Wait()
		deadline := time.Now().Add(10 * time.Second)
		for {
			procs := 0
			for _, l := range leftovers(t, prefix) {
				if strings.HasPrefix(l, "process ") {
					procs++
				}
			}
			if procs == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d agents outlived their killed test bed by 10s", procs)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if left := leftovers(t, prefix); len(left) == 0 {
			t.Fatal("SIGKILL left nothing to sweep: the test proves nothing")
		}
		if err := testbed.Sweep(); err != nil {
			t.Fatal(err)
		}
		if left := leftovers(t, prefix); len(left) > 0 {
			t.Fatalf("after Sweep, the killed run left:\n%s", strings.Join(left, "\n"))
		}
	})
}

// keepLogsEnv names a directory where a failed test keeps its hosts' whole
// logs (the bed's own directory goes with the bed).
const keepLogsEnv = "TESTBED_KEEP_LOGS"

func keepLogs(t *testing.T, b *testbed.Testbed) {
	dir := os.Getenv(keepLogsEnv)
	if dir == "" {
		return
	}
	dir = filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("%s: %v", keepLogsEnv, err)
		return
	}
	for _, h := range b.Hosts {
		if log, err := h.Log(); err == nil {
			os.WriteFile(filepath.Join(dir, h.Name+".log"), []byte(log), 0o644)
		}
	}
	t.Logf("the hosts' logs are kept in %s", dir)
}
