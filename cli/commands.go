package cli

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent"
	"github.com/meshagent/agent/agent/rpc"
)

// needArgs checks a command's positional arguments before it dials.
func needArgs(n int, exact bool, usage string) ucli.BeforeFunc {
	return func(c *ucli.Context) error {
		if got := c.Args().Len(); got < n || exact && got != n {
			return errors.New(usage)
		}
		return nil
	}
}

func joinCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "join",
		Usage: "tell the agent to join the mesh through the given members",
		Description: "The agent contacts each address and says how many answered; --replay replays past user events to it.\n\n" +
			"Examples:\n" +
			"  agent join 10.0.0.4:7946 10.0.0.6:7946",
		ArgsUsage: "ADDR [ADDR...]",
		Flags: append(rpcFlags(),
			&ucli.BoolFlag{Name: "replay", Usage: "replay past user events to this agent"}),
		Before: needArgs(1, false, "join needs at least one address: agent join 10.0.0.5:7946"),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, _ string) error {
			n, err := cl.Join(c.Args().Slice(), c.Bool("replay"))
			if err != nil {
				return fmt.Errorf("join %s: %w", strings.Join(c.Args().Slice(), ", "), err)
			}
			fmt.Fprintf(c.App.Writer, "joined the mesh through %d of %d addresses\n", n, c.Args().Len())
			return nil
		}),
	}
}

func leaveCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "leave",
		Usage: "leave the mesh gracefully and stop the agent",
		Description: "The others see the agent as left, not failed. With --data-dir it does not rejoin at its next start\n" +
			"unless run with --rejoin (or --join), as serf's agent.\n\n" +
			"Examples:\n" +
			"  agent leave --rpc-addr 10.0.0.5:7373",
		Flags: rpcFlags(),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, _ string) error {
			if err := cl.Leave(); err != nil {
				return fmt.Errorf("leave: %w", err)
			}
			fmt.Fprintln(c.App.Writer, "left the mesh; the agent is stopping")
			return nil
		}),
	}
}

func forceLeaveCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "force-leave",
		Usage: "mark a failed member as left (it stops being probed and reconnected to)",
		Description: "An alive or unknown node is an error (serf says nothing). --prune forgets it at once instead of\n" +
			"after the reap timeout.\n\n" +
			"Examples:\n" +
			"  agent force-leave web-3\n" +
			"  agent force-leave --prune web-3                        # forget it now",
		ArgsUsage: "NODE",
		Flags: append(rpcFlags(),
			&ucli.BoolFlag{Name: "prune", Usage: "also remove it from the member list at once"}),
		Before: needArgs(1, true, "force-leave needs exactly one node name: agent force-leave NODE"),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, _ string) error {
			node := c.Args().First()
			if err := cl.ForceLeave(node, c.Bool("prune")); err != nil {
				return fmt.Errorf("force-leave %s: %w", node, err)
			}
			if c.Bool("prune") {
				fmt.Fprintf(c.App.Writer, "%s marked as left and removed from the member list\n", node)
			} else {
				fmt.Fprintf(c.App.Writer, "%s marked as left\n", node)
			}
			return nil
		}),
	}
}

func tagsCommand() *ucli.Command {
	var set map[string]string
	return &ucli.Command{
		Name:  "tags",
		Usage: "set or delete tags of the local agent",
		Description: "The changes are gossiped to the whole mesh and kept in <data-dir>/tags.json across a restart, where\n" +
			"they win over --tag. The agent's own tags (role, cpu, mem, kind, …) are refused.\n\n" +
			"Examples:\n" +
			"  agent tags --set rack=r1 --set dc=east\n" +
			"  agent tags --delete rack",
		Flags: append(rpcFlags(),
			&ucli.StringSliceFlag{Name: "set", Usage: "tag to set, key=value; repeatable"},
			&ucli.StringSliceFlag{Name: "delete", Usage: "tag key to delete; repeatable"}),
		Before: func(c *ucli.Context) error {
			set = map[string]string{}
			for _, kv := range c.StringSlice("set") {
				k, v, err := agent.ParseUserTag(kv)
				if err != nil {
					return fmt.Errorf("--set: %w", err)
				}
				set[k] = v
			}
			if len(set) == 0 && len(c.StringSlice("delete")) == 0 {
				return errors.New("nothing to do: give --set key=value or --delete key")
			}
			return nil
		},
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, _ string) error {
			if err := cl.UpdateTags(set, c.StringSlice("delete")); err != nil {
				return fmt.Errorf("tags: %w", err)
			}
			fmt.Fprintln(c.App.Writer, "tags updated")
			return nil
		}),
	}
}

func monitorCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "monitor",
		Usage: "stream the agent's log (user events and queries received included, as serf's) and member events until interrupted",
		Description: "At info, as serf's, it shows every user event and query the agent receives; placement's own\n" +
			"queries show at debug.\n\n" +
			"Examples:\n" +
			"  agent monitor --log-level debug",
		Flags: append(rpcFlags(),
			&ucli.StringFlag{Name: "log-level", Value: "info", Usage: "lowest level shown: debug, info, warn or error"}),
		Action: func(c *ucli.Context) error {
			if _, err := agent.ParseLevel(c.String("log-level")); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			cl, err := dial(c)
			if err != nil {
				return err
			}
			defer cl.Close()
			lines := make(chan string, 256)
			logs, err := cl.Monitor(c.String("log-level"), func(line string) { offer(lines, line) })
			if err != nil {
				return fmt.Errorf("monitor: %w", err)
			}
			defer cl.Stop(logs)
			events, err := cl.Stream("member-join,member-leave,member-failed,member-update,member-reap",
				func(e rpc.StreamedEvent) { offer(lines, describeEvent(e)) })
			if err != nil {
				return fmt.Errorf("monitor events: %w", err)
			}
			defer cl.Stop(events)

			signals := make(chan os.Signal, 1)
			signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(signals)
			for {
				select {
				case line := <-lines:
					fmt.Fprintln(c.App.Writer, line)
				case <-signals:
					return nil
				case <-cl.Done():
					return errors.New("the agent closed the connection (did it stop?)")
				}
			}
		},
	}
}

// offer queues a line for printing, dropping it when the terminal is far
// behind rather than stalling the RPC reader.
func offer(ch chan string, line string) {
	select {
	case ch <- line:
	default:
	}
}

func describeEvent(e rpc.StreamedEvent) string {
	names := make([]string, 0, len(e.Members))
	for _, m := range e.Members {
		names = append(names, fmt.Sprintf("%s (%s)", m.Name, m.Status))
	}
	return fmt.Sprintf("event=%s members=%s", e.Event, strings.Join(names, ","))
}

func infoCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "info",
		Usage: "show the local agent's identity, runtime and gossip counters",
		Description: "Examples:\n" +
			"  agent info --format json",
		Flags: append(rpcFlags(), formatFlag()),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			stats, err := cl.Stats()
			if err != nil {
				return err
			}
			if format == "json" {
				return writeJSON(c.App.Writer, stats)
			}
			sections := make([]string, 0, len(stats))
			for s := range stats {
				sections = append(sections, s)
			}
			sort.Strings(sections)
			for _, s := range sections {
				fmt.Fprintf(c.App.Writer, "%s:\n", s)
				keys := make([]string, 0, len(stats[s]))
				for k := range stats[s] {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					fmt.Fprintf(c.App.Writer, "\t%s = %s\n", k, stats[s][k])
				}
			}
			return nil
		}),
	}
}
