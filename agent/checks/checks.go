// Package checks owns a server's health checks: their definitions (script,
// http, tcp, ttl, as Consul's), the hysteresis that turns results into a
// status (failures_before_critical, successes_before_passing), and a runner
// that probes each on its interval. The status rules are pure: results and
// time in, status out. The runner does the I/O through a Prober and takes
// its time from an injected clock. It never decides placement: the agent
// reads the critical checks and refuses to bid.
package checks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Type is what a check probes.
type Type string

// The check types.
const (
	Script Type = "script" // run a program: exit 0 passing, 1 warning, other critical
	HTTP   Type = "http"   // GET a URL: 2xx passing, 429 warning, other critical
	TCP    Type = "tcp"    // connect to host:port
	TTL    Type = "ttl"    // passing while something reports within the TTL (agent checks pass NAME)
)

// Status is a check's state, as Consul names them.
type Status string

// The statuses. Only critical keeps interpreters off a server.
const (
	Passing  Status = "passing"
	Warning  Status = "warning"
	Critical Status = "critical"
)

// Definition is one check as a config file gives it.
type Definition struct {
	Name     string        `json:"name"`
	Type     Type          `json:"type"`
	Interval time.Duration `json:"-"`
	Timeout  time.Duration `json:"-"`
	TTL      time.Duration `json:"-"`
	// Args is a script check's argv (no shell); HTTP its URL; TCP its
	// host:port.
	Args []string `json:"args,omitempty"`
	HTTP string   `json:"http,omitempty"`
	TCP  string   `json:"tcp,omitempty"`
	// Send and Expect make a tcp check talk: it writes Send once
	// connected and passes only when Expect arrives before the timeout.
	// A bare connect passes as long as the kernel accepts for the
	// program, even one that is stopped or hung.
	Send   string `json:"send,omitempty"`
	Expect string `json:"expect,omitempty"`
	// FailuresBeforeCritical failed results in a row make it critical;
	// SuccessesBeforePassing passing results in a row make it passing
	// again. Both at least 1 (the default).
	FailuresBeforeCritical int `json:"failures_before_critical,omitempty"`
	SuccessesBeforePassing int `json:"successes_before_passing,omitempty"`
}

// MaxName is the longest check name: names travel in a tag.
const MaxName = 32

// MaxTag bounds the hc tag's value (TagValue's max): the critical checks'
// names, the rest counted, well within the 512 bytes of all tags.
const MaxTag = 64

// DefaultTimeout bounds a probe whose definition gives no timeout.
const DefaultTimeout = 10 * time.Second

// ErrBadCheck is wrapped by every error of Parse.
var ErrBadCheck = errors.New("bad check")

// Parse reads one check from its JSON object and validates it. The error
// names the check (or its position, when it has no name) and the fix.
func Parse(raw string) (Definition, error) {
	var in struct {
		Definition
		Interval string `json:"interval"`
		Timeout  string `json:"timeout"`
		TTL      string `json:"ttl"`
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return Definition{}, fmt.Errorf("%w %s: %v: a check is a JSON object with name, type (script, http, tcp or ttl), "+
			"interval and the type's target (args, http, tcp) or ttl", ErrBadCheck, raw, err)
	}
	d := in.Definition
	name := d.Name
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w %q: %s", ErrBadCheck, name, fmt.Sprintf(format, a...))
	}
	if err := checkName(name); err != nil {
		return Definition{}, fmt.Errorf("%w %s: %v", ErrBadCheck, raw, err)
	}
	dur := func(field, s string) (time.Duration, error) {
		if s == "" {
			return 0, nil
		}
		v, err := time.ParseDuration(s)
		if err != nil || v <= 0 {
			return 0, bad("%s %q is not a positive duration: write it like 10s or 1m", field, s)
		}
		return v, nil
	}
	var err error
	if d.Interval, err = dur("interval", in.Interval); err != nil {
		return Definition{}, err
	}
	if d.Timeout, err = dur("timeout", in.Timeout); err != nil {
		return Definition{}, err
	}
	if d.TTL, err = dur("ttl", in.TTL); err != nil {
		return Definition{}, err
	}
	if d.FailuresBeforeCritical < 0 || d.SuccessesBeforePassing < 0 {
		return Definition{}, bad("failures_before_critical and successes_before_passing are counts: give 1 or more")
	}
	if d.FailuresBeforeCritical == 0 {
		d.FailuresBeforeCritical = 1
	}
	if d.SuccessesBeforePassing == 0 {
		d.SuccessesBeforePassing = 1
	}
	switch d.Type {
	case Script, HTTP, TCP:
		if d.Interval == 0 {
			return Definition{}, bad("has no interval (or a zero one): give how often to run it, e.g. \"interval\": \"10s\"")
		}
		if d.TTL != 0 {
			return Definition{}, bad("a %s check has no ttl (only a ttl check does): remove it", d.Type)
		}
		if d.Timeout == 0 {
			d.Timeout = min(d.Interval, DefaultTimeout)
		}
	case TTL:
		if d.TTL == 0 {
			return Definition{}, bad("a ttl check needs a ttl: how long a report stays good, e.g. \"ttl\": \"30s\"")
		}
		if d.Interval != 0 || d.Timeout != 0 {
			return Definition{}, bad("a ttl check has no interval or timeout (reports keep it passing for its ttl): remove them")
		}
	case "":
		return Definition{}, bad("has no type: give one of script, http, tcp, ttl")
	default:
		return Definition{}, bad("type %q is not known: use script, http, tcp or ttl", d.Type)
	}
	targets := 0
	for _, set := range []bool{len(d.Args) > 0, d.HTTP != "", d.TCP != ""} {
		if set {
			targets++
		}
	}
	want := map[Type]string{Script: "args", HTTP: "http", TCP: "tcp", TTL: "nothing else"}[d.Type]
	if d.Type == TTL && targets > 0 || d.Type != TTL && targets != 1 {
		return Definition{}, bad("a %s check takes %s as its target (and no other of args, http, tcp)", d.Type, want)
	}
	switch d.Type {
	case Script:
		prog := d.Args[0]
		if !filepath.IsAbs(prog) {
			return Definition{}, bad("script %q is not an absolute path: the agent runs it without a shell or PATH, so write e.g. /usr/local/bin/check-disk", prog)
		}
		info, err := os.Stat(prog)
		if err != nil {
			return Definition{}, bad("script %s: %v: install it, or fix args", prog, errors.Unwrap(err))
		}
		if info.IsDir() || info.Mode()&0o111 == 0 {
			return Definition{}, bad("script %s is not an executable file: chmod +x it", prog)
		}
	case HTTP:
		u, err := url.Parse(d.HTTP)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return Definition{}, bad("http %q is not an http:// or https:// URL: write it like http://127.0.0.1:8080/health", d.HTTP)
		}
	case TCP:
		if _, port, err := net.SplitHostPort(d.TCP); err != nil || port == "" || port == "0" {
			return Definition{}, bad("tcp %q is not host:port: write it like 127.0.0.1:5432", d.TCP)
		}
	}
	if d.Type != TCP && (d.Send != "" || d.Expect != "") {
		return Definition{}, bad("send and expect belong to a tcp check, not a %s one: remove them", d.Type)
	}
	if len(d.Expect) > MaxOutput {
		return Definition{}, bad("expect is longer than %d bytes: expect a shorter answer", MaxOutput)
	}
	return d, nil
}

