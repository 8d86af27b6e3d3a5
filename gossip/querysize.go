package gossip

import (
	"bytes"
	"math"
	"sort"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// QuerySizeLimit is the most bytes serf lets one encoded query message take:
// its name, payload, filters and header together (serf's QuerySizeLimit,
// which this package leaves at its default).
const QuerySizeLimit = 1024

// wireQuery mirrors serf's query message field for field, so that it
// encodes to the same length.
type wireQuery struct {
	LTime       uint64
	ID          uint32
	Addr        []byte
	Port        uint16
	SourceNode  string
	Filters     [][]byte
	Flags       uint32
	RelayFactor uint8
	Timeout     time.Duration
	Name        string
	Payload     []byte
}

type wireFilterTag struct {
	Tag  string
	Expr string
}

// serf's filter type bytes.
const (
	filterNodeType byte = 0
	filterTagType  byte = 1
)

// QuerySize returns how many bytes the query would take on the wire,
// encoded as serf encodes it, with the clock and id at their widest. A
// query whose size is at most QuerySizeLimit is never refused for its size;
// one over it always is. Callers use it to choose a smaller form (fewer
// node names, say) before serf refuses the query.
func (n *Node) QuerySize(name string, payload []byte, p QueryParams) int {
	var filters [][]byte
	if len(p.FilterNodes) > 0 {
		filters = append(filters, encodeWithType(filterNodeType, p.FilterNodes))
	}
	tags := make([]string, 0, len(p.FilterTags))
	for t := range p.FilterTags {
		tags = append(tags, t)
	}
	sort.Strings(tags)
	for _, t := range tags {
		filters = append(filters, encodeWithType(filterTagType, &wireFilterTag{Tag: t, Expr: p.FilterTags[t]}))
	}
	local := n.serf.LocalMember()
	q := wireQuery{
		LTime:       math.MaxUint64,
		ID:          math.MaxUint32,
		Addr:        local.Addr,
		Port:        local.Port,
		SourceNode:  local.Name,
		Filters:     filters,
		Flags:       math.MaxUint32,
		RelayFactor: p.RelayFactor,
		Timeout:     time.Duration(math.MaxInt64),
		Name:        name,
		Payload:     payload,
	}
	return len(encodeWithType(0, &q))
}

// encodeWithType is serf's framing: one type byte, then the value in
// go-msgpack's encoding.
func encodeWithType(t byte, v any) []byte {
	var buf bytes.Buffer
	buf.WriteByte(t)
	// Encoding plain structs, strings and byte slices into memory cannot
	// fail.
	_ = codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(v)
	return buf.Bytes()
}
