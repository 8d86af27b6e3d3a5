package gossip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/memberlist"
)

// MaxTagBytes is memberlist's cap on a node's metadata: all tags together,
// as serf encodes them.
const MaxTagBytes = memberlist.MetaMaxSize

// The tag keys the project gives meaning to. Users may not set them with
// --tag; they are derived from the node's role and state.
const (
	TagRole      = "role"
	TagCPU       = "cpu"
	TagMem       = "mem"
	TagRunning   = "ni"
	TagCapacity  = "cap"
	TagKind      = "kind"
	TagHost      = "host"
	TagRequestID = "rid"
	TagEndpoint  = "ep"
	TagPID       = "pid"
	TagRestart   = "rp"    // an interpreter's restart policy, when not "no"
	TagRestarts  = "rc"    // how often its supervisor restarted it
	TagGen       = "gen"   // how often the mesh re-placed it after its host failed
	TagArgs      = "args"  // its extra arguments (JSON), kept only with a restart policy
	TagEnd       = "end"   // how it ended, set just before it leaves
	TagDrain     = "drain" // a server that takes no new interpreters ("1")
	TagChecks    = "hc"    // a server's critical health checks, comma-separated; absent when none
)

var reservedTags = map[string]bool{
	TagRole: true, TagCPU: true, TagMem: true, TagRunning: true, TagCapacity: true,
	TagKind: true, TagHost: true, TagRequestID: true, TagEndpoint: true, TagPID: true,
	TagRestart: true, TagRestarts: true, TagGen: true, TagArgs: true, TagEnd: true, TagDrain: true,
	TagChecks: true,
}

