package rpc

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	serfclient "github.com/hashicorp/serf/client"
)

// These tests drive our server with serf's own, unmodified RPC client: what
// it can do against a serf agent it must be able to do against ours.

func serfDial(t *testing.T, addr, token string) *serfclient.RPCClient {
	t.Helper()
	c, err := serfclient.ClientFromConfig(&serfclient.Config{Addr: addr, AuthKey: token, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("serf client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// asSerf is what serf's client should decode our Member into.
func asSerf(ms []Member) []serfclient.Member {
	out := make([]serfclient.Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, serfclient.Member{
			Name: m.Name, Addr: m.Addr, Port: m.Port, Tags: m.Tags, Status: m.Status,
			ProtocolMin: m.ProtocolMin, ProtocolMax: m.ProtocolMax, ProtocolCur: m.ProtocolCur,
			DelegateMin: m.DelegateMin, DelegateMax: m.DelegateMax, DelegateCur: m.DelegateCur,
		})
	}
	return out
}

func TestSerfClientMembers(t *testing.T) {
	ts := startServer(t, ServerConfig{Token: "tok"}, nil)
	ts.fake.members = sampleMembers()
	c := serfDial(t, ts.addr, "tok")

	got, err := c.Members()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, asSerf(sampleMembers())) {
		t.Fatalf("members:\n got %#v\nwant %#v", got, asSerf(sampleMembers()))
	}
	// The address bytes, not their text, crossed the wire.
	if !bytes.Equal(got[0].Addr, []byte{10, 0, 0, 1}) || !got[2].Addr.Equal(net.ParseIP("fd00::1")) {
		t.Fatalf("addresses %v %v", got[0].Addr, got[2].Addr)
	}

	got, err = c.MembersFiltered(map[string]string{"role": "server"}, "fail.*", "")
	if err != nil || len(got) != 1 || got[0].Name != "s2" {
		t.Fatalf("MembersFiltered = %+v, %v", got, err)
	}
	// A bad regex is an error, and the serf client stays in step.
	if _, err := c.MembersFiltered(nil, "", "("); err == nil || !strings.Contains(err.Error(), `bad name filter "("`) {
		t.Fatalf("MembersFiltered with a bad regex = %v", err)
	}
	if got, err := c.Members(); err != nil || len(got) != 3 {
		t.Fatalf("Members after an error = %d, %v", len(got), err)
	}
}

func TestSerfClientCommands(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	c := serfDial(t, ts.addr, "")

	f.joinN = 2
	n, err := c.Join([]string{"a:1", "b:2"}, true)
	if err != nil || n != 2 || !reflect.DeepEqual(f.joinAddrs, []string{"a:1", "b:2"}) || !f.joinReplay {
		t.Fatalf("Join = %d, %v; backend saw %v %v", n, err, f.joinAddrs, f.joinReplay)
	}
	f.mu.Lock()
	f.joinN, f.joinErr = 1, errors.New("b:2: refused")
	f.mu.Unlock()
	if n, err := c.Join([]string{"a:1", "b:2"}, false); n != 1 || err == nil || err.Error() != "b:2: refused" {
		t.Fatalf("partial Join = %d, %v", n, err)
	}

	if err := c.ForceLeave("dead"); err != nil {
		t.Fatal(err)
	}
	if err := c.ForceLeavePrune("gone"); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.forceLeaves, []string{"dead", "gone prune"}) {
		t.Fatalf("force leaves %v", f.forceLeaves)
	}
	f.mu.Lock()
	f.forceErr = errors.New("no such member")
	f.mu.Unlock()
	if err := c.ForceLeave("nobody"); err == nil || err.Error() != "no such member" {
		t.Fatalf("ForceLeave error = %v", err)
	}

	if err := c.UpdateTags(map[string]string{"zone": "b"}, []string{"old", "older"}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.tagsSet, map[string]string{"zone": "b"}) || !reflect.DeepEqual(f.tagsRemoved, []string{"old", "older"}) {
		t.Fatalf("tags %v %v", f.tagsSet, f.tagsRemoved)
	}

	payload := []byte{0, 0xff, 'x'}
	if err := c.UserEvent("deploy", payload, true); err != nil {
		t.Fatal(err)
	}
	if e := f.userEvents[0]; e.Name != "deploy" || !bytes.Equal(e.Payload, payload) || !e.Coalesce {
		t.Fatalf("user event %+v", e)
	}

	f.stats = map[string]map[string]string{"agent": {"name": "s1"}, "runtime": {"goroutines": "12"}}
	if stats, err := c.Stats(); err != nil || !reflect.DeepEqual(stats, f.stats) {
		t.Fatalf("Stats = %v, %v", stats, err)
	}

	f.coords = map[string]Coordinate{"s1": {Vec: []float64{1.5, -2, 0}, Error: 0.5, Adjustment: -0.001, Height: 2e-5}}
	coord, err := c.GetCoordinate("s1")
	if err != nil || coord == nil {
		t.Fatalf("GetCoordinate(s1) = %v, %v", coord, err)
	}
	want := f.coords["s1"]
	if !reflect.DeepEqual(coord.Vec, want.Vec) || coord.Error != want.Error || coord.Adjustment != want.Adjustment || coord.Height != want.Height {
		t.Fatalf("coordinate %+v, want %+v", coord, want)
	}
	if coord, err := c.GetCoordinate("nobody"); err != nil || coord != nil {
		t.Fatalf("GetCoordinate(nobody) = %v, %v", coord, err)
	}

	if err := c.Leave(); err != nil || f.leaves != 1 {
		t.Fatalf("Leave = %v, leaves %d", err, f.leaves)
	}
}

func TestSerfClientKeys(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	c := serfDial(t, ts.addr, "")

	f.keyResp = KeyResponse{Messages: map[string]string{}, NumNodes: 3, NumResp: 3}
	for _, call := range []func(string) (map[string]string, error){c.InstallKey, c.UseKey, c.RemoveKey} {
		if _, err := call("a2V5"); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	f.keyResp = KeyResponse{Keys: map[string]int{"a2V5": 3, "b2xk": 2}, NumNodes: 3, NumResp: 3, Messages: map[string]string{"s3": "timeout"}}
	f.mu.Unlock()
	keys, numNodes, messages, err := c.ListKeys()
	if err != nil || !reflect.DeepEqual(keys, map[string]int{"a2V5": 3, "b2xk": 2}) || numNodes != 3 || messages["s3"] != "timeout" {
		t.Fatalf("ListKeys = %v, %d, %v, %v", keys, numNodes, messages, err)
	}
	want := []string{"install-key a2V5", "use-key a2V5", "remove-key a2V5", "list-keys "}
	if !reflect.DeepEqual(f.keyCalls, want) {
		t.Fatalf("key calls %q, want %q", f.keyCalls, want)
	}

	// A failure: serf's client still reads the body, so both come back.
	f.mu.Lock()
	f.keyResp = KeyResponse{Messages: map[string]string{"s2": "not installed"}, NumNodes: 3, NumErr: 1, NumResp: 3}
	f.keyErr = errors.New("1/3 nodes reported failure")
	f.mu.Unlock()
	messages, err = c.UseKey("bm9wZQ==")
	if err == nil || err.Error() != "1/3 nodes reported failure" || messages["s2"] != "not installed" {
		t.Fatalf("UseKey failure = %v, %v", messages, err)
	}
	if _, _, _, err := c.ListKeys(); err == nil {
		t.Fatal("ListKeys did not fail")
	}
	if _, err := c.Stats(); err != nil {
		t.Fatalf("Stats after key errors: %v", err)
	}
}

func TestSerfClientQuery(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	f.query = func(_ context.Context, req QueryRequest, onAck func(string), onResponse func(NodeResponse)) error {
		onAck("s1")
		onAck("s2")
		onResponse(NodeResponse{From: "s2", Payload: []byte("no")})
		onResponse(NodeResponse{From: "s1", Payload: []byte{0, 1}})
		return nil
	}
	c := serfDial(t, ts.addr, "")

	acks := make(chan string, 8)
	resps := make(chan serfclient.NodeResponse, 8)
	err := c.Query(&serfclient.QueryParam{
		FilterNodes: []string{"s1", "s2"}, FilterTags: map[string]string{"role": "server"},
		RequestAck: true, RelayFactor: 1, Timeout: 2 * time.Second,
		Name: "place", Payload: []byte("kind=demo"), AckCh: acks, RespCh: resps,
	})
	if err != nil {
		t.Fatal(err)
	}
	// serf's client closes both channels when the done record arrives.
	var gotAcks []string
	for a := range acks {
		gotAcks = append(gotAcks, a)
	}
	var gotResps []serfclient.NodeResponse
	for r := range resps {
		gotResps = append(gotResps, r)
	}
	if !reflect.DeepEqual(gotAcks, []string{"s1", "s2"}) {
		t.Fatalf("acks %v", gotAcks)
	}
	if !reflect.DeepEqual(gotResps, []serfclient.NodeResponse{{From: "s2", Payload: []byte("no")}, {From: "s1", Payload: []byte{0, 1}}}) {
		t.Fatalf("responses %+v", gotResps)
	}
	wantReq := QueryRequest{
		FilterNodes: []string{"s1", "s2"}, FilterTags: map[string]string{"role": "server"},
		RequestAck: true, RelayFactor: 1, Timeout: 2 * time.Second, Name: "place", Payload: []byte("kind=demo"),
	}
	if !reflect.DeepEqual(f.queries[0], wantReq) {
		t.Fatalf("backend saw %+v, want %+v", f.queries[0], wantReq)
	}
}

func TestSerfClientStreamAndRespond(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	c := serfDial(t, ts.addr, "")

	ch := make(chan map[string]any, 16)
	h, err := c.Stream("member-join,user:deploy,query:ping", ch)
	if err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "subscription", func() bool { return f.eventSubscribers() == 1 })

	answered := make(chan []byte, 1)
	f.emit(Event{Type: "member-failed", Members: sampleMembers()}) // filtered
	f.emit(Event{Type: "member-join", Members: sampleMembers()[:1]})
	f.emit(Event{Type: "user", Name: "deploy", LTime: 1, Payload: []byte("foo"), Coalesce: true})
	f.emit(Event{Type: "query", Name: "ping", LTime: 300, Payload: []byte("?"), Deadline: time.Now().Add(time.Hour),
		Respond: func(p []byte) error { answered <- p; return nil }})

	join := recv(t, ch, "member-join")
	members, _ := join["Members"].([]any)
	if join["Event"] != "member-join" || len(members) != 1 {
		t.Fatalf("member event %#v", join)
	}
	// The dynamic types serf's own stream test asserts on.
	m, _ := members[0].(map[any]any)
	addr, _ := m["Addr"].([]uint8)
	port, _ := m["Port"].(uint64)
	tags, _ := m["Tags"].(map[any]any)
	if m["Name"] != "s1" || !bytes.Equal(addr, []byte{10, 0, 0, 1}) || port != 7946 || tags["role"] != "server" || m["Status"] != "alive" {
		t.Fatalf("member %#v", m)
	}

	user := recv(t, ch, "user event")
	if user["Event"].(string) != "user" || user["LTime"].(int64) != 1 || user["Name"] != "deploy" ||
		!bytes.Equal(user["Payload"].([]byte), []byte("foo")) || user["Coalesce"] != true {
		t.Fatalf("user event %#v", user)
	}
	q := recv(t, ch, "query event")
	if q["Event"].(string) != "query" || q["Name"] != "ping" || !bytes.Equal(q["Payload"].([]byte), []byte("?")) {
		t.Fatalf("query event %#v", q)
	}
	if q["LTime"].(uint64) != 300 { // above 127 serf's codec writes a uint8
		t.Fatalf("query LTime %#v", q["LTime"])
	}
	id := q["ID"].(int64)
	if err := c.Respond(uint64(id), []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, answered, "response"); string(got) != "pong" {
		t.Fatalf("backend got %q", got)
	}
	if err := c.Respond(uint64(id)+100, nil); err == nil || err.Error() != msgInvalidQueryID {
		t.Fatalf("Respond(unknown) = %v", err)
	}

	if err := c.Stop(h); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "unsubscribe", func() bool { return f.eventSubscribers() == 0 })

	if _, err := c.Stream("bogus", make(chan map[string]any, 1)); err == nil || err.Error() != msgInvalidFilter {
		t.Fatalf("Stream(bogus) = %v", err)
	}
}

