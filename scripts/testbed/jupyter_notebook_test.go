package testbed_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meshagent/agent/scripts/testbed"
)

// The classic Notebook (Debian's jupyter-notebook 6.4) in headless
// Chromium, both in h1's namespace, with the mesh-python3 kernel placed by
// load on h3: a cell runs, a sleep is interrupted from the toolbar, a
// restart from the Kernel menu keeps the tab (same interpreter, new
// process), and after kill -9 of everything on the kernel's host the tab
// shows "Kernel Restarting", goes idle, and the next cell runs on another
// server. Stopping the server stops its kernels everywhere.

// notebookServer runs `python3 -m notebook` in h's namespace on
// 127.0.0.1:port, with the test's kernelspecs, until the test ends.
type notebookServer struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	dir  string
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func notebookAvailable(py string) string {
	if exec.Command(py, "-c", "import notebook, sys; sys.exit(notebook.version_info[0] != 6)").Run() != nil {
		return "no classic Notebook 6 for " + py + ": apt-get install jupyter-notebook (.ci/run does)"
	}
	return ""
}

func (j *jupyterBed) startNotebook(t *testing.T, h *testbed.Host, port int, extra ...string) *notebookServer {
	t.Helper()
	dir := t.TempDir()
	nb := map[string]any{"cells": []any{}, "nbformat": 4, "nbformat_minor": 5, "metadata": map[string]any{
		"kernelspec": map[string]any{"name": "mesh-python3", "display_name": "Python 3 (mesh)", "language": "python"}}}
	data, _ := json.Marshal(nb)
	if err := os.WriteFile(filepath.Join(dir, "mesh.ipynb"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	token := "--NotebookApp.token=" // none, unless extra names one (a setting may be given once)
	for _, e := range extra {
		if strings.HasPrefix(e, token) {
			token = e
		}
	}
	args := []string{"netns", "exec", h.NS, j.python, "-m", "notebook", "--no-browser", "--allow-root",
		"--ip=127.0.0.1", fmt.Sprintf("--port=%d", port), "--port-retries=0", "--notebook-dir=" + dir,
		token, "--NotebookApp.password=", "--NotebookApp.open_browser=False",
		"--MappingKernelManager.default_kernel_name=mesh-python3"}
	for _, e := range extra {
		if e != token {
			args = append(args, e)
		}
	}
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
			t.Logf("notebook server's log:\n%s", s.log.String())
		}
	})
	waitFor(t, "the notebook server to listen", 60*time.Second, func() bool {
		return strings.Contains(s.log.String(), fmt.Sprintf("127.0.0.1:%d/", port))
	})
	return s
}

// stop asks the server to stop as a user's Ctrl-C twice or a service
// manager does (SIGTERM), and waits: it shuts its kernels down first.
func (s *notebookServer) stop(t *testing.T) {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		t.Errorf("the notebook server did not stop within 60 s of SIGTERM")
	}
}

// browserIn starts headless Chromium in h's namespace (a wrapper execs it
// there) and stops it when the test ends.
func browserIn(t *testing.T, h *testbed.Host) context.Context {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("no chromium in PATH: apt-get install chromium chromium-driver (.ci/run does)")
	}
	tmp := t.TempDir()
	wrapper := filepath.Join(tmp, "chromium-in-"+h.Name)
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexec ip netns exec "+h.NS+" "+bin+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	profile := t.TempDir()
	output := &syncBuffer{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(wrapper), chromedp.UserDataDir(profile), chromedp.Env("TMPDIR="+tmp), chromedp.WindowSize(1280, 900),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.Flag("disable-component-update", true), chromedp.CombinedOutput(output))
	allocCtx, stopBrowser := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, closeTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		closeTab()
		stopBrowser()
		if t.Failed() {
			t.Logf("chromium output:\n%s", output)
		}
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium in %s: %v\n%s", h.Name, err, output)
	}
	return ctx
}

