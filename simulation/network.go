package simulation

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshagent/agent/gossip"
)

// Link is how packets travel in one direction between two hosts.
type Link struct {
	Loss   float64       // probability that a packet is lost, 0 to 1
	Delay  time.Duration // one-way latency
	Jitter time.Duration // extra latency, uniform in [0, Jitter)
}

// DefaultLink is a quiet LAN: about a millisecond each way, no loss.
var DefaultLink = Link{Delay: 500 * time.Microsecond, Jitter: time.Millisecond}

func (l Link) check() error {
	if l.Loss < 0 || l.Loss > 1 || l.Loss != l.Loss {
		return fmt.Errorf("link loss %v is not a probability: use a value from 0 to 1", l.Loss)
	}
	if l.Delay < 0 || l.Jitter < 0 {
		return fmt.Errorf("link delay %v and jitter %v must not be negative", l.Delay, l.Jitter)
	}
	return nil
}

// NetworkConfig sizes a Network. Zero values take the defaults named.
type NetworkConfig struct {
	// Seed drives every random choice of the network (loss, jitter). The
	// goroutines of the nodes interleave freely, so one seed gives the same
	// draws but not necessarily to the same packets.
	Seed int64
	// Link is every link's behaviour unless SetLink overrides it;
	// the zero Link is taken as DefaultLink.
	Link Link
	// QueueLen is each endpoint's receive queue, in packets (default 128,
	// about what Linux's default 208 KiB socket buffer holds of full-size
	// gossip packets). A packet that finds it full is dropped, as a socket
	// buffer does.
	QueueLen int
	// HoldBytes bounds the traffic held for a paused host, in bytes
	// (default 212992, Linux's default socket receive buffer). Past it,
	// packets are dropped.
	HoldBytes int
	// Dilation stretches every link delay, jitter and TCP timer by this
	// factor (clock.go); 0 or 1 is real time. The nodes over the network
	// must be dilated alike (gossip.Config.TimeScale).
	Dilation float64
	// EstimateCompression is for nodes that send uncompressed: the network
	// then estimates the bytes memberlist's compression would have sent
	// (compress.go). Off, bytes are counted as sent.
	EstimateCompression bool
	// Tick, when positive, rounds every arrival (a packet, a stream's
	// bytes, a connection's handshake) up to a multiple of it, adding up
	// to a tick to each latency. It is for virtual time (testing/synctest):
	// there the clock stops at every instant a timer is due and runs only
	// what is due then, so arrivals at distinct nanoseconds make the mesh
	// handle its packets one at a time, on one core. With a tick, the
	// packets of one tick arrive together and their nodes handle them in
	// parallel (virtualTick).
	Tick time.Duration
}

// onTick rounds t up to the network's tick.
func (n *Network) onTick(t time.Time) time.Time {
	if n.cfg.Tick <= 0 {
		return t
	}
	if up := t.Truncate(n.cfg.Tick); up.Before(t) {
		return up.Add(n.cfg.Tick)
	}
	return t
}

// ErrUnknownHost is returned by fault methods for a host never attached.
var ErrUnknownHost = errors.New("unknown host")

// Network is an in-memory network of hosts, each with one IP address and any
// number of endpoints (ports). It carries packets and streams between
// endpoints and applies the faults it is told: per-link loss, delay and
// jitter, partitions, one-way cuts, crashes and pauses.
//
// Sending never blocks: a packet is scheduled, dropped or held, and the
// sender goes on. Packets are delivered in the order of their arrival times,
// so jitter reorders them. All methods are safe for concurrent use.
type Network struct {
	cfg NetworkConfig

	mu     sync.Mutex // serialises fault changes and attachment
	hosts  []*host
	byName map[string]*host

	addrs  sync.Map // "ip:port" -> *Endpoint
	faults atomic.Pointer[faultState]
	// news counts the gossip packets sent (newsPacket), opaque the
	// packets it could not read (compressed or encrypted).
	news, opaque atomic.Uint64
	queueFull    atomic.Uint64 // packets dropped at a full receive queue
	// changed is closed (and replaced) on every fault change, waking
	// streams and dials that wait for a path to come back.
	changed atomic.Pointer[chan struct{}]
	// watchers are told of every fault change, in protocol time (clock.go).
	// They run with mu held and must not call back into the Network.
	watchers []func(at time.Time, f *faultState)

	sched *scheduler
	clk   clock         // the dilation: link delays and TCP timers last clk.wall
	est   *wireEstimate // nil: bytes count as sent

	closeOnce sync.Once
}

