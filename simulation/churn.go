package simulation

import (
	"fmt"
	"log/slog"
	"math/rand"
	"sort"
	"strconv"
	"time"

	"github.com/meshagent/agent/gossip"
)

// Churn: members that come back and members that come and go, the
// ordinary life of a large mesh. Three scenarios:
//
//   - restart: one server crashes and comes back once the mesh has failed
//     it; later three crash together, two come back together and one
//     stays down (a heal of two in every view, with a member still failed).
//   - rolling: a tenth of the servers restart one after the other, a
//     rolling upgrade.
//   - churn: interpreter members join and leave at a steady rate while
//     servers crash, taking their interpreters with them, and come back.
//
// A restart is a new process on the same host and port: a new node with
// the same name, which knows nothing and joins one live server, as an
// agent does from its peers file.

// The churn faults, which are not network faults: the run starts and
// stops gossip nodes for them.
const (
	// FaultRestart starts Nodes again, each a new process on its crashed
	// host, and has it join a live server.
	FaultRestart FaultKind = "restart"
	// FaultInterpStart starts the interpreter member To[0] on the server
	// Nodes[0]'s host; it joins that server.
	FaultInterpStart FaultKind = "interp-start"
	// FaultInterpStop has the interpreter member To[0] leave the mesh.
	FaultInterpStop FaultKind = "interp-stop"
)

// The churn scenario names.
const (
	ScenarioRestart = "restart"
	ScenarioRolling = "rolling"
	ScenarioChurn   = "churn"
)

const (
	// churnLead is the steady state measured before the first fault, for
	// the bytes a node sends when nothing happens.
	churnLead = 10 * time.Second
	// rollingShare of the servers restart in the rolling scenario, one
	// every rollingEvery, as an upgrade that waits for each server to be
	// back and settled. Each crash and return is news every node gossips
	// (suspicion, confirmations, death, the refutation, serf's intents):
	// about 5 KB sent per node at 200 nodes, so one every 2 s quadrupled
	// a node's bytes and one every 10 s doubled them.
	rollingShare = 0.1
	rollingEvery = 15 * time.Second
	// interpLife is how long an interpreter member of the churn scenario
	// lives before it leaves; one joins every second per interpPerSecond
	// servers, so about N/100 × interpLife are members at once.
	interpLife      = 20 * time.Second
	interpPerSecond = 100
	// churnCrashEvery is how often a server crashes in the churn
	// scenario, with its interpreters; it comes back after crashWatch.
	churnCrashEvery = 15 * time.Second
	churnLength     = 60 * time.Second
	// followWatch is how long the restart scenario watches after the two
	// come back: longer than the heal prober's follow-up (30 s).
	followWatch = 40 * time.Second
)

// downFor is how long a restarted server stays down in the restart and
// churn scenarios: the crash schedule's watch, by which every node has
// failed it (at least 11 s, past the heal prober's minimum age).
func (p *Plan) downFor() time.Duration { return p.crashWatch() }

func buildRestart(p *Plan, names []string, rng *rand.Rand) {
	v := pick(names, rng, 4)
	down := p.downFor()
	first := churnLead
	second := first + down + 20*time.Second
	p.Faults = append(p.Faults,
		Fault{At: first, Kind: FaultCrash, Nodes: v[:1], Label: "crash " + v[0]},
		Fault{At: first + down, Kind: FaultRestart, Nodes: v[:1], Label: "restart " + v[0]},
		Fault{At: second, Kind: FaultCrash, Nodes: v[1:4], Label: fmt.Sprintf("crash %s, %s, %s", v[1], v[2], v[3])},
		Fault{At: second + down, Kind: FaultRestart, Nodes: v[1:3], Label: fmt.Sprintf("restart %s, %s together", v[1], v[2])})
	p.Length = second + down + followWatch
	p.Groups = []Group{
		{Name: "the rest", Nodes: without(names, v)},
		{Name: "restarted nodes", Nodes: sorted(v[:3])},
		{Name: v[3] + " (crashed for good)", Nodes: v[3:]},
	}
}

func buildRolling(p *Plan, names []string, rng *rand.Rand) {
	k := max(1, int(rollingShare*float64(len(names))+0.5))
	v := pick(names, rng, k)
	down := p.detection()
	for i, name := range v {
		at := churnLead + time.Duration(i)*rollingEvery
		p.Faults = append(p.Faults,
			Fault{At: at, Kind: FaultCrash, Nodes: []string{name}, Label: "stop " + name},
			Fault{At: at + down, Kind: FaultRestart, Nodes: []string{name}, Label: "restart " + name})
	}
	p.Length = churnLead + time.Duration(k-1)*rollingEvery + down + 2*p.crashWatch()
	p.Groups = []Group{
		{Name: "the rest", Nodes: without(names, v)},
		{Name: fmt.Sprintf("restarted one after the other (%d)", k), Nodes: sorted(v)},
	}
}

