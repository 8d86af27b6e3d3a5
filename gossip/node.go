package gossip

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// Transport is the network a node gossips over: memberlist's node-aware
// transport, so that the simulation can stand in for UDP/TCP. Packet and
// Address are the types it carries.
type (
	Transport = memberlist.NodeAwareTransport
	Packet    = memberlist.Packet
	Address   = memberlist.Address
)

// Config describes one node. Zero values take serf's and memberlist's
// defaults for the chosen profile.
type Config struct {
	Name          string
	BindAddr      string // default 0.0.0.0
	BindPort      int    // default 7946; 0 picks a free port only with a Transport
	AdvertiseAddr string // default: derived from BindAddr
	AdvertisePort int
	Profile       string // lan (default), wan, local
	Tags          map[string]string

	// SnapshotPath keeps serf's snapshot so that a restarted node rejoins
	// the members it knew without being told where they are.
	SnapshotPath string
	// RejoinAfterLeave lets a node that left gracefully rejoin from its
	// snapshot; by default a leave is final.
	RejoinAfterLeave bool

	// Keys enables gossip encryption; the first key is the primary.
	Keys [][]byte
	// KeyringFile, when set, is where serf persists the keyring after
	// every change. Use LoadKeyringFile to read it back at start.
	KeyringFile string

	// Transport replaces memberlist's UDP/TCP network; nil uses the real one.
	Transport Transport

	// Logger receives the node's and the libraries' logs; nil discards.
	Logger *slog.Logger

	// EventBuffer sizes the channel from serf; default 1024.
	EventBuffer int

	// HoldEvents keeps serf's events (the node's own join among them) in
	// the buffer until ReleaseEvents, so that subscribers registered right
	// after Start miss none of them.
	HoldEvents bool

	// Reap, when set, gives the members for which it returns true a
	// shorter life after they left or failed than serf's (24 hours): they
	// are forgotten after ReapAfter. serf's reaper then runs every
	// ReapAfter/4 (between 1 s and serf's 15 s).
	Reap      func(tags map[string]string) bool
	ReapAfter time.Duration

	// HealInterval is how often the heal prober may ping a failed member
	// (heal.go); zero: twice the profile's probe interval; negative: never.
	HealInterval time.Duration

	// Uncompressed sends packets and streams as they are; by default
	// memberlist compresses each with LZW. The simulation sets it, because
	// compressing every packet of a thousand nodes on two cores is most of
	// its CPU, and estimates the compressed bytes from a sample instead.
	Uncompressed bool

	// NoCoordinates turns off serf's network coordinates (the round-trip
	// estimates `agent rtt` reads), which every probe and its ack carry
	// and update. The chaos simulation sets it: no rule reads them, and
	// they were a twentieth of its CPU.
	NoCoordinates bool

	// TimeScale stretches every timer of the node by a factor: memberlist's
	// and serf's (every duration of their configurations, so the suspicion
	// and query timeouts derived from them too), the heal prober's, and the
	// durations of this Config (ReapAfter, HealInterval). Zero or 1 is real
	// time. The simulation sets it, with its network's delays stretched
	// alike, to run many nodes on few cores without starving them: the
	// protocol sees the same sequence of events, only slower (see
	// simulation.Dilation). Durations passed to the node's methods (a
	// query's Timeout) are taken as they are.
	TimeScale float64
}

// dilate multiplies every time.Duration field of the struct cfg points to
// by scale. The libraries' configurations hold their timers as plain
// duration fields, so a field added by a later version is stretched too.
func dilate(cfg any, scale float64) {
	v := reflect.ValueOf(cfg).Elem()
	durType := reflect.TypeOf(time.Duration(0))
	for i := 0; i < v.NumField(); i++ {
		if f := v.Field(i); f.Type() == durType && f.CanSet() {
			f.SetInt(int64(float64(f.Int()) * scale))
		}
	}
}

