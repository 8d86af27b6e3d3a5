package cli

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent"
	"github.com/meshagent/agent/agent/rpc"
)

var spawnExitCodes = map[string]int{
	rpc.SpawnNoServer:    ExitNoServer,
	rpc.SpawnUnknownKind: ExitUnknownKind,
	rpc.SpawnRefused:     ExitRefused,
	rpc.SpawnTimeout:     ExitTimeout,
	rpc.SpawnBadRequest:  ExitError,
	rpc.SpawnMinority:    ExitMinority,
	rpc.SpawnDied:        ExitDied,
	rpc.SpawnConflict:    ExitConflict,
}

// minOwnerLease is the shortest --owner-lease: below it, a lease would
// stop interpreters for a failure the mesh has not yet ruled out.
const minOwnerLease = 10 * time.Second

func spawnCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "spawn",
		Usage:     "elect a server and start an interpreter there",
		ArgsUsage: "[-- EXTRA ARGS...]",
		Description: "Extra arguments after -- are appended to the kind's configured command, if its args_pattern allows them.\n\n" +
			"Exit codes besides 0 and 1 (agent --help lists all):\n" + exitCodesText("spawn") +
			"\n\nExamples:\n" +
			"  agent spawn --kind demo --wait\n" +
			"  agent spawn --kind python --key notebook-7 --restart on-failure --wait --format json\n" +
			"  agent spawn --kind python --constraint dc=east -- --profile=fast",
		Flags: append(rpcFlags(), formatFlag(),
			&ucli.StringFlag{Name: "kind", Usage: "interpreter kind, e.g. demo"},
			&ucli.BoolFlag{Name: "wait", Usage: "return once the interpreter is alive in the local agent's member list"},
			&ucli.DurationFlag{Name: "wait-timeout", Value: rpc.DefaultSpawnWait, Usage: "how long --wait waits"},
			&ucli.StringFlag{Name: "key", Usage: "idempotency key: a second spawn with the same key returns the first interpreter"},
			&ucli.StringSliceFlag{Name: "constraint", Usage: "server tag k must match regex (anchored), k=regex; repeatable"},
			&ucli.StringFlag{Name: "policy", Usage: "spread (default) or binpack"},
			&ucli.StringFlag{Name: "restart", Usage: "restart policy: no or on-failure", DefaultText: "the kind's, else no"},
			&ucli.DurationFlag{Name: "owner-lease", Usage: "stop the interpreter once this agent (its owner) has been failed or left " +
				"this long, e.g. 2m (a client whose host died leaves nothing running)", DefaultText: "none: it runs until stopped"},
		),
		Action: spawn,
	}
}

func spawn(c *ucli.Context) error {
	format, err := checkFormat(c)
	if err != nil {
		return err
	}
	if c.String("kind") == "" {
		return errors.New("spawn needs --kind, e.g. agent spawn --kind demo")
	}
	if err := checkKind(c.String("kind")); err != nil {
		return err
	}
	if d := c.Duration("wait-timeout"); d <= 0 {
		return fmt.Errorf("--wait-timeout %s must be positive: write it like 30s or 2m", d)
	}
	if d := c.Duration("owner-lease"); d < 0 || d > 0 && d < minOwnerLease {
		return fmt.Errorf("--owner-lease %s: give at least %s (longer than the mesh takes to see a host failed), like 2m; "+
			"leave it out for none", d, minOwnerLease)
	}
	cl, err := dial(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	resp, err := cl.Spawn(rpc.SpawnRequest{Kind: c.String("kind"), Key: c.String("key"), Constraints: c.StringSlice("constraint"),
		Policy: c.String("policy"), Args: c.Args().Slice(), Wait: c.Bool("wait"), Timeout: c.Duration("wait-timeout"),
		Restart: c.String("restart"), OwnerLease: c.Duration("owner-lease")})
	if err != nil {
		return fmt.Errorf("spawn: %w", err)
	}
	if resp.Code == rpc.SpawnRefused && len(resp.Attempts) == 0 {
		// Refused at the election, before any server was asked to start
		// it: no server was eligible, as place reports it. (The agent
		// should say so itself; until it does, the CLI tells them apart.)
		resp.Code = rpc.SpawnNoServer
	}
	if format == "json" {
		if err := writeJSON(c.App.Writer, spawnJSON(resp)); err != nil {
			return err
		}
	} else if resp.Code == "" {
		verb := "started"
		if resp.Existing {
			verb = "already running (same --key)"
		}
		fmt.Fprintf(c.App.Writer, "%s %s on %s: pid %d, endpoint %s (decision %.0f ms, total %.0f ms)\n",
			resp.Name, verb, resp.Node, resp.PID, resp.Endpoint, resp.DecisionMS, resp.TotalMS)
	}
	if resp.Code != "" {
		code, ok := spawnExitCodes[resp.Code]
		if !ok {
			code = ExitError
		}
		return withCode(code, errors.New(resp.Error))
	}
	return nil
}

func spawnJSON(r rpc.SpawnResponse) map[string]any {
	out := map[string]any{
		"name": r.Name, "node": r.Node, "kind": r.Kind, "request_id": r.RequestID, "pid": r.PID, "endpoint": r.Endpoint,
		"existing": r.Existing, "generation": r.Generation, "attempts": nonNil(r.Attempts), "decision_ms": r.DecisionMS, "total_ms": r.TotalMS,
	}
	if r.Code != "" {
		out["error"], out["code"] = r.Error, r.Code
	}
	if c := r.Connection; c != nil {
		// Jupyter's connection file fields, key included: this output
		// goes to the one client that asked for the spawn.
		conn := map[string]any{"ip": c.IP, "transport": c.Transport, "key": c.Key, "signature_scheme": c.SignatureScheme,
			"kernel_name": c.KernelName}
		for name, p := range c.Ports {
			conn[name+"_port"] = p
		}
		out["connection"] = conn
	}
	return out
}

func interpretersCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "interpreters",
		Usage: "list the live interpreters in the mesh, with their host server and status",
		Description: "--all adds the interpreters that ended within the reap window (--interpreter-reap of `agent run`),\n" +
			"with how they ended: an exit status, stopped, duplicate, gave up, host failed or supervisor failed." +
			"\n\nExamples:\n" +
			"  agent interpreters\n" +
			"  agent interpreters --all --format json",
		Flags: append(rpcFlags(), formatFlag(),
			&ucli.BoolFlag{Name: "all", Usage: "also list the interpreters that ended within the reap window, and how"}),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			list, err := cl.Interpreters(c.Bool("all"))
			if err != nil {
				return err
			}
			if format == "json" {
				return writeJSON(c.App.Writer, map[string]any{"interpreters": agent.InterpretersView(list)})
			}
			writeInterpretersTable(c.App.Writer, list)
			return nil
		}),
	}
}

