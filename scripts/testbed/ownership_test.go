package testbed_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/scripts/testbed"
)

// Tests of the rules in the README's "Interpreters under faults", with real
// processes: each counts the interpreter processes in every host's
// namespace, not only the rows the hosts list.

// keyedInterpreter is one row of `agent interpreters --format json`.
type keyedInterpreter struct {
	Name       string `json:"name"`
	Host       string `json:"host"`
	HostStatus string `json:"host_status"`
	Status     string `json:"status"`
	RequestID  string `json:"request_id"`
	Generation int    `json:"generation"`
}

// listAlive lists, as h sees it, the alive interpreters of each request;
// the error says why the listing failed.
func listAlive(h *testbed.Host) (map[string][]keyedInterpreter, error) {
	rows, err := listRows(h)
	if err != nil {
		return nil, err
	}
	out := map[string][]keyedInterpreter{}
	for rid, list := range rows {
		for _, in := range list {
			if in.Status == "alive" {
				out[rid] = append(out[rid], in)
			}
		}
	}
	return out, nil
}

// listRows lists, as h sees it, every interpreter of each request, gone
// ones too (`agent interpreters --all`).
func listRows(h *testbed.Host) (map[string][]keyedInterpreter, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := h.CLI(ctx, "interpreters", "--all", "--format", "json")
	if err != nil {
		return nil, err
	}
	if res.Code != 0 {
		return nil, fmt.Errorf("agent interpreters on %s: exit %d: %s", h.Name, res.Code, strings.TrimSpace(res.Stderr))
	}
	var list struct{ Interpreters []keyedInterpreter }
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil {
		return nil, fmt.Errorf("agent interpreters on %s: %w", h.Name, err)
	}
	out := map[string][]keyedInterpreter{}
	for _, in := range list.Interpreters {
		out[in.RequestID] = append(out[in.RequestID], in)
	}
	return out, nil
}

// aliveFor lists, as h sees it, the alive interpreters of request rid.
func aliveFor(t *testing.T, h *testbed.Host, rid string) []keyedInterpreter {
	t.Helper()
	byRequest, err := listAlive(h)
	if err != nil {
		return nil
	}
	return byRequest[rid]
}

// listedEverywhere reports whether every host lists exactly one alive
// interpreter for each of rids, the same one on every host, on a host in
// allowed (nil: any), and if not, the first thing that differs. Each host
// is asked once.
func listedEverywhere(hosts []*testbed.Host, rids []string, allowed map[string]bool) (map[string]keyedInterpreter, bool, string) {
	first := map[string]keyedInterpreter{}
	for _, h := range hosts {
		rows, err := listRows(h)
		if err != nil {
			return first, false, err.Error()
		}
		for _, rid := range rids {
			var list []keyedInterpreter
			for _, in := range rows[rid] {
				if in.Status == "alive" {
					list = append(list, in)
				}
			}
			switch {
			case len(list) != 1:
				var named []keyedInterpreter // rows named after rid, whatever request their tags say
				for _, rs := range rows {
					for _, in := range rs {
						if strings.Contains(in.Name, "-"+rid+"-") {
							named = append(named, in)
						}
					}
				}
				return first, false, fmt.Sprintf("%s lists %d alive interpreters of %s, of these rows: %+v", h.Name, len(list), rid, named)
			case allowed != nil && !allowed[list[0].Host]:
				return first, false, fmt.Sprintf("%s lists %s of %s on %s", h.Name, list[0].Name, rid, list[0].Host)
			}
			if prev, ok := first[rid]; !ok {
				first[rid] = list[0]
			} else if prev.Name != list[0].Name {
				return first, false, fmt.Sprintf("%s lists %s for %s, an earlier host %s", h.Name, list[0].Name, rid, prev.Name)
			}
		}
	}
	return first, true, ""
}

// oneListedEverywhere reports whether every host lists exactly one alive
// interpreter for rid, the same one, on a host in allowed (nil: any).
func oneListedEverywhere(t *testing.T, hosts []*testbed.Host, rid string, allowed map[string]bool) (keyedInterpreter, bool) {
	t.Helper()
	first, ok, _ := listedEverywhere(hosts, []string{rid}, allowed)
	return first[rid], ok
}

// processesFor counts, in every host's namespace, the supervisors of
// interpreters of request rid (their spec path names the request) and the
// demo interpreters they run.
func processesFor(t *testing.T, b *testbed.Testbed, rid string) (map[string]int, int) {
	t.Helper()
	perHost := map[string]int{}
	total := 0
	for _, h := range b.Hosts {
		procs, err := h.Processes()
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range procs {
			if len(args) > 3 && args[1] == "interpreter" && strings.Contains(args[3], "-"+rid+"-") {
				perHost[h.Name]++
				total++
			}
		}
	}
	return perHost, total
}

