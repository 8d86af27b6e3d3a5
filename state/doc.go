// Package state holds the agent's local state as pure values: the load
// averager that turns noisy CPU and memory samples into the averages a
// server publishes in its tags, and the Clock that the agent's loops take
// time from (with a fake that moves only when told).
//
// It must never read the wall clock, use the global random source or do
// I/O: callers pass time in (each Sample carries its own timestamp) and
// store or publish what comes out. Nothing here is safe for concurrent use
// unless its doc says so; the agent wraps what it shares.
package state
