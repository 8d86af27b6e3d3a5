package testbed

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The log a failed test prints must not be the CLI's own connections: a
// test that polls every agent writes one such line each time it asks.
func TestLogTailLeavesOutTheCLIsDisconnections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	lines := []string{
		`level=DEBUG msg="[DEBUG] memberlist: Initiating push/pull sync with: h4 10.231.0.4:7946"`,
		`level=WARN msg="[WARN] memberlist: Was able to connect to h3 over TCP but UDP probes failed"`,
	}
	var log []string
	for i := range 100 {
		log = append(log, `level=DEBUG msg="rpc client disconnected" component=rpc remote=127.0.0.1:5`+string(rune('0'+i%10)))
		if i == 50 {
			log = append(log, lines...)
		}
	}
	if err := os.WriteFile(path, []byte(strings.Join(log, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := fileTail(path, 60), strings.Join(lines, "\n"); got != want {
		t.Fatalf("tail:\n%s\nwant:\n%s", got, want)
	}
	if got := fileTail(path, 1); got != lines[1] {
		t.Fatalf("last line: %q, want %q", got, lines[1])
	}
}
