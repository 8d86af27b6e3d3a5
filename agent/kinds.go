package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"regexp"
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
}

// kindFile is one kind in an --interpreters file.
type kindFile struct {
	Command     []string          `json:"command"`
	Env         map[string]string `json:"env"`
	Dir         string            `json:"dir"`
	Max         int               `json:"max"`
	ArgsPattern string            `json:"args_pattern"`
	User        string            `json:"user"`
}

// LoadKinds reads an --interpreters file: a JSON object from kind name to
// {"command": [...], "env": {...}, "dir": "...", "max": N, "args_pattern": "regex"}.
// Unknown keys, an empty command or a bad pattern are errors that name the
// kind and the fix. The built-in kind demo cannot be redefined.
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
		if !validKindName.MatchString(name) {
			return nil, fmt.Errorf("interpreters file %s: kind name %q: use letters, digits, '-' and '_' (at most 32)", path, name)
		}
		var kf kindFile
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&kf); err != nil {
			return nil, fmt.Errorf("interpreters file %s: kind %q: %w (keys are command, env, dir, max, args_pattern, user)", path, name, err)
		}
		if len(kf.Command) == 0 || kf.Command[0] == "" {
			return nil, fmt.Errorf(`interpreters file %s: kind %q has no command: give the program and its arguments, e.g. "command": ["python3", "-m", "kernel", "--port", "{port}"]`, path, name)
		}
		if kf.Max < 0 {
			return nil, fmt.Errorf("interpreters file %s: kind %q: max %d must be 0 (no limit) or more", path, name, kf.Max)
		}
		k := Kind{Name: name, Command: kf.Command, Env: kf.Env, Dir: kf.Dir, Max: kf.Max}
		if kf.ArgsPattern != "" {
			re, err := regexp.Compile("^(?:" + kf.ArgsPattern + ")$")
			if err != nil {
				return nil, fmt.Errorf("interpreters file %s: kind %q: args_pattern %q is not a regular expression: %w", path, name, kf.ArgsPattern, err)
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

var validKindName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// builtinDemo is the demo kind: this binary's own line-echo server.
func builtinDemo(self string) Kind {
	return Kind{Name: BuiltinKind, Command: []string{self, "echo-server", "--addr", "{addr}"}}
}

// kindNames lists the kinds, sorted.
func kindNames(kinds map[string]Kind) []string {
	names := make([]string, 0, len(kinds))
	for n := range kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// checkArgs refuses extra arguments the kind does not allow, naming the
// first bad one.
func (k Kind) checkArgs(args []string) error {
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
