package cli

import (
	"fmt"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent/rpc"
)

func restartCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "restart",
		Usage:     "restart an interpreter in place, wherever it runs",
		ArgsUsage: "NAME",
		Description: "Its supervisor stops the program (SIGTERM, then SIGKILL after the stop grace) and starts it\n" +
			"again on the same host with the same ports and connection file: a Jupyter client keeps its\n" +
			"connection. Exit code 1 when it was not restarted, with the reason." +
			"\n\nExamples:\n" +
			"  agent restart ipykernel-k154671f1ba7caa20-4b20",
		Flags:  append(rpcFlags(), formatFlag()),
		Before: needArgs(1, true, "restart needs an interpreter name: agent restart NAME (see agent interpreters)"),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			resp, err := cl.RestartInterpreter(c.Args().First())
			if err != nil {
				return err
			}
			if format == "json" {
				out := map[string]any{"name": resp.Name, "host": resp.Host, "restarted": resp.Restarted, "pid": resp.PID}
				if resp.Reason != "" {
					out["reason"] = resp.Reason
				}
				if err := writeJSON(c.App.Writer, out); err != nil {
					return err
				}
			} else if resp.Restarted {
				fmt.Fprintf(c.App.Writer, "%s restarted in place on %s (process %d)\n", resp.Name, resp.Host, resp.PID)
			}
			if !resp.Restarted {
				return fmt.Errorf("%s not restarted on %s: %s", resp.Name, resp.Host, resp.Reason)
			}
			return nil
		}),
	}
}
