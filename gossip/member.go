package gossip

import (
	"maps"
	"net"
	"reflect"
	"sync"

	"github.com/hashicorp/serf/serf"
)

// Status is a member's state as this node sees it.
type Status string

// The member states serf reports.
const (
	StatusAlive   Status = "alive"
	StatusLeaving Status = "leaving"
	StatusLeft    Status = "left"
	StatusFailed  Status = "failed"
	StatusNone    Status = "none"
)

// Member is one node of the mesh as the local node sees it.
type Member struct {
	Name   string
	Addr   net.IP
	Port   uint16
	Tags   map[string]string
	Status Status

	// Protocol versions, carried so that serf's RPC clients see them.
	ProtocolMin, ProtocolMax, ProtocolCur uint8
	DelegateMin, DelegateMax, DelegateCur uint8

	parsed *parsedTags // ParseTags(Tags), when Node.Members made it
}

func memberFromSerf(m serf.Member) Member {
	tags := make(map[string]string, len(m.Tags))
	for k, v := range m.Tags {
		tags[k] = v
	}
	return Member{
		Name:        m.Name,
		Addr:        m.Addr,
		Port:        m.Port,
		Tags:        tags,
		Status:      statusFromSerf(m.Status),
		ProtocolMin: m.ProtocolMin,
		ProtocolMax: m.ProtocolMax,
		ProtocolCur: m.ProtocolCur,
		DelegateMin: m.DelegateMin,
		DelegateMax: m.DelegateMax,
		DelegateCur: m.DelegateCur,
	}
}

func statusFromSerf(s serf.MemberStatus) Status {
	switch s {
	case serf.StatusAlive:
		return StatusAlive
	case serf.StatusLeaving:
		return StatusLeaving
	case serf.StatusLeft:
		return StatusLeft
	case serf.StatusFailed:
		return StatusFailed
	default:
		return StatusNone
	}
}

// parsedTags is ParseTags of one member's tags, kept with the member.
type parsedTags struct {
	tags Tags
	err  error
}

// ParsedTags is ParseTags(m.Tags). A member from Node.Members carries it
// parsed once for each change of its tags, so a pass over the whole view
// parses nothing new; like Tags, what it returns is shared: read-only.
func (m Member) ParsedTags() (Tags, error) {
	if m.parsed != nil {
		return m.parsed.tags, m.parsed.err
	}
	return ParseTags(m.Tags)
}

// memberCache keeps each member as Node.Members last converted it, so
// that a view that did not change costs no copy of any member's tags and
// no parse of them. A call converts again only the members serf changed.
type memberCache struct {
	mu      sync.Mutex
	byName  map[string]*cachedMember
	version uint64 // counts the calls that found the view changed
	pass    uint64
}

type cachedMember struct {
	src  serf.Member // serf's member as last seen, with serf's Tags map
	m    Member
	pass uint64 // the last call that saw it
}

// same reports whether serf's member is the one c was converted from.
// serf never writes into a member's Tags map (it decodes a new one for
// every update), and c.src holds the map it saw, so the same map is the
// same tags; a new map with the same tags (a rejoin's, a refutation's) is
// compared by content, and then kept to compare by identity next time.
func (c *cachedMember) same(m *serf.Member) bool {
	s := &c.src
	if s.Name != m.Name || s.Status != m.Status || s.Port != m.Port || !s.Addr.Equal(m.Addr) ||
		s.ProtocolMin != m.ProtocolMin || s.ProtocolMax != m.ProtocolMax || s.ProtocolCur != m.ProtocolCur ||
		s.DelegateMin != m.DelegateMin || s.DelegateMax != m.DelegateMax || s.DelegateCur != m.DelegateCur {
		return false
	}
	if sameMap(s.Tags, m.Tags) {
		return true
	}
	if !maps.Equal(c.m.Tags, m.Tags) {
		return false
	}
	s.Tags = m.Tags
	return true
}

// sameMap reports whether a and b are one map (not merely equal ones).
func sameMap(a, b map[string]string) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// members converts serf's list, reusing every member that did not change,
// and returns the view's version: the same as the last call's exactly
// when the set of members and their states are.
func (mc *memberCache) members(sm []serf.Member) ([]Member, uint64) {
	out := make([]Member, 0, len(sm))
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.byName == nil {
		mc.byName = make(map[string]*cachedMember, len(sm))
	}
	mc.pass++
	changed := false
	for i := range sm {
		c := mc.byName[sm[i].Name]
		if c == nil || !c.same(&sm[i]) {
			m := memberFromSerf(sm[i])
			t, err := ParseTags(m.Tags)
			m.parsed = &parsedTags{tags: t, err: err}
			c = &cachedMember{src: sm[i], m: m}
			mc.byName[sm[i].Name] = c
			changed = true
		}
		c.pass = mc.pass
		out = append(out, c.m)
	}
	if len(mc.byName) > len(sm) {
		maps.DeleteFunc(mc.byName, func(_ string, c *cachedMember) bool { return c.pass != mc.pass })
		changed = true
	}
	if changed || mc.version == 0 {
		mc.version++
	}
	return out, mc.version
}
