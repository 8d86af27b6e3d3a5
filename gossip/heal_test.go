package gossip

import (
	"errors"
	"github.com/hashicorp/serf/serf"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// cutNet is an in-memory network with faults: a packet from a node to one
// it may not reach vanishes, and a stream between them cannot be opened, as
// across a partition. It never blocks a sender: a full queue drops.
type cutNet struct {
	mu      sync.Mutex
	byName  map[string]*cutTransport
	byAddr  map[string]*cutTransport
	blocked map[[2]string]bool // [from, to] node names
	deaf    map[string]bool    // packets to these nodes vanish; streams work
	down    bool               // the test is over: drop everything
	port    int

	holding bool         // keep the packets a cut drops, for replay
	held    []heldPacket // in the order they were sent
}

// heldPacket is a packet a cut dropped while the network was holding them.
type heldPacket struct {
	to  *cutTransport
	pkt *memberlist.Packet
}

// maxHeld bounds what a holding network keeps: a test's worth of packets.
const maxHeld = 50000

type cutTransport struct {
	net     *cutNet
	name    string
	addr    *net.UDPAddr
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
}

func (c *cutNet) transport(name string) *cutTransport {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byName == nil {
		c.byName, c.byAddr = map[string]*cutTransport{}, map[string]*cutTransport{}
	}
	c.port++
	t := &cutTransport{net: c, name: name, addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7000 + c.port},
		packets: make(chan *memberlist.Packet, 1024), streams: make(chan net.Conn, 16), done: make(chan struct{})}
	c.byName[name], c.byAddr[t.addr.String()] = t, t
	return t
}

// cut makes every packet from each of from to each of to vanish.
func (c *cutNet) cut(from, to []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.blocked == nil {
		c.blocked = map[[2]string]bool{}
	}
	for _, f := range from {
		for _, t := range to {
			c.blocked[[2]string{f, t}] = true
		}
	}
}

// deafen makes every packet to name vanish; its streams still work.
func (c *cutNet) deafen(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deaf == nil {
		c.deaf = map[string]bool{}
	}
	c.deaf[name] = true
}

func (c *cutNet) heal() {
	c.mu.Lock()
	c.blocked, c.deaf = nil, nil
	c.mu.Unlock()
}

// hold makes the network keep, from now on, the packets its cuts drop.
func (c *cutNet) hold() {
	c.mu.Lock()
	c.holding = true
	c.mu.Unlock()
}

// replay delivers the packets held so far, in order, as if they had been
// late rather than lost, and stops holding. It reports how many it kept.
func (c *cutNet) replay() int {
	c.mu.Lock()
	held := c.held
	c.held, c.holding = nil, false
	c.mu.Unlock()
	for _, h := range held {
		select {
		case h.to.packets <- h.pkt:
		case <-h.to.done:
		}
	}
	return len(held)
}

// keep holds a packet that a cut dropped, if the network holds them.
func (c *cutNet) keep(from *cutTransport, a memberlist.Address, b []byte, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dest := c.lookup(a)
	if !c.holding || c.down || dest == nil || !c.blocked[[2]string{from.name, dest.name}] || len(c.held) >= maxHeld {
		return
	}
	c.held = append(c.held, heldPacket{to: dest, pkt: &memberlist.Packet{Buf: append([]byte(nil), b...), From: from.addr, Timestamp: at}})
}

// lookup finds the transport a is addressed to, by name first; c.mu is
// held.
func (c *cutNet) lookup(a memberlist.Address) *cutTransport {
	if dest := c.byName[a.Name]; dest != nil {
		return dest
	}
	return c.byAddr[a.Addr]
}

// route is the destination of a send from t, nil when it is dropped.
func (t *cutTransport) route(a memberlist.Address, bothWays bool) *cutTransport {
	c := t.net
	c.mu.Lock()
	defer c.mu.Unlock()
	dest := c.lookup(a)
	if dest == nil || c.down || c.blocked[[2]string{t.name, dest.name}] || (bothWays && c.blocked[[2]string{dest.name, t.name}]) ||
		(!bothWays && c.deaf[dest.name]) {
		return nil
	}
	return dest
}

func (t *cutTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.addr.IP, t.addr.Port, nil
}

func (t *cutTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	dest := t.route(a, false)
	if dest == nil {
		t.net.keep(t, a, b, now)
		return now, nil
	}
	select {
	case dest.packets <- &memberlist.Packet{Buf: append([]byte(nil), b...), From: t.addr, Timestamp: now}:
	default:
	}
	return now, nil
}