// ReservedTags lists the tags the agent sets itself, sorted.
func ReservedTags() []string {
	keys := make([]string, 0, len(reservedTags))
	for k := range reservedTags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// IsReservedTag reports whether key is one of the tags the agent sets itself.
func IsReservedTag(key string) bool { return reservedTags[key] }

// IsInterpreter reports whether a member's tags say it is an interpreter.
func IsInterpreter(tags map[string]string) bool { return tags[TagRole] == string(RoleInterpreter) }

// Role says what a member is in the mesh.
type Role string

// The roles a member can have. A member without a role tag (a plain serf
// agent, say) is foreign: listed, but ignored by placement.
const (
	RoleServer      Role = "server"
	RoleInterpreter Role = "interpreter"
)

// ParseRole checks a role name given by a user.
func ParseRole(s string) (Role, error) {
	switch Role(s) {
	case RoleServer, RoleInterpreter:
		return Role(s), nil
	}
	return "", fmt.Errorf("role %q is not known: use %q or %q", s, RoleServer, RoleInterpreter)
}

// Load is a server's averaged resource use, in percent.
type Load struct {
	CPU float64
	Mem float64
}

// Tags is the typed form of a member's tags. Map and ParseTags convert it to
// and from the string map that serf gossips.
type Tags struct {
	Role Role

	// Servers.
	Load         *Load  // nil until the first average is known
	Interpreters int    // ni: interpreters running on the server
	Capacity     int    // cap: the most the server accepts; 0 means no limit
	Draining     bool   // drain: it takes no new interpreters
	Critical     string // hc: its critical health checks, comma-separated ("+N" counts the rest)

	// Interpreters.
	Kind      string
	Host      string // the server that started it
	RequestID string
	Endpoint  string
	PID       int
	Restart   string   // restart policy; empty means "no"
	Restarts  int      // restarts on its host so far
	Gen       int      // re-placements after a host failure so far
	Args      []string // the request's extra arguments, with a restart policy
	End       string   // how it ended ("exited 0", "stopped", …), once it did

	// Extra holds the user's own tags (--tag k=v).
	Extra map[string]string
}

// Map encodes t as the tag map serf gossips. Load is written with one decimal
// so that noise below that does not change the encoding.
func (t Tags) Map() map[string]string {
	m := make(map[string]string, len(t.Extra)+6)
	for k, v := range t.Extra {
		m[k] = v
	}
	if t.Role != "" {
		m[TagRole] = string(t.Role)
	}
	// Every field that is set is written, whatever the role, so that what
	// ParseTags reads from any node (a foreign one too) maps back unchanged.
	if t.Load != nil {
		m[TagCPU] = strconv.FormatFloat(t.Load.CPU, 'f', 1, 64)
		m[TagMem] = strconv.FormatFloat(t.Load.Mem, 'f', 1, 64)
	}
	if t.Role == RoleServer || t.Interpreters > 0 {
		m[TagRunning] = strconv.Itoa(t.Interpreters) // a server always says how many it runs
	}
	if t.Capacity > 0 {
		m[TagCapacity] = strconv.Itoa(t.Capacity)
	}
	if t.Draining {
		m[TagDrain] = "1"
	}
	setIf(m, TagChecks, t.Critical)
	setIf(m, TagKind, t.Kind)
	setIf(m, TagHost, t.Host)
	setIf(m, TagRequestID, t.RequestID)
	setIf(m, TagEndpoint, t.Endpoint)
	if t.PID > 0 {
		m[TagPID] = strconv.Itoa(t.PID)
	}
	setIf(m, TagRestart, t.Restart)
	if t.Restarts > 0 {
		m[TagRestarts] = strconv.Itoa(t.Restarts)
	}
	if t.Gen > 0 {
		m[TagGen] = strconv.Itoa(t.Gen)
	}
	setIf(m, TagEnd, t.End)
	if len(t.Args) > 0 {
		data, _ := json.Marshal(t.Args) // a []string always encodes
		m[TagArgs] = string(data)
	}
	return m
}

func setIf(m map[string]string, k, v string) {
	if v != "" {
		m[k] = v
	}
}

// ParseTags decodes a member's tag map. Tags of other nodes come from the
// network, so a malformed value is not fatal: the rest is still decoded, the
// bad field stays at its zero value (Load stays nil), and the returned error
// names every bad field.
func ParseTags(m map[string]string) (Tags, error) {
	var t Tags
	var errs []error
	for k, v := range m {
		if !reservedTags[k] {
			if t.Extra == nil {
				t.Extra = make(map[string]string)
			}
			t.Extra[k] = v
		}
	}
	t.Role = Role(m[TagRole])
	t.Kind, t.Host, t.RequestID, t.Endpoint = m[TagKind], m[TagHost], m[TagRequestID], m[TagEndpoint]

	num := func(key string) int {
		v, ok := m[key]
		if !ok {
			return 0
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("tag %s=%q is not a non-negative integer", key, v))
			return 0
		}
		return n
	}
	t.Interpreters, t.Capacity, t.PID = num(TagRunning), num(TagCapacity), num(TagPID)
	t.Restart, t.Restarts, t.Gen, t.End = m[TagRestart], num(TagRestarts), num(TagGen), m[TagEnd]
	t.Draining = m[TagDrain] == "1"
	t.Critical = m[TagChecks]
	if v, ok := m[TagArgs]; ok {
		if err := json.Unmarshal([]byte(v), &t.Args); err != nil {
			errs = append(errs, fmt.Errorf("tag %s=%q is not a JSON list of strings", TagArgs, v))
			t.Args = nil
		}
	}

	cpu, hasCPU := m[TagCPU]
	mem, hasMem := m[TagMem]
	if hasCPU || hasMem {
		c, errC := parsePercent(TagCPU, cpu)
		mm, errM := parsePercent(TagMem, mem)
		if errC == nil && errM == nil {
			t.Load = &Load{CPU: c, Mem: mm}
		}
		errs = append(errs, errC, errM)
	}
	return t, errors.Join(errs...)
}

func parsePercent(key, v string) (float64, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 100 || f != f {
		return 0, fmt.Errorf("tag %s=%q is not a percentage from 0 to 100", key, v)
	}
	return f, nil
}