// Dilation is the network's time dilation, at least 1.
func (n *Network) Dilation() float64 { return n.clk.factor() }

// WireBytes is what the bytes sent in s stand for on the wire: as counted,
// or, when the network estimates compression, the compressed estimate.
func (n *Network) WireBytes(s TrafficStats) float64 { return float64(s.WireBytesSent) }

// estimating reports whether the nodes send uncompressed and the network
// estimates the compressed bytes.
func (n *Network) estimating() bool { return n.est != nil }

// NewNetwork returns an empty network; Close stops it.
func NewNetwork(cfg NetworkConfig) (*Network, error) {
	if cfg.Link == (Link{}) {
		cfg.Link = DefaultLink
	}
	if err := cfg.Link.check(); err != nil {
		return nil, err
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 128
	}
	if cfg.HoldBytes <= 0 {
		cfg.HoldBytes = 212992
	}
	if err := checkDilation(cfg.Dilation); err != nil {
		return nil, err
	}
	if cfg.Tick < 0 {
		return nil, fmt.Errorf("a network tick of %v: give 0 (none) or a positive duration, e.g. 1ms", cfg.Tick)
	}
	n := &Network{cfg: cfg, byName: make(map[string]*host), clk: newClock(cfg.Dilation)}
	if cfg.EstimateCompression {
		n.est = newWireEstimate()
	}
	n.faults.Store(&faultState{def: cfg.Link})
	ch := make(chan struct{})
	n.changed.Store(&ch)
	n.sched = newScheduler(n.arrive)
	return n, nil
}

// Close stops delivering; packets in flight are lost. Endpoints stay
// usable as sinks, so nodes may shut down after it.
func (n *Network) Close() {
	n.closeOnce.Do(n.sched.close)
}

// host is one machine: an IP, a fate (crashed, paused) and, while paused,
// the traffic held for it.
type host struct {
	id   int
	name string
	ip   net.IP

	rngMu sync.Mutex
	rng   *rand.Rand // draws for the packets this host sends

	heldMu    sync.Mutex
	held      []*inflight
	heldBytes int
}

func (h *host) draw() (lossDraw, jitterDraw float64) {
	h.rngMu.Lock()
	lossDraw, jitterDraw = h.rng.Float64(), h.rng.Float64()
	h.rngMu.Unlock()
	return
}

func (l Link) latency(jitterDraw float64) time.Duration {
	return l.Delay + time.Duration(jitterDraw*float64(l.Jitter))
}

// hostIP gives host i the address 10.x.y.z, counting from 10.0.0.1.
func hostIP(i int) net.IP {
	v := i + 1
	return net.IPv4(10, byte(v>>16), byte(v>>8), byte(v))
}

// addHost adds a host, or returns the one of that name.
func (n *Network) addHost(name string) *host {
	n.mu.Lock()
	defer n.mu.Unlock()
	if h := n.byName[name]; h != nil {
		return h
	}
	id := len(n.hosts)
	h := &host{id: id, name: name, ip: hostIP(id),
		rng: rand.New(rand.NewSource(n.cfg.Seed*1_000_003 + int64(id)))}
	n.hosts = append(n.hosts, h)
	n.byName[name] = h
	return h
}

func (n *Network) host(name string) (*host, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	h := n.byName[name]
	if h == nil {
		return nil, fmt.Errorf("%w %q: attach it first", ErrUnknownHost, name)
	}
	return h, nil
}

// Attach opens an endpoint on host (created on first use) at port. The
// endpoint is the memberlist transport of one node; Shutdown closes it.
func (n *Network) Attach(hostName string, port int) (*Endpoint, error) {
	if hostName == "" {
		return nil, errors.New("host name is empty: name every host")
	}
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("port %d is out of range: use 1 to 65535", port)
	}
	h := n.addHost(hostName)
	e := &Endpoint{
		net:      n,
		host:     h,
		udp:      &net.UDPAddr{IP: h.ip, Port: port},
		tcp:      &net.TCPAddr{IP: h.ip, Port: port},
		packetCh: make(chan *gossip.Packet, n.cfg.QueueLen),
		streamCh: make(chan net.Conn, 128),
		done:     make(chan struct{}),
		conns:    make(map[*streamConn]struct{}),
	}
	if _, taken := n.addrs.LoadOrStore(e.udp.String(), e); taken {
		return nil, fmt.Errorf("%s:%d is already attached: use another port", hostName, port)
	}
	return e, nil
}