// spawnKeyed runs a keyed spawn on h and returns its result.
func spawnKeyed(t *testing.T, h *testbed.Host, key string, args ...string) (testbed.Result, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res, err := h.CLI(ctx, append([]string{"spawn", "--kind", "demo", "--wait", "--format", "json", "--key", key}, args...)...)
	if err != nil {
		t.Fatalf("spawn --key %s on %s: %v", key, h.Name, err)
	}
	var out map[string]any
	json.Unmarshal([]byte(res.Stdout), &out)
	t.Logf("spawn --key %s %v on %s: exit %d %v %s", key, args, h.Name, res.Code, out, strings.TrimSpace(res.Stderr))
	return res, out
}

// TestOneInterpreterPerKeyThroughAPartition: a 3|2 partition. A keyed
// spawn on the majority side starts; the same key asked on the minority
// side is refused (exit 7), saying what it saw. An interpreter with
// --restart on-failure on the minority side is re-placed by the majority
// (its host looks failed there), so after the heal the key has two: the
// re-placement (generation 1) wins and the old one stops itself. Every host
// then lists the same single interpreter for each key, and exactly one
// process runs for each.
func TestOneInterpreterPerKeyThroughAPartition(t *testing.T) {
	b := newBed(t, "", testbed.Filters)
	left, right := b.Hosts[:3], b.Hosts[3:]
	res, out := spawnKeyed(t, right[0], "nb-restart", "--restart", "on-failure", "--constraint", "box="+right[0].Name)
	if res.Code != 0 {
		t.Fatalf("spawn on %s failed", right[0].Name)
	}
	ridRestart := out["request_id"].(string)
	waitView(t, b, "the interpreter alive everywhere", 30*time.Second, b.Hosts, func(v testbed.View) bool {
		return oneView(v, b.Hosts, out["name"].(string))
	})

	if err := b.Partition(left, right); err != nil {
		t.Fatal(err)
	}
	waitView(t, b, "each side to see the other failed", 60*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(left, right, "failed") && v.All(right, left, "failed")
	})
	res, out = spawnKeyed(t, left[0], "nb-42")
	if res.Code != 0 || !hostSet(left)[out["node"].(string)] {
		t.Fatalf("keyed spawn on the majority side: exit %d, %v", res.Code, out)
	}
	rid := out["request_id"].(string)
	res, _ = spawnKeyed(t, right[1], "nb-42")
	if res.Code != 7 || !strings.Contains(res.Stderr, "2 of 5 known servers alive") {
		t.Fatalf("keyed spawn on the minority side: exit %d, want 7 naming what it saw: %s", res.Code, res.Stderr)
	}
	start := time.Now()
	waitFor(t, "the majority to re-place the minority's interpreter", 60*time.Second, func() bool {
		_, ok := oneListedEverywhere(t, left, ridRestart, hostSet(left))
		return ok
	})
	measure(t, "partition 3|2", "re-placed on the majority side", time.Since(start))
	if n, _ := processesFor(t, b, ridRestart); n[right[0].Name] != 1 {
		t.Fatalf("the minority's interpreter should still run during the partition: %v", n)
	}

	if err := b.Heal(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	waitView(t, b, "the five servers alive in every view", 90*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(b.Hosts, b.Hosts, "alive")
	})
	measure(t, "partition 3|2", "heal to the servers' one view", time.Since(healed))
	for _, r := range []string{rid, ridRestart} {
		waitForWhy(t, "one interpreter for "+r+" listed by every host", 60*time.Second, func() (bool, string) {
			_, ok, why := listedEverywhere(b.Hosts, []string{r}, nil)
			return ok, why
		})
	}
	waitFor(t, "one process per key", 30*time.Second, func() bool {
		_, a := processesFor(t, b, rid)
		_, c := processesFor(t, b, ridRestart)
		return a == 1 && c == 1
	})
	measure(t, "partition 3|2", "heal to one interpreter per key", time.Since(healed))
	won, _ := oneListedEverywhere(t, b.Hosts, ridRestart, nil)
	if won.Generation != 1 || !hostSet(left)[won.Host] {
		t.Errorf("the re-placement should win the duplicate: %+v", won)
	}
	if log, _ := right[0].Log(); !strings.Contains(log, "interpreter-duplicate") {
		t.Errorf("%s did not log the duplicate", right[0].Name)
	}
	// The loser says why in its own log.
	matches, _ := filepath.Glob(filepath.Join(right[0].DataDir, "interpreters", "*-"+ridRestart+"-*", "exit.json"))
	found := false
	for _, m := range matches {
		data, _ := os.ReadFile(m)
		found = found || strings.Contains(string(data), `"how": "duplicate"`)
	}
	if !found {
		t.Errorf("no exit record on %s says the loser stopped as a duplicate (%v)", right[0].Name, matches)
	}
	for i := 0; i < 5; i++ {
		for _, r := range []string{rid, ridRestart} {
			if _, n := processesFor(t, b, r); n != 1 {
				t.Fatalf("%d processes for %s after the heal", n, r)
			}
		}
		time.Sleep(time.Second) // an observation window: nothing may come back
	}
}