// reapOverride is serf's per-member reconnect timeout: the members Reap
// picks are forgotten after ReapAfter, left or failed alike (serf applies
// it to both lists).
type reapOverride struct {
	pick  func(map[string]string) bool
	after time.Duration
}

func (r reapOverride) ReconnectTimeout(m *serf.Member, timeout time.Duration) time.Duration {
	if r.pick(m.Tags) && r.after < timeout {
		return r.after
	}
	return timeout
}

// Node is one running member of the mesh. All methods are safe for
// concurrent use.
type Node struct {
	serf   *serf.Serf
	ml     *memberlist.Config
	logger *slog.Logger
	events chan serf.Event

	mu       sync.Mutex
	subs     map[uint64]func(Event)
	nextSub  uint64
	handlers map[string]func(*Query)

	stopOnce    sync.Once
	done        chan struct{}
	wg          sync.WaitGroup
	release     chan struct{} // closed when events may flow
	releaseOnce sync.Once

	// lost is closed when serf shut the node down by itself, which it does
	// only when it lost a name conflict; conflictWith is the other claimant.
	lost         chan struct{}
	conflictMu   sync.Mutex
	conflictWith string

	heal *healer // nil when heal probing is off

	cache memberCache // Members' conversions

	// tagLock serialises what makes serf read or write its tags: SetTags
	// and the renewal after a split (split.go). SetTags holds it while
	// memberlist waits for the update to go out, so it is a channel: a
	// goroutine waiting its turn is then blocked as a synctest bubble can
	// see, and the virtual clock still moves the wait on (a mutex there
	// stalled a simulated mesh for good).
	tagLock chan struct{}
	// heldTags is the newest tag change made while deaf, not yet gossiped
	// (SetTags); tagLock guards it.
	heldTags map[string]string

	scale float64 // Config.TimeScale, at least 1
}

// Dilate stretches a protocol duration by the node's TimeScale: how long it
// lasts on the wall clock for this node.
func (n *Node) Dilate(d time.Duration) time.Duration {
	if n.scale == 1 {
		return d
	}
	return time.Duration(float64(d) * n.scale)
}

