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
			"stopped. The drain survives a restart of the agent. --undo ends it." +
			"\n\nExamples:\n" +
			"  agent drain --rpc-addr 10.0.0.5:7373                  # no new interpreters there\n" +
			"  agent drain --stop --deadline 30m                     # and stop what still runs in 30 minutes\n" +
			"  agent drain --undo",
		Flags: append(rpcFlags(), formatFlag(),
			&ucli.DurationFlag{Name: "deadline", Usage: "with --stop: how long the running interpreters may still run, e.g. 30m"},
			&ucli.BoolFlag{Name: "stop", Usage: "stop the running interpreters at the deadline (at once without one); " +
				"a drain without --stop keeps a pending stop, --stop=false cancels it"},
			&ucli.BoolFlag{Name: "undo", Usage: "end the drain: the server takes interpreters again"},
		),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			stop := c.Bool("stop")
			resp, err := cl.Drain(rpc.DrainRequest{Deadline: c.Duration("deadline"), Stop: stop,
				NoStop: c.IsSet("stop") && !stop, Undo: c.Bool("undo")})
			if err != nil {
				return err
			}
			if format == "json" {
				out := map[string]any{"node": resp.Node, "draining": resp.Draining, "running": resp.Running,
					"stop_at": rfc3339OrNil(resp.StopAt), "stop_kept": resp.Kept}
				if !resp.Replaced.IsZero() {
					out["replaced_stop_at"] = rfc3339OrNil(resp.Replaced)
				}
				return writeJSON(c.App.Writer, out)
			}
			fmt.Fprintln(c.App.Writer, describeDrain(resp))
			return nil
		}),
	}
}

func rfc3339OrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(time.RFC3339)
}

// describeDrain says what the drain is now, and what happened to a stop
// that was pending before the request.
func describeDrain(r rpc.DrainResponse) string {
	at := func(t time.Time) string { return t.Local().Format(time.RFC3339) }
	running := plural(r.Running, "running interpreter", "running interpreters")
	var s string
	switch {
	case !r.Draining:
		s = r.Node + " takes interpreters again"
	case r.Kept:
		s = fmt.Sprintf("%s is draining: no new interpreters; its %s still stop at %s, as set before "+
			"(--stop --deadline D replaces that, --stop=false cancels it)", r.Node, running, at(r.StopAt))
	case !r.StopAt.IsZero():
		s = fmt.Sprintf("%s is draining: no new interpreters; its %s stop at %s", r.Node, running, at(r.StopAt))
	default:
		s = fmt.Sprintf("%s is draining: no new interpreters; its %s keep going", r.Node, running)
	}
	if !r.Replaced.IsZero() {
		if r.StopAt.IsZero() {
			s += fmt.Sprintf(" (the stop set for %s is cancelled)", at(r.Replaced))
		} else {
			s += fmt.Sprintf(" (instead of %s)", at(r.Replaced))
		}
	}
	return s
}

// plural writes n with the singular or plural noun: "1 restart", "2 restarts".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