// TestTheAnswerStandsThroughAPartition: six keys run on the minority
// side of a 3|2 split. The majority sees their hosts failed, and a keyed
// spawn there places each key anew: that is the answer the client now
// holds. After the heal each key keeps exactly that interpreter, and the
// minority's stale copies stop themselves. Before a new placement took a
// generation above every one known, about half the stale copies won the tie
// on name and the interpreter the client was using was stopped.
func TestTheAnswerStandsThroughAPartition(t *testing.T) {
	b := newBed(t, "", testbed.Filters)
	left, right := b.Hosts[:3], b.Hosts[3:]
	keys := []string{"stands-1", "stands-2", "stands-3", "stands-4", "stands-5", "stands-6"}
	rids := map[string]string{}
	for i, key := range keys {
		host := right[i%2]
		res, out := spawnKeyed(t, host, key, "--constraint", "box="+host.Name)
		if res.Code != 0 {
			t.Fatalf("spawn %s on %s failed", key, host.Name)
		}
		rids[key] = out["request_id"].(string)
	}
	var all []string
	for _, rid := range rids {
		all = append(all, rid)
	}
	// As in TestKillNineServer: a loaded host that lost the UDP gossip of
	// a join (a CI run had h2 miss one for 30 s) learns it by push/pull,
	// every 30 s with the default profile.
	waitForWhy(t, "the keys listed everywhere", 3*lanPushPull, func() (bool, string) {
		_, ok, why := listedEverywhere(b.Hosts, all, hostSet(right))
		return ok, why
	})
	if err := b.Partition(left, right); err != nil {
		t.Fatal(err)
	}
	waitView(t, b, "each side to see the other failed", 60*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(left, right, "failed") && v.All(right, left, "failed")
	})
	answers := map[string]string{}
	for i, key := range keys {
		res, out := spawnKeyed(t, left[i%3], key)
		if res.Code != 0 || !hostSet(left)[out["node"].(string)] || out["existing"] == true {
			t.Fatalf("keyed spawn of %s on the majority side: exit %d, %v", key, res.Code, out)
		}
		answers[key] = out["name"].(string)
	}
	if err := b.Heal(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	for _, key := range keys {
		waitForWhy(t, "one interpreter for "+key+" listed by every host", 90*time.Second, func() (bool, string) {
			_, ok, why := listedEverywhere(b.Hosts, []string{rids[key]}, nil)
			return ok, why
		})
		waitFor(t, "one process for "+key, 30*time.Second, func() bool {
			_, n := processesFor(t, b, rids[key])
			return n == 1
		})
		won, _ := oneListedEverywhere(t, b.Hosts, rids[key], nil)
		if won.Name != answers[key] {
			t.Errorf("key %s: %s survived the heal, but the last answer named %s", key, won.Name, answers[key])
		}
	}
	measure(t, "partition 3|2", "heal to the last answers alone", time.Since(healed))
}

// TestHostCrashFreesItsKeys: kill -9 of everything on a host. A keyed spawn
// of one of its keys, asked elsewhere, places a new interpreter on a live
// host; a key spawned with --restart on-failure comes back by itself, once,
// on a live host.
func TestHostCrashFreesItsKeys(t *testing.T) {
	b := newBed(t, "")
	victim, rest := b.Hosts[4], b.Hosts[:4]
	res, plain := spawnKeyed(t, victim, "nb-plain", "--constraint", "box="+victim.Name)
	if res.Code != 0 {
		t.Fatal("spawn failed")
	}
	res, restarting := spawnKeyed(t, victim, "nb-restart", "--constraint", "box="+victim.Name, "--restart", "on-failure")
	if res.Code != 0 {
		t.Fatal("spawn failed")
	}
	ridRestart := restarting["request_id"].(string)
	waitView(t, b, "every host to see the interpreters alive", 30*time.Second, b.Hosts, func(v testbed.View) bool {
		return oneView(v, b.Hosts, plain["name"].(string), restarting["name"].(string))
	})
	if err := victim.Crash(); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	var detected time.Duration
	waitFor(t, "the restarting key alive again on a live host in every view", 60*time.Second, func() bool {
		if detected == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if b.View(ctx, rest...).All(rest, b.Hosts[4:], "failed") {
				detected = time.Since(crashed)
			}
			cancel()
		}
		_, ok := oneListedEverywhere(t, rest, ridRestart, hostSet(rest))
		return ok
	})
	measure(t, "kill -9 (host crash)", "restarted interpreter alive in every view", time.Since(crashed))
	if detected > 0 {
		measure(t, "kill -9 (host crash)", "host failed in every view (detection)", detected)
	}
	if _, n := processesFor(t, b, ridRestart); n != 1 {
		t.Fatalf("%d processes for the restarted key", n)
	}
	waitView(t, b, "the crashed host failed everywhere", 60*time.Second, rest, func(v testbed.View) bool {
		return v.All(rest, b.Hosts[4:], "failed")
	})
	res, again := spawnKeyed(t, rest[1], "nb-plain")
	if res.Code != 0 || again["existing"] == true || again["node"] == victim.Name {
		t.Fatalf("a keyed spawn of the crashed host's key: exit %d %v", res.Code, again)
	}
	if _, n := processesFor(t, b, again["request_id"].(string)); n != 1 {
		t.Fatalf("%d processes for the re-spawned key", n)
	}
	// The restart policy re-placed once, not once per observer, nor twice
	// by its owner.
	time.Sleep(3 * time.Second) // an observation window
	if _, n := processesFor(t, b, ridRestart); n != 1 {
		t.Fatalf("%d processes for the restarted key after a while", n)
	}
	replaced := 0
	for _, h := range rest {
		log, err := h.Log()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "interpreter-replaced") && strings.Contains(line, "-"+ridRestart+"-") {
				replaced++
			}
		}
	}
	if replaced != 1 {
		t.Fatalf("the restarting key was re-placed %d times, want once", replaced)
	}
}

