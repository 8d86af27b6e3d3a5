package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/agent/gossip"
)

// reloadableAgent starts an agent whose config comes from dir, re-read
// by Reload as the CLI does: defaults, then the files, then what the test's
// "flags" (mutate) set.
func reloadableAgent(t *testing.T, dir string, first string) *Agent {
	t.Helper()
	writeConfig(t, dir, first)
	var flags Config
	a := startAgentWith(t, "reloaded", "127.0.0.1", Deps{}, func(c *Config) {
		c.Tags = map[string]string{} // the tags are the file's
		if err := c.ApplyFile(dir); err != nil {
			t.Fatal(err)
		}
		flags = *c
	})
	a.deps.LoadConfig = func() (Config, error) {
		c := DefaultConfig()
		if err := c.ApplyFile(dir); err != nil {
			return c, err
		}
		// What the command line set stays as it was.
		c.NodeName, c.BindAddr, c.RPCAddr, c.Profile, c.EncryptKey = flags.NodeName, flags.BindAddr, flags.RPCAddr, flags.Profile, flags.EncryptKey
		c.DataDir, c.LoadSource, c.HTTPAddr = flags.DataDir, flags.LoadSource, flags.HTTPAddr
		return c, c.Validate()
	}
	return a
}

func writeConfig(t *testing.T, dir, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "10-agent.json"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReloadChangesEachReloadableSettingWithoutARestart: log level, tags,
// event handlers and their timeout, rate limits and checks change in the
// running agent; a changed capacity is reported as needing a restart.
func TestReloadChangesEachReloadableSettingWithoutARestart(t *testing.T) {
	dir := t.TempDir()
	// The test's logger starts at debug, as the file says.
	a := reloadableAgent(t, dir, `{"log_level": "debug", "tag": {"dc": "east"}}`)
	marker := filepath.Join(t.TempDir(), "handled")
	writeConfig(t, dir, `{"log_level": "warn", "tag": {"dc": "west"},
		"event_handler": ["member-update=touch `+marker+`"], "event_handler_timeout": "5s",
		"place_rate_limit": 7, "spawn_rate_limit": 3,
		"check": [{"name": "beat", "type": "ttl", "ttl": "1h"}],
		"capacity": 3}`)
	resp, err := a.Reload()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--log-level", "--tag", "--event-handler", "--event-handler-timeout", "--place-rate-limit",
		"--spawn-rate-limit", "--check"} {
		if !slices.Contains(resp.Applied, want) {
			t.Errorf("applied %v lacks %s", resp.Applied, want)
		}
	}
	if len(resp.Restart) != 1 || !strings.Contains(resp.Restart[0], "--capacity 3 (running with 0)") || !strings.Contains(resp.Restart[0], "next start") {
		t.Errorf("restart %q, want the capacity only, as taking effect at the next start", resp.Restart)
	}
	if a.logger.Enabled(context.Background(), slog.LevelInfo) {
		t.Error("log level: warn not in force (info still logged)")
	}
	if got := a.node.Tags()["dc"]; got != "west" {
		t.Errorf("tag dc=%q in the gossip, want west", got)
	}
	if got := a.currentPlaceRate(); got != 7 {
		t.Errorf("place rate %v, want 7", got)
	}
	if _, timeout := a.currentHandlers(); timeout != 5*time.Second {
		t.Errorf("handler timeout %s", timeout)
	}
	if v := a.checkViews(); len(v) != 1 || v[0].Name != "beat" {
		t.Errorf("checks %+v, want beat", v)
	}
	// The ttl check has not reported: the server refuses to bid, saying why.
	if got := a.node.Tags()[gossip.TagChecks]; got != "beat" {
		t.Errorf("hc tag %q, want beat", got)
	}
	// The new handler runs on the next member-update.
	if err := a.updateUserTags(map[string]string{"x": "1"}, nil); err != nil {
		t.Fatal(err)
	}
	poll(t, "the reloaded event handler to run", func() bool { _, err := os.Stat(marker); return err == nil })
	// The user's change and the reload's tags live together.
	if tags := a.node.Tags(); tags["x"] != "1" || tags["dc"] != "west" || tags[gossip.TagChecks] != "beat" {
		t.Errorf("tags after agent tags: %v", tags)
	}
}