func TestSerfClientMonitor(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	f := ts.fake
	c := serfDial(t, ts.addr, "")

	lines := make(chan string, 8)
	h, err := c.Monitor("INFO", lines)
	if err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "log subscription", func() bool { return f.logSubscribers() == 1 })
	if _, err := c.Monitor("DEBUG", make(chan string, 1)); err == nil || err.Error() != msgMonitorExists {
		t.Fatalf("second Monitor = %v", err)
	}
	f.log(slog.LevelDebug, "hidden")
	f.log(slog.LevelInfo, "agent started")
	if got := recv(t, lines, "log line"); got != "agent started" {
		t.Fatalf("line %q", got)
	}
	if err := c.Stop(h); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "log unsubscribe", func() bool { return f.logSubscribers() == 0 })
	if _, err := c.Monitor("CHATTY", make(chan string, 1)); err == nil || err.Error() != "Unknown log level: CHATTY" {
		t.Fatalf("Monitor(CHATTY) = %v", err)
	}
}

func TestSerfClientAuth(t *testing.T) {
	ts := startServer(t, ServerConfig{Token: "s3cret"}, nil)
	ts.fake.members = sampleMembers()

	if _, err := serfclient.ClientFromConfig(&serfclient.Config{Addr: ts.addr, AuthKey: "wrong"}); err == nil || err.Error() != msgInvalidAuthToken {
		t.Fatalf("wrong token = %v", err)
	}
	anon := serfDial(t, ts.addr, "")
	if _, err := anon.Members(); err == nil || err.Error() != msgAuthRequired {
		t.Fatalf("Members without a token = %v", err)
	}
	// serf's client reads no body after this error; we must send none.
	if _, err := anon.MembersFiltered(nil, "", ""); err == nil || err.Error() != msgAuthRequired {
		t.Fatalf("MembersFiltered without a token = %v", err)
	}
	if _, err := anon.Stream("*", make(chan map[string]any, 1)); err == nil || err.Error() != msgAuthRequired {
		t.Fatalf("Stream without a token = %v", err)
	}
	good := serfDial(t, ts.addr, "s3cret")
	if ms, err := good.Members(); err != nil || len(ms) != 3 {
		t.Fatalf("Members with the token = %d, %v", len(ms), err)
	}
}