func (n *Network) lookup(addr string) *Endpoint {
	if v, ok := n.addrs.Load(addr); ok {
		return v.(*Endpoint)
	}
	return nil
}

// faultState is an immutable snapshot of every fault; a change builds a new
// one, so the packet path reads it without locks.
type faultState struct {
	def     Link
	links   map[[2]int]Link // (from, to) overrides
	group   []int           // partition side per host; nil: no partition
	cut     map[[2]int]bool // one-way cuts, (from, to)
	crashed []bool
	paused  []bool
}

func (f *faultState) clone() *faultState {
	c := *f
	c.links = cloneMap(f.links)
	c.cut = cloneMap(f.cut)
	c.group = append([]int(nil), f.group...)
	if f.group == nil {
		c.group = nil
	}
	c.crashed = append([]bool(nil), f.crashed...)
	c.paused = append([]bool(nil), f.paused...)
	return &c
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	if m == nil {
		return nil
	}
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func isSet(s []bool, i int) bool { return i < len(s) && s[i] }

func setFlag(s []bool, i int, v bool) []bool {
	for len(s) <= i {
		s = append(s, false)
	}
	s[i] = v
	return s
}

func (f *faultState) isCrashed(i int) bool { return isSet(f.crashed, i) }
func (f *faultState) isPaused(i int) bool  { return isSet(f.paused, i) }

// side is the partition group of host i; hosts no group names share side -1.
func (f *faultState) side(i int) int {
	if i < len(f.group) {
		return f.group[i]
	}
	return -1
}

func (f *faultState) link(from, to int) Link {
	if l, ok := f.links[[2]int{from, to}]; ok {
		return l
	}
	return f.def
}

// wired reports whether the cable from one host to another carries traffic:
// neither end crashed, same side of any partition, no one-way cut. Pauses
// do not cut a wire; they hold traffic.
func (f *faultState) wired(from, to int) bool {
	if f.isCrashed(from) || f.isCrashed(to) {
		return false
	}
	if f.group != nil && f.side(from) != f.side(to) {
		return false
	}
	return !f.cut[[2]int{from, to}]
}

// flows reports whether data moves from one host to the other now: wired,
// and neither end paused. Streams use it.
func (f *faultState) flows(from, to int) bool {
	return f.wired(from, to) && !f.isPaused(from) && !f.isPaused(to)
}

// reachable reports whether a and b can exchange messages at all, directly
// or through one relay (as SWIM's indirect probes do): no partition between
// them, neither crashed nor paused, and a path each way.
func (f *faultState) reachable(a, b, hosts int) bool {
	if a == b {
		return !f.isCrashed(a) && !f.isPaused(a)
	}
	if f.isPaused(a) || f.isPaused(b) {
		return false
	}
	return f.path(a, b, hosts) && f.path(b, a, hosts)
}

func (f *faultState) path(from, to, hosts int) bool {
	if f.wired(from, to) {
		return true
	}
	if f.isCrashed(from) || f.isCrashed(to) || len(f.cut) == 0 {
		return false
	}
	for r := 0; r < hosts; r++ {
		if r != from && r != to && !f.isPaused(r) && f.wired(from, r) && f.wired(r, to) {
			return true
		}
	}
	return false
}

// change applies edit to a copy of the fault state and publishes it.
func (n *Network) change(edit func(f *faultState) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	f := n.faults.Load().clone()
	if err := edit(f); err != nil {
		return err
	}
	n.faults.Store(f)
	next := make(chan struct{})
	old := n.changed.Swap(&next)
	close(*old)
	now := n.clk.now()
	for _, w := range n.watchers {
		w(now, f)
	}
	return nil
}

// watchFaults has fn told of every later fault change.
func (n *Network) watchFaults(fn func(at time.Time, f *faultState)) {
	n.mu.Lock()
	n.watchers = append(n.watchers, fn)
	n.mu.Unlock()
}

func (n *Network) ids(names []string) ([]int, error) {
	out := make([]int, 0, len(names))
	for _, name := range names {
		h := n.byName[name]
		if h == nil {
			return nil, fmt.Errorf("%w %q: attach it first", ErrUnknownHost, name)
		}
		out = append(out, h.id)
	}
	return out, nil
}

// SetDefaultLink changes every link that SetLink did not override.
func (n *Network) SetDefaultLink(l Link) error {
	if err := l.check(); err != nil {
		return err
	}
	return n.change(func(f *faultState) error { f.def = l; return nil })
}

// SetLink overrides the link from one host to another (one direction).
func (n *Network) SetLink(from, to string, l Link) error {
	if err := l.check(); err != nil {
		return err
	}
	return n.change(func(f *faultState) error {
		ids, err := n.ids([]string{from, to})
		if err != nil {
			return err
		}
		if f.links == nil {
			f.links = make(map[[2]int]Link)
		}
		f.links[[2]int{ids[0], ids[1]}] = l
		return nil
	})
}

// Partition splits the hosts into groups that cannot reach each other.
// Hosts that no group names form one more group together. It replaces any
// partition in force.
func (n *Network) Partition(groups ...[]string) error {
	return n.change(func(f *faultState) error {
		f.group = make([]int, len(n.hosts))
		for i := range f.group {
			f.group[i] = -1
		}
		for g, names := range groups {
			ids, err := n.ids(names)
			if err != nil {
				return err
			}
			for _, id := range ids {
				if f.group[id] != -1 {
					return fmt.Errorf("host %q is in two groups of the partition: name each host once", n.hosts[id].name)
				}
				f.group[id] = g
			}
		}
		return nil
	})
}

// Cut drops every packet from each host of from to each host of to; the
// other direction keeps working.
func (n *Network) Cut(from, to []string) error {
	return n.change(func(f *faultState) error {
		a, err := n.ids(from)
		if err != nil {
			return err
		}
		b, err := n.ids(to)
		if err != nil {
			return err
		}
		if f.cut == nil {
			f.cut = make(map[[2]int]bool)
		}
		for _, x := range a {
			for _, y := range b {
				if x != y {
					f.cut[[2]int{x, y}] = true
				}
			}
		}
		return nil
	})
}

// Heal ends every partition and cut. Crashes, pauses and links stay.
func (n *Network) Heal() error {
	return n.change(func(f *faultState) error { f.group, f.cut = nil, nil; return nil })
}

// Crash drops everything to and from a host from now on, as if it lost
// power. It is final: a crashed host never comes back.
func (n *Network) Crash(name string) error {
	return n.change(func(f *faultState) error {
		ids, err := n.ids([]string{name})
		if err != nil {
			return err
		}
		f.crashed = setFlag(f.crashed, ids[0], true)
		return nil
	})
}

// Pause holds every packet to and from a host, as if its process were
// stopped (SIGSTOP): the held traffic is bounded by NetworkConfig.HoldBytes
// and is released, in order, by Resume. Streams stall while paused.
//
// Unlike a real SIGSTOP, the node's own timers keep running: while paused
// it probes, times out and suspects others, and what it sends meanwhile is
// held and sent on resume.
func (n *Network) Pause(name string) error {
	return n.change(func(f *faultState) error {
		ids, err := n.ids([]string{name})
		if err != nil {
			return err
		}
		f.paused = setFlag(f.paused, ids[0], true)
		return nil
	})
}

// Resume releases a paused host and the traffic held for it.
func (n *Network) Resume(name string) error {
	h, err := n.host(name)
	if err != nil {
		return err
	}
	if err := n.change(func(f *faultState) error {
		f.paused = setFlag(f.paused, h.id, false)
		return nil
	}); err != nil {
		return err
	}
	h.heldMu.Lock()
	held := h.held
	h.held, h.heldBytes = nil, 0
	h.heldMu.Unlock()
	// Released in order: each no earlier than the one held before it.
	var floor time.Time
	for _, p := range held {
		p.notBefore = floor
		if n.route(p, time.Now()) {
			floor = p.at
		}
	}
	return nil
}

// TrafficStats counts what an endpoint sent and received: packets and
// stream bytes, as the application wrote them (no IP or UDP headers).
type TrafficStats struct {
	PacketsSent, PacketsReceived uint64
	BytesSent, BytesReceived     uint64 // packets and streams together
	StreamBytesSent              uint64
	Dropped                      uint64 // sent by this endpoint and lost: loss, faults, or a full queue
	// WireBytesSent and StreamWireBytes are BytesSent and StreamBytesSent
	// as memberlist would have put them on the wire compressed, when the
	// network estimates compression (compress.go); else equal to them.
	WireBytesSent, StreamWireBytes uint64
	// PushPullsReceived counts the push/pull messages (a whole member
	// list) other endpoints sent this one over streams; zero when
	// memberlist compresses for real (the message type is hidden then).
	PushPullsReceived uint64
}

// Add sums two counts.
func (s TrafficStats) Add(o TrafficStats) TrafficStats {
	return TrafficStats{
		PacketsSent: s.PacketsSent + o.PacketsSent, PacketsReceived: s.PacketsReceived + o.PacketsReceived,
		BytesSent: s.BytesSent + o.BytesSent, BytesReceived: s.BytesReceived + o.BytesReceived,
		StreamBytesSent: s.StreamBytesSent + o.StreamBytesSent, Dropped: s.Dropped + o.Dropped,
		WireBytesSent: s.WireBytesSent + o.WireBytesSent, StreamWireBytes: s.StreamWireBytes + o.StreamWireBytes,
		PushPullsReceived: s.PushPullsReceived + o.PushPullsReceived,
	}
}

type counters struct {
	packetsSent, packetsRecv, bytesSent, bytesRecv, streamSent, dropped atomic.Uint64
	wireSent, streamWire                                                atomic.Uint64
	pushPullsRecv                                                       atomic.Uint64
}

// Endpoint is one port of one host: a memberlist NodeAwareTransport over
// the simulated network. Its methods are safe for concurrent use, and
// WriteTo never blocks.
type Endpoint struct {
	net      *Network
	host     *host
	udp      *net.UDPAddr
	tcp      *net.TCPAddr
	packetCh chan *gossip.Packet
	streamCh chan net.Conn
	c        counters

	uncompressed bool // not memberlist's traffic: see plain

	closed    atomic.Bool
	done      chan struct{}
	closeOnce sync.Once
	connMu    sync.Mutex
	conns     map[*streamConn]struct{}
}

var _ gossip.Transport = (*Endpoint)(nil)

// Addr is the endpoint's address, "ip:port".
func (e *Endpoint) Addr() string { return e.udp.String() }

// Host is the name of the endpoint's host.
func (e *Endpoint) Host() string { return e.host.name }

// Stats returns the endpoint's traffic counters.
func (e *Endpoint) Stats() TrafficStats {
	return TrafficStats{
		PacketsSent: e.c.packetsSent.Load(), PacketsReceived: e.c.packetsRecv.Load(),
		BytesSent: e.c.bytesSent.Load(), BytesReceived: e.c.bytesRecv.Load(),
		StreamBytesSent: e.c.streamSent.Load(), Dropped: e.c.dropped.Load(),
		WireBytesSent: e.c.wireSent.Load(), StreamWireBytes: e.c.streamWire.Load(),
		PushPullsReceived: e.c.pushPullsRecv.Load(),
	}
}

// plain marks an endpoint whose traffic memberlist does not send (the
// heartbeat baseline's): it is never compressed, so never sampled.
func (e *Endpoint) plain() { e.uncompressed = true }

// FinalAdvertiseAddr is the endpoint's own address, whatever is asked.
func (e *Endpoint) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return e.host.ip, e.udp.Port, nil
}