func (t *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *cutTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	dest := t.route(a, true)
	if dest == nil {
		return nil, errors.New("dial: i/o timeout")
	}
	mine, theirs := net.Pipe()
	select {
	case dest.streams <- theirs:
		return mine, nil
	case <-dest.done:
	case <-time.After(timeout):
	}
	return nil, errors.New("dial: i/o timeout")
}

func (t *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *cutTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *cutTransport) StreamCh() <-chan net.Conn           { return t.streams }
func (t *cutTransport) Shutdown() error {
	t.once.Do(func() { close(t.done) })
	return nil
}

// startCutMesh starts one node per name on a cutNet with the fast profile,
// joins them, and stops them when the test ends.
func startCutMesh(t *testing.T, healInterval time.Duration, names ...string) (*cutNet, map[string]*Node) {
	t.Helper()
	c := &cutNet{}
	transports := map[string]*cutTransport{}
	for _, name := range names {
		transports[name] = c.transport(name)
	}
	nodes := map[string]*Node{}
	t.Cleanup(func() {
		c.mu.Lock()
		c.down = true
		c.mu.Unlock()
		for _, n := range nodes {
			n.Shutdown()
		}
	})
	for _, name := range names {
		n, err := Start(Config{Name: name, Profile: "fast", Transport: transports[name], HealInterval: healInterval})
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		nodes[name] = n
	}
	first := nodes[names[0]]
	for _, name := range names[1:] {
		if _, err := nodes[name].Join([]string{first.Addr()}, false); err != nil {
			t.Fatalf("join %s: %v", name, err)
		}
	}
	return c, nodes
}

// sees reports whether every observer sees every target with status.
func sees(nodes map[string]*Node, observers, targets []string, status Status) bool {
	for _, o := range observers {
		for _, tg := range targets {
			if statusOf(nodes[o], tg) != status {
				return false
			}
		}
	}
	return true
}

// waitLong is waitFor with a bound of its own, for waits that span a
// failure detection or a heal.
func waitLong(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHealRejoinsTheSidesOfAPartition(t *testing.T) {
	all := []string{"a", "b", "c", "d"}
	left, right := all[:2], all[2:]
	c, nodes := startCutMesh(t, 0, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })

	c.cut(left, right)
	c.cut(right, left)
	waitLong(t, "each side to see the other failed", 30*time.Second, func() bool {
		return sees(nodes, left, right, StatusFailed) && sees(nodes, right, left, StatusFailed)
	})
	// The partition lasts past the prober's minimum age of a failure (a
	// fault's duration, not a wait for gossip).
	time.Sleep(healMinAge)
	c.heal()
	// Without the prober, only news gossiped to the dead or serf's
	// reconnect (every 30 s) would bring them back; the bound is generous.
	waitLong(t, "one view after the heal", 20*time.Second, func() bool { return sees(nodes, all, all, StatusAlive) })
	var joins uint64
	for _, n := range nodes {
		joins += n.HealStats().Joins
	}
	if joins == 0 {
		t.Errorf("the sides came back without a heal join; stats: %v", healStats(nodes))
	}
}

func healStats(nodes map[string]*Node) map[string]HealStats {
	out := map[string]HealStats{}
	for name, n := range nodes {
		out[name] = n.HealStats()
	}
	return out
}

