package rpc

import (
	"bytes"
	"net"

	"github.com/vmihailenco/msgpack/v5"
)

// The wire constants live here once, shared by the server and the client.
// Names, messages and field names are serf's (cmd/serf/command/agent/ipc.go)
// byte for byte: a stock serf client compares some of the messages.

// protocolVersion is the only IPC version serf has ever defined.
const protocolVersion = 1

// The built-in commands of serf's protocol.
const (
	cmdHandshake       = "handshake"
	cmdAuth            = "auth"
	cmdEvent           = "event"
	cmdForceLeave      = "force-leave"
	cmdJoin            = "join"
	cmdMembers         = "members"
	cmdMembersFiltered = "members-filtered"
	cmdStream          = "stream"
	cmdStop            = "stop"
	cmdMonitor         = "monitor"
	cmdLeave           = "leave"
	cmdInstallKey      = "install-key"
	cmdUseKey          = "use-key"
	cmdRemoveKey       = "remove-key"
	cmdListKeys        = "list-keys"
	cmdTags            = "tags"
	cmdQuery           = "query"
	cmdRespond         = "respond"
	cmdStats           = "stats"
	cmdGetCoordinate   = "get-coordinate"
)

// Error messages the protocol fixes. They are capitalised because serf's
// are and clients match them verbatim.
const (
	msgUnsupportedCommand = "Unsupported command"
	msgUnsupportedVersion = "Unsupported IPC version"
	msgDuplicateHandshake = "Handshake already performed"
	msgHandshakeRequired  = "Handshake required"
	msgMonitorExists      = "Monitor already exists"
	msgInvalidFilter      = "Invalid event filter"
	msgStreamExists       = "Stream with given sequence exists"
	msgInvalidQueryID     = "No pending queries matching ID"
	msgAuthRequired       = "Authentication required"
	msgInvalidAuthToken   = "Invalid authentication token"
)

// Query record types, sent with a query's Seq after its header.
const (
	queryRecordAck      = "ack"
	queryRecordResponse = "response"
	queryRecordDone     = "done"
)

// commandSpec says how one command is framed: whether a request body follows
// the request header, and whether a response body follows the response
// header. Serf sends a response body for these commands even when the header
// carries an error (its client always decodes one), so both sides must agree
// per command or the stream desynchronises.
type commandSpec struct {
	reqBody  bool
	respBody bool
}

// builtins is the framing of every built-in command. Stream, monitor and
// query answer with a bare header; their records (header plus body) follow
// later with the same Seq.
var builtins = map[string]commandSpec{
	cmdHandshake:       {reqBody: true},
	cmdAuth:            {reqBody: true},
	cmdEvent:           {reqBody: true},
	cmdForceLeave:      {reqBody: true},
	cmdJoin:            {reqBody: true, respBody: true},
	cmdMembers:         {respBody: true},
	cmdMembersFiltered: {reqBody: true, respBody: true},
	cmdStream:          {reqBody: true},
	cmdStop:            {reqBody: true},
	cmdMonitor:         {reqBody: true},
	cmdLeave:           {},
	cmdInstallKey:      {reqBody: true, respBody: true},
	cmdUseKey:          {reqBody: true, respBody: true},
	cmdRemoveKey:       {reqBody: true, respBody: true},
	cmdListKeys:        {respBody: true},
	cmdTags:            {reqBody: true},
	cmdQuery:           {reqBody: true},
	cmdRespond:         {reqBody: true},
	cmdStats:           {respBody: true},
	cmdGetCoordinate:   {reqBody: true, respBody: true},
}

// registeredSpec is the framing of every command added with Register: one
// request body and one response body, always (nil when there is nothing).
var registeredSpec = commandSpec{reqBody: true, respBody: true}

// headerOnly reports whether a response header with this error is never
// followed by a body, whatever the command: serf answers these before it
// looks at the command, and its client special-cases the auth one.
func headerOnly(msg string) bool {
	switch msg {
	case msgAuthRequired, msgHandshakeRequired, msgUnsupportedCommand:
		return true
	}
	return false
}

type requestHeader struct {
	Command string
	Seq     uint64
}

type responseHeader struct {
	Seq   uint64
	Error string
}