// EncodedTagSize is the number of bytes serf gossips for tags: a magic byte
// and the msgpack map, encoded exactly as serf does.
func EncodedTagSize(tags map[string]string) int {
	var buf bytes.Buffer
	buf.WriteByte(0xff) // serf's tag magic byte
	if err := codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(tags); err != nil {
		// A map of strings always encodes; treat the impossible as too big.
		return MaxTagBytes + 1
	}
	return buf.Len()
}

// ErrTagsTooLarge is returned when tags exceed memberlist's metadata cap.
var ErrTagsTooLarge = errors.New("tags too large")

// CheckTagSize returns ErrTagsTooLarge, with the size and the biggest tags
// named, when tags would not fit in memberlist's metadata. serf would panic
// on such tags during gossip, so every tag change is checked up front.
func CheckTagSize(tags map[string]string) error {
	size := EncodedTagSize(tags)
	if size <= MaxTagBytes {
		return nil
	}
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, v := range tags {
		all = append(all, kv{k, len(k) + len(v)})
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].n != all[j].n {
			return all[i].n > all[j].n
		}
		return all[i].k < all[j].k
	})
	var biggest []string
	for i := 0; i < len(all) && i < 3; i++ {
		biggest = append(biggest, fmt.Sprintf("%s (%d bytes)", all[i].k, all[i].n))
	}
	return fmt.Errorf("%w: tags encode to %d bytes, over the %d-byte limit; biggest: %s; shorten or drop some of them",
		ErrTagsTooLarge, size, MaxTagBytes, strings.Join(biggest, ", "))
}

// ErrBadTag is returned for a tag key or value that cannot be listed on one
// line: listings (agent members, an event handler's stdin, serf's own
// tools) print a member and its tags as one line of tab-separated fields,
// so a newline or a tab in a tag could forge a member row.
var ErrBadTag = errors.New("bad tag")

// CheckTag checks one user tag, whatever its source (a flag, the
// environment, a config file, the RPC). A key is printable, with no space
// and no '=' (listings write k=v); a value is printable and may hold spaces
// and commas. Both must be valid UTF-8. The error names the key and the fix.
func CheckTag(key, value string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w with an empty key (value %q): name it, as in dc=VALUE", ErrBadTag, value)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w key %q is not valid UTF-8: use printable text", ErrBadTag, key)
	}
	for i, r := range key {
		switch {
		case r == '=':
			return fmt.Errorf("%w key %q holds '=', which separates key from value: drop it from the key", ErrBadTag, key)
		case r == ' ' || !unicode.IsPrint(r):
			return fmt.Errorf("%w key %q holds %s at byte %d: a key is one printable word, such as dc or rack_id", ErrBadTag, key, describeRune(r), i)
		}
	}
	if !utf8.ValidString(value) {
		return fmt.Errorf("%w %q: its value %q is not valid UTF-8: use printable text", ErrBadTag, key, value)
	}
	for i, r := range value {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w %q: its value %q holds %s at byte %d: a value is one printable line (spaces are fine, tabs and newlines are not)",
				ErrBadTag, key, value, describeRune(r), i)
		}
	}
	return nil
}

// CheckTags checks every tag of m with CheckTag, in key order, so the error
// is the same on every run.
func CheckTags(m map[string]string) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := CheckTag(k, m[k]); err != nil {
			return err
		}
	}
	return nil
}

// OneLine renders a name or tag for a one-line listing: as it is when it
// is printable, quoted with Go escapes otherwise. Our agents refuse such
// tags (CheckTag), but a foreign serf member in the mesh may carry any.
func OneLine(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return s
	}
	return strconv.Quote(s)
}

// describeRune names a character a user cannot see.
func describeRune(r rune) string {
	switch r {
	case '\n':
		return "a newline"
	case '\t':
		return "a tab"
	case '\r':
		return "a carriage return"
	case ' ':
		return "a space"
	}
	return fmt.Sprintf("the character %U", r)
}
