package testbed_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshagent/agent/scripts/testbed"
)

// The Jupyter kernel provisioner (contrib/jupyter) end to end: a stock
// jupyter_client.KernelManager on h1 starts a kernel that the mesh places
// by load on another host, executes, interrupts, restarts and shuts it
// down; then a kernel whose host crashes is seen dead by is_alive().

// jupyterPython is a Python with jupyter_client 7 or later and ipykernel,
// or "" and why not.
func jupyterPython() (string, string) {
	for _, p := range []string{os.Getenv("JUPYTER_PYTHON"), "/usr/bin/python3"} {
		if p != "" && exec.Command(p, "-c", "import jupyter_client, ipykernel, sys; sys.exit(int(jupyter_client.version_info[0]) < 7)").Run() == nil {
			return p, ""
		}
	}
	return "", "no /usr/bin/python3 with jupyter_client 7 and ipykernel: apt-get install python3-jupyter-client python3-ipykernel (.ci/run does)"
}

// jupyterBed is three hosts whose servers offer the ipykernel kind, with
// fixed loads so that placement by load is predictable: h1 (the client's
// host) is the busiest, h3 the idlest.
type jupyterBed struct {
	b      *testbed.Testbed
	python string
	env    []string // the client's environment: the agent on PATH, the provisioner and kernelspec installed
	flow   string   // contrib/jupyter/tests/kernel_flow.py
}

var jupyterLoads = []string{"fixed:cpu=90,mem=90", "fixed:cpu=60,mem=60", "fixed:cpu=10,mem=10"}

func newJupyterBed(t *testing.T) *jupyterBed {
	t.Helper()
	if skipReason != "" {
		t.Skip("end-to-end test bed skipped: " + skipReason)
	}
	py, why := jupyterPython()
	if py == "" {
		t.Skip(why)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The servers' kind, as shipped, with IPython's own files kept in the test's directory.
	var kinds map[string]map[string]any
	data, err := os.ReadFile(filepath.Join(root, "contrib", "jupyter", "interpreters.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &kinds); err != nil {
		t.Fatal(err)
	}
	kinds["ipykernel"]["env"].(map[string]any)["IPYTHONDIR"] = filepath.Join(dir, "ipython")
	data, _ = json.Marshal(kinds)
	interps := filepath.Join(dir, "interpreters.json")
	if err := os.WriteFile(interps, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// The client: the provisioner installed as `make jupyter` does, into the test's directory.
	site, kernels := filepath.Join(dir, "site"), filepath.Join(dir, "jupyter", "kernels")
	install := exec.Command(filepath.Join(root, "contrib", "jupyter", "install.sh"))
	install.Env = append(os.Environ(), "SITE_DIR="+site, "KERNELS_DIR="+kernels, "PYTHON="+py)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	// Two broken kernelspecs beside it: a kind no server offers, and an
	// agent binary that is not there.
	for name, config := range map[string]string{"mesh-nope": `{"kind": "nope"}`, "mesh-noagent": `{"agent": "/no/such/agent"}`} {
		os.MkdirAll(filepath.Join(kernels, name), 0o755)
		spec := `{"argv": ["python3"], "display_name": "` + name + `", "language": "python", "metadata": {"kernel_provisioner": {"provisioner_name": "mesh-provisioner", "config": ` + config + `}}}`
		if err := os.WriteFile(filepath.Join(kernels, name, "kernel.json"), []byte(spec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "bin")
	os.MkdirAll(bin, 0o755)
	if err := os.Symlink(agentBin, filepath.Join(bin, "agent")); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + bin + ":/usr/bin:/bin", "HOME=" + dir, "PYTHONPATH=" + site,
		"JUPYTER_PATH=" + filepath.Join(dir, "jupyter"), "JUPYTER_RUNTIME_DIR=" + filepath.Join(dir, "runtime"),
		"JUPYTER_CONFIG_DIR=" + filepath.Join(dir, "config"), "JUPYTER_PLATFORM_DIRS=1", "PYTHONDONTWRITEBYTECODE=1"}

	b, err := testbed.New(testbed.Config{Hosts: 3, Agent: agentBin, Logf: t.Logf, Args: []string{"--tag", "test=" + t.Name()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range b.Hosts {
				t.Logf("log of %s, last lines:\n%s", h.Name, h.LogTail(40))
			}
		}
		if err := b.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	for i, h := range b.Hosts {
		if err := b.Start(h, b.Hosts[:min(i, 1)], "--interpreters", interps, "--load-source", jupyterLoads[i]); err != nil {
			t.Fatal(err)
		}
	}
	waitView(t, b, "the three hosts alive on every host", 30*time.Second, b.Hosts, func(v testbed.View) bool {
		return v.All(b.Hosts, b.Hosts, "alive")
	})
	waitFor(t, "every server's load published", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ms, err := b.Hosts[0].Members(ctx)
		if err != nil {
			return false
		}
		for _, h := range b.Hosts {
			if ms[h.Name].Tags["cpu"] == "" {
				return false
			}
		}
		return true
	})
	return &jupyterBed{b: b, python: py, env: env, flow: filepath.Join(root, "contrib", "jupyter", "tests", "kernel_flow.py")}
}

// client starts kernel_flow.py in h's namespace, as a user's Jupyter there.
func (j *jupyterBed) client(ctx context.Context, h *testbed.Host, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, j.python, j.flow}, args...)...)
	cmd.Env = j.env
	return cmd
}

// steps reads kernel_flow.py's JSON lines.
type flowStep struct {
	Step    string  `json:"step"`
	Seconds float64 `json:"seconds"`
	Name    string  `json:"name"`
	Node    string  `json:"node"`
	IP      string  `json:"ip"`
	Before  string  `json:"before"`
	Ename   string  `json:"ename"`
	Alive   bool    `json:"alive"`
	Error   string  `json:"error"`
	P50     float64 `json:"p50"`
	What    string  `json:"what"`
	PID     int     `json:"pid"`
	// SameClient: the step used the client made before the restart.
	SameClient bool `json:"same_client"`
}

func readStep(t *testing.T, r *bufio.Reader) flowStep {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("kernel_flow.py ended early: %v", err)
	}
	var s flowStep
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		t.Fatalf("kernel_flow.py printed %q: %v", line, err)
	}
	t.Logf("kernel_flow.py: %s", strings.TrimSpace(line))
	return s
}