type handshakeRequest struct {
	Version int32
}

type authRequest struct {
	AuthKey string
}

type eventRequest struct {
	Name     string
	Payload  []byte
	Coalesce bool
}

type forceLeaveRequest struct {
	Node  string
	Prune bool
}

type joinRequest struct {
	Existing []string
	Replay   bool
}

type joinResponse struct {
	Num int32
}

type membersFilteredRequest struct {
	Tags   map[string]string
	Status string
	Name   string
}

type membersResponse struct {
	Members []wireMember
}

type keyRequest struct {
	Key string
}

type monitorRequest struct {
	LogLevel string
}

type streamRequest struct {
	Type string
}

type stopRequest struct {
	Stop uint64
}

type tagsRequest struct {
	Tags       map[string]string
	DeleteTags []string
}

// queryRequest is QueryRequest itself: its fields are serf's.
type queryRequest = QueryRequest

type respondRequest struct {
	ID      uint64
	Payload []byte
}

type coordinateRequest struct {
	Node string
}

type coordinateResponse struct {
	Coord Coordinate
	Ok    bool
}

// queryRecord is one ack, response or the final done of a query. Error is
// our addition, set only on done when the query failed after its header had
// gone out; serf's client skips unknown fields.
type queryRecord struct {
	Type    string
	From    string
	Payload []byte
	Error   string `msgpack:",omitempty"`
}

type logRecord struct {
	Log string
}

// The three event records of a stream, shaped exactly as serf's: a client
// that decodes them into a generic map sees the same keys.
type memberEventRecord struct {
	Event   string
	Members []wireMember
}

type userEventRecord struct {
	Event    string
	LTime    uint64
	Name     string
	Payload  []byte
	Coalesce bool
}

type queryEventRecord struct {
	Event   string
	ID      uint64
	LTime   uint64
	Name    string
	Payload []byte
}

// wireMember is Member as it travels. Addr is a plain byte slice because
// net.IP is a TextMarshaler, which msgpack/v5 would write as the text
// "10.0.0.1" where serf writes the raw address bytes.
type wireMember struct {
	Name        string
	Addr        []byte
	Port        uint16
	Tags        map[string]string
	Status      string
	ProtocolMin uint8
	ProtocolMax uint8
	ProtocolCur uint8
	DelegateMin uint8
	DelegateMax uint8
	DelegateCur uint8
}

func toWire(ms []Member) []wireMember {
	out := make([]wireMember, 0, len(ms))
	for _, m := range ms {
		out = append(out, wireMember{
			Name: m.Name, Addr: []byte(m.Addr), Port: m.Port, Tags: m.Tags, Status: m.Status,
			ProtocolMin: m.ProtocolMin, ProtocolMax: m.ProtocolMax, ProtocolCur: m.ProtocolCur,
			DelegateMin: m.DelegateMin, DelegateMax: m.DelegateMax, DelegateCur: m.DelegateCur,
		})
	}
	return out
}

func fromWire(ws []wireMember) []Member {
	out := make([]Member, 0, len(ws))
	for _, w := range ws {
		out = append(out, Member{
			Name: w.Name, Addr: net.IP(w.Addr), Port: w.Port, Tags: w.Tags, Status: w.Status,
			ProtocolMin: w.ProtocolMin, ProtocolMax: w.ProtocolMax, ProtocolCur: w.ProtocolCur,
			DelegateMin: w.DelegateMin, DelegateMax: w.DelegateMax, DelegateCur: w.DelegateCur,
		})
	}
	return out
}

// encodeFrame writes a header and, when withBody, one body into a fresh
// buffer, so that a body that cannot be encoded never leaves half a frame on
// the wire. Integers are written compactly, as serf's codec writes them:
// a client decoding into a generic map then sees the same number types.
func encodeFrame(header, body any, withBody bool) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(header); err != nil {
		return nil, err
	}
	if withBody {
		if err := enc.Encode(body); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// unmarshal decodes one value that readValue read whole. Decoding only
// complete buffers matters: msgpack/v5 sizes a slice from its declared length
// before it reads the elements, and a buffer readValue walked cannot declare
// more elements than it holds.
func unmarshal(raw []byte, v any) error {
	return msgpack.Unmarshal(raw, v)
}
