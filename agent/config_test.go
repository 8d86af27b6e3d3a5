package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The CLI applies layers in this order: defaults, files, then env and flags
// through Apply (urfave/cli itself lets a flag beat its env variable).
func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "agent.json", `{"node": "from-file", "bind": "127.0.0.1:8000",
		"join": ["127.0.0.1:9000", "127.0.0.1:9001"], "tag": {"dc": "file"}, "join_retry_max": "10s"}`)

	cases := []struct {
		name  string
		file  bool
		apply map[string][]string
		check func(Config) any
		want  any
	}{
		{"default only", false, nil, func(c Config) any { return c.BindAddr }, "0.0.0.0:7946"},
		{"file over default", true, nil, func(c Config) any { return c.BindAddr }, "127.0.0.1:8000"},
		{"default survives a file that is silent", true, nil, func(c Config) any { return c.RPCAddr }, "127.0.0.1:7373"},
		{"flag over file", true, map[string][]string{"bind": {"127.0.0.2:8001"}}, func(c Config) any { return c.BindAddr }, "127.0.0.2:8001"},
		{"flag list replaces file list", true, map[string][]string{"join": {"127.0.0.3:1"}}, func(c Config) any { return c.Join }, []string{"127.0.0.3:1"}},
		{"file list", true, nil, func(c Config) any { return c.Join }, []string{"127.0.0.1:9000", "127.0.0.1:9001"}},
		{"file tags object", true, nil, func(c Config) any { return c.Tags }, map[string]string{"dc": "file"}},
		{"file duration", true, nil, func(c Config) any { return c.JoinRetryMax }, 10 * time.Second},
		{"flag duration over file", true, map[string][]string{"join-retry-max": {"3s"}}, func(c Config) any { return c.JoinRetryMax }, 3 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			if tc.file {
				if err := c.ApplyFile(file); err != nil {
					t.Fatal(err)
				}
			}
			for k, v := range tc.apply {
				if err := c.Apply(k, v); err != nil {
					t.Fatal(err)
				}
			}
			if got := tc.check(c); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestConfigDirIsReadInLexicalOrder(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "20-late.json", `{"node": "late"}`)
	writeFile(t, dir, "10-early.json", `{"node": "early", "profile": "local"}`)
	writeFile(t, dir, "notes.txt", `not json, not read`)
	c := DefaultConfig()
	if err := c.ApplyFile(dir); err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "late" || c.Profile != "local" {
		t.Fatalf("node=%q profile=%q", c.NodeName, c.Profile)
	}
}

func TestConfigErrorsNameTheBadValue(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		run  func(*Config) error
		want []string
	}{
		{"unknown file key", func(c *Config) error {
			return c.ApplyFile(writeFile(t, dir, "typo.json", `{"bnd": "1.2.3.4:1"}`))
		}, []string{`"bnd"`, "typo.json", "valid keys are", "bind"}},
		{"bad duration", func(c *Config) error { return c.Apply("join-retry-max", []string{"soon"}) },
			[]string{"join-retry-max", `"soon"`, "30s"}},
		{"negative duration", func(c *Config) error { return c.Apply("leave-timeout", []string{"-1s"}) },
			[]string{"leave-timeout", "positive"}},
		{"bad bind address", func(c *Config) error { return c.Apply("bind", []string{"localhost:99999"}) },
			[]string{"bind", `"localhost:99999"`}},
		{"bad port", func(c *Config) error { return c.Apply("rpc-addr", []string{"127.0.0.1:70000"}) },
			[]string{"rpc-addr", `"70000"`, "0 to 65535"}},
		{"no port", func(c *Config) error { return c.Apply("bind", []string{"127.0.0.1"}) },
			[]string{"bind", "host:port"}},
		{"bad join", func(c *Config) error { return c.Apply("join", []string{"10.0.0.1:x"}) },
			[]string{"join", `"10.0.0.1:x"`}},
		{"bad role", func(c *Config) error { return c.Apply("role", []string{"leader"}) },
			[]string{"role", `"leader"`, "server"}},
		{"bad profile", func(c *Config) error { return c.Apply("profile", []string{"turbo"}) },
			[]string{"profile", `"turbo"`, "lan"}},
		{"reserved tag", func(c *Config) error { return c.Apply("tag", []string{"cpu=1"}) },
			[]string{"tag", `"cpu"`}},
		{"bad key", func(c *Config) error { return c.Apply("encrypt", []string{"short"}) },
			[]string{"encrypt", "keygen"}},
		{"list for a scalar in a file", func(c *Config) error {
			return c.ApplyFile(writeFile(t, dir, "list.json", `{"node": ["a", "b"]}`))
		}, []string{`"node"`, "one value"}},
		{"not json", func(c *Config) error {
			return c.ApplyFile(writeFile(t, dir, "broken.json", `{"node": `))
		}, []string{"broken.json", "not a JSON object"}},
		{"missing file", func(c *Config) error { return c.ApplyFile(filepath.Join(dir, "nope.json")) },
			[]string{"nope.json"}},
		{"file errors name the file key", func(c *Config) error {
			return c.ApplyFile(writeFile(t, dir, "dur.json", `{"leave_timeout": "soon"}`))
		}, []string{`key "leave_timeout"`, `"soon"`}},
		{"tag value with a newline", func(c *Config) error { return c.Apply("tag", []string{"nl=a\nFAKE"}) },
			[]string{"tag", `"nl"`, "newline"}},
		{"tag key with a tab in a file", func(c *Config) error {
			return c.ApplyFile(writeFile(t, dir, "tag.json", `{"tag": {"a\tb": "x"}}`))
		}, []string{"tag.json", `"a\tb"`, "a tab"}},
		{"tag key with = in a file", func(c *Config) error {
			return c.ApplyFile(writeFile(t, dir, "eq.json", `{"tag": {"a=b": "x"}}`))
		}, []string{"eq.json", `"a=b"`, "'='"}},
		{"node name over serf's limit", func(c *Config) error { return c.Apply("node", []string{strings.Repeat("n", 3000)}) },
			[]string{"node", "3000 bytes", "128"}},
		{"node name with a control character", func(c *Config) error { return c.Apply("node", []string{"a\x1bb"}) },
			[]string{"node", `'\x1b'`, "letters, digits"}},
		{"advertise 0.0.0.0", func(c *Config) error { return c.Apply("advertise", []string{"0.0.0.0:7946"}) },
			[]string{"advertise", "reach"}},
		{"event handler =", func(c *Config) error { return c.Apply("event-handler", []string{"="}) },
			[]string{"event-handler", "starts with '='"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			before := c
			err := tc.run(&c)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if c.BindAddr != before.BindAddr || c.NodeName != before.NodeName {
				t.Errorf("a rejected value changed the config: %+v", c)
			}
		})
	}
	c := DefaultConfig()
	if err := c.Apply("nonsense", []string{"x"}); !errors.Is(err, ErrUnknownOption) {
		t.Fatalf("unknown option: %v", err)
	}
}