// TestNameConflictLoserStopsItsInterpreter: a supervisor started on h4 with
// the name of an interpreter already running on h1 joins the mesh; the mesh
// sides with the one it knows, and the newcomer stops its interpreter and
// exits non-zero, saying why, so no process runs unlisted.
func TestNameConflictLoserStopsItsInterpreter(t *testing.T) {
	b := newBed(t, "")
	h1, h4 := b.Hosts[0], b.Hosts[3]
	res, in := spawnKeyed(t, h1, "nb-conflict", "--constraint", "box="+h1.Name)
	if res.Code != 0 {
		t.Fatal("spawn failed")
	}
	name := in["name"].(string)
	waitView(t, b, "the interpreter alive everywhere", 30*time.Second, b.Hosts, func(v testbed.View) bool {
		return oneView(v, b.Hosts, name)
	})
	data, err := os.ReadFile(filepath.Join(h1.DataDir, "interpreters", name, "spec.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	json.Unmarshal(data, &spec)
	dir := filepath.Join(h4.DataDir, "impostor")
	os.MkdirAll(dir, 0o700)
	addr := h4.IP + ":7999"
	spec["gossip_bind"] = h4.IP + ":7998"
	spec["endpoint"] = addr
	spec["join"] = []string{h4.Gossip}
	spec["output_log"] = filepath.Join(dir, "output.log")
	argv := spec["argv"].([]any)
	argv[len(argv)-1] = addr
	data, _ = json.Marshal(spec)
	specPath := filepath.Join(dir, "spec.json")
	os.WriteFile(specPath, data, 0o600)
	cmd := exec.Command("ip", "netns", "exec", h4.NS, b.Agent(), "interpreter", "--spec", specPath)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("the conflict's loser exited 0:\n%s", out.String())
		}
	case <-time.After(40 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the conflict's loser still runs after 40s:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "no longer a member") || !strings.Contains(out.String(), "held by the member at "+h1.IP) {
		t.Errorf("the loser does not say why it stopped:\n%s", out.String())
	}
	perHost, total := processesFor(t, b, in["request_id"].(string))
	if total != 1 || perHost[h1.Name] != 1 {
		t.Fatalf("processes for the key after the conflict: %v", perHost)
	}
	if c, err := exec.Command("ip", "netns", "exec", h4.NS, "ss", "-ltnH", "sport = :7999").Output(); err == nil && len(strings.TrimSpace(string(c))) > 0 {
		t.Fatalf("the loser's interpreter still listens on %s: %s", addr, c)
	}
	waitFor(t, "the original listed alive everywhere", 30*time.Second, func() bool {
		_, ok := oneListedEverywhere(t, b.Hosts, in["request_id"].(string), map[string]bool{h1.Name: true})
		return ok
	})
}

// waitFor polls cond until it holds, at most limit (a bounded poll).
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	waitForWhy(t, what, limit, func() (bool, string) { return cond(), "" })
}

// waitForWhy is waitFor with a condition that says why it does not hold;
// a timeout reports the last reason.
func waitForWhy(t *testing.T, what string, limit time.Duration, cond func() (bool, string)) {
	t.Helper()
	start := time.Now()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Since(start) > limit {
			if why != "" {
				why = ": last seen: " + why
			}
			t.Fatalf("timed out after %s waiting for %s%s", limit, what, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
