package cli

import (
	"fmt"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent/rpc"
)

func drainCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "drain",
		Usage: "take a server out of placement without killing what runs there",
		Description: "The server at --rpc-addr refuses new interpreters from now on (its bids say draining); its running\n" +
			"interpreters keep going until they exit or, with --stop, until --deadline from now, when they are\n" +
			"stopped. The drain survives a restart of the agent. --undo ends it.",
		Flags: append(rpcFlags(), formatFlag(),
			&ucli.DurationFlag{Name: "deadline", Usage: "with --stop: how long the running interpreters may still run, e.g. 30m"},
			&ucli.BoolFlag{Name: "stop", Usage: "stop the running interpreters at the deadline (at once without one)"},
			&ucli.BoolFlag{Name: "undo", Usage: "end the drain: the server takes interpreters again"},
		),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			resp, err := cl.Drain(rpc.DrainRequest{Deadline: c.Duration("deadline"), Stop: c.Bool("stop"), Undo: c.Bool("undo")})
			if err != nil {
				return err
			}
			if format == "json" {
				out := map[string]any{"node": resp.Node, "draining": resp.Draining, "running": resp.Running}
				if !resp.StopAt.IsZero() {
					out["stop_at"] = resp.StopAt.UTC().Format(time.RFC3339)
				}
				return writeJSON(c.App.Writer, out)
			}
			switch {
			case !resp.Draining:
				fmt.Fprintf(c.App.Writer, "%s takes interpreters again\n", resp.Node)
			case !resp.StopAt.IsZero():
				fmt.Fprintf(c.App.Writer, "%s is draining: no new interpreters; its %d running ones are stopped at %s\n",
					resp.Node, resp.Running, resp.StopAt.Local().Format(time.RFC3339))
			default:
				fmt.Fprintf(c.App.Writer, "%s is draining: no new interpreters; its %d running ones keep going\n", resp.Node, resp.Running)
			}
			return nil
		}),
	}
}
