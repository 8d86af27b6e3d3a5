package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// checkedKindsFile writes an interpreters file with two echo kinds (this
// binary's echo server) whose tcp check sends a line and expects it back:
// echo restarts on failure, echo-report does not.
func checkedKindsFile(t testing.TB, interval, timeout string, failures int) string {
	t.Helper()
	check := fmt.Sprintf(`[{"name": "alive", "type": "tcp", "send": "ping\n", "expect": "ping", "interval": %q, "timeout": %q,
		"failures_before_critical": %d}]`, interval, timeout, failures)
	body := fmt.Sprintf(`{
		"echo": {"command": [%q, "echo-server", "--addr", "{addr}"], "restart": "on-failure", "checks": %s},
		"echo-report": {"command": [%q, "echo-server", "--addr", "{addr}"], "checks": %s}}`, agentBin, check, agentBin, check)
	path := filepath.Join(t.TempDir(), "interpreters.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkedServer starts one server with the kinds file and waits until it
// bids (its load is known).
func checkedServer(t testing.TB, kinds string, extra ...string) *testAgent {
	t.Helper()
	a := newTestAgent(t, 1)
	stopInterpreters(t, a)
	a.start(t, append([]string{"--interpreters", kinds, "--load-source", "fixed:cpu=30,mem=30"}, extra...)...)
	waitFor(t, "the server's load in its tags", 15*time.Second, func() bool { return membersOf(t, a)[a.name].Tags["cpu"] != "" })
	return a
}

// answers reports whether the echo server at endpoint echoes a line within
// 100 ms: a stopped one's socket still accepts, but nothing answers.
func answers(endpoint string) bool {
	c, err := net.DialTimeout("tcp", endpoint, 100*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(100 * time.Millisecond))
	fmt.Fprintln(c, "are you there")
	got, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.TrimSpace(got) == "are you there"
}

// hang stops pid (SIGSTOP) and waits until every thread of it is stopped:
// until then a thread may still answer.
func hang(t testing.TB, pid int) time.Time {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	waitFor(t, fmt.Sprintf("pid %d to stop", pid), 5*time.Second, func() bool {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		for _, task := range tasks {
			stat, err := os.ReadFile(task)
			if err == nil && !strings.Contains(string(stat), ") T ") {
				return false
			}
		}
		return len(tasks) > 0
	})
	return at
}

// kindCheckViews lists the kind checks agent checks shows for interpreter.
func kindCheckViews(t testing.TB, a *testAgent, interpreter string) []map[string]any {
	t.Helper()
	out, _, code := runCLI(t, "checks", "--rpc-addr", a.rpc, "--format", "json")
	if code != 0 {
		return nil
	}
	var resp struct{ Checks []map[string]any }
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("checks json: %v\n%s", err, out)
	}
	var mine []map[string]any
	for _, c := range resp.Checks {
		if c["interpreter"] == interpreter {
			mine = append(mine, c)
		}
	}
	return mine
}

// checkStatus is the status of interpreter's check alive, and when it was
// last checked.
func checkStatus(t testing.TB, a *testAgent, interpreter string) (string, time.Time) {
	views := kindCheckViews(t, a, interpreter)
	if len(views) != 1 || views[0]["name"] != "alive" {
		return "", time.Time{}
	}
	status, _ := views[0]["status"].(string)
	checked, _ := views[0]["checked"].(string)
	at, _ := time.Parse(time.RFC3339Nano, checked)
	return status, at
}

// spawnChecked spawns kind on a and waits for its check to pass and its
// member to show no critical check.
func spawnChecked(t testing.TB, a *testAgent, kind string) spawnJSON {
	t.Helper()
	s, errOut, code := spawnVia(t, a, "--kind", kind, "--wait")
	if code != 0 {
		t.Fatalf("spawn %s: %s", kind, errOut)
	}
	waitFor(t, s.Name+"'s check to pass", 15*time.Second, func() bool {
		st, _ := checkStatus(t, a, s.Name)
		m, ok := membersOf(t, a)[s.Name]
		return st == "passing" && ok && m.Tags["hc"] == ""
	})
	return s
}

// TestHungInterpreterRestartedOnceByItsCheck: the child of an on-failure
// interpreter is stopped (SIGSTOP: its socket accepts, it answers
// nothing); its tcp check goes critical after 3 failures and its
// supervisor restarts it in place once: a new process on the same
// endpoint, rc=1, the check passing again, and no second restart while
// it keeps passing. An interpreter with restart policy no, stopped the
// same way, is only reported: critical in agent checks, unhealthy in
// agent members, never restarted.
func TestHungInterpreterRestartedOnceByItsCheck(t *testing.T) {
	a := checkedServer(t, checkedKindsFile(t, "200ms", "200ms", 3))

	s := spawnChecked(t, a, "echo")
	hung := hang(t, s.PID)
	waitFor(t, "the hung interpreter to be restarted", 30*time.Second, func() bool {
		m := membersOf(t, a)[s.Name]
		return m.Tags["rc"] == "1" && m.Tags["pid"] != fmt.Sprint(s.PID) && answers(s.Endpoint)
	})
	t.Logf("hung to restarted and answering: %s", time.Since(hung).Round(time.Millisecond))
	waitFor(t, "the stopped process to be gone", 15*time.Second, func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.PID))
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
	// Ten more results, all passing, make no second restart.
	var restarted time.Time
	waitFor(t, "the check to pass again", 15*time.Second, func() bool {
		st, at := checkStatus(t, a, s.Name)
		restarted = at
		return st == "passing"
	})
	waitFor(t, "ten more results of the check", 30*time.Second, func() bool {
		st, at := checkStatus(t, a, s.Name)
		if st != "passing" {
			t.Fatalf("the restarted interpreter's check is %s", st)
		}
		return at.Sub(restarted) >= 10*200*time.Millisecond
	})
	if m := membersOf(t, a)[s.Name]; m.Tags["rc"] != "1" || m.Tags["hc"] != "" || m.Status != "alive" {
		t.Fatalf("after one episode the member's tags are %v (%s), want rc=1 and no hc", m.Tags, m.Status)
	}

	r := spawnChecked(t, a, "echo-report")
	hang(t, r.PID)
	waitFor(t, "the policy-no interpreter's check to go critical", 30*time.Second, func() bool {
		st, _ := checkStatus(t, a, r.Name)
		return st == "critical" && membersOf(t, a)[r.Name].Tags["hc"] == "alive"
	})
	out, _, _ := runCLI(t, "members", "--rpc-addr", a.rpc, "--name", r.Name)
	if !strings.Contains(out, "interpreter (unhealthy: alive)") {
		t.Fatalf("agent members does not show the hung interpreter unhealthy:\n%s", out)
	}
	resp, err := http.Get("http://" + a.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "\nagent_interpreter_checks_critical 1\n") {
		t.Fatalf("/metrics does not count the critical kind check:\n%s", metrics)
	}
	_, at := checkStatus(t, a, r.Name)
	waitFor(t, "five more results of the critical check", 30*time.Second, func() bool {
		_, now := checkStatus(t, a, r.Name)
		return now.Sub(at) >= 5*200*time.Millisecond
	})
	if m := membersOf(t, a)[r.Name]; m.Tags["rc"] != "" || m.Tags["pid"] != fmt.Sprint(r.PID) {
		t.Fatalf("an interpreter with restart policy no was restarted: tags %v", m.Tags)
	}
	syscall.Kill(r.PID, syscall.SIGCONT)
}

