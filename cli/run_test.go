package cli

import (
	"io"
	"slices"
	"testing"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent"
)

// configFrom parses `agent run` arguments with the real flags, returning
// the configuration run would start with.
func configFrom(t *testing.T, args ...string) agent.Config {
	t.Helper()
	app := newApp(io.Discard, io.Discard)
	var cfg agent.Config
	var err error
	app.Command("run").Action = func(c *ucli.Context) error {
		cfg, err = loadConfig(c)
		return err
	}
	// A server needs a data dir; loadConfig only names it.
	args = append([]string{"--data-dir", t.TempDir()}, args...)
	if runErr := app.Run(reorderArgs(app, append([]string{"agent", "run"}, args...))); runErr != nil {
		t.Fatalf("run %v: %v", args, runErr)
	}
	return cfg
}

// TestCommasStayInsideValues: a comma is part of a value, from a flag or
// from the environment; values of a repeatable variable are one per line.
func TestCommasStayInsideValues(t *testing.T) {
	cfg := configFrom(t, "--tag", "dc=a,b", "--tag", "re=e{1,3}",
		"--event-handler", "member-join,member-leave=/h.sh", "--join", "127.0.0.1:1,127.0.0.1:2")
	if cfg.Tags["dc"] != "a,b" || cfg.Tags["re"] != "e{1,3}" || len(cfg.Tags) != 2 {
		t.Errorf("flag tags: %v", cfg.Tags)
	}
	if !slices.Equal(cfg.EventHandlers, []string{"member-join,member-leave=/h.sh"}) {
		t.Errorf("flag handlers: %q", cfg.EventHandlers)
	}
	if !slices.Equal(cfg.Join, []string{"127.0.0.1:1", "127.0.0.1:2"}) {
		t.Errorf("flag join list: %q", cfg.Join)
	}

	t.Setenv("AGENT_EVENT_HANDLER", "member-join,member-leave=/h.sh")
	t.Setenv("AGENT_TAG", "dc=a,b\nzone=eu,west\n")
	t.Setenv("AGENT_JOIN", "127.0.0.1:1,127.0.0.1:2")
	cfg = configFrom(t)
	if cfg.Tags["dc"] != "a,b" || cfg.Tags["zone"] != "eu,west" || len(cfg.Tags) != 2 {
		t.Errorf("AGENT_TAG: %v", cfg.Tags)
	}
	if !slices.Equal(cfg.EventHandlers, []string{"member-join,member-leave=/h.sh"}) {
		t.Errorf("AGENT_EVENT_HANDLER: %q", cfg.EventHandlers)
	}
	if !slices.Equal(cfg.Join, []string{"127.0.0.1:1", "127.0.0.1:2"}) {
		t.Errorf("AGENT_JOIN: %q", cfg.Join)
	}
	// A flag still replaces the variable.
	if cfg = configFrom(t, "--tag", "only=flag"); len(cfg.Tags) != 1 || cfg.Tags["only"] != "flag" {
		t.Errorf("flag over AGENT_TAG: %v", cfg.Tags)
	}
}