// WriteTo sends a packet to "ip:port".
func (e *Endpoint) WriteTo(b []byte, addr string) (time.Time, error) {
	return e.WriteToAddress(b, gossip.Address{Addr: addr})
}

// WriteToAddress sends a packet; it never blocks. A packet to an address
// nobody holds is lost silently, as UDP is.
func (e *Endpoint) WriteToAddress(b []byte, a gossip.Address) (time.Time, error) {
	now := time.Now()
	if e.closed.Load() {
		return now, net.ErrClosed
	}
	f := e.net.faults.Load()
	if f.isCrashed(e.host.id) {
		return now, nil // a crashed host sends nothing
	}
	e.c.packetsSent.Add(1)
	e.c.bytesSent.Add(uint64(len(b)))
	if e.uncompressed {
		e.c.wireSent.Add(uint64(len(b)))
	} else {
		e.c.wireSent.Add(uint64(math.Round(e.net.est.packet(b))))
		switch news, known := newsPacket(b); {
		case !known:
			e.net.opaque.Add(1)
		case news:
			e.net.news.Add(1)
		}
	}
	dst := e.net.lookup(a.Addr)
	if dst == nil {
		e.c.dropped.Add(1)
		return now, nil
	}
	p := &inflight{src: e, dst: dst, buf: append([]byte(nil), b...)}
	e.net.route(p, now)
	return now, nil
}

