package checks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshagent/agent/internal/procgroup"
)

// Clock is where the runner gets time from (state.Clock satisfies it).
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// Prober runs one probe of a script, http or tcp check. It must return by
// ctx's deadline. Called concurrently, one call per check at a time.
type Prober interface {
	Probe(ctx context.Context, d Definition) Result
}

// View is one check as RPC and HTTP show it.
type View struct {
	// Interpreter is set on an interpreter's kind check: whose it is.
	Interpreter string    `json:"interpreter,omitempty"`
	Name        string    `json:"name"`
	Type        Type      `json:"type"`
	Status      Status    `json:"status"`
	Output      string    `json:"output"`
	Since       time.Time `json:"since"`
	Checked     time.Time `json:"checked,omitzero"`
}

// Runner probes every check on its interval and keeps their states. Start
// runs it; Stop ends it and waits. Changed is called, outside the runner's
// lock, with the critical checks' names whenever any status changes. Safe
// for concurrent use.
type Runner struct {
	clock    Clock
	prober   Prober
	changed  func(critical []string)
	observed func() // see OnResult

	mu     sync.Mutex
	defs   []Definition
	states map[string]*State
	ttl    map[string]chan Result // a ttl check's reports

	stop chan struct{}
	wg   sync.WaitGroup
}

// NewRunner prepares a runner for defs; nothing runs before Start.
func NewRunner(defs []Definition, clock Clock, prober Prober, changed func(critical []string)) *Runner {
	r := &Runner{clock: clock, prober: prober, changed: changed, defs: defs,
		states: map[string]*State{}, ttl: map[string]chan Result{}, stop: make(chan struct{})}
	now := clock.Now()
	for _, d := range defs {
		s := NewState(now)
		r.states[d.Name] = &s
		if d.Type == TTL {
			r.ttl[d.Name] = make(chan Result, 1)
		}
	}
	return r
}

// Carry takes over the states of prev's checks whose definitions are the
// same here, so that replacing a runner (a reload) keeps what is known.
// Call it before Start.
func (r *Runner) Carry(prev *Runner) {
	prev.mu.Lock()
	defer prev.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	old := map[string]Definition{}
	for _, d := range prev.defs {
		old[d.Name] = d
	}
	for _, d := range r.defs {
		if od, ok := old[d.Name]; ok && reflect.DeepEqual(od, d) {
			s := *prev.states[d.Name]
			r.states[d.Name] = &s
		}
	}
}

// OnResult makes f be called after every result is applied, changed or
// not, outside the runner's lock (for one who keeps the views somewhere).
// Call it before Start.
func (r *Runner) OnResult(f func()) { r.observed = f }

// Start runs every check's loop.
func (r *Runner) Start() {
	for _, d := range r.defs {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.loop(d) }()
	}
}

// Stop ends every loop and waits for them. Idempotent.
func (r *Runner) Stop() {
	r.mu.Lock()
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// Critical lists the critical checks' names, sorted.
func (r *Runner) Critical() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.criticalLocked()
}