// kernelProcesses counts ipykernel processes and interpreter supervisors
// in every host's namespace.
func (j *jupyterBed) kernelProcesses(t *testing.T) (kernels, supervisors int) {
	t.Helper()
	for _, h := range j.b.Hosts {
		procs, err := h.Processes()
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range procs {
			switch {
			case strings.Contains(strings.Join(args, " "), "ipykernel_launcher"):
				kernels++
			case len(args) > 1 && args[1] == "interpreter":
				supervisors++
			}
		}
	}
	return kernels, supervisors
}

// TestJupyterKernelOnTheMesh: the stock KernelManager on h1 starts
// mesh-python3; the kernel runs on h3 (the idlest server by load, not the
// client's host), executes code, a time.sleep ends in KeyboardInterrupt
// when interrupted, it restarts, and shutdown leaves no process on any
// host. Then a second kernel's host is crashed: is_alive() turns false
// within the failure detection time.
func TestJupyterKernelOnTheMesh(t *testing.T) {
	j := newJupyterBed(t)
	h1 := j.b.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	cmd := j.client(ctx, h1, "flow", "mesh-python3")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	ready := readStep(t, r)
	if ready.Node != "h3" {
		t.Errorf("the kernel runs on %q; by load it belongs on h3 (loads %v), not on the client's host h1", ready.Node, jupyterLoads)
	}
	if s := readStep(t, r); s.Step != "executed" {
		t.Fatalf("step %+v", s)
	}
	intr := readStep(t, r)
	if intr.Step != "interrupted" || intr.Ename != "KeyboardInterrupt" {
		t.Fatalf("interrupt: %+v", intr)
	}
	// In place: the same interpreter on the same server, reached by the
	// same client.
	restarted := readStep(t, r)
	if restarted.Step != "restarted" || restarted.Name != restarted.Before || restarted.Name == "" ||
		restarted.Node != ready.Node || !restarted.SameClient {
		t.Fatalf("restart: %+v, want the same interpreter %s on %s", restarted, ready.Name, ready.Node)
	}
	down := readStep(t, r)
	if down.Step != "shutdown" || down.Alive {
		t.Fatalf("shutdown: %+v", down)
	}
	io.Copy(io.Discard, r)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kernel_flow.py flow: %v\n%s", err, stderr.String())
	}
	measure(t, "jupyter", "kernel start to ready through the mesh", time.Duration(ready.Seconds*float64(time.Second)))
	measure(t, "jupyter", "interrupt to KeyboardInterrupt, p50 of 5", time.Duration(intr.Seconds*float64(time.Second)))
	measure(t, "jupyter", "restart to ready", time.Duration(restarted.Seconds*float64(time.Second)))
	// The kernel is gone when shutdown_kernel returns; its supervisor
	// exits once it has left the mesh.
	shut := time.Now()
	waitFor(t, "no kernel process and no supervisor on any host after shutdown_kernel", 15*time.Second, func() bool {
		k, s := j.kernelProcesses(t)
		return k == 0 && s == 0
	})
	measure(t, "jupyter", "shutdown_kernel returned to no process left", time.Since(shut))
	ctxL, cancelL := context.WithTimeout(context.Background(), 10*time.Second)
	res, _ := h1.CLI(ctxL, "interpreters", "--format", "json")
	cancelL()
	if strings.Contains(res.Stdout, "ipykernel-") {
		t.Fatalf("a kernel is still listed alive after shutdown: %s", res.Stdout)
	}

	// The host crash.
	crash := j.client(ctx, h1, "crash", "mesh-python3")
	crash.Stderr = &stderr
	stdin, err := crash.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err = crash.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := crash.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); crash.Process.Kill(); crash.Wait() }()
	r = bufio.NewReader(out)
	up := readStep(t, r)
	var victim *testbed.Host
	for _, h := range j.b.Hosts {
		if h.Name == up.Node {
			victim = h
		}
	}
	if victim == nil || victim == h1 {
		t.Fatalf("the second kernel runs on %q", up.Node)
	}
	if err := victim.Crash(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(stdin, "crashed")
	dead := readStep(t, r)
	if dead.Step != "dead" {
		t.Fatalf("after the crash: %+v", dead)
	}
	measure(t, "jupyter host crash", "crash to is_alive() false", time.Duration(dead.Seconds*float64(time.Second)))
	// The fast profile's detection at three hosts is a few seconds; the
	// bound leaves room for a loaded machine.
	if dead.Seconds > 20 {
		t.Errorf("is_alive() stayed true %.1fs after the host crashed", dead.Seconds)
	}
	// restart_kernel(now=True), as Jupyter's restarter does: a new kernel
	// on a live server, and the same client runs the next cell there.
	back := readStep(t, r)
	if back.Step != "recovered" || back.Node == victim.Name || back.Node == "" || back.Name == up.Name {
		t.Fatalf("after the crash: %+v (the kernel was %s on %s)", back, up.Name, victim.Name)
	}
	measure(t, "jupyter host crash", "crash to the next cell's answer, same client", time.Duration(back.Seconds*float64(time.Second)))
	stdin.Close()
	if err := crash.Wait(); err != nil {
		t.Fatalf("kernel_flow.py crash: %v\n%s", err, stderr.String())
	}
}

