package interp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"regexp/syntax"
	"sort"
	"strconv"
	"strings"
)

// Kind is an interpreter kind a server may start: always its configured
// program with its configured arguments, never a program a request names.
type Kind struct {
	Name string
	// Command is the argv, run without a shell. "{port}" and "{name}" in it
	// are replaced by the interpreter's port and name.
	Command []string
	Env     map[string]string
	Dir     string
	// Max is the most interpreters of this kind one server runs; 0: no
	// limit of its own (the server's --capacity still applies).
	Max int
	// Args, when set, must match every extra argument a request adds
	// (anchored); when nil, requests may add no arguments.
	Args *regexp.Regexp
	// User, when set, is the account the interpreter runs as (the agent
	// must be root to switch); otherwise it runs as the agent's user.
	User     string
	UID, GID uint32
	// Restart is the kind's restart policy, used when a request names none.
	Restart string
	// Ports names the ports the interpreter listens on besides (or
	// instead of) {port}: "{port:NAME}" in the command is each one.
	// Connection, "jupyter" or empty, makes the server write a connection
	// file for each interpreter ("{connection_file}" in the command); see
	// connection.go.
	Ports      []string
	Connection string
	// Checks are the kind's health checks, run on each interpreter by
	// its supervisor (kindchecks.go).
	Checks []KindCheck
}

// BuiltinKind is the interpreter kind every server offers: a tiny echo
// server inside the binary, so the product works with nothing installed.
const BuiltinKind = "demo"

// kindFile is one kind in an --interpreters file.
type kindFile struct {
	Command     []string          `json:"command"`
	Env         map[string]string `json:"env"`
	Dir         string            `json:"dir"`
	Max         int               `json:"max"`
	ArgsPattern string            `json:"args_pattern"`
	User        string            `json:"user"`
	Restart     string            `json:"restart"`
	Ports       []string          `json:"ports"`
	Connection  string            `json:"connection"`
	Checks      []json.RawMessage `json:"checks"`
}

// LoadKinds reads an --interpreters file: a JSON object from kind name to
// {"command": [...], "env": {...}, "dir": "...", "max": N, "args_pattern": "regex",
// "user": "name", "restart": "no|on-failure", "ports": [...], "connection": "jupyter",
// "checks": [...]}. Unknown keys, an empty command, a program or directory
// that does not exist, a bad pattern or a bad check are errors that name the
// kind, the path (or the check) and the fix: a kind that cannot start is
// never offered. The built-in kind demo cannot be redefined.
func LoadKinds(path string) (map[string]Kind, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("interpreters file: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("interpreters file %s is not a JSON object of kinds: %w", path, err)
	}
	kinds := map[string]Kind{}
	for name, body := range raw {
		if name == BuiltinKind {
			return nil, fmt.Errorf("interpreters file %s: kind %q is built in and cannot be redefined: choose another name", path, name)
		}
		if err := CheckKindName(name); err != nil {
			return nil, fmt.Errorf("interpreters file %s: %w", path, err)
		}
		var kf kindFile
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&kf); err != nil {
			return nil, fmt.Errorf("interpreters file %s: kind %q: %s (keys are command, env, dir, max, args_pattern, user, restart, ports, connection, checks)", path, name, jsonProblem(err))
		}
		if len(kf.Command) == 0 || kf.Command[0] == "" {
			return nil, fmt.Errorf(`interpreters file %s: kind %q has no command: give the program and its arguments, e.g. "command": ["python3", "-m", "kernel", "--port", "{port}"]`, path, name)
		}
		if kf.Max < 0 {
			return nil, fmt.Errorf("interpreters file %s: kind %q: max %d must be 0 (no limit) or more", path, name, kf.Max)
		}
		restart, err := ParseRestart(kf.Restart)
		if err != nil {
			return nil, fmt.Errorf("interpreters file %s: kind %q: %w", path, name, err)
		}
		k := Kind{Name: name, Command: kf.Command, Env: kf.Env, Dir: kf.Dir, Max: kf.Max, Restart: restart}
		if err := k.setPorts(kf.Ports, kf.Connection); err != nil {
			return nil, fmt.Errorf("interpreters file %s: kind %q: %w", path, name, err)
		}
		if err := k.checkPaths(); err != nil {
			return nil, fmt.Errorf("interpreters file %s: kind %q: %w", path, name, err)
		}
		if k.Checks, err = parseKindChecks(k, kf.Checks); err != nil {
			return nil, fmt.Errorf("interpreters file %s: kind %q: %w", path, name, err)
		}
		if kf.ArgsPattern != "" {
			if _, err := regexp.Compile(kf.ArgsPattern); err != nil {
				return nil, fmt.Errorf("interpreters file %s: kind %q: args_pattern %q is not a regular expression: %s", path, name, kf.ArgsPattern, regexpProblem(err))
			}
			re, err := regexp.Compile("^(?:" + kf.ArgsPattern + ")$")
			if err != nil {
				return nil, fmt.Errorf("interpreters file %s: kind %q: args_pattern %q cannot be anchored: %s", path, name, kf.ArgsPattern, regexpProblem(err))
			}
			k.Args = re
		}
		if kf.User != "" {
			if err := k.setUser(kf.User); err != nil {
				return nil, fmt.Errorf("interpreters file %s: kind %q: %w", path, name, err)
			}
		}
		for key := range kf.Env {
			if key == "" || strings.ContainsAny(key, "=\x00") {
				return nil, fmt.Errorf("interpreters file %s: kind %q: environment variable name %q is not valid", path, name, key)
			}
		}
		kinds[name] = k
	}
	return kinds, nil
}