func (r *Runner) criticalLocked() []string {
	var out []string
	for name, s := range r.states {
		if s.Status == Critical {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Views lists the checks in definition order.
func (r *Runner) Views() []View {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]View, 0, len(r.defs))
	for _, d := range r.defs {
		s := r.states[d.Name]
		out = append(out, View{Name: d.Name, Type: d.Type, Status: s.Status, Output: s.Output, Since: s.Since, Checked: s.Checked})
	}
	return out
}

// ErrNoTTLCheck is returned by Report for a name that is no ttl check.
var ErrNoTTLCheck = errors.New("no such ttl check")

// Report records a ttl check's status, as Consul's check pass, warn and
// fail do.
func (r *Runner) Report(name string, status Status, note string) error {
	switch status {
	case Passing, Warning, Critical:
	default:
		return fmt.Errorf("status %q is not passing, warning or critical", status)
	}
	r.mu.Lock()
	ch, ok := r.ttl[name]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w %q: this agent's ttl checks are %s", ErrNoTTLCheck, name, strings.Join(r.ttlNames(), ", "))
	}
	res := Result{Status: status, Output: trim(note)}
	// The loop applies reports in order; a report it has not taken yet is
	// replaced by the newer one.
	for {
		select {
		case ch <- res:
			return nil
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

func (r *Runner) ttlNames() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names []string
	for n := range r.ttl {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return []string{"none"}
	}
	return names
}

func (r *Runner) loop(d Definition) {
	if d.Type == TTL {
		r.ttlLoop(d)
		return
	}
	for {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan Result, 1)
		go func() { done <- r.prober.Probe(ctx, d) }()
		var res Result
		select {
		case <-r.stop:
			cancel()
			<-done
			return
		case res = <-done:
		case <-r.clock.After(d.Timeout):
			cancel()
			<-done
			res = Result{Status: Critical, Output: fmt.Sprintf("timed out after %s", d.Timeout)}
		}
		cancel()
		r.observe(d, res)
		select {
		case <-r.stop:
			return
		case <-r.clock.After(d.Interval):
		}
	}
}

func (r *Runner) ttlLoop(d Definition) {
	r.mu.Lock()
	ch := r.ttl[d.Name]
	r.mu.Unlock()
	for {
		select {
		case <-r.stop:
			return
		case res := <-ch:
			r.observe(d, res)
		case <-r.clock.After(d.TTL):
			r.observe(d, Result{Status: Critical, Output: fmt.Sprintf("no report within the ttl of %s", d.TTL)})
		}
	}
}

func (r *Runner) observe(d Definition, res Result) {
	r.mu.Lock()
	changed := r.states[d.Name].Observe(d, res, r.clock.Now())
	var critical []string
	if changed {
		critical = r.criticalLocked()
	}
	r.mu.Unlock()
	if changed && r.changed != nil {
		r.changed(critical)
	}
	if r.observed != nil {
		r.observed()
	}
}

func trim(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > MaxOutput {
		s = s[:MaxOutput]
	}
	return s
}

// OSProber probes for real: it runs scripts (without a shell, killed with
// their process group at the deadline), sends HTTP GETs and dials TCP.
type OSProber struct {
	// Env is added to a script's environment.
	Env []string
}

// Probe implements Prober.
func (p OSProber) Probe(ctx context.Context, d Definition) Result {
	switch d.Type {
	case Script:
		return p.script(ctx, d)
	case HTTP:
		return httpProbe(ctx, d)
	case TCP:
		return tcpProbe(ctx, d)
	}
	return Result{Status: Critical, Output: fmt.Sprintf("type %q cannot be probed", d.Type)}
}

func (p OSProber) script(ctx context.Context, d Definition) Result {
	cmd := exec.Command(d.Args[0], d.Args[1:]...)
	cmd.Env = append(cmd.Environ(), p.Env...)
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	killed, err := procgroup.Run(ctx, cmd)
	if killed {
		return Result{Status: Critical, Output: "killed at the timeout: " + trim(out.String())}
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return Result{Status: Passing, Output: trim(out.String())}
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return Result{Status: Warning, Output: trim(out.String())}
	}
	return Result{Status: Critical, Output: trim(fmt.Sprintf("%v: %s", err, out.String()))}
}

// tcpProbe connects and, with Send or Expect, talks: a hung program
// behind a listening socket still gets its connections accepted by the
// kernel, but never answers.
func tcpProbe(ctx context.Context, d Definition) Result {
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", d.TCP)
	if err != nil {
		return Result{Status: Critical, Output: err.Error()}
	}
	defer c.Close()
	if d.Send == "" && d.Expect == "" {
		return Result{Status: Passing, Output: "connected to " + d.TCP}
	}
	// The runner ends a probe by cancelling ctx: close the connection then.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if d.Send != "" {
		if _, err := io.WriteString(c, d.Send); err != nil {
			return Result{Status: Critical, Output: fmt.Sprintf("send to %s: %v", d.TCP, err)}
		}
	}
	if d.Expect == "" {
		return Result{Status: Passing, Output: "connected to " + d.TCP + " and sent"}
	}
	var got []byte
	buf := make([]byte, 512)
	for !bytes.Contains(got, []byte(d.Expect)) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if len(got) > MaxOutput {
			got = got[len(got)-MaxOutput:]
		}
		if err != nil && !bytes.Contains(got, []byte(d.Expect)) {
			if ctx.Err() != nil {
				err = errors.New("no answer before the timeout")
			}
			return Result{Status: Critical, Output: trim(fmt.Sprintf("%s did not answer %q: %v; got %q", d.TCP, d.Expect, err, got))}
		}
	}
	return Result{Status: Passing, Output: fmt.Sprintf("%s answered %q", d.TCP, d.Expect)}
}

func httpProbe(ctx context.Context, d Definition) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.HTTP, nil)
	if err != nil {
		return Result{Status: Critical, Output: err.Error()}
	}
	req.Header.Set("User-Agent", "agent health check")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Result{Status: Critical, Output: err.Error()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, MaxOutput))
	out := fmt.Sprintf("HTTP GET %s: %s %s", d.HTTP, resp.Status, trim(string(body)))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return Result{Status: Passing, Output: trim(out)}
	case resp.StatusCode == http.StatusTooManyRequests:
		return Result{Status: Warning, Output: trim(out)}
	}
	return Result{Status: Critical, Output: trim(out)}
}

// limitedBuffer keeps the first MaxOutput bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := MaxOutput - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
