// Package interp owns the interpreter lifecycle: the kinds a server offers,
// the supervisor (`agent interpreter`) that runs one interpreter as a member
// of the mesh, the spawn, stop, signal and list flows, the connection files
// of kinds that need one (a Jupyter kernel's ports and key), the registry that lets a
// restarted server re-adopt its interpreters, the restart policy, and the
// rules that keep one interpreter per request under faults (duplicates
// resolved after a heal, re-placement of a failed host's interpreters by one
// owner chosen from the view, keyed spawns refused on a minority side).
//
// The rules themselves (rules.go) are pure functions of a member list, so
// every node reaches the same verdict from the same view without asking
// anyone. The package never imports serf or memberlist (it speaks gossip's
// types), never prints, and is handed its node, clock, logger and the
// agent's election instead of reaching for them.
package interp
