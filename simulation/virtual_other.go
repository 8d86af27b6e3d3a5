//go:build !linux

package simulation

import "os/exec"

// dieWithParent does nothing here: only Linux kills a child with its
// parent. Cancelling the run's context still kills it.
func dieWithParent(*exec.Cmd) {}
