package interp

import (
	"fmt"
	"time"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/state"
)

// This file is the owner lease (`agent spawn --owner-lease D`): a server
// stops an interpreter once the agent that asked for it has been failed or
// left in its view for D. A client that dies cleans up after itself (the
// Jupyter provisioner's guard stops its kernels when the notebook server
// dies), but a client whose whole host dies takes its cleanup with it, and
// the kernel would run on, unlisted by any client, until someone stops it.
//
// The server that runs the interpreter decides, from its own view: a
// partition that hides the owner for longer than D stops its kernels too.
// That is the lease's meaning (as a ZooKeeper ephemeral node's session
// timeout), and D is the owner's to choose longer than the partitions it
// means to ride out.

// stopOwnerless stops this server's interpreters whose owners have been
// failed or left (or unlisted, in a view that has joined the mesh) for
// their lease.
func (l *Lifecycle) stopOwnerless(members []gossip.Member) {
	if !l.inMesh(members) {
		return // a view of its own lists no owner: nobody is gone for that
	}
	status := make(map[string]gossip.Status, len(members))
	for _, m := range members {
		status[m.Name] = m.Status
	}
	now := l.clock.Now()
	var todo []state.Interpreter
	var gone []time.Duration
	l.regMu.Lock()
	running := l.registry.List()
	l.regMu.Unlock()
	leased := map[string]bool{}
	l.meshMu.Lock()
	for _, i := range running {
		if i.OwnerLease <= 0 || i.Owner == "" || i.Owner == l.cfg.Node {
			continue
		}
		leased[i.Name] = true
		st, listed := status[i.Owner]
		if listed && st != gossip.StatusFailed && st != gossip.StatusLeft {
			delete(l.ownerGone, i.Name)
			continue
		}
		since, ok := l.ownerGone[i.Name]
		if !ok {
			l.ownerGone[i.Name] = now
			continue
		}
		if now.Sub(since) >= i.OwnerLease {
			todo = append(todo, i)
			gone = append(gone, now.Sub(since))
			delete(l.ownerGone, i.Name)
		}
	}
	for name := range l.ownerGone {
		if !leased[name] {
			delete(l.ownerGone, name)
		}
	}
	l.meshMu.Unlock()
	for k, i := range todo {
		why := fmt.Sprintf("its owner %s has been gone for %s (--owner-lease %s)", i.Owner, gone[k].Round(time.Second), i.OwnerLease)
		l.logger.Warn("stopping an interpreter whose owner is gone", "interpreter", i.Name, "owner", i.Owner,
			"lease", i.OwnerLease, "gone_for", gone[k].Round(time.Second))
		l.meshMu.Lock()
		l.stopWhy[i.Name] = why // the interpreter-stopped event says it
		l.meshMu.Unlock()
		if err := l.procs.Terminate(i.SupervisorPID); err != nil {
			l.logger.Warn("could not stop an interpreter whose owner is gone", "interpreter", i.Name, "err", err)
		}
	}
}