func buildChurn(p *Plan, names []string, rng *rand.Rand) {
	down := p.downFor()
	perSecond := max(1, len(names)/interpPerSecond)
	// Crashed servers, and until when: no interpreter starts there.
	downUntil := map[string]time.Duration{}
	var crashed []string
	for at := churnLead; at+down < churnLead+churnLength && len(crashed) < len(names)-1; at += churnCrashEvery {
		// A server not crashed before: each crashes once at most.
		var v string
		for {
			v = names[rng.Intn(len(names))]
			if _, ok := downUntil[v]; !ok {
				break
			}
		}
		downUntil[v] = at + down
		crashed = append(crashed, v)
		p.Faults = append(p.Faults,
			Fault{At: at, Kind: FaultCrash, Nodes: []string{v}, Label: "crash " + v + " and its interpreters"},
			Fault{At: at + down, Kind: FaultRestart, Nodes: []string{v}, Label: "restart " + v})
	}
	crashAt := map[string]time.Duration{}
	for _, f := range p.Faults {
		if f.Kind == FaultCrash {
			crashAt[f.Nodes[0]] = f.At
		}
	}
	k := 0
	for s := time.Duration(0); s < churnLength; s += time.Second {
		for j := 0; j < perSecond; j++ {
			at := churnLead + s + time.Duration(j)*time.Second/time.Duration(perSecond)
			host := names[rng.Intn(len(names))]
			if c, ok := crashAt[host]; ok && at >= c-interpLife && at < downUntil[host] {
				continue // it would die with its host or start on a dead one
			}
			name := "interp-" + strconv.Itoa(k)
			k++
			p.Faults = append(p.Faults,
				Fault{At: at, Kind: FaultInterpStart, Nodes: []string{host}, To: []string{name}},
				Fault{At: at + interpLife, Kind: FaultInterpStop, Nodes: []string{host}, To: []string{name}})
		}
	}
	p.Length = churnLead + churnLength + interpLife
	p.Groups = []Group{
		{Name: "the rest", Nodes: without(names, crashed)},
		{Name: "crashed and restarted", Nodes: sorted(crashed)},
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// Restart brings a crashed host back on the network: a new process on it
// sends and receives again. Its old endpoints must be shut down first.
func (n *Network) Restart(name string) error {
	return n.change(func(f *faultState) error {
		ids, err := n.ids([]string{name})
		if err != nil {
			return err
		}
		if !f.isCrashed(ids[0]) {
			return fmt.Errorf("host %q is not crashed: crash it before restarting it", name)
		}
		f.crashed = setFlag(f.crashed, ids[0], false)
		return nil
	})
}

// restart replaces the node on a crashed host with a new one of the same
// name and address, which knows only itself, and has it join a live
// server (three tries, as the cluster's joins).
func (c *Cluster) restart(name string, rng *rand.Rand) error {
	i, ok := c.index[name]
	if !ok {
		return fmt.Errorf("restart %q: no such node", name)
	}
	c.nodesMu.Lock()
	old, oldEp := c.nodes[i], c.eps[i]
	c.cancels[i]()
	c.stops[i]()
	c.nodesMu.Unlock()
	// The old process died with its host: what it did no longer counts.
	old.Shutdown()
	oldEp.Shutdown()
	c.nodesMu.Lock()
	c.retiredTraffic = c.retiredTraffic.Add(oldEp.Stats())
	h := old.HealStats()
	c.retiredHeal.Pings += h.Pings
	c.retiredHeal.Answers += h.Answers
	c.retiredHeal.Joins += h.Joins
	c.retiredHeal.Renewals += h.Renewals
	c.nodesMu.Unlock()

	c.tallyMu.Lock()
	v := c.views[i]
	v.mu.Lock()
	clear(v.status)
	v.status[i], v.alive, v.hash = gossip.StatusAlive, 1, c.keys[i]
	v.mu.Unlock()
	c.tallyMu.Unlock()

	ep, err := c.net.Attach(name, GossipPort)
	if err != nil {
		return fmt.Errorf("restart %s: %w", name, err)
	}
	node, cancel, stop, err := c.startNode(i, ep)
	if node != nil {
		c.nodesMu.Lock()
		c.nodes[i], c.eps[i], c.cancels[i], c.stops[i] = node, ep, cancel, stop
		c.nodesMu.Unlock()
	}
	if err != nil {
		return err
	}
	if err := c.net.Restart(name); err != nil {
		return err
	}
	var live []int
	f := c.net.faults.Load()
	for j, id := range c.hostID {
		if j != i && !f.isCrashed(id) {
			live = append(live, j)
		}
	}
	if len(live) == 0 {
		return nil
	}
	for try := 0; try < 3; try++ {
		t := live[rng.Intn(len(live))]
		if _, err = node.Join([]string{c.net.hostAddr(c.names[t], GossipPort)}, false); err == nil {
			return nil
		}
	}
	return fmt.Errorf("restarted %s could not join: %w", name, err)
}

// interpPortBase is the gossip port of interpreter member 0; the k-th has
// interpPortBase+k, on its server's host (the baseline's heartbeat
// endpoints sit next to GossipPort).
const interpPortBase = 20000

// interpMember is an interpreter member of the churn scenario: its own
// gossip node on its server's host, on a port of its own, as an
// interpreter's supervisor is.
type interpMember struct {
	host string
	node *gossip.Node
	ep   *Endpoint
}

// startInterp starts an interpreter member on host's machine and has it
// join that server.
func (c *Cluster) startInterp(name, host string, port int) error {
	ep, err := c.net.Attach(host, port)
	if err != nil {
		return err
	}
	tags := gossip.Tags{Role: gossip.RoleInterpreter, Kind: "demo", Host: host, RequestID: name, PID: port}.Map()
	node, err := gossip.Start(gossip.Config{Name: name, Transport: ep, Profile: c.cfg.Profile, Tags: tags,
		Logger: slog.New(slog.DiscardHandler), HealInterval: c.cfg.HealInterval, TimeScale: c.clk.factor(),
		Uncompressed: c.net.estimating()})
	if err != nil {
		ep.Shutdown()
		return fmt.Errorf("start interpreter %s: %w", name, err)
	}
	c.interpMu.Lock()
	if c.interps == nil {
		c.interps = make(map[string]*interpMember)
	}
	c.interps[name] = &interpMember{host: host, node: node, ep: ep}
	c.interpMu.Unlock()
	if _, err := node.Join([]string{c.net.hostAddr(host, GossipPort)}, false); err != nil {
		c.log.Debug("an interpreter member could not join its server", "interp", name, "err", err)
	}
	return nil
}

// stopInterp has an interpreter member leave, as its supervisor does when
// the interpreter exits; one whose host crashed is gone already.
func (c *Cluster) stopInterp(name string) {
	c.interpMu.Lock()
	m := c.interps[name]
	delete(c.interps, name)
	c.interpMu.Unlock()
	if m == nil {
		return
	}
	c.interpWG.Add(1)
	go func() {
		defer c.interpWG.Done()
		m.node.Leave()
		m.node.Shutdown()
		m.ep.Shutdown()
	}()
}

// interpsCrashed ends the interpreter members on crashed hosts: their
// processes died with the host, without a word.
func (c *Cluster) interpsCrashed(hosts []string) {
	down := map[string]bool{}
	for _, h := range hosts {
		down[h] = true
	}
	c.interpMu.Lock()
	var dead []*interpMember
	for name, m := range c.interps {
		if down[m.host] {
			dead = append(dead, m)
			delete(c.interps, name)
		}
	}
	c.interpMu.Unlock()
	for _, m := range dead {
		c.interpWG.Add(1)
		go func() {
			defer c.interpWG.Done()
			m.node.Shutdown()
			m.ep.Shutdown()
		}()
	}
}

// stopInterps ends every interpreter member, without leaving.
func (c *Cluster) stopInterps() {
	c.interpMu.Lock()
	var all []string
	for name, m := range c.interps {
		all = append(all, m.host)
		_ = name
	}
	c.interpMu.Unlock()
	c.interpsCrashed(all)
	c.interpWG.Wait()
}

// churnFault applies one of the churn faults.
func (c *Cluster) churnFault(f Fault, rng *rand.Rand) error {
	switch f.Kind {
	case FaultRestart:
		for _, name := range f.Nodes {
			if err := c.restart(name, rng); err != nil {
				return err
			}
		}
		return nil
	case FaultInterpStart:
		k, err := strconv.Atoi(f.To[0][len("interp-"):])
		if err != nil {
			return fmt.Errorf("interpreter name %q: %w", f.To[0], err)
		}
		return c.startInterp(f.To[0], f.Nodes[0], interpPortBase+k)
	case FaultInterpStop:
		c.stopInterp(f.To[0])
		return nil
	}
	return fmt.Errorf("fault kind %q is not a churn fault", f.Kind)
}

// isChurnFault says whether the run applies f through the cluster.
func isChurnFault(k FaultKind) bool {
	return k == FaultRestart || k == FaultInterpStart || k == FaultInterpStop
}

// meter follows every node's traffic second by second: the most push/pull
// messages and bytes each received in one protocol second, the heal
// prober's pings and the bytes the mesh sent each second.
type meter struct {
	c    *Cluster
	t0   time.Time
	last []TrafficStats
	eps  []*Endpoint
	heal []gossip.HealStats
	node []*gossip.Node

	peaks     []NodePeak // per node, over the run
	returning []NodePeak // per node, since its latest restart; Name empty if none
	pings     []int      // mesh-wide heal pings, per second
	sent      []float64  // bytes on the wire per live node, per second
}

func newMeter(c *Cluster, t0 time.Time) *meter {
	n := len(c.names)
	m := &meter{c: c, t0: t0, last: make([]TrafficStats, n), eps: make([]*Endpoint, n), heal: make([]gossip.HealStats, n),
		node: make([]*gossip.Node, n), peaks: make([]NodePeak, n), returning: make([]NodePeak, n)}
	c.nodesMu.RLock()
	for i := range n {
		m.eps[i], m.node[i] = c.eps[i], c.nodes[i]
		m.last[i], m.heal[i] = c.eps[i].Stats(), c.nodes[i].HealStats()
		m.peaks[i].Name = c.names[i]
	}
	c.nodesMu.RUnlock()
	return m
}

// tick reads every node's counters at now, a protocol second after the
// previous tick.
func (m *meter) tick(now time.Time, live func(i int) bool) {
	at := round(now.Sub(m.t0).Seconds())
	pings := 0
	var sent float64
	alive := 0
	m.c.nodesMu.RLock()
	for i, ep := range m.c.eps {
		st, hs := ep.Stats(), m.c.nodes[i].HealStats()
		if ep != m.eps[i] { // a restart: a new process, counting from zero
			m.eps[i], m.node[i] = ep, m.c.nodes[i]
			m.last[i], m.heal[i] = TrafficStats{}, gossip.HealStats{}
			m.returning[i] = NodePeak{Name: m.c.names[i], RestartS: at}
		}
		pp, b := st.PushPullsReceived-m.last[i].PushPullsReceived, st.BytesReceived-m.last[i].BytesReceived
		m.peaks[i].note(pp, b, at)
		if m.returning[i].Name != "" {
			m.returning[i].note(pp, b, at)
		}
		pings += int(hs.Pings - m.heal[i].Pings)
		if live(i) {
			sent += float64(st.WireBytesSent - m.last[i].WireBytesSent)
			alive++
		}
		m.last[i], m.heal[i] = st, hs
	}
	m.c.nodesMu.RUnlock()
	m.pings = append(m.pings, pings)
	if alive > 0 {
		sent /= float64(alive)
	}
	m.sent = append(m.sent, round(sent))
}

func (p *NodePeak) note(pushPulls, bytes uint64, at float64) {
	if pushPulls > p.PushPulls {
		p.PushPulls, p.PushPullsAtS = pushPulls, at
	}
	if bytes > p.BytesReceived {
		p.BytesReceived, p.BytesAtS = bytes, at
	}
}

// record sums the meter up for the report. restarts are the plan's
// restart faults, groups the number of nodes each restarts.
func (m *meter) record(plan Plan) *ChurnRecord {
	rec := &ChurnRecord{HealPingsPerS: m.pings, BytesSentPerNodePerS: m.sent}
	for _, p := range m.peaks {
		if p.PushPulls > rec.MostPushPulls.PushPulls {
			rec.MostPushPulls = p
		}
		if p.BytesReceived > rec.MostBytes.BytesReceived {
			rec.MostBytes = p
		}
	}
	rec.PerNode = m.peaks
	for _, p := range m.returning {
		if p.Name != "" {
			rec.Returning = append(rec.Returning, p)
		}
	}
	sort.Slice(rec.Returning, func(i, j int) bool { return rec.Returning[i].RestartS < rec.Returning[j].RestartS })
	// The steady state: the seconds before the first fault. Churn: from
	// the first fault until a crash watch after the last.
	first, last := time.Duration(-1), time.Duration(0)
	for _, f := range plan.Faults {
		if first < 0 {
			first = f.At
		}
		last = f.At
	}
	mean := func(from, to time.Duration) *float64 {
		var sum float64
		n := 0
		for s, v := range m.sent {
			if at := time.Duration(s+1) * time.Second; at > from && at <= to {
				sum += v
				n++
			}
		}
		if n == 0 {
			return nil
		}
		return ptr(round(sum / float64(n)))
	}
	if first > 0 {
		rec.BytesPerNodePerSSteady = mean(0, first)
		rec.BytesPerNodePerSChurn = mean(first, last+plan.crashWatch())
	}
	// The heal prober's pings in the follow-up window after a restart of
	// two or more nodes at once.
	for _, f := range plan.Faults {
		if f.Kind != FaultRestart || len(f.Nodes) < 2 {
			continue
		}
		from := int(f.At / time.Second)
		most := 0
		for s := from; s < from+int(followWatch/time.Second) && s < len(m.pings); s++ {
			most = max(most, m.pings[s])
		}
		rec.HealPingsMostPerSAfterRestart = ptr(most)
	}
	return rec
}
