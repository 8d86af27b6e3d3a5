// Package simulation runs many real gossip nodes in one process over an
// in-memory network that can drop, delay, partition, crash and pause, and
// measures how the mesh behaves (detection, false failures, healing, cost)
// next to a heartbeat-timeout baseline.
//
// It drives the same gossip, bidding and placement code the agent runs; it
// never opens real sockets, and its network never blocks a sender.
//
// The pieces, bottom up:
//   - Network and Endpoint: the in-memory network. An Endpoint is a
//     memberlist NodeAwareTransport (gossip.Transport); packets and streams
//     obey per-link loss, delay and jitter, partitions, one-way cuts,
//     crashes and pauses.
//   - Cluster: N gossip nodes over a Network, joined to random earlier
//     nodes, with every node's view tracked from its own member events and
//     a hook (ClusterConfig.Prepare) to plug a query responder into each.
//   - Plan: a scenario's fault schedule, a pure function of (scenario,
//     nodes, seed).
//   - Run: a Plan played on a Cluster and on the heartbeat baseline at
//     once, measured into a Report, printed by WriteText and drawn by
//     WriteSVG.
//
// Time is kept honest two ways, so that a large mesh is not starved of CPU.
// In virtual time (virtual.go, the default of `agent simulate`) the run
// happens in a testing/synctest bubble in a child process, whose clock
// jumps ahead whenever every goroutine waits: no timer is ever late. In
// real time the run can be dilated (clock.go): every timer and delay lasts
// Dilation times longer on the wall clock and the Report is in protocol
// time; a machine still short of CPU makes every node's timers late alike
// (the Report says how late). The nodes send
// uncompressed and the network estimates memberlist's compressed bytes
// (compress.go). A paused node
// differs from one under SIGSTOP: its traffic is held, but its timers keep
// running, so it suspects the others while paused and says so on resume.
// The package never prints; it returns errors and reports.
package simulation
