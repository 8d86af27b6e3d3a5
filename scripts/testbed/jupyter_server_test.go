package testbed_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshagent/agent/scripts/testbed"
)

// Debian's jupyter_server 1.23 (the server JupyterLab and Notebook 7 run
// on) in h1's namespace, its default kernel mesh-python3 placed by load on
// h3, driven only through its REST and websocket API
// (contrib/jupyter/tests/server_flow.py, as a web client does): start,
// a cell, interrupt, restart and a cell on the same websocket, kill -9 of
// everything on the kernel's host and a cell on the same websocket,
// DELETE. Then, under jupyter_server and the classic Notebook 6.4 alike
// (the same API), idle culling and a kill -9 of the server itself.

// serverToken is the test server's token; the API asks for it.
const serverToken = "mesh-test-token"

const serverPort = 8888

func jupyterServerAvailable(py string) string {
	if exec.Command(py, "-c", "import jupyter_server, sys; sys.exit(jupyter_server.version_info[0] != 1)").Run() != nil {
		return "no jupyter_server 1.x for " + py + ": apt-get install python3-jupyter-server (.ci/run does)"
	}
	return ""
}

// startJupyterServer runs `python3 -m jupyter_server` in h's namespace on
// 127.0.0.1:serverPort until the test ends (SIGTERM, as a service manager
// stops it).
func (j *jupyterBed) startJupyterServer(t *testing.T, h *testbed.Host, extra ...string) *notebookServer {
	t.Helper()
	if why := jupyterServerAvailable(j.python); why != "" {
		t.Fatal(why) // .ci/run installs it: a missing one is a broken setup, not a reason to skip
	}
	dir := t.TempDir()
	args := append([]string{"netns", "exec", h.NS, j.python, "-m", "jupyter_server", "--no-browser", "--allow-root",
		"--ServerApp.ip=127.0.0.1", fmt.Sprintf("--ServerApp.port=%d", serverPort), "--ServerApp.port_retries=0",
		"--ServerApp.root_dir=" + dir, "--ServerApp.token=" + serverToken, "--ServerApp.password=",
		"--MappingKernelManager.default_kernel_name=mesh-python3"}, extra...)
	s := &notebookServer{cmd: exec.Command("ip", args...), log: &syncBuffer{}, done: make(chan struct{}), dir: dir}
	s.cmd.Env = j.env
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("jupyter_server's log:\n%s", s.log.String())
		}
	})
	waitFor(t, "jupyter_server to listen", 60*time.Second, func() bool {
		return strings.Contains(s.log.String(), fmt.Sprintf("127.0.0.1:%d/", serverPort))
	})
	return s
}

// serverFlow starts server_flow.py in h's namespace against the test's server.
func (j *jupyterBed) serverFlow(ctx context.Context, h *testbed.Host, mode string) *exec.Cmd {
	script := filepath.Join(filepath.Dir(j.flow), "server_flow.py")
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.NS, j.python, script, mode,
		fmt.Sprintf("http://127.0.0.1:%d", serverPort), serverToken)
	cmd.Env = j.env
	return cmd
}

// serverStep is one of server_flow.py's JSON lines.
type serverStep struct {
	Step       string   `json:"step"`
	Seconds    float64  `json:"seconds"`
	Name       string   `json:"name"`
	PID        int      `json:"pid"`
	Before     string   `json:"before"`
	Ename      string   `json:"ename"`
	Status     int      `json:"status"`
	Kernels    []string `json:"kernels"`
	Restarting float64  `json:"restarting"`
	SameClient bool     `json:"same_client"`
}

func readServerStep(t *testing.T, r *bufio.Reader, want string) serverStep {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("server_flow.py ended before %q: %v", want, err)
	}
	var s serverStep
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		t.Fatalf("server_flow.py printed %q: %v", line, err)
	}
	t.Logf("server_flow.py: %s", strings.TrimSpace(line))
	if s.Step != want {
		t.Fatalf("server_flow.py: step %q, want %q", s.Step, want)
	}
	return s
}

// guards counts the provisioner's guard processes (mesh_provisioner/guard.py) on every host.
func (j *jupyterBed) guards(t *testing.T) int {
	t.Helper()
	n := 0
	for _, h := range j.b.Hosts {
		procs, err := h.Processes()
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range procs {
			if strings.Contains(strings.Join(args, " "), "mesh_provisioner/guard.py") {
				n++
			}
		}
	}
	return n
}

func (j *jupyterBed) hostNamed(t *testing.T, name string) *testbed.Host {
	t.Helper()
	for _, h := range j.b.Hosts {
		if h.Name == name {
			return h
		}
	}
	t.Fatalf("no host %q in the bed", name)
	return nil
}

