package simulation

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run when goroutines outlive the tests and benchmarks
// that started them: every node, endpoint, network and monitor must be
// stopped by its test.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		if leaked := waitGoroutines(before, leakWait); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left running after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// waitGoroutines waits until at most want goroutines run (memberlist's own
// goroutines end a little after Shutdown returns) and returns the stacks of
// the rest if they do not.
func waitGoroutines(want int, within time.Duration) string {
	deadline := time.Now().Add(within)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			return strings.TrimSpace(string(buf[:n]))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return ""
}
