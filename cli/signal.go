package cli

import (
	"fmt"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent/rpc"
)

func signalCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "signal",
		Usage:     "deliver a signal to an interpreter, wherever it runs",
		ArgsUsage: "NAME SIGNAL",
		Description: "SIGNAL is one of " + strings.Join(rpc.AllowedSignals, ", ") + " (also INT, TERM, KILL, 2, 15, 9). It goes to the\n" +
			"interpreter's process group; its supervisor stays (SIGINT interrupts a kernel, it does not stop it).\n" +
			"Exit code 1 when it was not delivered, with the reason." +
			"\n\nExamples:\n" +
			"  agent signal ipykernel-k154671f1ba7caa20-4b20 SIGINT      # interrupt a kernel",
		Flags: append(rpcFlags(), formatFlag()),
		Before: func(c *ucli.Context) error {
			if err := needArgs(2, true, "signal needs an interpreter name and a signal: agent signal NAME SIGINT (see agent interpreters)")(c); err != nil {
				return err
			}
			// Refused before any agent is asked.
			_, _, err := rpc.ParseSignal(c.Args().Get(1))
			return err
		},
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			resp, err := cl.SignalInterpreter(c.Args().First(), c.Args().Get(1))
			if err != nil {
				return err
			}
			if format == "json" {
				out := map[string]any{"name": resp.Name, "host": resp.Host, "signal": resp.Signal, "delivered": resp.Delivered,
					"pid": resp.PID}
				if resp.Reason != "" {
					out["reason"] = resp.Reason
				}
				if err := writeJSON(c.App.Writer, out); err != nil {
					return err
				}
			} else if resp.Delivered {
				fmt.Fprintf(c.App.Writer, "%s delivered to %s on %s (process group %d)\n", resp.Signal, resp.Name, resp.Host, resp.PID)
			}
			if !resp.Delivered {
				return fmt.Errorf("%s not delivered to %s on %s: %s", resp.Signal, resp.Name, resp.Host, resp.Reason)
			}
			return nil
		}),
	}
}