// BenchmarkHungKernelRestart measures "hung kernel to restarted": the
// child of a fresh on-failure interpreter is stopped (SIGSTOP) and the
// time runs from the SIGSTOP until its endpoint answers again, which only
// the restarted process can do (hang waits until the old one is stopped).
// The check: tcp send/expect every 1 s, timeout 1 s, critical after 3
// failures. Each iteration spawns its own interpreter (the on-failure
// policy allows 5 restarts in 10 minutes per interpreter). Run with
// -benchtime 10x for the p50 of 10.
func BenchmarkHungKernelRestart(b *testing.B) {
	a := checkedServer(b, checkedKindsFile(b, "1s", "1s", 3), "--log-level", "warn")
	var took []float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := spawnChecked(b, a, "echo")
		b.StartTimer()
		hung := hang(b, s.PID) // the time runs from the SIGSTOP
		for !answers(s.Endpoint) {
			if time.Since(hung) > time.Minute {
				b.Fatalf("round %d: not restarted within a minute", i+1)
			}
			time.Sleep(10 * time.Millisecond)
		}
		took = append(took, float64(time.Since(hung).Milliseconds()))
		b.StopTimer()
		waitFor(b, "rc=1", 15*time.Second, func() bool { return membersOf(b, a)[s.Name].Tags["rc"] == "1" })
		if _, errOut, code := runCLI(b, "stop", "--rpc-addr", a.rpc, s.Name); code != 0 {
			b.Fatalf("stop %s: %s", s.Name, errOut)
		}
		b.StartTimer()
	}
	b.StopTimer()
	sort.Float64s(took)
	b.ReportMetric(percentile(took, 0.50), "p50_ms")
	b.ReportMetric(slices.Max(took), "max_ms")
	b.ReportMetric(slices.Min(took), "min_ms")
}