// TestJupyterStartTimes (opt-in: JUPYTER_BENCH=N) starts N kernels through
// the mesh from h1 and N with jupyter_client's local provisioner in h1,
// one after the other, and logs the median start to ready of each.
func TestJupyterStartTimes(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("JUPYTER_BENCH"))
	if n <= 0 {
		t.Skip("set JUPYTER_BENCH=10 to time kernel starts")
	}
	j := newJupyterBed(t)
	for _, kernel := range []string{"mesh-python3", "python3"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(3*n)*time.Minute)
		cmd := j.client(ctx, j.b.Hosts[0], "bench", kernel, strconv.Itoa(n))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("bench %s: %v\n%s", kernel, err, stderr.String())
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			t.Logf("kernel_flow.py: %s", line)
			var s flowStep
			if json.Unmarshal([]byte(line), &s) == nil && s.Step == "bench" {
				measure(t, "jupyter "+kernel, fmt.Sprintf("%s to ready, p50 of %d", s.What, n), time.Duration(s.P50*float64(time.Second)))
			}
		}
	}
	if k, s := j.kernelProcesses(t); k != 0 || s != 0 {
		t.Fatalf("after the starts, %d kernel processes and %d supervisors still run", k, s)
	}
}

// TestJupyterBadKernelspecs: a kernelspec naming a kind no server offers,
// and one naming an agent binary that does not exist: start_kernel() fails
// with the reason and the fix, and nothing starts anywhere.
func TestJupyterBadKernelspecs(t *testing.T) {
	j := newJupyterBed(t)
	for kernel, want := range map[string]string{
		"mesh-nope":    `kernelspec 'mesh-nope'): no server offers kind "nope"; kinds offered: demo, ipykernel`,
		"mesh-noagent": `the agent binary '/no/such/agent' named in kernelspec 'mesh-noagent' does not exist or is not executable: fix "agent" in its provisioner config`,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := j.client(ctx, j.b.Hosts[0], "refused", kernel).Output()
		cancel()
		if err != nil {
			t.Fatalf("%s: %v %s", kernel, err, out)
		}
		var s flowStep
		json.Unmarshal(out, &s)
		t.Logf("%s: %s", kernel, s.Error)
		if s.Step != "refused" || !strings.Contains(s.Error, want) {
			t.Errorf("%s: %q, want it to say %q", kernel, s.Error, want)
		}
	}
	if k, s := j.kernelProcesses(t); k != 0 || s != 0 {
		t.Fatalf("%d kernel processes and %d supervisors after refused starts", k, s)
	}
}