// tab runs actions within limit; on failure it shows the page's text.
func tab(t *testing.T, ctx context.Context, what string, limit time.Duration, actions ...chromedp.Action[chromedp.Void]) time.Duration {
	t.Helper()
	start := time.Now()
	c, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if err := chromedp.Do(c, actions...); err != nil {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		text, _ := chromedp.Run(c, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("%s: %v\npage text:\n%s", what, err, text)
	}
	return time.Since(start)
}

// until waits for a JavaScript condition in the page.
func until(cond string) chromedp.Action[chromedp.Void] {
	return void(chromedp.Poll[bool]("!!("+cond+")", chromedp.WithPollingInterval(50*time.Millisecond)))
}

// The notebook's own state, read the way its UI shows it.
const (
	kernelIdle = `document.querySelector('#kernel_indicator_icon').classList.contains('kernel_idle_icon') &&
		!document.querySelector('.modal.in')`
	kernelBusy = `document.querySelector('#kernel_indicator_icon').classList.contains('kernel_busy_icon')`
	// runCell adds a cell at the bottom, selects it and presses the
	// toolbar's run button.
	runCellJS = `(() => { const nb = Jupyter.notebook; const c = nb.insert_cell_at_bottom('code'); c.set_text(%q);
		nb.select(nb.find_cell_index(c)); window.meshCell = c;
		document.querySelector('button[data-jupyter-action="jupyter-notebook:run-cell-and-select-next"]').click(); return true })()`
	cellOutput = `window.meshCell.output_area.outputs.map(o => o.text || o.ename || '').join('')`
)

func runCell(code string) chromedp.Action[chromedp.Void] {
	return void(chromedp.Evaluate[bool](fmt.Sprintf(runCellJS, code)))
}

func outputHas(s string) chromedp.Action[chromedp.Void] {
	return until(fmt.Sprintf(`%s.includes(%q)`, cellOutput, s))
}

func cellText(t *testing.T, ctx context.Context) string {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := chromedp.Run(c, chromedp.Evaluate[string](cellOutput))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// meshKernels lists the mesh's alive ipykernel interpreters, from h.
func meshKernels(t *testing.T, h *testbed.Host) map[string]struct{ Host, Status string } {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := h.CLI(ctx, "interpreters", "--format", "json")
	if err != nil {
		t.Fatalf("agent interpreters on %s: %v %s", h.Name, err, res.Stderr)
	}
	var resp struct {
		Interpreters []struct{ Name, Host, Status, Kind string }
	}
	json.Unmarshal([]byte(res.Stdout), &resp)
	got := map[string]struct{ Host, Status string }{}
	for _, i := range resp.Interpreters {
		if i.Kind == "ipykernel" && i.Status == "alive" {
			got[i.Name] = struct{ Host, Status string }{i.Host, i.Status}
		}
	}
	return got
}

// kernelAfterCrash is onlyKernel once the crashed host's kernel is no
// longer listed alive: the next cell can run on the new kernel (the
// restarter asks every second) before the old kernel's own member is
// failed, a second or two after its host.
func kernelAfterCrash(t *testing.T, h *testbed.Host) (name, host string) {
	t.Helper()
	waitFor(t, "one alive kernel in the mesh after the crash", 15*time.Second, func() bool { return len(meshKernels(t, h)) == 1 })
	return onlyKernel(t, h)
}

func onlyKernel(t *testing.T, h *testbed.Host) (name, host string) {
	t.Helper()
	ks := meshKernels(t, h)
	if len(ks) != 1 {
		t.Fatalf("%d alive kernels in the mesh, want 1: %v", len(ks), ks)
	}
	for n, k := range ks {
		return n, k.Host
	}
	return "", ""
}

func TestNotebookInBrowserThroughTheMesh(t *testing.T) {
	j := newJupyterBed(t)
	if why := notebookAvailable(j.python); why != "" {
		t.Fatal(why) // .ci/run installs it: a missing one is a broken setup, not a reason to skip
	}
	h1 := j.b.Hosts[0]
	server := j.startNotebook(t, h1, 8888)
	ctx := browserIn(t, h1)

	ready := tab(t, ctx, "open the notebook; its mesh kernel idle", 90*time.Second,
		chromedp.Navigate("http://127.0.0.1:8888/notebooks/mesh.ipynb"), until(`window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel`),
		until(kernelIdle))
	measure(t, "notebook", "page load to the new kernel idle", ready)
	kernel, host := onlyKernel(t, h1)
	if host == h1.Name {
		t.Fatalf("the kernel runs on the server's own host %s; by load it belongs elsewhere", host)
	}
	tab(t, ctx, "run a cell", 30*time.Second, runCell("import os; print(6 * 7, os.getpid())"), outputHas("42 "))
	firstPID := strings.Fields(cellText(t, ctx))[1]

	tab(t, ctx, "a sleep runs", 30*time.Second, runCell("import time; time.sleep(120)"), until(kernelBusy))
	took := tab(t, ctx, "interrupt from the toolbar", 30*time.Second,
		chromedp.Click(chromedp.CSS(`button[data-jupyter-action="jupyter-notebook:interrupt-kernel"]`)),
		outputHas("KeyboardInterrupt"), until(kernelIdle))
	measure(t, "notebook", "toolbar interrupt to KeyboardInterrupt shown", took)

	// Kernel menu, Restart, confirm: the same tab carries on.
	took = tab(t, ctx, "restart from the Kernel menu", 60*time.Second,
		chromedp.Click(chromedp.CSS(`#kernellink`)), chromedp.Click(chromedp.CSS(`#restart_kernel > a`)),
		chromedp.Click(chromedp.CSS(`.modal-dialog .modal-footer button.btn-danger`)),
		until(`!document.querySelector('.modal.in')`), until(kernelIdle),
		runCell("import os; print(6 * 7, os.getpid())"), outputHas("42 "))
	measure(t, "notebook", "menu restart to the next cell's answer", took)
	saveShot(t, ctx, "notebook-after-restart.png")
	if pid := strings.Fields(cellText(t, ctx))[1]; pid == firstPID {
		t.Errorf("the cell ran in process %s after the restart, the same as before", pid)
	}
	if n, hst := onlyKernel(t, h1); n != kernel || hst != host {
		t.Errorf("after the restart the kernel is %s on %s, want the same interpreter %s on %s (in place)", n, hst, kernel, host)
	}

	// kill -9 of everything on the kernel's host.
	var victim *testbed.Host
	for _, h := range j.b.Hosts {
		if h.Name == host {
			victim = h
		}
	}
	crashed := time.Now()
	if err := victim.Crash(); err != nil {
		t.Fatal(err)
	}
	tab(t, ctx, `the tab shows "Kernel Restarting"`, 30*time.Second,
		until(`[...document.querySelectorAll('.modal.in .modal-title')].some(e => e.textContent.includes('Kernel Restarting'))`))
	measure(t, "notebook host crash", `crash to "Kernel Restarting" shown`, time.Since(crashed))
	tab(t, ctx, "the restarted kernel idle; the dialog dismissed; the next cell runs", 60*time.Second,
		until(`document.querySelector('#kernel_indicator_icon').classList.contains('kernel_idle_icon')`),
		chromedp.Click(chromedp.CSS(`.modal.in .modal-footer button`)), until(kernelIdle),
		runCell("import socket; print('after the crash', 6 * 7)"), outputHas("after the crash 42"))
	measure(t, "notebook host crash", "crash to the next cell's answer in the same tab", time.Since(crashed))
	saveShot(t, ctx, "notebook-after-host-crash.png")
	if n, hst := kernelAfterCrash(t, h1); hst == host || n == kernel {
		t.Errorf("after the crash the kernel is %s on %s, want a new one off %s", n, hst, host)
	}

	// Stopping the server shuts its kernels down, wherever they run.
	server.stop(t)
	waitFor(t, "no kernel and no supervisor on any host after the server stopped", 30*time.Second, func() bool {
		k, s := j.kernelProcesses(t)
		return k == 0 && s == 0
	})
}

// saveShot keeps a screenshot for the closing note in
// test-artifacts/ (ignored by git).
func saveShot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	dir, _ := filepath.Abs(filepath.Join("..", "..", "test-artifacts"))
	os.MkdirAll(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err == nil {
		t.Logf("screenshot: %s", filepath.Join(dir, name))
	}
}

// void drops an action's value.
func void[T any](a chromedp.Action[T]) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := a(ctx, t)
		return chromedp.Void{}, err
	}
}