// Start creates the node and starts gossiping; it does not join anyone.
func Start(cfg Config) (*Node, error) {
	if cfg.Name == "" {
		return nil, errors.New("node name is empty: give every node a unique name")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := CheckTagSize(cfg.Tags); err != nil {
		return nil, err
	}
	ml, err := profileConfig(cfg.Profile)
	if err != nil {
		return nil, err
	}
	scale := cfg.TimeScale
	if scale == 0 {
		scale = 1
	}
	if scale < 1 || math.IsInf(scale, 0) || math.IsNaN(scale) {
		return nil, fmt.Errorf("time scale %v: use 1 (real time) or more", cfg.TimeScale)
	}
	n := &Node{lost: make(chan struct{}), release: make(chan struct{}), scale: scale, tagLock: make(chan struct{}, 1)}
	if !cfg.HoldEvents {
		n.ReleaseEvents()
	}
	stdLogger := newStdLogger(logger, func(addr string) {
		n.conflictMu.Lock()
		n.conflictWith = addr
		n.conflictMu.Unlock()
	})
	ml.Logger = stdLogger
	if cfg.BindAddr != "" {
		ml.BindAddr = cfg.BindAddr
	}
	if cfg.BindPort != 0 || cfg.Transport != nil {
		ml.BindPort = cfg.BindPort
	}
	ml.AdvertiseAddr = cfg.AdvertiseAddr
	ml.AdvertisePort = cfg.AdvertisePort
	if cfg.Transport != nil {
		ml.Transport = cfg.Transport
	}
	if cfg.Uncompressed {
		ml.EnableCompression = false
	}
	if len(cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
		if err != nil {
			return nil, fmt.Errorf("gossip keyring: %w", err)
		}
		ml.Keyring = kr
		ml.GossipVerifyIncoming, ml.GossipVerifyOutgoing = true, true
	}

	buf := cfg.EventBuffer
	if buf <= 0 {
		buf = 1024
	}
	n.logger = logger
	n.events = make(chan serf.Event, buf)
	n.subs = make(map[uint64]func(Event))
	n.handlers = make(map[string]func(*Query))
	n.done = make(chan struct{})

	sc := serf.DefaultConfig()
	sc.NodeName = cfg.Name
	sc.Tags = cfg.Tags
	sc.EventCh = n.events
	sc.MemberlistConfig = ml
	sc.Logger = stdLogger
	sc.DisableCoordinates = cfg.NoCoordinates
	sc.SnapshotPath = cfg.SnapshotPath
	restarted := false // from serf's snapshot: this node was a member before
	if fi, err := os.Stat(cfg.SnapshotPath); cfg.SnapshotPath != "" && err == nil && fi.Size() > 0 {
		restarted = true
	}
	sc.RejoinAfterLeave = cfg.RejoinAfterLeave
	sc.KeyringFile = cfg.KeyringFile
	if cfg.Reap != nil && cfg.ReapAfter > 0 {
		sc.ReconnectTimeoutOverride = reapOverride{pick: cfg.Reap, after: n.Dilate(cfg.ReapAfter)}
		sc.ReapInterval = min(max(cfg.ReapAfter/4, time.Second), sc.ReapInterval)
	}
	if scale != 1 {
		// After the reap interval is chosen (in protocol time) and before
		// serf derives anything from either configuration.
		dilate(ml, scale)
		dilate(sc, scale)
	}

	s, err := serf.Create(sc)
	if err != nil {
		return nil, fmt.Errorf("start gossip node %q: %w", cfg.Name, err)
	}
	n.serf = s
	n.ml = ml
	heal := cfg.HealInterval
	if heal > 0 {
		heal = n.Dilate(heal)
	}
	n.startHeal(heal) // before dispatch, which tells the prober serf's events
	n.wg.Add(2)
	go n.dispatch()
	go n.watchLost()
	if restarted {
		go n.followUpJoin()
	}
	return n, nil
}

// ErrNameTaken is Lost's error when another member holds this node's name.
var ErrNameTaken = errors.New("node name taken")

// watchLost notices serf shutting itself down. serf does that only after
// losing a name conflict, and then keeps no member, so a node that goes on
// running (serving RPC, supervising a process) would be a ghost.
func (n *Node) watchLost() {
	defer n.wg.Done()
	select {
	case <-n.done:
	case <-n.serf.ShutdownCh():
		select {
		case <-n.done:
		default:
			close(n.lost)
		}
	}
}

// Lost is closed when the node stopped being a member without being asked:
// another member claims its name and the mesh sided with it. LostErr says
// why.
func (n *Node) Lost() <-chan struct{} { return n.lost }

// LostErr explains a lost node: the name and who else holds it.
func (n *Node) LostErr() error {
	n.conflictMu.Lock()
	other := n.conflictWith
	n.conflictMu.Unlock()
	if other == "" {
		other = "another address"
	}
	return fmt.Errorf("%w: %q is held by the member at %s, and the mesh sided with it; give this node another name",
		ErrNameTaken, n.serf.LocalMember().Name, other)
}

// dispatch hands serf's events to query handlers and subscribers. It is the
// only reader of serf's event channel, so a subscriber that blocks would stall
// event delivery: subscribers are documented as non-blocking.
func (n *Node) dispatch() {
	defer n.wg.Done()
	select {
	case <-n.release:
	case <-n.done:
		return
	}
	for {
		select {
		case <-n.done:
			return
		case se := <-n.events:
			if n.heal != nil {
				n.heal.observe(se, time.Now())
			}
			ev, ok := eventFromSerf(se)
			if !ok {
				continue
			}
			n.mu.Lock()
			if ev.Type == EventQuery {
				if h := n.handlers[ev.Name]; h != nil {
					n.mu.Unlock()
					n.wg.Add(1)
					go func() { defer n.wg.Done(); h(ev.Query) }()
					continue
				}
			}
			subs := make([]func(Event), 0, len(n.subs))
			for _, fn := range n.subs {
				subs = append(subs, fn)
			}
			n.mu.Unlock()
			for _, fn := range subs {
				fn(ev)
			}
		}
	}
}

// ReleaseEvents lets held events flow to subscribers and query handlers
// (see Config.HoldEvents). It is idempotent.
func (n *Node) ReleaseEvents() { n.releaseOnce.Do(func() { close(n.release) }) }

// Subscribe calls fn with every event from now on until cancel is called.
// fn runs on the node's event goroutine and must not block.
func (n *Node) Subscribe(fn func(Event)) (cancel func()) {
	n.mu.Lock()
	id := n.nextSub
	n.nextSub++
	n.subs[id] = fn
	n.mu.Unlock()
	return func() {
		n.mu.Lock()
		delete(n.subs, id)
		n.mu.Unlock()
	}
}

// HandleQuery answers every query named name with h, run on its own
// goroutine. Such queries are not passed to subscribers.
func (n *Node) HandleQuery(name string, h func(*Query)) {
	n.mu.Lock()
	n.handlers[name] = h
	n.mu.Unlock()
}

// Name is the local node's name.
func (n *Node) Name() string { return n.serf.LocalMember().Name }

// LocalMember is the local node as the mesh sees it.
func (n *Node) LocalMember() Member { return memberFromSerf(n.serf.LocalMember()) }

// Members lists every member known locally, in any state. The slice is
// the caller's; the members' Tags (and ParsedTags) are shared with other
// callers and must not be changed.
func (n *Node) Members() []Member {
	out, _ := n.cache.members(n.serf.Members())
	return out
}

// VersionedMembers is Members and the view's version: equal to the one an
// earlier call returned exactly when no member joined, left, was removed or
// changed state or tags in between (in any order). A caller that derives
// something from the whole view can keep it for as long as the version
// holds.
func (n *Node) VersionedMembers() ([]Member, uint64) {
	return n.cache.members(n.serf.Members())
}

// ErrKeyMismatch is returned by Join when the other side's gossip
// encryption does not match this node's.
var ErrKeyMismatch = errors.New("gossip keys do not match")

// Join contacts the given addresses and returns how many answered. With
// replay false, user events from before the join are not delivered. The
// error, when some failed, lists each address with its reason on one line.
func (n *Node) Join(addrs []string, replay bool) (int, error) {
	joined, err := n.serf.Join(addrs, !replay)
	return joined, joinError(err)
}

// Sync exchanges the whole member state with the named member, alive in
// this node's view: memberlist's push/pull, as a join makes, without serf's
// announcement of a join. It is for a node with reason to think its view
// missed a piece of news. In a small mesh memberlist sends each message
// RetransmitMult times (4 below ten members) to random peers, so now and
// then a member misses one from every sender, and only the next periodic
// push/pull (30 s) brings it.
func (n *Node) Sync(name string) error {
	for _, m := range n.serf.Members() {
		if m.Name != name {
			continue
		}
		if m.Status != serf.StatusAlive {
			return fmt.Errorf("cannot sync with %s: it is %s here", name, m.Status)
		}
		if err := n.pushPull(peerOf(m)); err != nil {
			return fmt.Errorf("sync with %s: %w", name, joinError(err))
		}
		return nil
	}
	return fmt.Errorf("cannot sync with %s: it is not a member here", name)
}

// pushPull is memberlist's state exchange with p, addressed by name so
// that another node now at p's address does not answer.
func (n *Node) pushPull(p peer) error {
	addr := &net.UDPAddr{IP: p.addr, Port: int(p.port)}
	_, err := n.serf.Memberlist().Join([]string{p.name + "/" + addr.String()})
	return err
}

// joinError flattens memberlist's multi-line error and recognises a key
// mismatch, which deserves advice rather than a decryption message.
func joinError(err error) error {
	if err == nil {
		return nil
	}
	var reasons []string
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "*"))
		if line != "" && !strings.HasSuffix(line, "error occurred:") && !strings.HasSuffix(line, "errors occurred:") {
			reasons = append(reasons, line)
		}
	}
	msg := strings.Join(reasons, "; ")
	for _, sign := range []string{"no installed keys could decrypt", "encryption is not configured", "encryption is configured but remote state is not"} {
		if strings.Contains(msg, sign) {
			return fmt.Errorf("%w: %s: give every agent the same key with --encrypt (or the same keyring)", ErrKeyMismatch, msg)
		}
	}
	return errors.New(msg)
}

