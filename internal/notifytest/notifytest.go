// Package notifytest is systemd's end of the notify protocol, for tests: a
// datagram socket whose messages (READY=1, WATCHDOG=1, STOPPING=1, …)
// arrive on a channel in order.
package notifytest

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Socket listens on a fresh notify socket and returns its path (what
// NOTIFY_SOCKET names) and its messages. The test's cleanup closes it.
func Socket(t testing.TB) (string, <-chan string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "notify")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan string, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			select {
			case msgs <- string(buf[:n]):
			default:
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done; os.RemoveAll(dir) })
	return path, msgs
}

// Next returns the next message that is not a watchdog ping, and how many
// pings came before it; the test fails, naming what it waited for, when
// none comes within the limit.
func Next(t testing.TB, msgs <-chan string, what string, within time.Duration) (string, int) {
	t.Helper()
	timeout := time.After(within)
	pings := 0
	for {
		select {
		case m := <-msgs:
			if m == "WATCHDOG=1" {
				pings++
				continue
			}
			return m, pings
		case <-timeout:
			t.Fatalf("no %s within %s (%d watchdog pings)", what, within, pings)
		}
	}
}
