package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/simulation"
)

// Exit codes, stable for scripts: one set for every command, listed by
// exitCodes in `agent --help` and in the README.
const (
	ExitOK          = 0
	ExitError       = 1 // anything went wrong; the message says what
	ExitNoMatch     = 2 // a listing matched nothing
	ExitNoServer    = 3 // no server is eligible for the request
	ExitUnknownKind = 4
	ExitRefused     = 5 // every eligible server refused
	ExitTimeout     = 6
	ExitMinority    = 7 // a keyed spawn on the minority side of a partition
	ExitDied        = 8 // the interpreter exited during spawn --wait
	ExitConflict    = 9 // a keyed spawn differs from the key's running interpreter
)

// exitCodes is the one table of exit codes, for help and the README.
var exitCodes = []struct {
	Code     int
	Commands string
	Meaning  string
}{
	{ExitOK, "all", "success"},
	{ExitError, "all", "any other error; the message says what"},
	{ExitNoMatch, "members", "no member matches the filters"},
	{ExitNoServer, "place, spawn", "no server is eligible: none alive, none matching the constraints, or all full"},
	{ExitUnknownKind, "spawn", "no server offers the kind"},
	{ExitRefused, "spawn", "every eligible server refused to start it"},
	{ExitTimeout, "spawn", "no server answered the start order in time, or --wait ran out"},
	{ExitMinority, "spawn", "a keyed spawn on the minority side of a partition"},
	{ExitDied, "spawn", "the interpreter exited during --wait"},
	{ExitConflict, "spawn", "the key's running interpreter has another kind, other arguments or another restart policy"},
}

