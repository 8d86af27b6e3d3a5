// Package rpc owns the agent's control protocol: serf's agent RPC (IPC)
// protocol spoken over TCP with msgpack, the server side that drives a
// Backend, and the Go client the CLI uses. An unmodified serf RPC client can
// manage an agent through it, and the project's own commands (spawn, place,
// …) ride on the same framing through Server.Register.
//
// It must never know serf, memberlist or the agent's internals: it speaks
// only in its own wire types and the Backend interface, and imports nothing
// but the standard library and msgpack. It never prints; the server logs
// through the injected *slog.Logger and the client returns errors.
package rpc