// TestRunRefusesBadKindChecksNamingThem: agent run stops before it starts
// anything when a kind's check has an unknown type, a zero interval or a
// script that does not exist, and says which kind and which check.
func TestRunRefusesBadKindChecksNamingThem(t *testing.T) {
	for _, tc := range []struct{ check, want string }{
		{`{"name":"alive","type":"smoke","interval":"5s"}`, `kind "kernel": bad check "alive": type "smoke" is not known`},
		{`{"name":"alive","type":"tcp","interval":"0s"}`, `kind "kernel": bad check "alive": interval "0s" is not a positive duration`},
		{`{"name":"ready","type":"script","args":["/nonexistent/check-kernel","{addr}"],"interval":"10s"}`,
			`kind "kernel": bad check "ready": script /nonexistent/check-kernel: no such file or directory`},
	} {
		kinds := filepath.Join(t.TempDir(), "interpreters.json")
		writeFile(t, kinds, fmt.Sprintf(`{"kernel": {"command": [%q, "echo-server", "--addr", "{addr}"], "checks": [%s]}}`, agentBin, tc.check))
		_, stderr, code := runCLI(t, "run", "--node", "bad", "--bind", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0",
			"--http-addr", "", "--data-dir", t.TempDir(), "--interpreters", kinds)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("agent run with kind check %s: exit %d, %s; want exit 1 saying %q", tc.check, code, stderr, tc.want)
		}
	}
}

// TestScriptKindCheckGetsTheConnectionFile: a script check of a kind with
// a Jupyter connection is given the interpreter's connection file, as an
// argument ({connection_file}) and in AGENT_INTERPRETER_CONNECTION_FILE,
// and passes once it finds the kernel's ports in it.
func TestScriptKindCheckGetsTheConnectionFile(t *testing.T) {
	script := `grep -q '"hb_port"' "$0" && test "$0" = "$AGENT_INTERPRETER_CONNECTION_FILE"`
	kinds, err := json.Marshal(map[string]any{"conn": map[string]any{
		"command": []string{agentBin, "echo-server", "--addr", "{addr}"}, "connection": "jupyter",
		"checks": []map[string]any{{"name": "conn", "type": "script", "args": []string{"/bin/sh", "-c", script, "{connection_file}"},
			"interval": "200ms"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "interpreters.json")
	writeFile(t, path, string(kinds))
	a := checkedServer(t, path)
	s, errOut, code := spawnVia(t, a, "--kind", "conn", "--wait")
	if code != 0 {
		t.Fatalf("spawn conn: %s", errOut)
	}
	var views []map[string]any
	waitFor(t, "the script check to pass", 15*time.Second, func() bool {
		views = kindCheckViews(t, a, s.Name)
		return len(views) == 1 && views[0]["status"] == "passing"
	})
	if views[0]["name"] != "conn" || views[0]["type"] != "script" {
		t.Fatalf("kind check %v", views[0])
	}
}