// TestSecretsAreNotEchoed: a bad gossip key or a repeated token is
// described, never repeated, so a mistyped real secret stays out of logs.
func TestSecretsAreNotEchoed(t *testing.T) {
	const almost = "cg8StVXbQJ0gPvMd9o7yrg==x"
	const short = "c2hvcnQ="
	for _, tc := range []struct {
		name, secret string
		run          func(*Config) error
	}{
		{"not base64", almost, func(c *Config) error { return c.Apply("encrypt", []string{almost}) }},
		{"wrong length", short, func(c *Config) error { return c.Apply("encrypt", []string{short}) }},
		{"token twice", "hunter2", func(c *Config) error { return c.Apply("rpc-token", []string{"hunter2", "hunter3"}) }},
	} {
		c := DefaultConfig()
		err := tc.run(&c)
		if err == nil || strings.Contains(err.Error(), tc.secret) {
			t.Errorf("%s: err %v: want an error without the secret", tc.name, err)
		}
	}
}

func TestEveryOptionHasEnvAndFileNames(t *testing.T) {
	seen := map[string]bool{}
	for _, o := range Options() {
		if seen[o.Name] {
			t.Errorf("option %s is defined twice", o.Name)
		}
		seen[o.Name] = true
		if !strings.HasPrefix(o.EnvVar(), "AGENT_") || strings.Contains(o.FileKey(), "-") || o.Usage == "" {
			t.Errorf("option %s: env %s file key %s usage %q", o.Name, o.EnvVar(), o.FileKey(), o.Usage)
		}
	}
	if got := (Option{Name: "rpc-addr"}).EnvVar(); got != "AGENT_RPC_ADDR" {
		t.Fatalf("env var of rpc-addr is %s", got)
	}
}

func TestNextBackoffDoublesUpToMax(t *testing.T) {
	var got []time.Duration
	d := time.Duration(0)
	for i := 0; i < 7; i++ {
		d = NextBackoff(d, 20*time.Second)
		got = append(got, d)
	}
	want := []time.Duration{1, 2, 4, 8, 16, 20, 20}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("backoff %v", got)
		}
	}
}