// SetTags replaces the local node's tags and gossips the change; tags that
// would not fit memberlist's metadata are refused before anything changes.
//
// While the node takes itself for deaf (Deaf) the change is kept, not
// gossiped, and SetTags returns nil: every tag change is a new incarnation
// that revives a deaf node everywhere until the others' probes fail it
// again, a flap per change. The newest kept change is gossiped once the
// node hears the mesh again. This holds for every caller (the agent's user
// tags, drain, load, the republish after a join, a supervisor's restart
// count); until then Tags reports what the mesh was last told.
func (n *Node) SetTags(tags map[string]string) error {
	if err := CheckTagSize(tags); err != nil {
		return err
	}
	n.tagLock <- struct{}{}
	defer func() { <-n.tagLock }()
	if n.Deaf() {
		if n.heldTags == nil {
			n.logger.Warn("this node's probes go unanswered: its tag changes are held until it hears the mesh again",
				"health_score", n.HealthScore())
			n.wg.Add(1)
			go n.publishHeldTags()
		}
		n.heldTags = maps.Clone(tags)
		return nil
	}
	n.heldTags = nil
	return n.serf.SetTags(tags)
}

// publishHeldTags gossips the tags SetTags held while the node was deaf,
// once it hears the mesh again (checked every probe interval).
func (n *Node) publishHeldTags() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case <-time.After(n.ml.ProbeInterval):
		}
		if n.Deaf() {
			continue
		}
		n.tagLock <- struct{}{}
		tags := n.heldTags
		n.heldTags = nil
		var err error
		if tags != nil {
			err = n.serf.SetTags(tags)
		}
		<-n.tagLock
		if err != nil {
			n.logger.Error("this node hears the mesh again, but its held tag change could not be gossiped", "err", err)
		} else {
			n.logger.Info("this node hears the mesh again: its held tag change is gossiped")
		}
		return
	}
}