// memberlist's message types (net.go in memberlist), as far as newsPacket
// and the push/pull count need them.
const (
	mlPing, mlIndirectPing, mlAck          = 0, 1, 2
	mlSuspect, mlAlive, mlDead, mlPushPull = 3, 4, 5, 6
	mlCompound, mlUser, mlNack, mlHasCRC   = 7, 8, 11, 12
)

// newsPacket reports whether a memberlist packet is gossip: one that leads
// with news (alive, suspect, dead, or serf's own messages) rather than a
// probe. memberlist sends gossip only while its or serf's broadcast queues
// hold something, to GossipNodes peers every GossipInterval, so the rate of
// gossip packets says how much news the mesh still owes itself. known is
// false for a packet it cannot read (compressed or encrypted).
func newsPacket(b []byte) (news, known bool) {
	if len(b) > 5 && b[0] == mlHasCRC {
		b = b[5:]
	}
	if len(b) > 1 && b[0] == mlCompound {
		// A count, the messages' lengths, then the messages.
		off := 2 + 2*int(b[1])
		if b[1] == 0 || len(b) <= off {
			return false, false
		}
		b = b[off:]
	}
	if len(b) == 0 {
		return false, false
	}
	switch b[0] {
	case mlSuspect, mlAlive, mlDead, mlUser:
		return true, true
	case mlPing, mlIndirectPing, mlAck, mlNack:
		return false, true
	}
	return false, false
}

