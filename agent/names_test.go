package agent

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshagent/agent/gossip"
)

// TestCheckNodeName: a node name is what the message promises (letters,
// digits, '-', '_', '.'), so that it can never name another directory.
func TestCheckNodeName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // "" accepts; else in the error
	}{
		{"web-1", ""},
		{"Node_2.example.com", ""},
		{strings.Repeat("n", MaxNodeName), ""},
		{"", "empty"},
		{"   ", "empty"},
		{strings.Repeat("n", MaxNodeName+1), "the most is 128"},
		{".", "names a directory"},
		{"..", "names a directory"},
		{"x/../mydir/trav", `holds '/'`},
		{`a\b`, `holds '\\'`},
		{"<b>x</b>", `holds '<'`},
		{"a b", `holds ' '`},
		{"a\x1bb", `holds '\x1b'`},
		{"héllo", `holds 'é'`},
		{"a:b", `holds ':'`},
		{"\xff", `holds '�'`},
	} {
		err := CheckNodeName(tc.name)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q refused: %v", tc.name, err)
		case tc.want != "" && err == nil:
			t.Errorf("%q accepted, want an error with %s", tc.name, tc.want)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%q: %v, want %s", tc.name, err, tc.want)
		case err != nil && !strings.Contains(err.Error(), "e.g. --node web-1") && tc.want != "the most is 128":
			t.Errorf("%q: %v does not say what to give instead", tc.name, err)
		}
	}
}

// TestValidateChecksTheDefaultNameAndDataDir: the host name, used when
// --node is not given, passes the same check; a server needs a data dir.
func TestValidateChecksTheDefaultNameAndDataDir(t *testing.T) {
	c := DefaultConfig()
	c.NodeName = "bad/host"
	c.DataDir = t.TempDir()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `holds '/'`) {
		t.Fatalf("a default name with '/': %v", err)
	}
	c = DefaultConfig()
	c.NodeName = "web-1"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "a server needs --data-dir") {
		t.Fatalf("a server with no data dir: %v", err)
	}
	c.Role = gossip.RoleInterpreter
	if err := c.Validate(); err != nil {
		t.Fatalf("an interpreter with no data dir: %v", err)
	}
}

// FuzzCheckNodeName: whatever the check accepts is one plain path element
// (joined under a directory it stays directly inside it) made only of the
// promised characters.
func FuzzCheckNodeName(f *testing.F) {
	for _, s := range []string{"web-1", "x/../y", "..", ".", "<b>", "a b", "a\x00b", "é", strings.Repeat("a", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := CheckNodeName(s)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error with no message")
			}
			return
		}
		if len(s) == 0 || len(s) > MaxNodeName {
			t.Fatalf("%q accepted: its length is %d", s, len(s))
		}
		for _, r := range s {
			if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", r) {
				t.Fatalf("%q accepted with %q", s, r)
			}
		}
		base := "/base"
		joined := filepath.Join(base, s)
		if filepath.Dir(joined) != base || filepath.Base(joined) != s {
			t.Fatalf("%q accepted, but under %s it is %s", s, base, joined)
		}
	})
}