// TestJupyterServerAPIThroughTheMesh: POST /api/kernels starts the kernel
// on h3, not on the server's host h1; a cell runs over the websocket;
// POST …/interrupt ends a sleep in KeyboardInterrupt; POST …/restart
// restarts it in place (same interpreter, new process) and the next cell
// runs on the same websocket; after kill -9 of everything on the kernel's
// host the server's restarter starts it elsewhere and the next cell runs
// on the same websocket; DELETE leaves no kernel, supervisor or listing
// anywhere, and the server's stop leaves no guard.
func TestJupyterServerAPIThroughTheMesh(t *testing.T) {
	j := newJupyterBed(t)
	h1 := j.b.Hosts[0]
	server := j.startJupyterServer(t, h1)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := j.serverFlow(ctx, h1, "flow")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server_flow.py stderr:\n%s", stderr.String())
		}
	})
	r := bufio.NewReader(out)

	first := readServerStep(t, r, "executed")
	kernel, host := onlyKernel(t, h1)
	if host == h1.Name {
		t.Fatalf("the kernel runs on the server's own host %s; by load it belongs on h3 (loads %v)", host, jupyterLoads)
	}
	measure(t, "jupyter_server", "POST /api/kernels to the first cell's answer", seconds(first.Seconds))

	intr := readServerStep(t, r, "interrupted")
	if intr.Ename != "KeyboardInterrupt" || intr.Status != 204 {
		t.Fatalf("interrupt: %+v, want 204 and KeyboardInterrupt", intr)
	}
	measure(t, "jupyter_server", "POST …/interrupt to KeyboardInterrupt", seconds(intr.Seconds))

	restarted := readServerStep(t, r, "restarted")
	if !restarted.SameClient || restarted.PID == first.PID || restarted.PID == 0 {
		t.Fatalf("restart: %+v; want a new process (was %d) answering on the same websocket", restarted, first.PID)
	}
	if n, hst := onlyKernel(t, h1); n != kernel || hst != host {
		t.Errorf("after the restart the kernel is %s on %s, want the same interpreter %s on %s (in place)", n, hst, kernel, host)
	}
	measure(t, "jupyter_server", "POST …/restart to the next cell's answer", seconds(restarted.Seconds))

	victim := j.hostNamed(t, host)
	if err := victim.Crash(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(stdin, "crashed")
	back := readServerStep(t, r, "recovered")
	if !back.SameClient {
		t.Fatalf("after the crash: %+v, want the same websocket", back)
	}
	if n, hst := kernelAfterCrash(t, h1); hst == host || n == kernel {
		t.Errorf("after the crash the kernel is %s on %s, want a new one off %s", n, hst, host)
	}
	measure(t, "jupyter_server host crash", `crash to "restarting" on the websocket`, seconds(back.Restarting))
	measure(t, "jupyter_server host crash", "crash to the next cell's answer, same websocket", seconds(back.Seconds))

	deleted := readServerStep(t, r, "deleted")
	if deleted.Status != 204 || len(deleted.Kernels) != 0 {
		t.Fatalf("DELETE: %+v, want 204 and no kernel listed", deleted)
	}
	stdin.Close()
	io.Copy(io.Discard, r)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("server_flow.py flow: %v\n%s", err, stderr.String())
	}
	gone := time.Now()
	waitFor(t, "no kernel process and no supervisor on any host after DELETE", 15*time.Second, func() bool {
		k, s := j.kernelProcesses(t)
		return k == 0 && s == 0
	})
	measure(t, "jupyter_server", "DELETE answered to no process left", time.Since(gone))
	if ks := meshKernels(t, h1); len(ks) != 0 {
		t.Fatalf("kernels still listed alive in the mesh after DELETE: %v", ks)
	}
	server.stop(t)
	if n := j.guards(t); n != 0 {
		t.Fatalf("%d guard processes left after the server stopped", n)
	}
}

// jupyterServerKind is a Jupyter server the provisioner is tested under,
// started in h's namespace on 127.0.0.1:serverPort with serverToken.
type jupyterServerKind struct {
	name  string
	start func(t *testing.T, j *jupyterBed, h *testbed.Host, extra ...string) *notebookServer
}

var jupyterServerKinds = []jupyterServerKind{
	{"jupyter_server", func(t *testing.T, j *jupyterBed, h *testbed.Host, extra ...string) *notebookServer {
		return j.startJupyterServer(t, h, extra...)
	}},
	{"notebook6", func(t *testing.T, j *jupyterBed, h *testbed.Host, extra ...string) *notebookServer {
		if why := notebookAvailable(j.python); why != "" {
			t.Fatal(why) // .ci/run installs it
		}
		return j.startNotebook(t, h, serverPort, append([]string{"--NotebookApp.token=" + serverToken}, extra...)...)
	}},
}

