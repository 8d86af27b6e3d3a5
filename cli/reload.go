package cli

import (
	"fmt"
	"strings"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent/rpc"
)

func reloadCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "reload",
		Usage: "make the agent re-read its config files, as SIGHUP does",
		Description: "The agent at --rpc-addr layers its config files, environment and flags again. The log level, tags,\n" +
			"event handlers, checks, rate limits and interpreter kinds (the --interpreters file, read again) change at\n" +
			"once; new spawns use the new kinds, running interpreters keep theirs. Any other setting that changed (bind,\n" +
			"data dir, key, …) is listed as taking effect at the next start. A bad file changes nothing: the error says why." +
			"\n\nExamples:\n" +
			"  agent reload                                          # as systemctl reload agent (SIGHUP)",
		Flags: append(rpcFlags(), formatFlag()),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			resp, err := cl.Reload()
			if err != nil {
				return err
			}
			if format == "json" {
				return writeJSON(c.App.Writer, map[string]any{"node": resp.Node, "applied": resp.Applied, "restart": resp.Restart})
			}
			if len(resp.Applied) == 0 {
				fmt.Fprintf(c.App.Writer, "%s reloaded its config: nothing to change at once\n", resp.Node)
			} else {
				fmt.Fprintf(c.App.Writer, "%s reloaded its config; changed now: %s\n", resp.Node, strings.Join(resp.Applied, ", "))
			}
			for _, r := range resp.Restart {
				fmt.Fprintf(c.App.Writer, "needs a restart: %s\n", r)
			}
			return nil
		}),
	}
}

func checksCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "checks",
		Usage:     "list a server's health checks, or report a ttl check's status",
		ArgsUsage: "[pass|warn|fail NAME [NOTE]]",
		Description: "Without arguments, lists the checks of the server at --rpc-addr with their status and last output,\n" +
			"then the kind checks of the interpreters it runs (INTERPRETER/CHECK).\n" +
			"A server with a critical check takes no new interpreters (its bids say unhealthy: NAME);\n" +
			"an interpreter whose kind check turns critical is restarted in place under the on-failure policy.\n" +
			"pass, warn and fail set a ttl check's status, which holds for its ttl." +
			"\n\nExamples:\n" +
			"  agent checks\n" +
			"  agent checks pass backup \"nightly backup done\"",
		Flags: append(rpcFlags(), formatFlag()),
		Before: func(c *ucli.Context) error {
			if c.NArg() == 0 {
				return nil
			}
			if _, ok := reportStatus[c.Args().First()]; !ok || c.NArg() < 2 || c.NArg() > 3 {
				return fmt.Errorf("checks takes no arguments, or pass|warn|fail NAME [NOTE], e.g. agent checks pass backup \"ran at 02:00\"")
			}
			return nil
		},
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			var req rpc.ChecksRequest
			if c.NArg() > 0 {
				req = rpc.ChecksRequest{Status: reportStatus[c.Args().First()], Report: c.Args().Get(1), Note: c.Args().Get(2)}
			}
			resp, err := cl.Checks(req)
			if err != nil {
				return err
			}
			if format == "json" {
				list := make([]map[string]any, 0, len(resp.Checks))
				for _, v := range resp.Checks {
					item := map[string]any{"name": v.Name, "type": v.Type, "status": v.Status, "output": v.Output,
						"since": rfc3339OrNil(v.Since), "checked": rfc3339OrNil(v.Checked)}
					if v.Interpreter != "" {
						item["interpreter"] = v.Interpreter
					}
					list = append(list, item)
				}
				return writeJSON(c.App.Writer, map[string]any{"node": resp.Node, "checks": list})
			}
			if len(resp.Checks) == 0 {
				fmt.Fprintf(c.App.Writer, "%s has no health checks\n", resp.Node)
				return nil
			}
			for _, v := range resp.Checks {
				since := time.Since(v.Since).Round(time.Second)
				name := v.Name
				if v.Interpreter != "" {
					name = v.Interpreter + "/" + v.Name // a kind check of an interpreter here
				}
				fmt.Fprintf(c.App.Writer, "%-20s %-6s %-8s for %-8s %s\n", name, v.Type, v.Status, since, oneLine(v.Output))
			}
			return nil
		}),
	}
}

var reportStatus = map[string]string{"pass": "passing", "warn": "warning", "fail": "critical"}

// oneLine keeps a check's output to one line of a listing.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return s
}