// exitCodesText renders exitCodes for help: all of them, or those of one
// command (and then not the ones every command has).
func exitCodesText(command string) string {
	var b strings.Builder
	for _, e := range exitCodes {
		if command != "" && !slices.Contains(strings.Split(e.Commands, ", "), command) {
			continue
		}
		if command == "" {
			fmt.Fprintf(&b, "  %d  %-13s %s\n", e.Code, e.Commands, e.Meaning)
		} else {
			fmt.Fprintf(&b, "  %d  %s\n", e.Code, e.Meaning)
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

// exitError carries an exit code other than 1 up to Run.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

// Run runs the command line and returns the process exit code. Output goes
// to stdout and stderr as given, so that tests can read it.
func Run(args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	args, err := routeArgs(app, args)
	if err == nil {
		err = app.Run(reorderArgs(app, args))
	}
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, rpc.ErrUnauthorized) {
		// The agent wants a token none was given for; a wrong token is
		// already explained by dial.
		err = errors.New("the agent requires an RPC token: give it with --rpc-token-file or AGENT_RPC_TOKEN")
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintf(stderr, "Error: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	return ExitError
}

func newApp(stdout, stderr io.Writer) *ucli.App {
	app := &ucli.App{
		Name:  "agent",
		Usage: "gossip membership and interpreter placement agent",
		Description: "Every host runs `agent run`; the other commands talk to the local agent over its RPC (--rpc-addr,\n" +
			"AGENT_RPC_ADDR, default 127.0.0.1:7373). `agent COMMAND --help` says more, with examples; the README and\n" +
			"docs/ say everything.\n\n" +
			"Examples:\n" +
			"  agent run --node web-1 --bind 10.0.0.5:7946 --join 10.0.0.4:7946 --encrypt KEY --data-dir /var/lib/agent\n" +
			"  agent members\n" +
			"  agent spawn --kind demo --wait\n" +
			"  agent interpreters\n\n" +
			"Exit codes, the same for every command:\n" + exitCodesText(""),
		Version:         agent.Version,
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		// Errors are printed once, by Run, with the right exit code.
		ExitErrHandler: func(*ucli.Context, error) {},
		// A comma belongs to the value (--tag dc=a,b, a filter list in
		// --event-handler, a regex's {1,3}); repeat the flag for two values.
		DisableSliceFlagSeparator: true,
		OnUsageError:              onUsageError,
		Commands: []*ucli.Command{
			runCommand(),
			membersCommand(),
			placeCommand(),
			spawnCommand(),
			interpretersCommand(),
			stopCommand(),
			signalCommand(),
			restartCommand(),
			drainCommand(),
			checksCommand(),
			reloadCommand(),
			interpreterCommand(),
			echoServerCommand(),
			joinCommand(),
			leaveCommand(),
			forceLeaveCommand(),
			tagsCommand(),
			eventCommand(),
			queryCommand(),
			monitorCommand(),
			infoCommand(),
			keygenCommand(),
			keysCommand(),
			versionCommand(),
			simulateCommand(),
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = onUsageError
		if c.ArgsUsage == "" {
			c.Before = chainBefore(noArgs(noArgsHints[c.Name]), c.Before)
		}
	}
	return app
}

// noArgsHints say what a user who typed a word after these commands
// probably meant.
var noArgsHints = map[string]string{
	"run":     "settings are flags, e.g. --join ADDR",
	"members": "to list one member, filter with --name NAME",
	"leave":   "leave stops the agent at --rpc-addr; to remove a failed member, use force-leave NODE",
	"tags":    "give tags with --set key=value and --delete key",
	"keys":    "give the key with --install, --use or --remove",
	"place":   "give the kind with --kind",
}

// rpcFlags are the flags of every command that talks to an agent.
func rpcFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.StringFlag{Name: "rpc-addr", Value: "127.0.0.1:7373", EnvVars: []string{"AGENT_RPC_ADDR"},
			Usage: "RPC address of the agent to talk to"},
		&ucli.StringFlag{Name: "rpc-token", EnvVars: []string{"AGENT_RPC_TOKEN"},
			Usage: "RPC token, when the agent requires one"},
		&ucli.StringFlag{Name: "rpc-token-file", EnvVars: []string{"AGENT_RPC_TOKEN_FILE"},
			Usage: "file holding the RPC token (its first line)"},
	}
}

func formatFlag() ucli.Flag {
	return &ucli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"}
}

// dial connects to the agent named by --rpc-addr, turning "nothing listens"
// into advice.
func dial(c *ucli.Context) (*rpc.Client, error) {
	addr := c.String("rpc-addr")
	if err := agent.CheckHostPort(addr); err != nil {
		return nil, fmt.Errorf("--rpc-addr: %w", err)
	}
	var err error
	token := c.String("rpc-token")
	if f := c.String("rpc-token-file"); f != "" {
		if token != "" {
			return nil, errors.New("both --rpc-token and --rpc-token-file are set: keep one")
		}
		if token, err = agent.ReadTokenFile(f); err != nil {
			return nil, err
		}
	}
	cl, err := rpc.Dial(addr, rpc.ClientConfig{Token: token, Timeout: 5 * time.Second})
	if errors.Is(err, rpc.ErrNoAgent) {
		return nil, fmt.Errorf("no agent answers at %s: is `agent run` started? (point --rpc-addr or AGENT_RPC_ADDR at a running agent)", addr)
	}
	if errors.Is(err, rpc.ErrUnauthorized) {
		return nil, fmt.Errorf("agent at %s refused the RPC token: give the agent's token with --rpc-token-file or AGENT_RPC_TOKEN", addr)
	}
	if errors.Is(err, rpc.ErrNotRPC) {
		var said *rpc.NotRPCError
		if errors.As(err, &said) {
			return nil, fmt.Errorf("%s answers HTTP, not the agent's RPC, and says: %s", addr, said.Said)
		}
		return nil, fmt.Errorf("%s answers HTTP, not the agent's RPC: point --rpc-addr or AGENT_RPC_ADDR at the agent's RPC, "+
			"by default 127.0.0.1:7373", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("agent at %s: %w", addr, err)
	}
	return cl, nil
}

// withAgent is the body of a client command: it checks --format (when the
// command has it), dials the agent, and hands fn the client and the format.
func withAgent(fn func(c *ucli.Context, cl *rpc.Client, format string) error) ucli.ActionFunc {
	return func(c *ucli.Context) error {
		format, err := checkFormat(c)
		if err != nil {
			return err
		}
		cl, err := dial(c)
		if err != nil {
			return err
		}
		defer cl.Close()
		return fn(c, cl, format)
	}
}

func checkFormat(c *ucli.Context) (string, error) {
	f := strings.ToLower(c.String("format"))
	if f == "" {
		f = "text" // the command has no --format
	}
	if f != "text" && f != "json" {
		return "", fmt.Errorf("--format %q is not known: use text or json", f)
	}
	return f, nil
}

func versionCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "version",
		Usage: "print the agent's version",
		Description: "Examples:\n" +
			"  agent version",
		Action: func(c *ucli.Context) error {
			fmt.Fprintf(c.App.Writer, "agent %s\n", agent.Version)
			return nil
		},
	}
}

// Main is the body of the binary's main function. A process started by
// `agent simulate` to run in virtual time does that run and exits
// instead (simulation.RunVirtual).
func Main() {
	simulation.ServeVirtualJob()
	os.Exit(Run(os.Args, os.Stdout, os.Stderr))
}
