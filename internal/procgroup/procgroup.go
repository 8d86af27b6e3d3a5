// Package procgroup runs a command in a process group of its own and, when
// its context ends first, kills the whole group: what the command started
// goes with it. Event handlers and script checks both run this way.
package procgroup

import (
	"context"
	"os/exec"
	"syscall"
)

// Run starts cmd in its own process group and waits for it. With killed
// true, ctx ended first and the group was killed; err is then nil.
func Run(ctx context.Context, cmd *exec.Cmd) (killed bool, err error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return false, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return false, err
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return true, nil
	}
}