// jsonProblem says what is wrong with a kind's JSON in the file's terms, not
// Go's: the key and the type it needs.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		want := map[string]string{"command": "a list of strings", "env": "an object of strings", "dir": "a string",
			"max": "a whole number", "args_pattern": "a string", "user": "a string", "restart": "a string",
			"ports": "a list of strings", "connection": "a string", "checks": "a list of check objects"}[te.Field]
		if want == "" {
			want = "another type"
		}
		return fmt.Sprintf("%q must be %s, not a JSON %s", te.Field, want, te.Value)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown key " + msg
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// regexpProblem is the regexp package's complaint without its prefix.
func regexpProblem(err error) string {
	var re *syntax.Error
	if errors.As(err, &re) {
		return string(re.Code)
	}
	return err.Error()
}

// maxKindName is the longest kind name, in bytes.
const maxKindName = 32

// CheckKindName refuses a name no kind can have: a kind name is 1 to 32
// letters, digits, '-' and '_' (ASCII), in an --interpreters file and in a
// request alike. The error names the name and what is wrong with it.
func CheckKindName(name string) error {
	rule := fmt.Sprintf("use letters, digits, '-' and '_' (at most %d)", maxKindName)
	switch {
	case name == "":
		return errors.New("kind name is empty: " + rule)
	case len(name) > maxKindName:
		return fmt.Errorf("kind name %.20q… is %d bytes long: %s", name, len(name), rule)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("kind name %q holds %q: %s", name, r, rule)
		}
	}
	return nil
}

// checkPaths finds the kind's program (on the PATH its interpreters get)
// and its working directory, so that a kind that cannot start is refused at
// load rather than offered in bids.
func (k Kind) checkPaths() error {
	if k.Dir != "" {
		if st, err := os.Stat(k.Dir); err != nil || !st.IsDir() {
			return fmt.Errorf("dir %q does not exist or is not a directory: create it or fix \"dir\"", k.Dir)
		}
	}
	prog := k.Command[0]
	if strings.Contains(prog, "{") {
		return nil // a placeholder; known only at start
	}
	if !strings.Contains(prog, "/") {
		path := os.Getenv("PATH")
		if p, ok := k.Env["PATH"]; ok {
			path = p
		}
		for _, dir := range filepath.SplitList(path) {
			if isExecutable(filepath.Join(dir, prog)) {
				return nil
			}
		}
		return fmt.Errorf("program %q is not on the PATH (%s): install it or give its full path in \"command\"", prog, path)
	}
	if k.Dir != "" && !filepath.IsAbs(prog) {
		prog = filepath.Join(k.Dir, prog)
	}
	if !isExecutable(prog) {
		return fmt.Errorf("program %q does not exist or is not executable: fix \"command\"", k.Command[0])
	}
	return nil
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Demo is the demo kind: this binary's own line-echo server.
func Demo(self string) Kind {
	return Kind{Name: BuiltinKind, Command: []string{self, "echo-server", "--addr", "{addr}"}}
}

// Names lists the kinds, sorted.
func Names(kinds map[string]Kind) []string {
	names := make([]string, 0, len(kinds))
	for n := range kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// CheckArgs refuses extra arguments the kind does not allow, naming the
// first bad one.
func (k Kind) CheckArgs(args []string) error {
	if len(args) == 0 {
		return nil
	}
	if k.Args == nil {
		return fmt.Errorf("kind %q takes no extra arguments (got %q); its configuration has no args_pattern", k.Name, args[0])
	}
	for _, a := range args {
		if !k.Args.MatchString(a) {
			return fmt.Errorf("argument %q is not allowed for kind %q: it must match %s", a, k.Name, strings.TrimSuffix(strings.TrimPrefix(k.Args.String(), "^(?:"), ")$"))
		}
	}
	return nil
}

// argv renders the command for one interpreter, with the request's extra
// arguments appended.
func (k Kind) argv(name, addr, port string, extra []string) []string {
	r := strings.NewReplacer("{name}", name, "{addr}", addr, "{port}", port)
	out := make([]string, 0, len(k.Command)+len(extra))
	for _, c := range k.Command {
		out = append(out, r.Replace(c))
	}
	return append(out, extra...)
}

// setUser resolves the account a kind runs as and checks that the agent can
// switch to it.
func (k *Kind) setUser(name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("user %q has a non-numeric uid %q or gid %q", name, u.Uid, u.Gid)
	}
	if os.Geteuid() != 0 && int(uid) != os.Geteuid() {
		return fmt.Errorf("runs as user %q, but the agent runs as uid %d, not root, and cannot switch users: run the agent as root or drop \"user\"", name, os.Geteuid())
	}
	k.User, k.UID, k.GID = name, uint32(uid), uint32(gid)
	return nil
}

// kinds are the kinds this server offers now: Config.Kinds, or what the
// last SetKinds gave. Safe for concurrent use; the map is never changed.
func (l *Lifecycle) kinds() map[string]Kind {
	if k := l.kindSet.Load(); k != nil {
		return *k
	}
	return l.cfg.Kinds
}

// SetKinds replaces the kinds this server offers (a reload of the
// interpreters file), plus the built-in demo. New spawns and bids use them
// at once, and so does the restart of an interpreter whose supervisor
// died (a new launch; a kind that is gone is not started again). Running
// interpreters keep the spec they started with: their command, ports and
// checks, through in-place and on-failure restarts alike. Safe for
// concurrent use.
func (l *Lifecycle) SetKinds(kinds map[string]Kind) {
	next := make(map[string]Kind, len(kinds)+1)
	for n, k := range kinds {
		next[n] = k
	}
	next[BuiltinKind] = Demo(l.cfg.Self)
	l.kindSet.Store(&next)
}