// Tags returns a copy of the local node's tags.
func (n *Node) Tags() map[string]string { return n.LocalMember().Tags }

// UserEvent broadcasts a user event.
func (n *Node) UserEvent(name string, payload []byte, coalesce bool) error {
	return n.serf.UserEvent(name, payload, coalesce)
}

// ForceLeave marks a failed member as left; prune also erases it from the
// member list at once.
func (n *Node) ForceLeave(node string, prune bool) error {
	if prune {
		return n.serf.RemoveFailedNodePrune(node)
	}
	return n.serf.RemoveFailedNode(node)
}

// QueryParams narrows who answers a query and how long the asker waits.
type QueryParams struct {
	FilterNodes []string
	FilterTags  map[string]string
	RequestAck  bool
	RelayFactor uint8
	Timeout     time.Duration // zero: serf's default for the mesh size
}

// Query asks the mesh and blocks until the query's timeout passes or ctx is
// done, calling onAck and onResponse on the calling goroutine as answers
// arrive. Cancelling ctx is how an asker stops early once it has every answer
// it needs; the cancellation is not an error.
func (n *Node) Query(ctx context.Context, name string, payload []byte, p QueryParams,
	onAck func(from string), onResponse func(from string, payload []byte)) error {
	resp, err := n.serf.Query(name, payload, &serf.QueryParam{
		FilterNodes: p.FilterNodes,
		FilterTags:  p.FilterTags,
		RequestAck:  p.RequestAck,
		RelayFactor: p.RelayFactor,
		Timeout:     p.Timeout,
	})
	if err != nil {
		return fmt.Errorf("query %q: %w", name, err)
	}
	defer resp.Close()
	acks, answers := resp.AckCh(), resp.ResponseCh()
	for {
		select {
		case <-ctx.Done():
			return nil
		case from, ok := <-acks:
			if !ok {
				acks = nil
				continue
			}
			if onAck != nil {
				onAck(from)
			}
		case r, ok := <-answers:
			if !ok {
				return nil
			}
			if onResponse != nil {
				onResponse(r.From, r.Payload)
			}
		}
	}
}

