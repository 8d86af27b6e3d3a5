package simulation

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// testNet is a network with endpoints a, b and c on port 1.
func testNet(t *testing.T, cfg NetworkConfig) (*Network, map[string]*Endpoint) {
	t.Helper()
	n, err := NewNetwork(cfg)
	if err != nil {
		t.Fatal(err)
	}
	eps := map[string]*Endpoint{}
	for _, name := range []string{"a", "b", "c"} {
		ep, err := n.Attach(name, 1)
		if err != nil {
			t.Fatal(err)
		}
		eps[name] = ep
	}
	t.Cleanup(func() {
		for _, ep := range eps {
			ep.Shutdown()
		}
		n.Close()
	})
	return n, eps
}

// arrives sends one packet and reports whether it reaches to within wait.
// The links of these tests deliver in about a millisecond, so a wait of
// 100 ms tells a lost packet from a slow one.
func arrives(t *testing.T, from, to *Endpoint, wait time.Duration) bool {
	t.Helper()
	payload := []byte("ping " + from.Host() + " " + time.Now().String())
	if _, err := from.WriteTo(payload, to.Addr()); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case p := <-to.PacketCh():
			if bytes.Equal(p.Buf, payload) {
				if p.From.String() != from.Addr() {
					t.Fatalf("packet from %s, want %s", p.From, from.Addr())
				}
				return true
			}
		case <-timer.C:
			return false
		}
	}
}

func TestFaultsDecideWhichPacketsArrive(t *testing.T) {
	n, ep := testNet(t, NetworkConfig{Seed: 1})
	const wait = 100 * time.Millisecond
	type link struct {
		from, to string
		want     bool
	}
	steps := []struct {
		name  string
		fault func() error
		links []link
	}{
		{"no fault", func() error { return nil },
			[]link{{"a", "b", true}, {"b", "a", true}, {"a", "c", true}}},
		{"partition {a,b} | {c}", func() error { return n.Partition([]string{"a", "b"}, []string{"c"}) },
			[]link{{"a", "b", true}, {"b", "a", true}, {"a", "c", false}, {"c", "b", false}}},
		{"heal", n.Heal,
			[]link{{"a", "c", true}, {"c", "b", true}}},
		{"cut a -> b only", func() error { return n.Cut([]string{"a"}, []string{"b"}) },
			[]link{{"a", "b", false}, {"b", "a", true}, {"a", "c", true}}},
		{"heal the cut", n.Heal,
			[]link{{"a", "b", true}}},
		{"crash c", func() error { return n.Crash("c") },
			[]link{{"a", "c", false}, {"c", "a", false}, {"a", "b", true}}},
		{"a crash outlives a heal", n.Heal,
			[]link{{"b", "c", false}}},
	}
	for _, s := range steps {
		if err := s.fault(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		for _, l := range s.links {
			if got := arrives(t, ep[l.from], ep[l.to], wait); got != l.want {
				t.Errorf("after %s: %s -> %s arrived = %v, want %v", s.name, l.from, l.to, got, l.want)
			}
		}
	}
}

func TestLossDropsItsShareOfPackets(t *testing.T) {
	n, ep := testNet(t, NetworkConfig{Seed: 7, Link: Link{Loss: 0.3}, QueueLen: 4096})
	_ = n
	const sent = 3000
	for i := 0; i < sent; i++ {
		ep["a"].WriteTo([]byte{byte(i)}, ep["b"].Addr())
	}
	st := ep["a"].Stats()
	if st.PacketsSent != sent {
		t.Fatalf("sent %d, want %d", st.PacketsSent, sent)
	}
	if share := float64(st.Dropped) / sent; share < 0.26 || share > 0.34 {
		t.Fatalf("dropped %.3f of the packets on a 30%% loss link", share)
	}
}

func TestDelayAndJitterBoundArrival(t *testing.T) {
	_, ep := testNet(t, NetworkConfig{Seed: 1, Link: Link{Delay: 40 * time.Millisecond, Jitter: 20 * time.Millisecond}})
	for i := 0; i < 20; i++ {
		sent, _ := ep["a"].WriteTo([]byte("x"), ep["b"].Addr())
		select {
		case p := <-ep["b"].PacketCh():
			if d := p.Timestamp.Sub(sent); d < 40*time.Millisecond || d > 500*time.Millisecond {
				t.Fatalf("packet took %v on a 40 ms + [0, 20 ms) link", d)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("packet never arrived")
		}
	}
}

// In virtual time a tick makes the packets of one tick arrive at one
// instant: each lands on the first tick at or after its latency, in the
// order sent.
func TestATickLandsEachArrivalOnTheNextTick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const tick = time.Millisecond
		link := Link{Delay: 500 * time.Microsecond, Jitter: time.Millisecond}
		_, ep := testNet(t, NetworkConfig{Seed: 1, Link: link, Tick: tick})
		const n = 40
		sent := make([]time.Time, n)
		for i := range n {
			sent[i], _ = ep["a"].WriteTo([]byte{byte(i)}, ep["b"].Addr())
			time.Sleep(137 * time.Microsecond) // sends at odd instants
		}
		arrivals := map[time.Time]int{}
		var lastAt time.Time
		lastK := -1
		for i := range n {
			select {
			case p := <-ep["b"].PacketCh():
				at, k := p.Timestamp, int(p.Buf[0])
				if at.Equal(lastAt) && k < lastK {
					t.Errorf("packet %d arrived after packet %d at the same instant: want the order sent", k, lastK)
				}
				lastAt, lastK = at, k
				if !at.Equal(at.Truncate(tick)) {
					t.Errorf("packet %d arrived at %v, off a %v tick", k, at.Format(time.StampMicro), tick)
				}
				if d := at.Sub(sent[k]); d < link.Delay || d >= link.Delay+link.Jitter+tick {
					t.Errorf("packet %d took %v, want %v to %v", k, d, link.Delay, link.Delay+link.Jitter+tick)
				}
				arrivals[at]++
			case <-time.After(time.Second):
				t.Fatalf("%d of %d packets arrived", i, n)
			}
		}
		// 40 packets 137 µs apart span 5.5 ms: about 7 ticks, not 40 instants.
		if len(arrivals) > 12 {
			t.Errorf("%d packets arrived at %d distinct instants, want a dozen ticks at most", n, len(arrivals))
		}
	})
}

