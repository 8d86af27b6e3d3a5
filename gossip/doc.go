// Package gossip is the project's only door to hashicorp/serf and
// hashicorp/memberlist. It runs one node of the SWIM mesh, converts serf's
// members, tags and events into the project's own types (Member, Tags,
// Event), runs queries and the keyring, and bridges serf's log lines into
// slog.
//
// Everything above this package speaks in those types; no other package may
// import serf or memberlist. The network is injected (Config.Transport), so
// the same node runs over real UDP/TCP or over the simulation's in-memory
// network. This package never prints and never reads configuration files of
// the agent; it is handed a Config.
package gossip