// NewsPackets is how many gossip packets (newsPacket) the nodes have sent,
// and whether the count can be trusted: false once a packet could not be
// read (the nodes compress or encrypt).
func (n *Network) NewsPackets() (uint64, bool) {
	return n.news.Load(), n.opaque.Load() == 0
}

// inflight is a packet between send and delivery.
type inflight struct {
	src, dst  *Endpoint
	buf       []byte
	at        time.Time
	notBefore time.Time
	seq       uint64 // breaks ties in at: first scheduled, first delivered
}

// route decides a packet's fate as it leaves its sender: drop, hold for a
// paused end, or schedule its arrival. It reports whether it scheduled it.
func (n *Network) route(p *inflight, now time.Time) bool {
	f := n.faults.Load()
	from, to := p.src.host, p.dst.host
	if !f.wired(from.id, to.id) {
		p.src.c.dropped.Add(1)
		return false
	}
	switch {
	case f.isPaused(from.id):
		n.hold(from, p)
		return false
	case f.isPaused(to.id):
		n.hold(to, p)
		return false
	}
	l := f.link(from.id, to.id)
	loss, jitter := from.draw()
	if loss < l.Loss {
		p.src.c.dropped.Add(1)
		return false
	}
	p.at = n.onTick(now.Add(n.clk.wall(l.latency(jitter))))
	if p.at.Before(p.notBefore) {
		p.at = p.notBefore
	}
	n.sched.push(p)
	return true
}

func (n *Network) hold(h *host, p *inflight) {
	h.heldMu.Lock()
	defer h.heldMu.Unlock()
	if h.heldBytes+len(p.buf) > n.cfg.HoldBytes {
		p.src.c.dropped.Add(1)
		return
	}
	h.held = append(h.held, p)
	h.heldBytes += len(p.buf)
}

// arrive delivers a packet whose time has come, unless a fault struck the
// wire while it was in flight.
func (n *Network) arrive(p *inflight) {
	f := n.faults.Load()
	if !f.wired(p.src.host.id, p.dst.host.id) || p.dst.closed.Load() {
		p.src.c.dropped.Add(1)
		return
	}
	if f.isPaused(p.dst.host.id) {
		n.hold(p.dst.host, p)
		return
	}
	select {
	case p.dst.packetCh <- &gossip.Packet{Buf: p.buf, From: p.src.udp, Timestamp: time.Now()}:
		p.dst.c.packetsRecv.Add(1)
		p.dst.c.bytesRecv.Add(uint64(len(p.buf)))
	default:
		p.src.c.dropped.Add(1) // the receiver's queue is full
		n.queueFull.Add(1)
	}
}

