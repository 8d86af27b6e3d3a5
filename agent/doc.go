// Package agent is the daemon behind `agent run`: it layers the
// configuration, starts the gossip node and the RPC server, joins the mesh
// with retries, and implements the RPC backend on top of the node. Later it
// wires telemetry, placement and the interpreter spawner the same way.
//
// It owns the process lifecycle (New validates and starts nothing, Start
// runs, Leave is graceful, Shutdown is idempotent) and every loop in it takes
// time from an injected clock. It never imports serf or memberlist (that is
// gossip's job) and never prints: it logs through the injected *slog.Logger.
package agent