// TestReloadOfABadFileChangesNothing: an unknown key, or a bad check next
// to a good tag, is refused with the file and the reason, and the running
// config stays whole.
func TestReloadOfABadFileChangesNothing(t *testing.T) {
	dir := t.TempDir()
	a := reloadableAgent(t, dir, `{"log_level": "debug", "tag": {"dc": "east"}, "place_rate_limit": 5}`)
	for _, tc := range []struct{ body, want string }{
		{`{"log_level": "warn", "tag": {"dc": "west"}, "colour": "red"}`, `unknown setting "colour"`},
		{`{"log_level": "warn", "tag": {"dc": "west"}, "check": [{"name": "gpu", "type": "smoke", "interval": "5s"}]}`, `"gpu": type "smoke" is not known`},
		{`{"log_level": "warn", "tag": {"dc": "west"}, "check": [{"name": "disk", "type": "script", "args": ["/nonexistent/x"], "interval": "5s"}]}`, `"disk": script /nonexistent/x`},
		{`{"log_level": "warn", "tag": {"dc": "west"}, "event_handler": ["=oops"]}`, `starts with '='`},
		{`{"log_level": "warn", "tag": {"dc": "` + strings.Repeat("w", 600) + `"}}`, `tags too large`},
		{`{"log_level": "warn", `, `not a JSON object`},
	} {
		writeConfig(t, dir, tc.body)
		_, err := a.Reload()
		if err == nil || !errors.Is(err, ErrReload) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("reload of %.60s…: %v, want %q", tc.body, err, tc.want)
		}
		if !a.logger.Enabled(context.Background(), slog.LevelDebug) || a.node.Tags()["dc"] != "east" || a.currentPlaceRate() != 5 {
			t.Fatalf("after a refused reload (%s): debug enabled %v, dc=%q, place rate %v: something was applied",
				tc.want, a.logger.Enabled(context.Background(), slog.LevelDebug), a.node.Tags()["dc"], a.currentPlaceRate())
		}
	}
}

// TestReloadAppliesChangedKinds: a changed interpreters file (same name
// or a new one) is applied by a reload: the kinds offered change at once.
// A broken file, or a kind with a bad check, refuses the reload, names the
// kind, and leaves the kinds offered as they were.
func TestReloadAppliesChangedKinds(t *testing.T) {
	dir := t.TempDir()
	kinds := filepath.Join(t.TempDir(), "kinds.json")
	write := func(path, body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(kinds, `{"shell": {"command": ["/bin/sh"]}}`)
	a := reloadableAgent(t, dir, `{"log_level": "debug", "interpreters": "`+kinds+`"}`)
	offered := func() []string { return a.interps.Kinds() }
	if got := offered(); !slices.Equal(got, []string{"demo", "shell"}) {
		t.Fatalf("kinds at start %v", got)
	}
	resp, err := a.Reload()
	if err != nil || len(resp.Restart) != 0 || len(resp.Applied) != 0 {
		t.Fatalf("reload of an unchanged config: %+v %v", resp, err)
	}

	write(kinds, `{"shell": {"command": ["/bin/sh"], "max": 2}, "py": {"command": ["/bin/sh"],
		"checks": [{"name": "alive", "type": "tcp", "interval": "5s"}]}}`)
	resp, err = a.Reload()
	if err != nil || len(resp.Restart) != 0 || !slices.ContainsFunc(resp.Applied, func(s string) bool {
		return strings.Contains(s, "--interpreters "+kinds+": the file changed")
	}) {
		t.Fatalf("reload after the kinds changed: %+v %v", resp, err)
	}
	if got := offered(); !slices.Equal(got, []string{"demo", "py", "shell"}) {
		t.Fatalf("kinds after the reload %v, want demo, py, shell", got)
	}

	for _, tc := range []struct{ body, want string }{
		{`{"shell": {"command": []}}`, `kind "shell" has no command`},
		{`{"gpu": {"command": ["/bin/sh"], "checks": [{"name": "alive", "type": "tcp", "interval": "0s"}]}}`,
			`kind "gpu": bad check "alive": interval "0s" is not a positive duration`},
		{`{"gpu": {"command": ["/no/such/kernel"]}}`, `kind "gpu": program "/no/such/kernel" does not exist`},
	} {
		write(kinds, tc.body)
		if _, err = a.Reload(); err == nil || !errors.Is(err, ErrReload) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("reload with a broken kinds file: %v, want %q", err, tc.want)
		}
		if got := offered(); !slices.Equal(got, []string{"demo", "py", "shell"}) {
			t.Fatalf("kinds after a refused reload %v: something was applied", got)
		}
	}

	// Another file named in the config replaces the kinds too.
	other := filepath.Join(t.TempDir(), "other.json")
	write(other, `{"r": {"command": ["/bin/sh"]}}`)
	writeConfig(t, dir, `{"log_level": "debug", "interpreters": "`+other+`"}`)
	if resp, err = a.Reload(); err != nil || !slices.Contains(resp.Applied, "--interpreters") {
		t.Fatalf("reload with another kinds file: %+v %v", resp, err)
	}
	if got := offered(); !slices.Equal(got, []string{"demo", "r"}) {
		t.Fatalf("kinds from the other file %v, want demo, r", got)
	}
}