// FullQueueDrops counts the packets dropped so far because their
// receiver's queue was full: a node that did not keep up with its traffic.
func (n *Network) FullQueueDrops() uint64 { return n.queueFull.Load() }

// PacketCh delivers the packets that reach this endpoint.
func (e *Endpoint) PacketCh() <-chan *gossip.Packet { return e.packetCh }

// StreamCh delivers the streams other endpoints open to this one.
func (e *Endpoint) StreamCh() <-chan net.Conn { return e.streamCh }

// Shutdown closes the endpoint and every stream it holds, as a process's
// exit closes its sockets. It is idempotent.
func (e *Endpoint) Shutdown() error {
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		close(e.done)
		e.net.addrs.CompareAndDelete(e.udp.String(), e)
		e.connMu.Lock()
		conns := make([]*streamConn, 0, len(e.conns))
		for c := range e.conns {
			conns = append(conns, c)
		}
		e.connMu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return nil
}

// scheduler delivers packets at their arrival times. It is sharded by
// destination host, each shard a heap with its own lock and goroutine, so
// that packets to one host arrive in order (equal times: first scheduled,
// first delivered) while senders to different hosts do not queue on one
// lock. With one lock, a 1,000-node mesh had thousands of senders (probes,
// gossip, acks) waiting on it at once: each holder that lost its CPU held
// them all up, and their timers ran late.
type scheduler struct {
	stopped atomic.Bool
	shards  []*schedShard
	stop    chan struct{}
	wg      sync.WaitGroup
}

// schedShards is how many delivery goroutines a network runs.
const schedShards = 32

type schedShard struct {
	mu      sync.Mutex
	seq     uint64
	q       inflightHeap
	wake    chan struct{}
	deliver func(*inflight)
}

func newScheduler(deliver func(*inflight)) *scheduler {
	s := &scheduler{stop: make(chan struct{})}
	for range schedShards {
		sh := &schedShard{wake: make(chan struct{}, 1), deliver: deliver}
		s.shards = append(s.shards, sh)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sh.run(s.stop)
		}()
	}
	return s
}

func (s *scheduler) push(p *inflight) {
	if s.stopped.Load() {
		return
	}
	s.shards[p.dst.host.id%len(s.shards)].push(p)
}

func (s *scheduler) close() {
	s.stopped.Store(true)
	close(s.stop)
	s.wg.Wait()
}

func (s *schedShard) push(p *inflight) {
	s.mu.Lock()
	s.seq++
	p.seq = s.seq
	heap.Push(&s.q, p)
	first := s.q[0] == p
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *schedShard) run(stop <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []*inflight
	for {
		s.mu.Lock()
		now := time.Now()
		due = due[:0]
		for len(s.q) > 0 && !s.q[0].at.After(now) {
			due = append(due, heap.Pop(&s.q).(*inflight))
		}
		wait := time.Hour
		if len(s.q) > 0 {
			wait = s.q[0].at.Sub(now)
		}
		s.mu.Unlock()
		for i, p := range due {
			s.deliver(p)
			due[i] = nil
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-s.wake:
		case <-stop:
			return
		}
	}
}

type inflightHeap []*inflight

func (h inflightHeap) Len() int { return len(h) }
func (h inflightHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h inflightHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *inflightHeap) Push(x any)   { *h = append(*h, x.(*inflight)) }
func (h *inflightHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return p
}

// Reachable reports whether two hosts can exchange messages now, directly
// or through one relay: neither crashed nor paused, no partition between
// them, and a path each way.
func (n *Network) Reachable(a, b string) (bool, error) {
	n.mu.Lock()
	ids, err := n.ids([]string{a, b})
	hosts := len(n.hosts)
	n.mu.Unlock()
	if err != nil {
		return false, err
	}
	return n.faults.Load().reachable(ids[0], ids[1], hosts), nil
}

// hostAddr is the address of port on the host called name (added if new).
func (n *Network) hostAddr(name string, port int) string {
	return net.JoinHostPort(n.addHost(name).ip.String(), strconv.Itoa(port))
}