// TestJupyterCrashTimes (opt-in: JUPYTER_BENCH=N) times a crash to the
// next cell's answer in the same client, N times each: a mesh kernel's
// host crashes (every process on it killed; the host is booted again
// after), and a local kernel's process is killed with SIGKILL. The
// client calls restart_kernel(now=True) once is_alive() is false, as
// Jupyter's restarter does.
func TestJupyterCrashTimes(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("JUPYTER_BENCH"))
	if n <= 0 {
		t.Skip("set JUPYTER_BENCH=10 to time crashes")
	}
	j := newJupyterBed(t)
	h1 := j.b.Hosts[0]
	for _, kernel := range []string{"mesh-python3", "python3"} {
		var dead, back []time.Duration
		for range n {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			cmd := j.client(ctx, h1, "crash", kernel)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			stdin, _ := cmd.StdinPipe()
			out, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(out)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("kernel_flow.py crash %s, stderr:\n%s", kernel, stderr.String())
				}
			})
			up := readStep(t, r)
			var victim *testbed.Host
			if kernel == "python3" {
				if err := syscall.Kill(up.PID, syscall.SIGKILL); err != nil {
					t.Fatalf("kill -9 of the local kernel %d: %v", up.PID, err)
				}
			} else {
				for _, h := range j.b.Hosts {
					if h.Name == up.Node {
						victim = h
					}
				}
				if victim == nil || victim == h1 {
					t.Fatalf("the kernel runs on %q", up.Node)
				}
				if err := victim.Crash(); err != nil {
					t.Fatal(err)
				}
			}
			fmt.Fprintln(stdin, "crashed")
			d, b := readStep(t, r), readStep(t, r)
			stdin.Close()
			io.Copy(io.Discard, r)
			if err := cmd.Wait(); err != nil || d.Step != "dead" || b.Step != "recovered" {
				t.Fatalf("kernel_flow.py crash %s: %v %+v %+v\n%s", kernel, err, d, b, stderr.String())
			}
			cancel()
			dead, back = append(dead, seconds(d.Seconds)), append(back, seconds(b.Seconds))
			if victim != nil {
				if err := j.b.Restart(victim); err != nil {
					t.Fatal(err)
				}
				waitView(t, j.b, "the crashed host back on every host", 60*time.Second, j.b.Hosts, func(v testbed.View) bool {
					return v.All(j.b.Hosts, j.b.Hosts, "alive")
				})
			}
		}
		measure(t, "jupyter "+kernel, fmt.Sprintf("crash to is_alive() false, p50 of %d", n), median(dead))
		measure(t, "jupyter "+kernel, fmt.Sprintf("crash to the next cell's answer, p50 of %d", n), median(back))
		t.Logf("%s: crash to next cell, all: %v", kernel, back)
	}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
