package cli

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent"
)

func runCommand() *ucli.Command {
	flags := []ucli.Flag{
		&ucli.StringSliceFlag{Name: "config-file", EnvVars: []string{"AGENT_CONFIG_FILE"},
			Usage: "JSON config file, or a directory of *.json files read in lexical order; repeatable"},
	}
	for _, o := range agent.Options() {
		if o.Repeatable {
			flags = append(flags, &ucli.StringSliceFlag{Name: o.Name, Usage: o.Usage, EnvVars: []string{o.EnvVar()}})
		} else if o.Bool {
			flags = append(flags, &ucli.BoolFlag{Name: o.Name, Usage: o.Usage, EnvVars: []string{o.EnvVar()}})
		} else {
			flags = append(flags, &ucli.StringFlag{Name: o.Name, Usage: o.Usage, EnvVars: []string{o.EnvVar()}, DefaultText: o.Default()})
		}
	}
	return &ucli.Command{
		Name:  "run",
		Usage: "run the agent on this host",
		Description: "Settings come from defaults, then config files, then AGENT_* environment variables, then flags;\n" +
			"each layer overrides the one before. Ctrl-C (or SIGTERM) leaves the mesh gracefully; a second one exits at once.\n" +
			"SIGHUP (or agent reload) re-reads them: log level, tags, event handlers, checks and rate limits change at once." +
			"\n\nExamples:\n" +
			"  agent run --node web-1 --bind 10.0.0.5:7946 --join 10.0.0.4:7946 --encrypt KEY --data-dir /var/lib/agent\n" +
			"  agent run --config-file /etc/agent.d            # every *.json there, in lexical order\n" +
			"  AGENT_LOG_LEVEL=debug agent run --node dev --bind 127.0.0.1:7946 --data-dir /tmp/agent",
		Flags:  flags,
		Action: runAgent,
	}
}

// loadConfig layers defaults, files, then environment and flags (urfave/cli
// gives a flag precedence over its environment variable).
func loadConfig(c *ucli.Context) (agent.Config, error) {
	cfg := agent.DefaultConfig()
	for _, f := range envLines(c.StringSlice("config-file"), "AGENT_CONFIG_FILE") {
		if err := cfg.ApplyFile(f); err != nil {
			return cfg, err
		}
	}
	for _, o := range agent.Options() {
		if !c.IsSet(o.Name) {
			continue
		}
		values := c.StringSlice(o.Name)
		if o.Repeatable {
			values = envLines(values, o.EnvVar())
		}
		switch {
		case o.Bool:
			values = []string{strconv.FormatBool(c.Bool(o.Name))}
		case !o.Repeatable:
			values = []string{c.String(o.Name)}
		}
		if err := cfg.Apply(o.Name, values); err != nil {
			return cfg, fmt.Errorf("--%s (or %s): %w", o.Name, o.EnvVar(), unwrapName(err, o.Name))
		}
	}
	return cfg, cfg.Validate()
}

// envLines splits a repeatable setting that came from its environment
// variable into one value per line. Commas are not separators: they are
// part of values such as --tag dc=a,b or an event handler's filter list.
// (urfave/cli hands the variable over whole, as one value, and only when no
// flag was given.)
func envLines(values []string, env string) []string {
	v, ok := os.LookupEnv(env)
	// urfave/cli trims the value's surrounding space.
	if !ok || len(values) != 1 || values[0] != strings.TrimSpace(v) || !strings.Contains(values[0], "\n") {
		return values
	}
	var out []string
	for _, line := range strings.Split(v, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return out
}

// unwrapName drops Apply's "name: " prefix, which the caller states itself.
func unwrapName(err error, name string) error {
	msg := err.Error()
	if len(msg) > len(name)+2 && msg[:len(name)+2] == name+": " {
		return fmt.Errorf("%s", msg[len(name)+2:])
	}
	return err
}

func runAgent(c *ucli.Context) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	logger, logs, err := agent.NewLogger(c.App.ErrWriter, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	notifier, err := agent.NotifierFromEnv()
	if err != nil {
		return err
	}
	// A reload layers the same files, environment and flags again.
	reload := func() (agent.Config, error) { return loadConfig(c) }
	a, err := agent.New(cfg, agent.Deps{Logger: logger, Logs: logs, Notifier: notifier, LoadConfig: reload})
	if err != nil {
		return err
	}
	// Signals are caught before Start, so that one arriving during start-up
	// is not lost to the default handler.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := a.Start(); err != nil {
		return err
	}
	for {
		select {
		case <-hup:
			logger.Info("SIGHUP received; reloading the config")
			a.Reload() // it logs what it did, or why it changed nothing
			continue
		case <-a.LeftCh():
			err := stopWithin(a, cfg.LeaveTimeout, nil, logger, signals)
			if lost := a.Lost(); lost != nil {
				return lost
			}
			return err
		case sig := <-signals:
			logger.Info("signal received; leaving the mesh (send it again to exit at once)", "signal", sig.String())
			return stopWithin(a, cfg.LeaveTimeout, func() {
				if err := a.Leave(); err != nil {
					logger.Error("graceful leave failed", "err", err)
				}
			}, logger, signals)
		}
	}
}

// stopWithin runs leave (when given) and the agent's shutdown, and returns
// once they are done, at --leave-timeout, or at a (second) signal,
// whichever comes first: whatever its clients do, the agent stops in that time.
func stopWithin(a *agent.Agent, limit time.Duration, leave func(), logger *slog.Logger, signals <-chan os.Signal) error {
	done := make(chan error, 1)
	go func() {
		if leave != nil {
			leave()
		}
		done <- a.Shutdown()
	}()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return fmt.Errorf("the agent did not stop within --leave-timeout %s; exiting without waiting for the rest", limit)
	case sig := <-signals:
		logger.Warn("second signal: exiting without finishing the leave", "signal", sig.String())
		return withCode(ExitError, fmt.Errorf("interrupted"))
	}
}