func checkName(s string) error {
	if s == "" {
		return errors.New("has no name: give each check a name, e.g. \"name\": \"disk\"")
	}
	if len(s) > MaxName {
		return fmt.Errorf("name %q is longer than %d bytes: check names travel in a tag, so keep them short", s, MaxName)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("name %q holds %q: use lower-case letters, digits, '-' and '_'", s, r)
		}
	}
	return nil
}

// ParseAll parses every check and refuses two with one name.
func ParseAll(raws []string) ([]Definition, error) {
	seen := map[string]bool{}
	defs := make([]Definition, 0, len(raws))
	for _, raw := range raws {
		d, err := Parse(raw)
		if err != nil {
			return nil, err
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("%w %q is defined twice: give each check its own name", ErrBadCheck, d.Name)
		}
		seen[d.Name] = true
		defs = append(defs, d)
	}
	return defs, nil
}

// Result is one probe's outcome.
type Result struct {
	Status Status
	Output string // what the probe said, trimmed to MaxOutput
}

// MaxOutput is the most output a check keeps.
const MaxOutput = 4096

// State is a check's status and how it got there. Observe is its one rule.
type State struct {
	Status  Status
	Output  string
	Since   time.Time // when Status was entered
	Checked time.Time // the last result's time; zero: not run yet
	// Fails and Passes count the results in a row that disagree with
	// Status, toward a change.
	Fails, Passes int
}

// NewState is a check before its first result: critical, as Consul starts
// its checks, so that a server is not chosen before it is known healthy.
func NewState(now time.Time) State {
	return State{Status: Critical, Output: "not checked yet", Since: now}
}

// Observe applies one result with the definition's hysteresis and reports
// whether the status changed. A failure (critical) becomes critical only
// after FailuresBeforeCritical in a row; a pass after SuccessesBeforePassing
// in a row; a warning takes effect at once, as it keeps no server out. The
// first result of a check sets its status directly.
func (s *State) Observe(d Definition, r Result, now time.Time) bool {
	first := s.Checked.IsZero()
	s.Checked = now
	s.Output = r.Output
	next := s.Status
	switch r.Status {
	case Critical:
		s.Passes = 0
		s.Fails++
		if first || s.Fails >= d.FailuresBeforeCritical {
			next = Critical
		}
	case Passing:
		s.Fails = 0
		s.Passes++
		if first || s.Status != Critical || s.Passes >= d.SuccessesBeforePassing {
			next = Passing
		}
	default:
		s.Fails, s.Passes = 0, 0
		next = Warning
	}
	if next == s.Status {
		return false
	}
	s.Status, s.Since = next, now
	s.Fails, s.Passes = 0, 0
	return true
}

// TagValue is the compact summary that travels in a server's tags: the
// critical checks' names, sorted, comma-separated, at most max bytes (the
// names that do not fit become "+N"). Empty when none is critical.
func TagValue(critical []string, max int) string {
	names := append([]string(nil), critical...)
	sort.Strings(names)
	var b strings.Builder
	for i, n := range names {
		rest := len(names) - i
		more := fmt.Sprintf("+%d", rest)
		sep := 0
		if b.Len() > 0 {
			sep = 1
		}
		// Keep room for a "+N" after this name unless it is the last.
		need := b.Len() + sep + len(n)
		if rest > 1 {
			need += 1 + len(fmt.Sprintf("+%d", rest-1))
		}
		if need > max {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(more)
			return b.String()
		}
		if sep == 1 {
			b.WriteByte(',')
		}
		b.WriteString(n)
	}
	return b.String()
}

// ParseTagValue reads TagValue back: the named checks, and how many more
// are critical but not named.
func ParseTagValue(v string) (names []string, more int) {
	if v == "" {
		return nil, 0
	}
	for _, p := range strings.Split(v, ",") {
		if n, ok := strings.CutPrefix(p, "+"); ok {
			fmt.Sscanf(n, "%d", &more)
			continue
		}
		names = append(names, p)
	}
	return names, more
}
