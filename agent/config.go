package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/meshagent/agent/agent/checks"
	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/state"
)

// Config is the agent's resolved configuration. It is built in layers, each
// overriding the one before: DefaultConfig, config files (ApplyFile), then
// environment and flags (Apply), which the CLI resolves between themselves.
type Config struct {
	NodeName      string
	BindAddr      string // gossip host:port
	AdvertiseAddr string // host:port others reach us at; empty derives it
	RPCAddr       string
	RPCToken      string
	Join          []string
	Rejoin        bool          // rejoin the recorded members even after a graceful leave
	JoinRetryMax  time.Duration // the longest pause between join attempts
	Role          gossip.Role
	Tags          map[string]string
	DataDir       string
	Profile       string
	EncryptKey    string // base64
	KeyringFile   string
	LogLevel      string
	LogFormat     string
	LeaveTimeout  time.Duration

	// Load telemetry and placement (servers).
	LoadWindow time.Duration // averaging window of cpu and mem
	// InterpreterReap is how long interpreter members that left or failed
	// stay listed; servers keep serf's long timeouts.
	InterpreterReap time.Duration
	LoadSource      string // host, fixed:cpu=40,mem=30, or script:…
	Publish         state.PublishPolicy
	Capacity        int           // the most interpreters this server accepts; 0: no limit
	PlaceTimeout    time.Duration // how long an asker waits for bids

	InterpretersFile string // kinds this server may start, besides demo

	// Operators.
	HTTPAddr            string   // HTTP API and dashboard; empty turns it off
	HTTPAllowHosts      []string // Host header names the HTTP API answers besides its own; "*" any
	EventHandlers       []string // [filter=]script, as serf's
	EventHandlerTimeout time.Duration

	// Security.
	Insecure     bool   // allow unencrypted gossip on a non-loopback address
	RPCTokenFile string // file holding the RPC token
	RPCMaxConns  int
	PlaceRate    float64 // place queries per second one asker may send a server
	SpawnRate    float64 // spawn orders per second one asker may send a server

	// Checks are the server's health checks, each one JSON object (see
	// agent/checks); they steer placement.
	Checks []string

	// Files are the config files read, in order, and ConfigDir the last
	// directory of them, so that a message can say which file to edit.
	Files     []string
	ConfigDir string
}

// DefaultConfig is the bottom layer.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:            host,
		BindAddr:            "0.0.0.0:7946",
		RPCAddr:             "127.0.0.1:7373",
		JoinRetryMax:        30 * time.Second,
		Role:                gossip.RoleServer,
		Tags:                map[string]string{},
		Profile:             gossip.DefaultProfile,
		LogLevel:            "info",
		LogFormat:           "text",
		LeaveTimeout:        10 * time.Second,
		LoadWindow:          30 * time.Second,
		InterpreterReap:     time.Minute,
		LoadSource:          "host",
		Publish:             state.DefaultPublishPolicy(),
		PlaceTimeout:        time.Second,
		RPCMaxConns:         64,
		HTTPAddr:            "127.0.0.1:7374",
		EventHandlerTimeout: time.Minute,
		PlaceRate:           50,
		SpawnRate:           10,
	}
}

// Option is one setting of `agent run`. The same table drives the command
// line flags, the AGENT_* environment variables and the config file keys, so
// the three can never disagree about names, defaults or validation.
type Option struct {
	Name       string // flag name; the file key is Name with '-' as '_'
	Usage      string
	Repeatable bool
	Bool       bool // a switch: --name alone means true
	// DefaultText describes a default that depends on the host, for help.
	DefaultText string
	// Secret values are never repeated in errors.
	Secret bool
	// JSON values are objects: in a file, an object or a list of them; on
	// the command line, each value is one object's JSON text.
	JSON bool
	set  func(c *Config, values []string) error
	get  func(c *Config) []string
}

