package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
)

// placeCluster starts servers with fixed loads, all joined, plus a plain
// gossip member without a role tag, as a serf agent would be.
func placeCluster(t *testing.T, loads map[string]string, mutate map[string]func(*Config)) (map[string]*Agent, *rpc.Client) {
	t.Helper()
	agents := map[string]*Agent{}
	var first *Agent
	i := 1
	for _, name := range sortedKeys(loads) {
		name, load := name, loads[name]
		ip := "127.0.0." + string(rune('0'+i))
		i++
		a := startAgent(t, name, ip, func(c *Config) {
			c.LoadSource = load
			c.Publish.MinInterval = time.Second
			if first != nil {
				c.Join = []string{first.Node().Addr()}
			}
			if m := mutate[name]; m != nil {
				m(c)
			}
		})
		if first == nil {
			first = a
		}
		agents[name] = a
	}
	plain, err := gossip.Start(gossip.Config{Name: "plain-serf", BindAddr: "127.0.0.9", BindPort: freeGossipPort(t, "127.0.0.9"), Profile: "local",
		Keys: [][]byte{mustKey(t, testKey1)}, Tags: map[string]string{"os": "linux"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Shutdown() })
	if _, err := plain.Join([]string{first.Node().Addr()}, false); err != nil {
		t.Fatal(err)
	}
	// Every server's load must be published and seen by the first agent.
	// Every server is in the first agent's view with its role, and has
	// taken and published its first load sample (bids carry the load).
	var view []string
	poll(t, "every server in the first agent's view, with its load sampled", func() bool {
		view = view[:0]
		servers := 0
		for _, m := range first.Node().Members() {
			view = append(view, m.Name+":"+string(m.Status)+":"+m.Tags[gossip.TagRole])
			if m.Status == gossip.StatusAlive && m.Tags[gossip.TagRole] == string(gossip.RoleServer) {
				servers++
			}
		}
		for _, a := range agents {
			if _, ok := a.currentLoad(); !ok {
				return false
			}
		}
		return servers == len(loads) && len(view) == len(loads)+1
	}, func() string { return strings.Join(view, " ") })
	cl, err := rpc.Dial(first.RPCAddr(), rpc.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return agents, cl
}

func mustKey(t *testing.T, s string) []byte {
	k, err := gossip.DecodeKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestPlaceElectsLeastLoadedAndIgnoresRolelessMembers(t *testing.T) {
	_, cl := placeCluster(t, map[string]string{
		"s1": "fixed:cpu=80,mem=70",
		"s2": "fixed:cpu=15,mem=20",
		"s3": "fixed:cpu=50,mem=50",
		"s4": "fixed:cpu=35,mem=60",
	}, map[string]func(*Config){"s4": func(c *Config) { c.Tags = map[string]string{"gpu": "a100"} }})

	resp, err := cl.Place(rpc.PlaceRequest{Kind: "demo", Timeout: 10 * time.Second})
	if err != nil || resp.Error != "" {
		t.Fatalf("place: %v %s", err, resp.Error)
	}
	if resp.Winner != "s2" || resp.RunnerUp == "" || !strings.Contains(resp.Reason, "lowest load") {
		t.Fatalf("winner %q runner-up %q reason %q", resp.Winner, resp.RunnerUp, resp.Reason)
	}
	if len(resp.Bids) != 4 || len(resp.Missing) != 0 {
		t.Fatalf("bids %+v missing %v: want the 4 servers and nothing from plain-serf", resp.Bids, resp.Missing)
	}
	// Every server answered, so the asker did not wait for its 10 s deadline.
	if resp.DecisionMS > 5000 {
		t.Fatalf("decision took %.0f ms: the asker waited for the deadline instead of stopping when all answered", resp.DecisionMS)
	}

	// Binpack picks the busiest instead. The long deadline keeps a slow
	// bid on a loaded machine in the election; the asker stops once all
	// four answered.
	resp, err = cl.Place(rpc.PlaceRequest{Kind: "demo", Policy: "binpack", Timeout: 10 * time.Second})
	if err != nil || resp.Winner != "s1" {
		t.Fatalf("binpack winner %q: %v %+v missing %v", resp.Winner, err, resp.Bids, resp.Missing)
	}

	// A constraint narrows the field to s4, though s2 is less loaded.
	resp, err = cl.Place(rpc.PlaceRequest{Kind: "demo", Constraints: []string{"gpu=a100|h100"}, Timeout: 10 * time.Second})
	if err != nil || resp.Winner != "s4" {
		t.Fatalf("constraint winner %q: %v %+v", resp.Winner, err, resp.Bids)
	}
	for _, b := range resp.Bids {
		if b.Node != "s4" && !strings.Contains(b.Rejected, "gpu") {
			t.Fatalf("%s not rejected for the constraint: %+v", b.Node, b)
		}
	}
}

func TestPlaceWithEveryServerRefusingSaysWhyEach(t *testing.T) {
	_, cl := placeCluster(t, map[string]string{
		"s1": "fixed:cpu=10,mem=10",
		"s2": "fixed:cpu=20,mem=20",
		"s3": "fixed:cpu=30,mem=30",
	}, nil)
	resp, err := cl.Place(rpc.PlaceRequest{Kind: "cobol", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Winner != "" || resp.Error == "" {
		t.Fatalf("winner %q error %q", resp.Winner, resp.Error)
	}
	for _, s := range []string{"s1", "s2", "s3"} {
		if !strings.Contains(resp.Error, s) {
			t.Errorf("error %q does not say why %s refused", resp.Error, s)
		}
	}
	if !strings.Contains(resp.Error, "cobol") {
		t.Errorf("error %q does not name the kind", resp.Error)
	}
}

func TestPlaceRejectsBadRequests(t *testing.T) {
	_, cl := placeCluster(t, map[string]string{"s1": "fixed:cpu=10,mem=10"}, nil)
	for _, tc := range []struct {
		req  rpc.PlaceRequest
		want string
	}{
		{rpc.PlaceRequest{}, "--kind"},
		{rpc.PlaceRequest{Kind: "demo", Constraints: []string{"gpu"}}, `"gpu"`},
		{rpc.PlaceRequest{Kind: "demo", Constraints: []string{"gpu=("}}, "regular expression"},
		{rpc.PlaceRequest{Kind: "demo", Policy: "random"}, `"random"`},
	} {
		_, err := cl.Place(tc.req)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want it to mention %s", tc.req, err, tc.want)
		}
	}
}

func TestCollectWithNoServerInView(t *testing.T) {
	n, err := gossip.Start(gossip.Config{Name: "lonely", BindAddr: "127.0.0.1", BindPort: freeGossipPort(t, "127.0.0.1"), Profile: "local",
		Tags: gossip.Tags{Role: gossip.RoleInterpreter}.Map()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown()
	_, err = bidding.Collect(context.Background(), n, bidding.Request{ID: "x", Kind: "demo"}, time.Second)
	if !errors.Is(err, bidding.ErrNoServers) {
		t.Fatalf("err %v", err)
	}
}