// TestJupyterServerCullsIdleKernels: under jupyter_server 1.23 and the
// classic Notebook 6.4 in turn, with cull_idle_timeout=10 and
// cull_interval=2, a kernel left idle with no websocket is culled by the
// server after 10 s (not before) and nothing of it is left on any host:
// no kernel process, no supervisor, no mesh listing.
func TestJupyterServerCullsIdleKernels(t *testing.T) {
	j := newJupyterBed(t)
	h1 := j.b.Hosts[0]
	const timeout = 10
	for _, kind := range jupyterServerKinds {
		t.Run(kind.name, func(t *testing.T) {
			kind.start(t, j, h1, fmt.Sprintf("--MappingKernelManager.cull_idle_timeout=%d", timeout),
				"--MappingKernelManager.cull_interval=2")
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			cmd := j.serverFlow(ctx, h1, "cull")
			var stderr syncBuffer
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			r := bufio.NewReader(out)
			readServerStep(t, r, "idle")
			if _, host := onlyKernel(t, h1); host == h1.Name {
				t.Fatalf("the kernel runs on the server's own host %s", host)
			}
			culled := readServerStep(t, r, "culled")
			if err := cmd.Wait(); err != nil {
				t.Fatalf("server_flow.py cull: %v\n%s", err, stderr.String())
			}
			measure(t, kind.name, fmt.Sprintf("last activity to culled (timeout %ds, interval 2s)", timeout), seconds(culled.Seconds))
			if culled.Seconds < timeout {
				t.Errorf("culled %.1fs after its last activity, before the %ds timeout", culled.Seconds, timeout)
			}
			gone := time.Now()
			waitFor(t, "no kernel process and no supervisor on any host after the cull", 15*time.Second, func() bool {
				k, s := j.kernelProcesses(t)
				return k == 0 && s == 0
			})
			measure(t, kind.name, "culled to no process left", time.Since(gone))
			if ks := meshKernels(t, h1); len(ks) != 0 {
				t.Fatalf("kernels still listed alive in the mesh after the cull: %v", ks)
			}
		})
	}
}

// TestJupyterServerKilledStopsItsKernels: under jupyter_server 1.23 and
// the classic Notebook 6.4 in turn, kill -9 of the server process with a
// kernel running on h3. Its guard (one process per Jupyter process,
// reading a pipe only the server writes) sees the pipe end and stops the
// kernel through the mesh: no kernel process, supervisor or guard is left
// on any host, and the server started again lists no kernel.
func TestJupyterServerKilledStopsItsKernels(t *testing.T) {
	j := newJupyterBed(t)
	h1 := j.b.Hosts[0]
	for _, kind := range jupyterServerKinds {
		t.Run(kind.name, func(t *testing.T) {
			server := kind.start(t, j, h1)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := j.serverFlow(ctx, h1, "start").Output()
			if err != nil {
				t.Fatalf("server_flow.py start: %v %s", err, out)
			}
			started := readServerStep(t, bufio.NewReader(strings.NewReader(string(out))), "executed")
			kernel, host := onlyKernel(t, h1)
			if host == h1.Name {
				t.Fatalf("the kernel runs on the server's own host %s", host)
			}
			if n := j.guards(t); n != 1 {
				t.Fatalf("%d guard processes with a kernel running, want 1", n)
			}

			killed := time.Now()
			if err := server.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "no kernel process, supervisor or guard on any host after kill -9 of the server", 30*time.Second, func() bool {
				k, s := j.kernelProcesses(t)
				return k == 0 && s == 0 && j.guards(t) == 0
			})
			measure(t, kind.name+" kill -9", "server killed to no process left", time.Since(killed))
			select {
			case <-server.done:
			case <-time.After(30 * time.Second):
				t.Fatal("the killed server's process was not reaped within 30 s")
			}
			if want := fmt.Sprintf("stopped kernel %s (%s)", started.Name, kernel); !strings.Contains(server.log.String(), want) {
				t.Errorf("the server's log does not say %q", want)
			}
			if ks := meshKernels(t, h1); len(ks) != 0 {
				t.Fatalf("kernels still listed alive in the mesh after the server's kill -9: %v", ks)
			}

			// Started again, the server lists nothing and starts nothing.
			kind.start(t, j, h1)
			out, err = j.serverFlow(ctx, h1, "list").Output()
			if err != nil {
				t.Fatalf("server_flow.py list: %v %s", err, out)
			}
			if l := readServerStep(t, bufio.NewReader(strings.NewReader(string(out))), "listed"); l.Status != 200 || len(l.Kernels) != 0 {
				t.Fatalf("the restarted server lists %+v, want 200 and no kernel", l)
			}
			if k, s := j.kernelProcesses(t); k != 0 || s != 0 {
				t.Fatalf("%d kernel processes and %d supervisors after the server's restart", k, s)
			}
		})
	}
}
