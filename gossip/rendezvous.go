package gossip

import "hash/fnv"

// rendezvous is the rendezvous (highest random weight) hash of a key and a
// member's name: every node computes the same value, so the members that
// rank highest for a key are chosen alike by every node whose view holds
// the same members, with no message exchanged.
func rendezvous(key, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(name))
	// FNV's low bits mix poorly for similar names (node-1, node-2):
	// splitmix64's finaliser spreads them.
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// rankedAmongTop reports whether self is among the k names with the highest
// rendezvous hash for key, among names and self (key itself and duplicates
// of self do not count). It stops as soon as k names rank above self:
// names in an order unrelated to the hash (memberlist's shuffled list), it
// reads about k·ln(len(names)) of them on average.
func rankedAmongTop(key, self string, names []string, k int) bool {
	mine := rendezvous(key, self)
	above := 0
	for _, n := range names {
		if n == self || n == key {
			continue
		}
		if h := rendezvous(key, n); h > mine || (h == mine && n < self) {
			if above++; above >= k {
				return false
			}
		}
	}
	return true
}