// FileKey is the option's key in a config file.
func (o Option) FileKey() string { return strings.ReplaceAll(o.Name, "-", "_") }

// EnvVar is the environment variable that sets the option.
func (o Option) EnvVar() string {
	return "AGENT_" + strings.ToUpper(strings.ReplaceAll(o.Name, "-", "_"))
}

// Default renders the option's default for help text.
func (o Option) Default() string {
	if o.DefaultText != "" {
		return o.DefaultText
	}
	c := DefaultConfig()
	return strings.Join(o.get(&c), ",")
}

// Options lists every setting of `agent run`, in the order help shows them.
func Options() []Option { return options }

// ErrUnknownOption is returned for a setting that does not exist.
var ErrUnknownOption = errors.New("unknown setting")

// Apply sets one option from strings, as a flag or environment variable
// gives them. A repeatable option is replaced, not appended to, so that a
// flag overrides a list from a file. The error names the option and value.
func (c *Config) Apply(name string, values []string) error {
	for _, o := range options {
		if o.Name == name {
			return c.apply(o, name, values)
		}
	}
	return fmt.Errorf("%w %q", ErrUnknownOption, name)
}

// apply sets o; label is how the error names it (the flag's name, or the
// file's key).
func (c *Config) apply(o Option, label string, values []string) error {
	if !o.Repeatable && len(values) > 1 {
		if o.Secret {
			return fmt.Errorf("%s is given %d times: it takes one value", label, len(values))
		}
		return fmt.Errorf("%s is given %d times (%s): it takes one value", label, len(values), strings.Join(values, ", "))
	}
	if err := o.set(c, values); err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	return nil
}

// ApplyFile layers a JSON config file, or every *.json file of a directory
// in lexical order, over c. Unknown keys are errors that name the key, the
// file and the valid keys, so that a typo never silently does nothing.
func (c *Config) ApplyFile(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	if !info.IsDir() {
		return c.applyOneFile(path)
	}
	files, err := filepath.Glob(filepath.Join(path, "*.json"))
	if err != nil {
		return fmt.Errorf("config dir %s: %w", path, err)
	}
	sort.Strings(files)
	c.ConfigDir = path
	for _, f := range files {
		if err := c.applyOneFile(f); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) applyOneFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	c.Files = append(c.Files, path)
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return fmt.Errorf("config file %s is not a JSON object: %w", path, err)
	}
	byKey := make(map[string]Option, len(options))
	for _, o := range options {
		byKey[o.FileKey()] = o
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		o, ok := byKey[k]
		if !ok {
			return fmt.Errorf("config file %s: %w %q: valid keys are %s", path, ErrUnknownOption, k, strings.Join(fileKeys(), ", "))
		}
		values, err := jsonValues(raw[k], o.Repeatable)
		if o.JSON {
			values, err = jsonObjects(raw[k])
		}
		if err != nil {
			return fmt.Errorf("config file %s: key %q: %w", path, k, err)
		}
		if err := c.apply(o, fmt.Sprintf("key %q", k), values); err != nil {
			return fmt.Errorf("config file %s: %w", path, err)
		}
	}
	return nil
}

func fileKeys() []string {
	keys := make([]string, 0, len(options))
	for _, o := range options {
		keys = append(keys, o.FileKey())
	}
	return keys
}

