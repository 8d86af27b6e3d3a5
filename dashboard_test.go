package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// artifactDir holds what browser tests leave for a human to look at.
const artifactDir = "test-artifacts"

// TestDashboardInBrowser loads the dashboard of a three-server mesh in
// headless Chromium and follows it live: three server cards, an interpreter
// spawned through the CLI appears without a reload, a stopped one shows as
// left, the chart grows from member updates, a kill -9'd server's card turns
// failed (by label and border, not colour alone), the filter box narrows
// cards, and at phone width nothing overflows. It saves screenshots to
// test-artifacts/.
func TestDashboardInBrowser(t *testing.T) {
	ctx := newBrowser(t)
	// Every server's load moves every few seconds, so the chart must grow
	// from live member updates while the page is open, whenever it opened.
	var script []string
	for i := range 100 {
		script = append(script, fmt.Sprintf("%ds=%d/%d", 4*i, 20+45*(i%2), 30+10*(i%3)))
	}
	agents := spawnCluster(t, "--load-source", "script:"+strings.Join(script, ","), "--load-window", "1s")
	a1, victim := agents[0], agents[2]
	console := watchConsole(t, ctx)

	inPage(t, ctx, "open the dashboard and see three alive server cards", 20*time.Second,
		chromedp.Navigate("http://"+a1.http+"/"),
		chromedp.WaitVisible(chromedp.CSS(serverCard(agents[0].name, "alive"))),
		chromedp.WaitVisible(chromedp.CSS(serverCard(agents[1].name, "alive"))),
		chromedp.WaitVisible(chromedp.CSS(serverCard(agents[2].name, "alive"))))
	if n := pageValue[int](t, ctx, `document.querySelectorAll("article.server").length`); n != 3 {
		t.Fatalf("%d server cards, want 3", n)
	}
	if name := pageValue[string](t, ctx, `document.querySelector("#self-name").textContent`); name != a1.name {
		t.Fatalf("header names %q, want %s", name, a1.name)
	}
	chartSteps := fmt.Sprintf(`(document.querySelector('article[data-server=%q] .line.cpu').getAttribute("d").match(/V/g) || []).length`, a1.name)
	inPage(t, ctx, "a chart drawn from /v1/history", 10*time.Second,
		chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.querySelector('article[data-server=%q] .line.cpu').getAttribute("d") !== ""`, a1.name), every100ms))
	stepsAtLoad := pageValue[int](t, ctx, chartSteps)

	// Anything a reload would lose: a global and a card element.
	pageValue[bool](t, ctx, fmt.Sprintf(`window.__testMark = "before spawn"; window.__card = document.querySelector('article[data-server=%q]'); true`, a1.name))
	stillLoaded := `window.__testMark === "before spawn" && window.__card.isConnected`

	s, errOut, code := spawnVia(t, a1, "--kind", "demo", "--wait")
	if code != 0 {
		t.Fatalf("spawn: code %d: %s", code, errOut)
	}
	row := fmt.Sprintf(`article[data-server=%q] li[data-interpreter=%q]`, s.Node, s.Name)
	inPage(t, ctx, "the spawned interpreter under its server, without a reload", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(row+`[data-status="alive"]`)))
	if text := pageValue[string](t, ctx, fmt.Sprintf(`document.querySelector(%q).textContent`, row)); !strings.Contains(text, s.Endpoint) || !strings.Contains(text, "demo") {
		t.Fatalf("interpreter row %q lacks its endpoint %s or kind", text, s.Endpoint)
	}

	stopped, errOut, code := spawnVia(t, a1, "--kind", "demo", "--wait")
	if code != 0 {
		t.Fatalf("second spawn: code %d: %s", code, errOut)
	}
	if out, errOut, code := runCLI(t, "stop", "--rpc-addr", a1.rpc, stopped.Name); code != 0 {
		t.Fatalf("stop %s: code %d: %s %s", stopped.Name, code, out, errOut)
	}
	inPage(t, ctx, "the stopped interpreter kept, as left, under its server's stopped list", 20*time.Second,
		chromedp.WaitReady(chromedp.CSS(fmt.Sprintf(`article[data-server=%q] .gone li[data-interpreter=%q][data-status="left"]`, stopped.Node, stopped.Name))))

	inPage(t, ctx, "the chart to grow from live member updates", 30*time.Second,
		chromedp.Poll[chromedp.Void](fmt.Sprintf(`%s > %d`, chartSteps, stepsAtLoad), every100ms))

	victim.kill9(t)
	failedCard := serverCard(victim.name, "failed")
	inPage(t, ctx, "the killed server's card marked failed", 40*time.Second, chromedp.WaitVisible(chromedp.CSS(failedCard)))
	badge := pageValue[string](t, ctx, fmt.Sprintf(`document.querySelector(%q).textContent`, failedCard+" .card-head .badge"))
	failedBorder := pageValue[string](t, ctx, fmt.Sprintf(`getComputedStyle(document.querySelector(%q)).borderTopStyle`, failedCard))
	aliveBorder := pageValue[string](t, ctx, fmt.Sprintf(`getComputedStyle(document.querySelector(%q)).borderTopStyle`, serverCard(a1.name, "alive")))
	if badge != "failed" || failedBorder == aliveBorder {
		t.Fatalf("a failed card must differ by more than colour: badge %q, border %s (alive: %s)", badge, failedBorder, aliveBorder)
	}
	if !pageValue[bool](t, ctx, stillLoaded) {
		t.Fatal("the page was reloaded: its global and its card element are gone")
	}

	var hosts []string // of the two demo interpreters, in card order
	for _, a := range agents {
		if a.name == s.Node || a.name == stopped.Node {
			hosts = append(hosts, a.name)
		}
	}
	for _, tc := range []struct {
		name, filter string
		want         []string // visible server cards
	}{
		{"server name", agents[1].name, []string{agents[1].name}},
		{"interpreter name shows its server", s.Name, []string{s.Node}},
		{"kind", "demo", hosts},
		{"status", "failed", []string{victim.name}},
		{"tag value", "test=" + t.Name(), []string{agents[0].name, agents[1].name, agents[2].name}},
		{"every word must match", agents[0].name + " failed", nil},
		{"cleared", "", []string{agents[0].name, agents[1].name, agents[2].name}},
	} {
		typeFilter(t, ctx, tc.filter)
		want := fmt.Sprintf("%q", strings.Join(tc.want, " "))
		inPage(t, ctx, fmt.Sprintf("filter %q (%s) to show %s", tc.filter, tc.name, want), 5*time.Second,
			chromedp.Poll[chromedp.Void](`[...document.querySelectorAll("article.server")].filter((c) => !c.hidden).map((c) => c.dataset.server).join(" ") === `+want, every100ms))
	}

	if errs := console.errors(); len(errs) > 0 {
		t.Fatalf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
	pageValue[bool](t, ctx, `document.activeElement.blur(); true`) // no focus ring in the picture
	saveScreenshot(t, ctx, "dashboard.png")

	inPage(t, ctx, "phone width", 10*time.Second, chromedp.EmulateViewport(375, 812, chromedp.EmulateMobile))
	// Cards stack in one column, and nothing reaches past the screen's edge.
	layout := pageValue[[]float64](t, ctx, `(() => {
		const cards = [...document.querySelectorAll("article.card")].map((c) => c.getBoundingClientRect());
		const widest = Math.max(document.documentElement.scrollWidth,
			...[...document.querySelectorAll("body *")].map((e) => e.getBoundingClientRect().right));
		return [innerWidth, widest, new Set(cards.map((r) => Math.round(r.left))).size];
	})()`)
	if width, widest, columns := layout[0], layout[1], layout[2]; width != 375 || widest > width || columns != 1 {
		t.Fatalf("at phone width: viewport %.0f px, content reaches %.1f px, cards in %.0f columns", width, widest, columns)
	}
	saveScreenshot(t, ctx, "dashboard-phone.png")
	if !pageValue[bool](t, ctx, stillLoaded) {
		t.Fatal("the page was reloaded")
	}
}

// every100ms polls a condition in the page ten times a second, not at
// every frame: the machine is shared.
var every100ms = chromedp.WithPollingInterval(100 * time.Millisecond)

// serverCard is the CSS selector of a server's card in a status.
func serverCard(name, status string) string {
	return fmt.Sprintf(`article.server[data-server=%q][data-status=%q]`, name, status)
}

// newBrowser starts headless Chromium for one test, with a fresh profile,
// and stops it when the test ends. It skips the test when no Chromium is
// installed: CI installs Debian's.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	var bin string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("no chromium binary in PATH: install Debian's chromium package (.ci/run does) to run the browser test")
	}
	// Profile and temporary files in directories the test removes after
	// the browser stopped (cleanups run last-in first-out): a killed
	// Chromium leaves its /tmp files behind.
	profile, tmp := t.TempDir(), t.TempDir()
	output := &lockedBuffer{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin), chromedp.UserDataDir(profile), chromedp.Env("TMPDIR="+tmp), chromedp.WindowSize(1280, 900),
		chromedp.NoSandbox, // root in a container has no sandbox to use
		chromedp.DisableGPU,
		chromedp.Flag("disable-component-update", true),
		chromedp.CombinedOutput(output))
	allocCtx, stopBrowser := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, closeTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		closeTab()
		stopBrowser() // waits for the process to exit
		if t.Failed() {
			t.Logf("chromium output:\n%s", output)
		}
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v\n%s", bin, err, output)
	}
	return ctx
}

// inPage runs browser actions within limit; on failure it shows the page's
// text, which usually says what went wrong.
func inPage(t *testing.T, ctx context.Context, what string, limit time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if err := chromedp.Do(c, actions...); err != nil {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		text, _ := chromedp.Run(c, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("%s: %v\npage text:\n%s", what, err, text)
	}
}

// pageValue evaluates a JavaScript expression in the page.
func pageValue[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// typeFilter replaces the filter box's text by typing, as a user would.
func typeFilter(t *testing.T, ctx context.Context, text string) {
	t.Helper()
	pageValue[bool](t, ctx, `(() => { const f = document.querySelector("#filter"); f.value = ""; f.dispatchEvent(new Event("input")); return true })()`)
	if text != "" {
		inPage(t, ctx, "type into the filter", 5*time.Second, chromedp.SendKeys(chromedp.CSS("#filter"), text))
	}
}

func saveScreenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100)) // quality 100 is PNG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.MkdirAll(artifactDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path, _ := filepath.Abs(filepath.Join(artifactDir, name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// pageConsole collects what the page logs: uncaught exceptions, console
// errors and browser log errors (a Content-Security-Policy violation is one).
type pageConsole struct {
	mu   sync.Mutex
	errs []string
}

func watchConsole(t *testing.T, ctx context.Context) *pageConsole {
	c, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	pc := &pageConsole{}
	messages := chromedp.Console(c)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				pc.mu.Lock()
				pc.errs = append(pc.errs, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				pc.mu.Unlock()
			}
		}
	}()
	return pc
}

func (pc *pageConsole) errors() []string {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return slices.Clone(pc.errs)
}
