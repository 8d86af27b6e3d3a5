// Package placement elects the server that starts a new interpreter. It owns
// the election (Elect: bids in, a Decision that explains itself out), the
// scoring policies (Spread, Binpack), tag constraints, and the asker's
// Ledger of recent reservations that spreads a burst from one asker.
//
// It is pure: standard library only, no I/O, no wall clock, no global random
// source. Time is passed in as a value and ties are broken by a hash of the
// request, so the same inputs always give the same decision. The types are
// plain values with exported fields, so other packages can encode them.
// Nothing here is safe for concurrent use; the agent wraps the Ledger.
package placement