// jsonValues turns a file value into the strings a flag would carry: a
// string, number or bool is one value; a list is allowed for repeatable
// options; an object is allowed for tags (k: v).
func jsonValues(raw json.RawMessage, repeatable bool) ([]string, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	scalar := func(x any) (string, error) {
		switch x := x.(type) {
		case string:
			return x, nil
		case float64:
			return strconv.FormatFloat(x, 'f', -1, 64), nil
		case bool:
			return strconv.FormatBool(x), nil
		}
		return "", fmt.Errorf("value %s must be a string, number or boolean", raw)
	}
	switch x := v.(type) {
	case []any:
		if !repeatable {
			return nil, fmt.Errorf("value %s is a list, but this setting takes one value", raw)
		}
		out := make([]string, 0, len(x))
		for _, e := range x {
			s, err := scalar(e)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, nil
	case map[string]any:
		if !repeatable {
			return nil, fmt.Errorf("value %s is an object, but this setting takes one value", raw)
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make([]string, 0, len(x))
		for _, k := range keys {
			if strings.Contains(k, "=") {
				return nil, fmt.Errorf("object key %q holds '=', which separates key from value: drop it from the key", k)
			}
			s, err := scalar(x[k])
			if err != nil {
				return nil, err
			}
			out = append(out, k+"="+s)
		}
		return out, nil
	}
	s, err := scalar(v)
	if err != nil {
		return nil, err
	}
	return []string{s}, nil
}

// jsonObjects turns a file value that is an object, or a list of objects,
// into one JSON text per object.
func jsonObjects(raw json.RawMessage) ([]string, error) {
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		list = []json.RawMessage{raw}
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(e, &obj); err != nil {
			return nil, fmt.Errorf("value %s is not a JSON object (or a list of them)", e)
		}
		var b bytes.Buffer
		if err := json.Compact(&b, e); err != nil {
			return nil, err
		}
		out = append(out, b.String())
	}
	return out, nil
}

// one returns the single value of a scalar option.
func one(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[len(values)-1]
}

func stringOption(name, usage string, field func(*Config) *string, check func(string) error) Option {
	return Option{
		Name: name, Usage: usage,
		set: func(c *Config, v []string) error {
			s := one(v)
			if check != nil {
				if err := check(s); err != nil {
					return err
				}
			}
			*field(c) = s
			return nil
		},
		get: func(c *Config) []string { return nonEmpty(*field(c)) },
	}
}

func durationOption(name, usage string, field func(*Config) *time.Duration) Option {
	return Option{
		Name: name, Usage: usage,
		set: func(c *Config, v []string) error {
			d, err := ParseDuration(one(v))
			if err != nil {
				return err
			}
			*field(c) = d
			return nil
		},
		get: func(c *Config) []string { return []string{field(c).String()} },
	}
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

func intOption(name, usage string, least int, field func(*Config) *int) Option {
	return Option{
		Name: name, Usage: usage,
		set: func(c *Config, v []string) error {
			n, err := strconv.Atoi(one(v))
			if err != nil || n < least {
				return fmt.Errorf("%q is not a whole number, %d or more", one(v), least)
			}
			*field(c) = n
			return nil
		},
		get: func(c *Config) []string { return []string{strconv.Itoa(*field(c))} },
	}
}

func rateOption(name, usage string, field func(*Config) *float64) Option {
	return Option{
		Name: name, Usage: usage,
		set: func(c *Config, v []string) error {
			f, err := strconv.ParseFloat(one(v), 64)
			if err != nil || f <= 0 || f > 1e6 {
				return fmt.Errorf("%q is not a rate per second above 0", one(v))
			}
			*field(c) = f
			return nil
		},
		get: func(c *Config) []string { return []string{strconv.FormatFloat(*field(c), 'f', -1, 64)} },
	}
}

// checkAllowHost accepts a host name for --http-allow-host: a name as a
// browser sends it in the Host header, without a port, or "*".
func checkAllowHost(s string) error {
	if s == "*" {
		return nil
	}
	if s == "" || strings.ContainsAny(s, "/:@ ") {
		return fmt.Errorf("%q is not a host name: give a name as it appears in the browser's address bar, without scheme or port, e.g. agent.example.com", s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%q holds a control character: give a plain host name", s)
		}
	}
	return nil
}

func secret(o Option) Option { o.Secret = true; return o }

func withDefaultText(o Option, text string) Option { o.DefaultText = text; return o }

// MaxNodeName is serf's limit on a node name.
const MaxNodeName = 128

// CheckNodeName accepts a node name of at most 128 bytes (serf's limit) made
// of letters, digits, '-', '_' and '.', and not "." or "..": a name is one
// field of a listing, and it becomes part of file and directory names, so
// it must never be able to name another place.
func CheckNodeName(s string) error {
	switch {
	case strings.TrimSpace(s) == "":
		return errors.New("node name is empty: give each node a unique name, e.g. --node web-1")
	case len(s) > MaxNodeName:
		return fmt.Errorf("node name %.20q… is %d bytes long: the most is %d (serf's limit)", s, len(s), MaxNodeName)
	case s == "." || s == "..":
		return fmt.Errorf("node name %q names a directory: give each node a unique name, e.g. --node web-1", s)
	}
	for _, r := range s {
		if !nameRune(r) {
			return fmt.Errorf("node name %q holds %q: use only letters, digits, '-', '_' or '.', e.g. --node web-1", s, r)
		}
	}
	return nil
}

// nameRune reports whether r may appear in a node name: ASCII letters,
// digits, '-', '_' and '.'.
func nameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
}

// checkAdvertise accepts the address other nodes reach this one at: an
// address they can dial, so neither 0.0.0.0 nor port 0.
func checkAdvertise(s string) error {
	if s == "" {
		return nil
	}
	if err := CheckHostPort(s); err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(s)
	if ip := net.ParseIP(host); host == "" || ip.IsUnspecified() {
		return fmt.Errorf("address %q is not one other nodes can reach: advertise this host's own IP, e.g. 10.0.0.5:%s", s, port)
	}
	if port == "0" {
		return fmt.Errorf("address %q has port 0: advertise the gossip port others dial, e.g. %s", s, net.JoinHostPort(host, "7946"))
	}
	return nil
}

// ParseDuration parses a positive Go duration ("500ms", "30s", "2m").
func ParseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration: write it like 500ms, 30s or 2m", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("duration %q must be positive", s)
	}
	return d, nil
}