// GossipInterval is how often this node gossips news to a few peers: the
// pace at which a broadcast (a tag change, a query) spreads, one hop per
// interval.
func (n *Node) GossipInterval() time.Duration { return n.ml.GossipInterval }

// Stats returns serf's counters.
func (n *Node) Stats() map[string]string { return n.serf.Stats() }

// LocalKeys returns this node's gossip keys, the primary first, base64
// encoded; none when gossip is not encrypted. A process that joins on this
// node's behalf (an interpreter's supervisor) needs them.
func (n *Node) LocalKeys() []string {
	if n.ml.Keyring == nil {
		return nil
	}
	var out []string
	for _, k := range n.ml.Keyring.GetKeys() {
		out = append(out, base64.StdEncoding.EncodeToString(k))
	}
	return out
}

// EncryptionEnabled reports whether gossip is encrypted.
func (n *Node) EncryptionEnabled() bool { return n.serf.EncryptionEnabled() }

// Coordinate is a node's Vivaldi network coordinate.
type Coordinate struct {
	Vec        []float64
	Error      float64
	Adjustment float64
	Height     float64
}

// Coordinate returns the cached network coordinate of a node.
func (n *Node) Coordinate(node string) (Coordinate, bool) {
	c, ok := n.serf.GetCachedCoordinate(node)
	if !ok || c == nil {
		return Coordinate{}, false
	}
	return Coordinate{Vec: c.Vec, Error: c.Error, Adjustment: c.Adjustment, Height: c.Height}, true
}

// Leave broadcasts a graceful leave and waits for it to propagate. The node
// must still be shut down afterwards.
func (n *Node) Leave() error { return n.serf.Leave() }

// Shutdown stops the node without leaving: the others will see it fail. It
// is idempotent.
func (n *Node) Shutdown() error {
	n.stopOnce.Do(func() { close(n.done) })
	err := n.serf.Shutdown()
	n.wg.Wait()
	return err
}

// Addr is the advertised gossip address of the local node.
func (n *Node) Addr() string {
	m := n.serf.LocalMember()
	return net.JoinHostPort(m.Addr.String(), fmt.Sprint(m.Port))
}

// DecodeKey decodes one base64 gossip key and checks its length.
func DecodeKey(s string) ([]byte, error) {
	// The key is a secret: errors say what is wrong with it, never what it
	// is, so that a mistyped real key stays out of terminals and logs.
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("the gossip key (%d characters) is not valid base64: copy it again, or make one with `agent keygen`", len(s))
	}
	if l := len(k); l != 16 && l != 24 && l != 32 {
		return nil, fmt.Errorf("the gossip key decodes to %d bytes: it must be 16, 24 or 32 bytes (`agent keygen` makes one)", l)
	}
	return k, nil
}

// LoadKeyringFile reads a keyring file as serf writes it (a JSON list of
// base64 keys, the primary first). A missing file is not an error: it
// returns no keys.
func LoadKeyringFile(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read keyring %s: %w", path, err)
	}
	var encoded []string
	if err := json.Unmarshal(data, &encoded); err != nil {
		return nil, fmt.Errorf("keyring %s is not a JSON list of base64 keys: %w", path, err)
	}
	keys := make([][]byte, 0, len(encoded))
	for _, e := range encoded {
		k, err := DecodeKey(e)
		if err != nil {
			return nil, fmt.Errorf("keyring %s: %w", path, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}
