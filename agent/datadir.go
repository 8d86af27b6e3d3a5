package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFileName is the data dir's lock: the running agent holds an flock on
// it and keeps its pid in it. Two agents on one data dir would adopt each
// other's interpreters and overwrite each other's peers and drain.
const lockFileName = "agent.lock"

// dataDirLock is a held lock on a data dir; the kernel drops it when the
// process exits, however it exits.
type dataDirLock struct{ f *os.File }

// lockDataDir takes dir's lock, creating dir (0700) when it does not exist.
// It changes nothing in dir when another agent holds the lock. The file is
// opened close-on-exec, so the supervisors this agent starts (which may
// outlive it) never hold it.
func lockDataDir(dir string) (*dataDirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: open its lock: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(holder))
			if _, perr := strconv.Atoi(pid); perr != nil {
				pid = "unknown"
			}
			return nil, fmt.Errorf("data dir %s in use by pid %s: stop that agent, or give this one a --data-dir of its own", dir, pid)
		}
		return nil, fmt.Errorf("data dir %s: lock %s: %w", dir, path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s: write its lock: %w", dir, err)
	}
	return &dataDirLock{f: f}, nil
}

// release drops the lock; the pid stays in the file, stale but harmless.
func (l *dataDirLock) release() {
	if l != nil {
		l.f.Close()
	}
}
