package checks

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestParseRefusesBadInputNamingTheCheck: unknown type, zero interval, a
// script that does not exist (and the other mistakes) are refused with the
// check's name and the fix.
func TestParseRefusesBadInputNamingTheCheck(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "plain")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ raw, want string }{
		{`{"name":"gpu","type":"smoke","interval":"10s"}`, `"gpu": type "smoke" is not known: use script, http, tcp or ttl`},
		{`{"name":"disk","type":"tcp","tcp":"127.0.0.1:1","interval":"0s"}`, `"disk": interval "0s" is not a positive duration`},
		{`{"name":"disk","type":"tcp","tcp":"127.0.0.1:1"}`, `"disk": has no interval`},
		{`{"name":"disk","type":"script","args":["/nonexistent/check-disk"],"interval":"5s"}`, `"disk": script /nonexistent/check-disk: no such file or directory`},
		{`{"name":"disk","type":"script","args":["` + notExec + `"],"interval":"5s"}`, `is not an executable file: chmod +x it`},
		{`{"name":"disk","type":"script","args":["check-disk"],"interval":"5s"}`, `"disk": script "check-disk" is not an absolute path`},
		{`{"name":"web","type":"http","http":"ftp://x","interval":"5s"}`, `"web": http "ftp://x" is not an http:// or https:// URL`},
		{`{"name":"db","type":"tcp","tcp":"nohost","interval":"5s"}`, `"db": tcp "nohost" is not host:port`},
		{`{"name":"beat","type":"ttl"}`, `"beat": a ttl check needs a ttl`},
		{`{"name":"beat","type":"ttl","ttl":"30s","interval":"5s"}`, `"beat": a ttl check has no interval`},
		{`{"name":"db","type":"tcp","tcp":"127.0.0.1:5432","http":"http://x/","interval":"5s"}`, `"db": a tcp check takes tcp as its target`},
		{`{"name":"Disk!","type":"ttl","ttl":"5s"}`, `name "Disk!" holds 'D'`},
		{`{"type":"ttl","ttl":"5s"}`, `has no name`},
		{`{"name":"db","type":"tcp","tcp":"127.0.0.1:5432","interval":"5s","retries":3}`, `unknown field "retries"`},
		{`{"name":"db","type":"tcp","tcp":"127.0.0.1:5432","interval":"5s","failures_before_critical":-1}`, `"db": failures_before_critical`},
		{`{"name":"web","type":"http","http":"http://x/","interval":"5s","expect":"ok"}`, `"web": send and expect belong to a tcp check`},
	} {
		_, err := Parse(tc.raw)
		if err == nil || !errors.Is(err, ErrBadCheck) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an ErrBadCheck saying %q", tc.raw, err, tc.want)
		}
	}
	if _, err := ParseAll([]string{`{"name":"a","type":"ttl","ttl":"5s"}`, `{"name":"a","type":"ttl","ttl":"9s"}`}); err == nil ||
		!strings.Contains(err.Error(), `"a" is defined twice`) {
		t.Errorf("two checks named a: %v", err)
	}
}

func TestParseFillsDefaults(t *testing.T) {
	d, err := Parse(`{"name":"db","type":"tcp","tcp":"127.0.0.1:5432","interval":"30s"}`)
	if err != nil {
		t.Fatal(err)
	}
	if d.Timeout != DefaultTimeout || d.FailuresBeforeCritical != 1 || d.SuccessesBeforePassing != 1 || d.Interval != 30*time.Second {
		t.Fatalf("defaults: %+v", d)
	}
	d, err = Parse(`{"name":"sh","type":"script","args":["/bin/true"],"interval":"2s"}`)
	if err != nil || d.Timeout != 2*time.Second {
		t.Fatalf("a timeout defaults to the interval when that is shorter: %+v %v", d, err)
	}
}

// TestObserveHysteresis: the status moves only after the configured runs
// of results; the first result sets it directly.
func TestObserveHysteresis(t *testing.T) {
	d := Definition{Name: "x", FailuresBeforeCritical: 3, SuccessesBeforePassing: 2}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pass, fail, warn := Result{Status: Passing}, Result{Status: Critical}, Result{Status: Warning}
	for _, tc := range []struct {
		name    string
		results []Result
		want    []Status // the status after each result
	}{
		{"first result passes at once", []Result{pass}, []Status{Passing}},
		{"first result fails at once", []Result{fail}, []Status{Critical}},
		{"three failures make it critical", []Result{pass, fail, fail, fail}, []Status{Passing, Passing, Passing, Critical}},
		{"two passes make it pass again", []Result{fail, pass, pass}, []Status{Critical, Critical, Passing}},
		{"a pass resets the failures", []Result{pass, fail, fail, pass, fail, fail}, []Status{Passing, Passing, Passing, Passing, Passing, Passing}},
		{"a warning takes effect at once", []Result{pass, warn, pass}, []Status{Passing, Warning, Passing}},
		{"a failure resets the passes", []Result{fail, pass, fail, pass}, []Status{Critical, Critical, Critical, Critical}},
	} {
		s := NewState(t0)
		for i, r := range tc.results {
			s.Observe(d, r, t0.Add(time.Duration(i+1)*time.Second))
			if s.Status != tc.want[i] {
				t.Errorf("%s: after result %d (%s) status %s, want %s", tc.name, i+1, r.Status, s.Status, tc.want[i])
				break
			}
		}
	}
}

// TestFlappingCheckDoesNotFlapTheStatus: a check that fails every other
// time, with failures_before_critical 2, never goes critical; the status
// changes never after the first result.
func TestFlappingCheckDoesNotFlapTheStatus(t *testing.T) {
	d := Definition{Name: "flappy", FailuresBeforeCritical: 2, SuccessesBeforePassing: 2}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := NewState(t0)
	changes := 0
	for i := range 100 {
		r := Result{Status: Passing}
		if i%2 == 1 {
			r.Status = Critical
		}
		if s.Observe(d, r, t0.Add(time.Duration(i)*time.Second)) {
			changes++
		}
	}
	if s.Status != Passing || changes != 1 {
		t.Fatalf("after 100 alternating results: status %s, %d changes; want passing and 1 (the first result)", s.Status, changes)
	}
}

func TestTagValueFitsItsBudget(t *testing.T) {
	for _, tc := range []struct {
		names []string
		max   int
		want  string
	}{
		{nil, 64, ""},
		{[]string{"gpu", "disk"}, 64, "disk,gpu"},
		{[]string{"aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"}, 24, "aaaaaaaaaa,bbbbbbbbbb,+1"},
		{[]string{"aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"}, 23, "aaaaaaaaaa,+2"},
		{[]string{"aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"}, 32, "aaaaaaaaaa,bbbbbbbbbb,cccccccccc"},
		{[]string{strings.Repeat("x", 32), "y"}, 10, "+2"},
	} {
		got := TagValue(tc.names, tc.max)
		if got != tc.want || len(got) > tc.max {
			t.Errorf("TagValue(%v, %d) = %q, want %q", tc.names, tc.max, got, tc.want)
		}
		names, more := ParseTagValue(got)
		if len(names)+more != len(tc.names) {
			t.Errorf("ParseTagValue(%q) = %v +%d, want %d checks in all", got, names, more, len(tc.names))
		}
	}
}
