package rpc

import (
	"context"
	"log/slog"
	"net"
	"time"
)

// Backend is what the RPC server drives: the running agent. The server calls
// it concurrently from one goroutine per connection (and one per running
// query or stream), so every method must be safe for concurrent use.
type Backend interface {
	// Members returns every member the local node knows, in any state.
	Members() []Member
	// Join contacts the given gossip addresses and returns how many answered.
	// replay asks for old user events to be replayed.
	Join(addrs []string, replay bool) (int, error)
	// Leave leaves the mesh gracefully and then shuts the agent down. It
	// returns once the leave has been broadcast (or has failed).
	Leave() error
	// ForceLeave marks a failed member as left; prune also forgets it.
	ForceLeave(node string, prune bool) error
	// UpdateTags sets and deletes tags of the local node.
	UpdateTags(set map[string]string, remove []string) error
	// UserEvent broadcasts a user event to the mesh.
	UserEvent(name string, payload []byte, coalesce bool) error
	// CheckQuery says why a query cannot be sent (a reserved name, too
	// large), before the server tells the client it was.
	CheckQuery(req QueryRequest) error
	// Query runs a serf query and blocks until it is finished (its timeout
	// passed) or ctx is done (the client went away, the server closes).
	// onAck and onResponse are called from the calling goroutine, in
	// arrival order, and must not block for long.
	Query(ctx context.Context, req QueryRequest, onAck func(from string), onResponse func(NodeResponse)) error
	// Keys runs one keyring operation across the mesh.
	Keys(op KeyOp, key string) (KeyResponse, error)
	// Stats returns serf-style statistics: section -> key -> value.
	Stats() map[string]map[string]string
	// Coordinate returns a node's network coordinate; ok is false when the
	// node is unknown or coordinates are disabled.
	Coordinate(node string) (c Coordinate, ok bool)
	// SubscribeEvents calls fn for every member, user and query event from
	// now on, until cancel is called. fn must not block: a slow subscriber
	// drops events rather than holding up the mesh.
	SubscribeEvents(fn func(Event)) (cancel func())
	// SubscribeLogs calls fn with every formatted log line at or above
	// level until cancel is called. fn must not block.
	SubscribeLogs(level slog.Level, fn func(line string)) (cancel func())
}

// Member is one node of the mesh as serf's RPC protocol carries it.
type Member struct {
	Name        string
	Addr        net.IP
	Port        uint16
	Tags        map[string]string
	Status      string // alive, leaving, left, failed
	ProtocolMin uint8
	ProtocolMax uint8
	ProtocolCur uint8
	DelegateMin uint8
	DelegateMax uint8
	DelegateCur uint8
}

// QueryRequest is serf's query request: who is asked, what, and how long
// the asker waits.
type QueryRequest struct {
	FilterNodes []string
	FilterTags  map[string]string // tag -> anchored regular expression
	RequestAck  bool
	RelayFactor uint8
	Timeout     time.Duration // zero means serf's default for the mesh size
	Name        string
	Payload     []byte
}

// NodeResponse is one node's answer to a query.
type NodeResponse struct {
	From    string
	Payload []byte
}

// KeyOp is a keyring operation.
type KeyOp string

// The keyring operations of serf's protocol.
const (
	KeyInstall KeyOp = "install-key"
	KeyUse     KeyOp = "use-key"
	KeyRemove  KeyOp = "remove-key"
	KeyList    KeyOp = "list-keys"
)

// KeyResponse summarises a keyring operation across the mesh.
type KeyResponse struct {
	Messages map[string]string // node -> error message, for nodes that failed
	Keys     map[string]int    // base64 key -> how many nodes hold it (list only)
	NumNodes int
	NumErr   int
	NumResp  int
}

// Coordinate is a Vivaldi network coordinate as serf's protocol carries it.
type Coordinate struct {
	Vec        []float64
	Error      float64
	Adjustment float64
	Height     float64
}

// Event is a member, user or query event delivered to stream subscribers.
type Event struct {
	// Type is one of member-join, member-leave, member-failed,
	// member-update, member-reap, user, query.
	Type    string
	Members []Member // member events

	LTime    uint64 // user and query events
	Name     string
	Payload  []byte
	Coalesce bool // user events

	// Respond answers a query event; nil for other events. It may be
	// called at most once and fails after the query's deadline.
	Respond func(payload []byte) error
	// Deadline is when a query event stops accepting responses; zero for
	// other events. The RPC server forgets a streamed query's ID then; when
	// it is zero for a query, the server keeps the ID for a fixed while.
	Deadline time.Time
}
