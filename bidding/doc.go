// Package bidding runs the placement election over the mesh: the `place`
// serf query, its wire format, the server's responder that answers with a
// bid, and the asker's side that collects bids and stops as soon as every
// alive server in its own view has answered (or at a short deadline, never
// serf's default query timeout).
//
// It owns the protocol, not the policy: scoring and the decision are
// placement's, and what a server bids is decided by the caller's Bidder.
// The agent and the simulation both use it, so the same code places
// interpreters on real hosts and in simulated meshes. It never starts
// processes and never reads the agent's configuration.
package bidding