// cutOffC starts a, b and c with no prober of their own, cuts c off both
// ways, and waits until a sees c failed.
func cutOffC(t *testing.T, all []string) (*cutNet, map[string]*Node) {
	t.Helper()
	c, nodes := startCutMesh(t, -1, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	c.cut([]string{"a", "b"}, []string{"c"})
	c.cut([]string{"c"}, []string{"a", "b"})
	waitLong(t, "c failed in a's view", 30*time.Second, func() bool { return statusOf(nodes["a"], "c") == StatusFailed })
	return c, nodes
}

// healerFor is a prober on n that only runs when the test calls round. It
// learns the failed members as the node's own prober does, from the node's
// member events, and starts from the members failed now.
func healerFor(n *Node) *healer {
	h := &healer{n: n, interval: time.Second, followUp: healFollowUp, failed: make(map[string]failedMember), interps: make(map[string]struct{})}
	types := map[EventType]serf.EventType{EventMemberJoin: serf.EventMemberJoin, EventMemberUpdate: serf.EventMemberUpdate,
		EventMemberFailed: serf.EventMemberFailed, EventMemberLeave: serf.EventMemberLeave, EventMemberReap: serf.EventMemberReap}
	n.Subscribe(func(e Event) {
		t, ok := types[e.Type]
		if !ok {
			return
		}
		se := serf.MemberEvent{Type: t}
		for _, m := range e.Members {
			se.Members = append(se.Members, serf.Member{Name: m.Name, Addr: m.Addr, Port: m.Port})
		}
		h.observe(se, time.Now())
	})
	now := time.Now()
	h.mu.Lock()
	for _, m := range n.serf.Members() {
		if _, seen := h.failed[m.Name]; m.Status == serf.StatusFailed && !seen {
			h.failed[m.Name] = failedMember{p: peerOf(m), since: now}
		}
	}
	h.mu.Unlock()
	return h
}

func TestHealPingsNobodyWhileNothingIsFailed(t *testing.T) {
	all := []string{"a", "b", "c"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	h := healerFor(nodes["a"])
	for range 100 {
		h.round(time.Now())
	}
	if p := h.pings.Load(); p != 0 {
		t.Errorf("with every member alive the prober sent %d pings, want 0", p)
	}
}

func TestHealNeverPingsAMemberThatLeft(t *testing.T) {
	all := []string{"a", "b", "c"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	if err := nodes["c"].Leave(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c left in a's view", func() bool { return statusOf(nodes["a"], "c") == StatusLeft })
	h := healerFor(nodes["a"])
	for range 100 {
		h.round(time.Now())
	}
	if p := h.pings.Load(); p != 0 {
		t.Errorf("the prober pinged %d times with only a member that left gone, want 0", p)
	}
}

func TestHealPingsAFailedMemberAndJoinsOnlyWhenItAnswers(t *testing.T) {
	all := []string{"a", "b", "c"}
	c, nodes := cutOffC(t, all)

	// Two alive members in a's view: each round pings with probability
	// 3/2, so always.
	h := healerFor(nodes["a"])
	h.round(time.Now())
	if s := (HealStats{Pings: h.pings.Load(), Answers: h.answers.Load(), Joins: h.joins.Load()}); s != (HealStats{Pings: 1}) {
		t.Fatalf("a round across the cut: %+v, want one unanswered ping", s)
	}
	c.heal()
	h.round(time.Now())
	if s := (HealStats{Pings: h.pings.Load(), Answers: h.answers.Load(), Joins: h.joins.Load()}); s.Answers != 1 || s.Joins > 1 {
		t.Fatalf("a round after the heal: %+v, want the ping answered (and at most one join)", s)
	}
	waitFor(t, "c alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
}

func TestADeafNodeKnowsItAndHearsAgainAfterTheRepair(t *testing.T) {
	all := []string{"a", "b", "c", "d"}
	c, nodes := startCutMesh(t, 0, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	if nodes["d"].Deaf() {
		t.Fatalf("d is deaf before any fault (health score %d)", nodes["d"].HealthScore())
	}
	c.cut(all[:3], []string{"d"})
	waitLong(t, "d to find itself deaf", 20*time.Second, nodes["d"].Deaf)
	for _, o := range all[:3] {
		if nodes[o].Deaf() {
			t.Errorf("%s, which hears everyone, says it is deaf (health score %d)", o, nodes[o].HealthScore())
		}
	}
	waitLong(t, "d failed everywhere", 30*time.Second, func() bool { return sees(nodes, all[:3], []string{"d"}, StatusFailed) })
	c.heal()
	waitLong(t, "d alive everywhere after the repair", 20*time.Second, func() bool { return sees(nodes, all, all, StatusAlive) })
	waitLong(t, "d to hear the mesh again", 20*time.Second, func() bool { return !nodes["d"].Deaf() })
}

// TestProbingADeadMemberDoesNotMakeANodeDeaf: when a member dies, the
// healthy nodes that probe it miss their indirect probes' nacks once (they
// come just after the probe's deadline) and their health score jumps to the
// number of intermediaries, 3 here; none of them may take itself for deaf.
func TestProbingADeadMemberDoesNotMakeANodeDeaf(t *testing.T) {
	all := []string{"a", "b", "c", "d", "e"}
	c, nodes := startCutMesh(t, -1, all...)
	healthy := all[:4]
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	c.cut(healthy, []string{"e"})
	c.cut([]string{"e"}, healthy)
	highest := map[string]int{}
	waitLong(t, "e failed in every healthy view", 30*time.Second, func() bool {
		for _, o := range healthy {
			highest[o] = max(highest[o], nodes[o].HealthScore())
			if nodes[o].Deaf() {
				t.Fatalf("%s, which hears every live member, says it is deaf (health score %d)", o, nodes[o].HealthScore())
			}
		}
		return sees(nodes, healthy, []string{"e"}, StatusFailed)
	})
	t.Logf("highest health score while e was probed: %v", highest)
}

func TestOnlySeveralMembersBackAtOnceCountAsAHeal(t *testing.T) {
	all := []string{"a", "b", "c"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	h := healerFor(nodes["a"])
	members := map[string]serf.Member{}
	for _, m := range nodes["a"].serf.Members() {
		members[m.Name] = m
	}
	event := func(t serf.EventType, names ...string) serf.MemberEvent {
		e := serf.MemberEvent{Type: t}
		for _, n := range names {
			e.Members = append(e.Members, members[n])
		}
		return e
	}
	now := time.Now()
	// b fails and comes back before a round sees it: a false failure
	// refuted, no revival.
	h.round(now)
	h.observe(event(serf.EventMemberFailed, "b"), now.Add(time.Millisecond))
	h.observe(event(serf.EventMemberJoin, "b"), now.Add(2*time.Millisecond))
	now = now.Add(time.Second)
	h.round(now)
	if !h.lastRevival.IsZero() {
		t.Errorf("a failure refuted between two rounds counted as a revival at %v", h.lastRevival)
	}
	// b failed at one round and alive at the next: a restart, or a false
	// failure refuted slowly. One member back is no heal.
	h.observe(event(serf.EventMemberFailed, "b"), now)
	now = now.Add(time.Second)
	h.round(now)
	h.observe(event(serf.EventMemberJoin, "b"), now)
	now = now.Add(time.Second)
	h.round(now)
	if h.lastRevival != now || !h.lastHeal.IsZero() {
		t.Errorf("one member back: revival %v, heal %v; want a revival at %v and no heal", h.lastRevival, h.lastHeal, now)
	}
	h.observe(event(serf.EventMemberFailed, "b", "c"), now)
	now = now.Add(time.Second)
	h.round(now)
	h.observe(event(serf.EventMemberJoin, "b", "c"), now)
	now = now.Add(time.Second)
	h.round(now)
	if h.lastHeal != now {
		t.Errorf("two members back at once: heal %v, want %v", h.lastHeal, now)
	}
}

func TestTheProberForgetsMembersThatLeftOrWereReaped(t *testing.T) {
	all := []string{"a", "b", "c"}
	_, nodes := startCutMesh(t, -1, all...)
	waitFor(t, "every node alive everywhere", func() bool { return sees(nodes, all, all, StatusAlive) })
	h := healerFor(nodes["a"])
	var b, c serf.Member
	for _, m := range nodes["a"].serf.Members() {
		switch m.Name {
		case "b":
			b = m
		case "c":
			c = m
		}
	}
	now := time.Now()
	h.observe(serf.MemberEvent{Type: serf.EventMemberFailed, Members: []serf.Member{b, c}}, now)
	h.observe(serf.MemberEvent{Type: serf.EventMemberLeave, Members: []serf.Member{b}}, now)
	h.observe(serf.MemberEvent{Type: serf.EventMemberReap, Members: []serf.Member{c}}, now)
	h.mu.Lock()
	left := len(h.failed)
	h.mu.Unlock()
	if left != 0 {
		t.Errorf("the prober still holds %d failed members after they left or were reaped, want 0", left)
	}
	if p, ok, _ := h.pick(now.Add(time.Hour)); ok {
		t.Errorf("the prober picked %s, which left", p.name)
	}
}

func TestHealLeavesAFreshFailureToItsOwnRefutation(t *testing.T) {
	all := []string{"a", "b", "c"}
	_, nodes := cutOffC(t, all)
	h := healerFor(nodes["a"])
	h.minAge = time.Hour
	for range 20 {
		h.round(time.Now())
	}
	if p := h.pings.Load(); p != 0 {
		t.Errorf("the prober pinged a member failed for less than its minimum age %d times, want 0", p)
	}
}

// The prober draws among the members failed for minAge or longer, each
// alike, and never one failed more recently.
func TestTheProberPicksEachLongFailedMemberAlike(t *testing.T) {
	now := time.Now()
	h := &healer{interval: time.Second, minAge: 10 * time.Second, followUp: healFollowUp,
		failed: make(map[string]failedMember)}
	for _, name := range []string{"a", "b", "c", "d"} {
		h.failed[name] = failedMember{p: peer{name: name}, since: now.Add(-time.Minute)}
	}
	h.failed["fresh"] = failedMember{p: peer{name: "fresh"}, since: now}
	const rounds = 4000
	picked := map[string]int{}
	for range rounds {
		p, ok := h.drawFailed(now)
		if !ok {
			t.Fatal("the prober picked nobody with four members failed for a minute")
		}
		picked[p.name]++
	}
	if n := picked["fresh"]; n != 0 {
		t.Errorf("the prober picked a member failed for 0 s %d times, want 0 (minAge 10 s)", n)
	}
	// Each of four: 1,000 expected, a standard deviation of 27.
	for _, name := range []string{"a", "b", "c", "d"} {
		if n := picked[name]; n < 850 || n > 1150 {
			t.Errorf("%s picked %d times of %d, want about %d: %v", name, n, rounds, rounds/4, picked)
		}
	}
}
