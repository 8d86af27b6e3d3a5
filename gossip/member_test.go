package gossip

import (
	"bytes"
	"log/slog"
	"net"
	"testing"

	"github.com/hashicorp/serf/serf"
)

func serfMember(name string, status serf.MemberStatus, tags map[string]string) serf.Member {
	return serf.Member{Name: name, Addr: net.IPv4(127, 0, 0, 1), Port: 7946, Tags: tags, Status: status,
		ProtocolMin: 1, ProtocolMax: 5, ProtocolCur: 2, DelegateMin: 2, DelegateMax: 5, DelegateCur: 4}
}

func byName(ms []Member) map[string]Member {
	out := map[string]Member{}
	for _, m := range ms {
		out[m.Name] = m
	}
	return out
}

// TestMembersConvertOnlyWhatChanged: Members converts (copies and parses)
// a member again only when serf changed it, and its version moves exactly
// when the view did.
func TestMembersConvertOnlyWhatChanged(t *testing.T) {
	var c memberCache
	server := Tags{Role: RoleServer, Capacity: 4}.Map()
	interp := Tags{Role: RoleInterpreter, Kind: "demo", Host: "s1", RequestID: "r1", Gen: 1}.Map()
	view := []serf.Member{serfMember("s1", serf.StatusAlive, server), serfMember("i1", serf.StatusAlive, interp)}

	first, v1 := c.members(view)
	if len(first) != 2 {
		t.Fatalf("%d members, want 2", len(first))
	}
	for _, m := range first {
		got, err := m.ParsedTags()
		want, _ := ParseTags(m.Tags)
		if err != nil || got.Role != want.Role || got.RequestID != want.RequestID || got.Gen != want.Gen || got.Capacity != want.Capacity {
			t.Errorf("%s: ParsedTags %+v (%v), ParseTags %+v", m.Name, got, err, want)
		}
	}
	if sameMap(byName(first)["i1"].Tags, interp) {
		t.Error("Members handed out serf's own tag map: a caller could change serf's state")
	}

	// The same view, and the same tags in maps serf decoded again: the same
	// conversions, the same version.
	again, v2 := c.members([]serf.Member{serfMember("i1", serf.StatusAlive, interp),
		serfMember("s1", serf.StatusAlive, Tags{Role: RoleServer, Capacity: 4}.Map())})
	if v2 != v1 {
		t.Errorf("version %d after an unchanged view, was %d", v2, v1)
	}
	for name, m := range byName(again) {
		if !sameMap(m.Tags, byName(first)[name].Tags) {
			t.Errorf("%s converted again though serf did not change it", name)
		}
	}

	// The caller's slice is its own.
	again[0].Name = "changed"
	if _, v := c.members(view); v != v1 {
		t.Errorf("a caller's change to its slice moved the version to %d", v)
	}

	for _, step := range []struct {
		what string
		view []serf.Member
		want func(map[string]Member) bool
	}{
		{"a tag changed", []serf.Member{serfMember("s1", serf.StatusAlive, server),
			serfMember("i1", serf.StatusAlive, Tags{Role: RoleInterpreter, Kind: "demo", Host: "s1", RequestID: "r1", Gen: 2}.Map())},
			func(m map[string]Member) bool {
				t, _ := m["i1"].ParsedTags()
				return t.Gen == 2 && m["i1"].Tags[TagGen] == "2"
			}},
		{"a status changed", []serf.Member{serfMember("s1", serf.StatusFailed, server),
			serfMember("i1", serf.StatusAlive, Tags{Role: RoleInterpreter, Kind: "demo", Host: "s1", RequestID: "r1", Gen: 2}.Map())},
			func(m map[string]Member) bool { return m["s1"].Status == StatusFailed }},
		{"a member was removed", []serf.Member{serfMember("s1", serf.StatusFailed, server)},
			func(m map[string]Member) bool { _, ok := m["i1"]; return !ok && len(c.byName) == 1 }},
		{"a member came back", []serf.Member{serfMember("s1", serf.StatusFailed, server),
			serfMember("i1", serf.StatusLeft, interp)},
			func(m map[string]Member) bool { return m["i1"].Status == StatusLeft }},
	} {
		prev := c.version
		got, v := c.members(step.view)
		if v == prev {
			t.Errorf("%s: the version stayed %d", step.what, v)
		}
		if !step.want(byName(got)) {
			t.Errorf("%s: Members gave %+v", step.what, got)
		}
	}
}

// TestLibraryLinesBelowTheLevelAreDroppedButConflictsHeard: a debug line
// the logger drops costs no record, and a name conflict is heard whatever
// the level.
func TestLibraryLinesBelowTheLevelAreDroppedButConflictsHeard(t *testing.T) {
	var buf bytes.Buffer
	var conflict string
	l := newStdLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})),
		func(addr string) { conflict = addr })
	l.Printf("[DEBUG] memberlist: Stream connection from=1.2.3.4")
	l.Printf("[WARN] serf: event queue depth: 300")
	l.Printf("[DEBUG] serf: " + conflictLine + "10.0.0.2:7946. Giving up")
	if out := buf.String(); bytes.Contains(buf.Bytes(), []byte("Stream connection")) || !bytes.Contains(buf.Bytes(), []byte("queue depth")) {
		t.Errorf("logged:\n%s", out)
	}
	if conflict != "10.0.0.2:7946" {
		t.Errorf("the conflict was heard as %q", conflict)
	}
}
