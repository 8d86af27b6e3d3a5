// Package simulation runs many real gossip nodes in one process over an
// in-memory network that can drop, delay, partition, crash and pause, and
// measures how the mesh behaves (detection, false failures, healing, cost)
// next to a heartbeat-timeout baseline.
//
// It drives the same gossip and placement code the agent runs; it never
// opens real sockets, and its network never blocks a sender.
package simulation