// CheckHostPort validates host:port where host is an IP address (empty
// means every address) and port is 0 to 65535.
func CheckHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("address %q is not host:port: write it like 127.0.0.1:7946", s)
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("address %q: host %q is not an IP address: use an IP such as 127.0.0.1 or 0.0.0.0", s, host)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("address %q: port %q is not a number from 0 to 65535", s, port)
	}
	return nil
}

// checkJoinAddr accepts host:port or a bare host (the default gossip port is
// used); the host may be a name, resolved when joining.
func checkJoinAddr(s string) error {
	if s == "" {
		return errors.New("empty join address: give host:port, e.g. 127.0.0.1:7946")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = s, "7946"
		if strings.Contains(s, ":") && net.ParseIP(s) == nil {
			return fmt.Errorf("join address %q is not host:port: write it like 10.0.0.5:7946", s)
		}
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("join address %q: port %q is not a number from 1 to 65535", s, port)
	}
	if host == "" {
		return fmt.Errorf("join address %q has no host: write it like 10.0.0.5:7946", s)
	}
	return nil
}

// ParseTag splits "k=v". It does not check the tag (a filter's value is
// a regex, not a tag); ParseUserTag does.
func ParseTag(s string) (string, string, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return "", "", fmt.Errorf("%q is not key=value: write it like dc=east", s)
	}
	return k, v, nil
}

// ParseUserTag splits "k=v" and checks it as a tag of the user's own: one
// printable line, not a key the agent sets itself.
func ParseUserTag(s string) (string, string, error) {
	k, v, err := ParseTag(s)
	if err != nil {
		return "", "", err
	}
	if err := gossip.CheckTag(k, v); err != nil {
		return "", "", err
	}
	if gossip.IsReservedTag(k) {
		return "", "", fmt.Errorf("tag %q is set by the agent itself: choose another key", k)
	}
	return k, v, nil
}