func writeInterpretersTable(w io.Writer, list []rpc.InterpreterView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tHOST\tSTATUS\tENDPOINT\tPID\tRESTART")
	for _, i := range list {
		status := i.Status
		switch {
		case i.Ended != "":
			status += ": " + i.Ended
		case i.HostStatus != "alive":
			status += " (host " + i.HostStatus + ")"
		}
		restart := i.Restart
		if restart == "" {
			restart = "no"
		}
		if i.Restarts > 0 || i.Generation > 0 {
			restart += fmt.Sprintf(" (%s, %s)", plural(i.Restarts, "restart", "restarts"), plural(i.Generation, "re-placement", "re-placements"))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i.Name, i.Kind, i.Host, status, i.Endpoint, strconv.Itoa(i.PID), restart)
	}
	tw.Flush()
}

func stopCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "stop",
		Usage: "stop an interpreter, wherever it runs",
		Description: "Examples:\n" +
			"  agent stop demo-3f2a9c1b4d5e6f70-9c1e",
		ArgsUsage: "NAME",
		Flags:     rpcFlags(),
		Before:    needArgs(1, true, "stop needs exactly one interpreter name: agent stop NAME (see agent interpreters)"),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, _ string) error {
			// An interpreter that ignores SIGTERM is killed after its kind's
			// grace (10 s by default): say so rather than wait in silence.
			name := c.Args().First()
			slow := time.AfterFunc(2*time.Second, func() {
				fmt.Fprintf(c.App.ErrWriter, "waiting for %s to stop: it had SIGTERM; SIGKILL follows after its kind's stop grace (10 s by default)\n", name)
			})
			resp, err := cl.StopInterpreter(name)
			slow.Stop()
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "%s on %s stopped (%s)\n", resp.Name, resp.Host, resp.Status)
			return nil
		}),
	}
}

// interpreterCommand is the supervisor a server starts for each
// interpreter; users do not run it.
func interpreterCommand() *ucli.Command {
	return &ucli.Command{
		Name:   "interpreter",
		Usage:  "supervise one interpreter (started by a server agent)",
		Hidden: true,
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "spec", Required: true, Usage: "the spec file the server wrote"},
			&ucli.StringFlag{Name: "log-level", Value: "info"},
		},
		Action: func(c *ucli.Context) error {
			logger, _, err := agent.NewLogger(c.App.ErrWriter, c.String("log-level"), "text")
			if err != nil {
				return err
			}
			if code := agent.RunSupervisor(c.String("spec"), logger); code != 0 {
				return withCode(code, errors.New(""))
			}
			return nil
		},
	}
}

// echoServerCommand is the built-in demo interpreter.
func echoServerCommand() *ucli.Command {
	return &ucli.Command{
		Name:   "echo-server",
		Usage:  "the demo interpreter: echo every line received",
		Hidden: true,
		Flags:  []ucli.Flag{&ucli.StringFlag{Name: "addr", Required: true, Usage: "host:port to listen on"}},
		Action: func(c *ucli.Context) error {
			if code := agent.RunEchoServer(c.String("addr"), c.App.ErrWriter); code != 0 {
				return withCode(code, errors.New(""))
			}
			return nil
		},
	}
}