func TestANegativeTickIsRefused(t *testing.T) {
	_, err := NewNetwork(NetworkConfig{Tick: -time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "-1ms") || !strings.Contains(err.Error(), "1ms") {
		t.Errorf("NewNetwork with a tick of -1ms: %v, want an error naming the value and the fix", err)
	}
}

func TestAFullQueueDropsAndNeverBlocksTheSender(t *testing.T) {
	n, ep := testNet(t, NetworkConfig{Seed: 1, QueueLen: 4, Link: Link{Delay: time.Microsecond}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			ep["a"].WriteTo([]byte("x"), ep["b"].Addr()) // nobody reads b
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a sender blocked on a receiver that does not read")
	}
	deadline := time.Now().Add(5 * time.Second)
	for ep["a"].Stats().Dropped < 196 {
		if time.Now().After(deadline) {
			t.Fatalf("dropped %d of 200 packets into a queue of 4", ep["a"].Stats().Dropped)
		}
		time.Sleep(time.Millisecond)
	}
	if got := len(ep["b"].PacketCh()); got != 4 {
		t.Fatalf("queue holds %d packets, want 4", got)
	}
	if got := n.FullQueueDrops(); got != 196 {
		t.Errorf("the network counts %d packets dropped at a full queue, want 196", got)
	}
}

func TestPauseHoldsTrafficBoundedAndReleasesItInOrder(t *testing.T) {
	n, ep := testNet(t, NetworkConfig{Seed: 1, HoldBytes: 3})
	if err := n.Pause("b"); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"1", "2", "3", "4"} { // the fourth is past the bound
		ep["a"].WriteTo([]byte(m), ep["b"].Addr())
	}
	select {
	case p := <-ep["b"].PacketCh():
		t.Fatalf("a paused host received %q", p.Buf)
	case <-time.After(100 * time.Millisecond):
	}
	if err := n.Resume("b"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		select {
		case p := <-ep["b"].PacketCh():
			got = append(got, string(p.Buf))
		case <-time.After(2 * time.Second):
			t.Fatalf("after resume only %v arrived", got)
		}
	}
	if got[0] != "1" || got[1] != "2" || got[2] != "3" {
		t.Fatalf("released %v, want 1 2 3 in order", got)
	}
	if d := ep["a"].Stats().Dropped; d != 1 {
		t.Fatalf("dropped %d packets past the hold bound, want 1", d)
	}
	if !arrives(t, ep["b"], ep["a"], time.Second) {
		t.Fatal("a resumed host cannot send")
	}
}

func TestStreamsStallAcrossAPartitionAndFlowAfterTheHeal(t *testing.T) {
	n, ep := testNet(t, NetworkConfig{Seed: 1})
	conn, err := ep["a"].DialTimeout(ep["b"].Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var server net.Conn
	select {
	case server = <-ep["b"].StreamCh():
	case <-time.After(time.Second):
		t.Fatal("no stream reached b")
	}
	defer server.Close()

	if err := n.Partition([]string{"a"}, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("hello"))
	buf := make([]byte, 16)
	server.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	if _, err := server.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read across a partition: %v, want a deadline error", err)
	}
	if err := n.Heal(); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	k, err := io.ReadFull(server, buf[:5])
	if err != nil || string(buf[:k]) != "hello" {
		t.Fatalf("after the heal read %q, %v", buf[:k], err)
	}
	conn.Close()
	if _, err := server.Read(buf); err != io.EOF {
		t.Fatalf("read after the other end closed: %v, want EOF", err)
	}
}

func TestDialingACrashedHostTimesOut(t *testing.T) {
	n, ep := testNet(t, NetworkConfig{Seed: 1})
	if err := n.Crash("b"); err != nil {
		t.Fatal(err)
	}
	_, err := ep["a"].DialTimeout(ep["b"].Addr(), 300*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial a crashed host: %v, want a timeout", err)
	}
	if _, err := ep["a"].DialTimeout("10.9.9.9:1", time.Second); err == nil {
		t.Fatal("dial an address nobody holds succeeded")
	}
}

func TestFaultsNameUnknownHosts(t *testing.T) {
	n, _ := testNet(t, NetworkConfig{Seed: 1})
	for _, err := range []error{n.Crash("zz"), n.Partition([]string{"a"}, []string{"zz"}), n.Cut([]string{"zz"}, []string{"a"})} {
		if !errors.Is(err, ErrUnknownHost) {
			t.Errorf("err = %v, want ErrUnknownHost", err)
		}
	}
	if err := n.Partition([]string{"a", "b"}, []string{"b"}); err == nil {
		t.Error("a host in two groups was accepted")
	}
	if err := n.SetDefaultLink(Link{Loss: 1.5}); err == nil {
		t.Error("a loss of 1.5 was accepted")
	}
}

func TestReachableCountsRelays(t *testing.T) {
	n, _ := testNet(t, NetworkConfig{Seed: 1})
	n.Cut([]string{"a"}, []string{"b"})
	if ok, _ := n.Reachable("a", "b"); !ok {
		t.Error("a one-way cut with a relay left made a and b unreachable")
	}
	n.Cut([]string{"a"}, []string{"c"})
	if ok, _ := n.Reachable("a", "b"); ok {
		t.Error("a, cut from both others, still reaches b")
	}
	n.Heal()
	n.Pause("b")
	if ok, _ := n.Reachable("a", "b"); ok {
		t.Error("a paused host counts as reachable")
	}
}

func TestNewsPacketReadsMemberlistFraming(t *testing.T) {
	compound := func(types ...byte) []byte {
		b := []byte{mlCompound, byte(len(types))}
		for range types {
			b = append(b, 0, 1)
		}
		return append(b, types...)
	}
	crc := func(b []byte) []byte { return append([]byte{mlHasCRC, 1, 2, 3, 4}, b...) }
	for _, c := range []struct {
		name        string
		b           []byte
		news, known bool
	}{
		{"a ping", []byte{mlPing, 0x80}, false, true},
		{"an ack behind a CRC", crc([]byte{mlAck, 0x80}), false, true},
		{"a ping carrying news", compound(mlPing, mlAlive, mlDead), false, true},
		{"gossip", compound(mlAlive, mlAlive), true, true},
		{"gossip behind a CRC", crc(compound(mlSuspect, mlPing)), true, true},
		{"one serf message", crc([]byte{mlUser, 1}), true, true},
		{"compressed", crc([]byte{9, 0x82}), false, false},
		{"a truncated compound", []byte{mlCompound, 3, 0, 1}, false, false},
		{"nothing", nil, false, false},
	} {
		if news, known := newsPacket(c.b); news != c.news || known != c.known {
			t.Errorf("%s: news %v, known %v; want %v, %v", c.name, news, known, c.news, c.known)
		}
	}
}