func oneOf(valid ...string) func(string) error {
	return func(s string) error {
		for _, v := range valid {
			if s == v {
				return nil
			}
		}
		return fmt.Errorf("%q is not valid: use one of %s", s, strings.Join(valid, ", "))
	}
}

var options = []Option{
	withDefaultText(stringOption("node", "unique name of this node in the mesh",
		func(c *Config) *string { return &c.NodeName }, CheckNodeName), "the host name"),
	stringOption("bind", "gossip address to listen on, host:port",
		func(c *Config) *string { return &c.BindAddr }, CheckHostPort),
	withDefaultText(stringOption("advertise", "gossip address other nodes reach this one at, host:port",
		func(c *Config) *string { return &c.AdvertiseAddr }, checkAdvertise), "derived from --bind"),
	stringOption("rpc-addr", "address the RPC listens on, host:port (loopback unless you mean it)",
		func(c *Config) *string { return &c.RPCAddr }, CheckHostPort),
	stringOption("http-addr", "address of the HTTP API, metrics and dashboard, host:port (empty turns it off)",
		func(c *Config) *string { return &c.HTTPAddr }, func(s string) error {
			if s == "" {
				return nil
			}
			return CheckHostPort(s)
		}),
	{
		Name: "http-allow-host", Repeatable: true,
		Usage: "another name the HTTP API answers to in the Host header (it always answers IP addresses, localhost, the node name and the host name); repeatable; * allows any (behind a proxy that checks it)",
		set: func(c *Config, v []string) error {
			for _, h := range v {
				if err := checkAllowHost(h); err != nil {
					return err
				}
			}
			c.HTTPAllowHosts = append([]string(nil), v...)
			return nil
		},
		get: func(c *Config) []string { return c.HTTPAllowHosts },
	},
	{
		Name: "event-handler", Repeatable: true,
		Usage: "run a script on events, as serf does: [member-join|member-leave|member-failed|member-update|member-reap|user:NAME|query:NAME|*[,…]=]SCRIPT; repeatable",
		set: func(c *Config, v []string) error {
			for _, h := range v {
				if _, err := ParseEventHandler(h); err != nil {
					return err
				}
			}
			c.EventHandlers = append([]string(nil), v...)
			return nil
		},
		get: func(c *Config) []string { return c.EventHandlers },
	},
	durationOption("event-handler-timeout", "an event handler still running after this is killed",
		func(c *Config) *time.Duration { return &c.EventHandlerTimeout }),
	secret(stringOption("rpc-token", "token every RPC client must present (empty: none)",
		func(c *Config) *string { return &c.RPCToken }, nil)),
	{
		Name: "join", Usage: "address of a member to join, host:port; repeatable (or comma-separated); retried with backoff until one answers",
		Repeatable: true,
		set: func(c *Config, v []string) error {
			var addrs []string
			for _, list := range v {
				// An address never holds a comma, so a list is safe to split.
				for _, a := range strings.Split(list, ",") {
					if err := checkJoinAddr(strings.TrimSpace(a)); err != nil {
						return err
					}
					addrs = append(addrs, strings.TrimSpace(a))
				}
			}
			c.Join = addrs
			return nil
		},
		get: func(c *Config) []string { return c.Join },
	},
	{
		Name: "rejoin", Bool: true,
		Usage: "after a graceful leave too, rejoin the members known before the stop (kept in --data-dir), as serf's -rejoin; " +
			"after a crash the agent rejoins them anyway",
		set: func(c *Config, v []string) error {
			b, err := strconv.ParseBool(one(v))
			if err != nil {
				return fmt.Errorf("%q is not true or false", one(v))
			}
			c.Rejoin = b
			return nil
		},
		get: func(c *Config) []string { return []string{strconv.FormatBool(c.Rejoin)} },
	},
	durationOption("join-retry-max", "longest pause between join attempts (backoff starts at 1s)",
		func(c *Config) *time.Duration { return &c.JoinRetryMax }),
	{
		Name: "role", Usage: "server (may run interpreters) or interpreter",
		set: func(c *Config, v []string) error {
			r, err := gossip.ParseRole(one(v))
			if err != nil {
				return err
			}
			c.Role = r
			return nil
		},
		get: func(c *Config) []string { return []string{string(c.Role)} },
	},
	{
		Name: "tag", Usage: "tag of this node, key=value; repeatable", Repeatable: true,
		set: func(c *Config, v []string) error {
			tags := make(map[string]string, len(v))
			for _, kv := range v {
				k, val, err := ParseUserTag(kv)
				if err != nil {
					return err
				}
				tags[k] = val
			}
			c.Tags = tags
			return nil
		},
		get: func(c *Config) []string {
			out := make([]string, 0, len(c.Tags))
			for k, v := range c.Tags {
				out = append(out, k+"="+v)
			}
			sort.Strings(out)
			return out
		},
	},
	stringOption("data-dir", "directory for the snapshot (automatic rejoin after a restart) and local state; a server needs one",
		func(c *Config) *string { return &c.DataDir }, nil),
	stringOption("profile", "gossip timing profile: "+strings.Join(gossip.Profiles(), ", "),
		func(c *Config) *string { return &c.Profile }, gossip.CheckProfile),
	// No backquotes in usages: urfave/cli shows a quoted word as the value's placeholder.
	secret(stringOption("encrypt", "base64 gossip encryption key (make one with: agent keygen)",
		func(c *Config) *string { return &c.EncryptKey }, func(s string) error {
			if s == "" {
				return nil
			}
			_, err := gossip.DecodeKey(s)
			return err
		})),
	withDefaultText(stringOption("keyring-file", "keyring file kept across restarts",
		func(c *Config) *string { return &c.KeyringFile }, nil), "keyring.json in --data-dir, when that is set"),
	stringOption("log-level", "debug, info, warn or error",
		func(c *Config) *string { return &c.LogLevel }, oneOf("debug", "info", "warn", "error")),
	stringOption("log-format", "text or json",
		func(c *Config) *string { return &c.LogFormat }, oneOf("text", "json")),
	durationOption("leave-timeout", "how long a graceful leave may take before the agent exits anyway",
		func(c *Config) *time.Duration { return &c.LeaveTimeout }),
	durationOption("interpreter-reap", "how long interpreters that left or failed stay listed before the whole mesh forgets them "+
		"(servers keep serf's 24 h)", func(c *Config) *time.Duration { return &c.InterpreterReap }),
	durationOption("load-window", "window of the exponential average of cpu and mem that servers publish",
		func(c *Config) *time.Duration { return &c.LoadWindow }),
	stringOption("load-source", "where load comes from: host (gopsutil), fixed:cpu=40,mem=30, or script:0s=cpu/mem,30s=cpu/mem,…",
		func(c *Config) *string { return &c.LoadSource }, func(s string) error { _, err := ParseLoadSource(s); return err }),
	{
		Name: "publish-threshold", Usage: "percentage points an average must move before it is gossiped",
		set: func(c *Config, v []string) error {
			f, err := strconv.ParseFloat(one(v), 64)
			if err != nil || f < 0 || f > 100 {
				return fmt.Errorf("%q is not a number of percentage points from 0 to 100", one(v))
			}
			c.Publish.Threshold = f
			return nil
		},
		get: func(c *Config) []string { return []string{strconv.FormatFloat(c.Publish.Threshold, 'f', -1, 64)} },
	},
	durationOption("publish-min-interval", "shortest time between two load updates in the tags",
		func(c *Config) *time.Duration { return &c.Publish.MinInterval }),
	durationOption("publish-max-interval", "longest time a small load drift waits before it is gossiped",
		func(c *Config) *time.Duration { return &c.Publish.MaxInterval }),
	intOption("capacity", "the most interpreters this server accepts (0: no limit)", 0, func(c *Config) *int { return &c.Capacity }),
	{
		Name: "insecure", Usage: "allow unencrypted gossip on a non-loopback address (logs a warning at every start)", Bool: true,
		set: func(c *Config, v []string) error {
			b, err := strconv.ParseBool(one(v))
			if err != nil {
				return fmt.Errorf("%q is not true or false", one(v))
			}
			c.Insecure = b
			return nil
		},
		get: func(c *Config) []string { return []string{strconv.FormatBool(c.Insecure)} },
	},
	stringOption("rpc-token-file", "file holding the RPC token (instead of --rpc-token, which shows in ps)",
		func(c *Config) *string { return &c.RPCTokenFile }, nil),
	intOption("rpc-max-conns", "the most RPC connections open at once", 1, func(c *Config) *int { return &c.RPCMaxConns }),
	rateOption("place-rate-limit", "place queries per second one asker may send this server (burst: twice that)",
		func(c *Config) *float64 { return &c.PlaceRate }),
	rateOption("spawn-rate-limit", "spawn orders per second one asker may send this server (burst: twice that)",
		func(c *Config) *float64 { return &c.SpawnRate }),
	stringOption("interpreters", "JSON file of the interpreter kinds this server may start (demo is built in)",
		func(c *Config) *string { return &c.InterpretersFile }, nil),
	{
		Name: "check", Repeatable: true, JSON: true,
		Usage: `a health check of this server, as JSON: {"name":"disk","type":"script","args":["/usr/local/bin/check-disk"],"interval":"10s"}; ` +
			"types script, http, tcp, ttl; a server with a critical check takes no new interpreters; repeatable",
		set: func(c *Config, v []string) error {
			if _, err := checks.ParseAll(v); err != nil {
				return err
			}
			c.Checks = append([]string(nil), v...)
			return nil
		},
		get: func(c *Config) []string { return c.Checks },
	},
	durationOption("place-timeout", "how long an asker waits for servers' bids (it stops earlier once all answered)",
		func(c *Config) *time.Duration { return &c.PlaceTimeout }),
}

