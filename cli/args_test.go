package cli

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestReorderArgsMovesFlagsBeforePositionals(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	for _, tc := range []struct{ in, want string }{
		{"agent members n1 --rpc-addr 127.0.0.1:1", "agent members --rpc-addr 127.0.0.1:1 n1"},
		{"agent stop NAME --rpc-addr X --rpc-token=T", "agent stop --rpc-addr X --rpc-token=T NAME"},
		{"agent force-leave n2 --prune --rpc-addr X", "agent force-leave --prune --rpc-addr X n2"},
		{"agent join a:1 --replay b:2", "agent join --replay a:1 b:2"},
		// A value that looks like a flag stays with its flag.
		{"agent place --timeout -5s --kind demo", "agent place --timeout -5s --kind demo"},
		// -- ends the flags: what follows is the interpreter's.
		{"agent spawn --kind demo -- --rpc-addr x", "agent spawn --kind demo -- --rpc-addr x"},
		{"agent spawn a -- --wait", "agent spawn a -- --wait"},
		{"agent spawn a --wait -- b", "agent spawn --wait a -- b"},
		// Unknown flags keep their place among flags, for urfave/cli to refuse.
		{"agent members x --bogus", "agent members --bogus x"},
		{"agent nosuchcommand x --y", "agent nosuchcommand x --y"},
		{"agent", "agent"},
	} {
		got := strings.Join(reorderArgs(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestCommandsWithoutArgumentsRefuseStrayOnes: a word after a command that
// takes none is an error naming it, before anything is dialled.
func TestCommandsWithoutArgumentsRefuseStrayOnes(t *testing.T) {
	for _, cmd := range []string{"members", "info", "interpreters", "leave", "monitor", "keygen", "tags", "keys", "place", "version", "run"} {
		var stderr bytes.Buffer
		code := Run([]string{"agent", cmd, "stray"}, io.Discard, &stderr)
		if code != ExitError || !strings.Contains(stderr.String(), cmd+` takes no arguments, got "stray"`) {
			t.Errorf("%s stray: code %d, stderr %q", cmd, code, stderr.String())
		}
	}
}

// TestBadFlagValueIsOneLine: urfave/cli's reply (the whole help, with
// single-dash names) becomes one line naming the flag as typed.
func TestBadFlagValueIsOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"spawn", "--wait-timeout", "abc"},
		{"members", "--bogus"},
		{"place", "--timeout=soon"},
	} {
		var stdout, stderr bytes.Buffer
		code := Run(append([]string{"agent"}, args...), &stdout, &stderr)
		msg := stderr.String()
		if code != ExitError || stdout.Len() != 0 || strings.Count(msg, "\n") != 1 ||
			!strings.Contains(msg, " --"+strings.TrimLeft(strings.SplitN(args[1], "=", 2)[0], "-")) ||
			regexp.MustCompile(`\s-[a-z]`).MatchString(msg) || !strings.Contains(msg, "agent "+args[0]+" --help") {
			t.Errorf("%v: code %d, stdout %q, stderr %q", args, code, stdout.String(), msg)
		}
	}
}

// TestREADMEExitCodesAreTheTable: the README's exit-code table is the one
// `agent --help` prints, row for row.
func TestREADMEExitCodesAreTheTable(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, line := range strings.Split(string(readme), "\n") {
		if m := regexp.MustCompile("^\\| `(\\d+)` \\|").FindStringSubmatch(line); m != nil {
			rows = append(rows, line)
		}
	}
	if len(rows) != len(exitCodes) {
		t.Fatalf("README has %d exit-code rows, the table %d:\n%s", len(rows), len(exitCodes), strings.Join(rows, "\n"))
	}
	for i, e := range exitCodes {
		want := "| `" + strconv.Itoa(e.Code) + "` | " + e.Commands + " | " + e.Meaning + " |"
		if rows[i] != want {
			t.Errorf("README row %d:\n got %s\nwant %s", i, rows[i], want)
		}
	}
	var stdout bytes.Buffer
	Run([]string{"agent", "--help"}, &stdout, io.Discard)
	for _, e := range exitCodes {
		if !strings.Contains(stdout.String(), e.Meaning) {
			t.Errorf("agent --help lacks exit code %d (%s)", e.Code, e.Meaning)
		}
	}
}

// TestAnOwnerLeaseTooShortIsRefused: a negative --owner-lease, or one
// shorter than the mesh takes to rule out a false failure, is an error
// naming the value and what to give, before anything is dialled.
func TestAnOwnerLeaseTooShortIsRefused(t *testing.T) {
	for _, lease := range []string{"-5s", "2s"} {
		var stderr bytes.Buffer
		code := Run([]string{"agent", "spawn", "--kind", "demo", "--owner-lease", lease, "--rpc-addr", "127.0.0.1:1"}, io.Discard, &stderr)
		if code != ExitError || !strings.Contains(stderr.String(), "--owner-lease "+lease) || !strings.Contains(stderr.String(), "at least 10s") {
			t.Errorf("--owner-lease %s: code %d, stderr %q", lease, code, stderr.String())
		}
	}
}
