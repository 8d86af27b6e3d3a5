package simulation

import (
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"time"
)

// The heartbeat baseline is the failure detector of the system the mesh
// replaces: every node sends a heartbeat to one central monitor every 3 s,
// and the monitor, scanning its table every second, declares a node failed
// when it has heard nothing from it for 9 s, and alive again at its next
// heartbeat. It runs on the same Network as the gossip, on its own port, so
// it meets the same faults.
const (
	HeartbeatInterval = 3 * time.Second
	HeartbeatTimeout  = 9 * time.Second
	HeartbeatScan     = time.Second
	HeartbeatPort     = 7947
)

// baseline runs the heartbeat senders and the monitor. Its timers are
// dilated like the network's; it tells onChange in protocol time.
type baseline struct {
	clk     clock
	monitor *Endpoint
	senders []*Endpoint
	index   map[string]int

	mu       sync.Mutex
	lastSeen []time.Time
	failed   []bool
	alive    int
	onChange func(at time.Time, node int, failed bool) // under mu

	timers []*time.Timer
	stop   chan struct{}
	wg     sync.WaitGroup
}

// startBaseline starts a heartbeat sender on each node's host and the
// monitor on MonitorHost. Senders start at seeded offsets within one
// interval, as independent machines would.
func startBaseline(n *Network, names []string, seed int64) (*baseline, error) {
	mon, err := n.Attach(MonitorHost, HeartbeatPort)
	if err != nil {
		return nil, err
	}
	mon.plain()
	now := time.Now()
	b := &baseline{clk: n.clk, monitor: mon, index: make(map[string]int, len(names)), stop: make(chan struct{}),
		lastSeen: make([]time.Time, len(names)), failed: make([]bool, len(names)), alive: len(names)}
	rng := rand.New(rand.NewSource(seed ^ 0x5eed))
	for i, name := range names {
		b.index[name] = i
		b.lastSeen[i] = now
		ep, err := n.Attach(name, HeartbeatPort)
		if err != nil {
			b.close()
			return nil, err
		}
		ep.plain()
		b.senders = append(b.senders, ep)
		offset := time.Duration(rng.Int63n(int64(HeartbeatInterval)))
		b.timers = append(b.timers, b.beat(ep, name, b.clk.wall(offset)))
	}
	b.wg.Add(2)
	go b.listen()
	go b.scan(b.clk.wall(time.Duration(rng.Int63n(int64(HeartbeatScan)))))
	return b, nil
}

// beat sends one heartbeat after d, then one every interval.
func (b *baseline) beat(ep *Endpoint, name string, d time.Duration) *time.Timer {
	var seq uint64
	var t *time.Timer
	var mu sync.Mutex
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(d, func() {
		seq++
		msg := fmt.Sprintf("hb %s %d %d", name, seq, time.Now().UnixNano())
		ep.WriteTo([]byte(msg), b.monitor.Addr())
		mu.Lock()
		defer mu.Unlock()
		select {
		case <-b.stop:
		default:
			t.Reset(b.clk.wall(HeartbeatInterval))
		}
	})
	return t
}

func (b *baseline) listen() {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case p := <-b.monitor.PacketCh():
			fields := strings.Fields(string(p.Buf))
			if len(fields) < 2 || fields[0] != "hb" {
				continue
			}
			i, ok := b.index[fields[1]]
			if !ok {
				continue
			}
			b.mu.Lock()
			b.lastSeen[i] = p.Timestamp
			if b.failed[i] {
				b.failed[i] = false
				b.alive++
				if b.onChange != nil {
					b.onChange(b.clk.proto(p.Timestamp), i, false)
				}
			}
			b.mu.Unlock()
		}
	}
}

// scan checks the table every HeartbeatScan, starting after phase.
func (b *baseline) scan(phase time.Duration) {
	defer b.wg.Done()
	select {
	case <-b.stop:
		return
	case <-time.After(phase):
	}
	tick := time.NewTicker(b.clk.wall(HeartbeatScan))
	defer tick.Stop()
	for {
		select {
		case <-b.stop:
			return
		case now := <-tick.C:
			b.mu.Lock()
			for i, seen := range b.lastSeen {
				if !b.failed[i] && now.Sub(seen) > b.clk.wall(HeartbeatTimeout) {
					b.failed[i] = true
					b.alive--
					if b.onChange != nil {
						b.onChange(b.clk.proto(now), i, true)
					}
				}
			}
			b.mu.Unlock()
		}
	}
}

// aliveCount is how many nodes the monitor holds alive.
func (b *baseline) aliveCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.alive
}

// stats sums the senders' traffic.
func (b *baseline) stats() TrafficStats {
	var s TrafficStats
	for _, ep := range b.senders {
		s = s.Add(ep.Stats())
	}
	return s
}

func (b *baseline) close() {
	select {
	case <-b.stop:
		return
	default:
	}
	close(b.stop)
	for _, t := range b.timers {
		t.Stop()
	}
	b.wg.Wait()
	for _, ep := range b.senders {
		ep.Shutdown()
	}
	b.monitor.Shutdown()
}