// Validate checks what single options cannot: combinations.
func (c *Config) Validate() error {
	if c.NodeName == "" {
		return errors.New("no node name: the host name is empty, so set --node")
	}
	// The default (the host name) is checked here, as --node is when set.
	if err := CheckNodeName(c.NodeName); err != nil {
		return err
	}
	// A server keeps its interpreter registry, drain and peers there; a
	// fallback under a shared temporary directory could be planted or read
	// by another user, and would vanish at the next reboot with the record
	// of the processes it started. As Consul and Nomad do, ask for one.
	if c.Role == gossip.RoleServer && c.DataDir == "" {
		return errors.New("a server needs --data-dir: it keeps the interpreters it started, its drain and its peers there, " +
			"e.g. --data-dir /var/lib/agent (one directory per agent)")
	}
	if c.Role == gossip.RoleInterpreter && c.RPCAddr == "" {
		return errors.New("an interpreter still needs --rpc-addr")
	}
	if c.Rejoin && c.DataDir == "" {
		return errors.New("--rejoin rejoins the members kept in --data-dir: give --data-dir too")
	}
	if c.RPCToken != "" && c.RPCTokenFile != "" {
		return errors.New("both --rpc-token and --rpc-token-file are set: keep one")
	}
	if len(c.Checks) > 0 && c.Role != gossip.RoleServer {
		return fmt.Errorf("checks steer placement, so only a server has them, and this agent's role is %s: "+
			"remove the check settings, or run it with --role server", c.Role)
	}
	if err := c.Publish.Validate(); err != nil {
		return fmt.Errorf("--publish-min-interval %s and --publish-max-interval %s: the minimum must not exceed the maximum",
			c.Publish.MinInterval, c.Publish.MaxInterval)
	}
	return nil
}

// isLoopback reports whether a host:port only listens on this machine.
// An empty host or 0.0.0.0 listens everywhere.
func isLoopback(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
