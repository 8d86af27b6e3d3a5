package cli

import (
	"fmt"
	"sort"
	"strings"
	"unicode"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

// checkEventName accepts the name of a user event or query: it reaches
// event handlers as SERF_USER_EVENT or SERF_QUERY_NAME and their filters
// (user:NAME), so it is one printable word.
func checkEventName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s name is empty: give one, e.g. agent %s deploy", what, what)
	}
	for _, r := range name {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) || r == ',' || r == '=' {
			return fmt.Errorf("%s name %q holds a space, a control character, ',' or '=': use one word, e.g. deploy", what, name)
		}
	}
	return nil
}

// nameAndPayload reads NAME [PAYLOAD] of event and query.
func nameAndPayload(c *ucli.Context, what string) (string, []byte, error) {
	if n := c.Args().Len(); n < 1 || n > 2 {
		return "", nil, usageError{fmt.Sprintf("%s needs a name and at most one payload: agent %s NAME [PAYLOAD] (quote a payload with spaces)", what, what)}
	}
	name := c.Args().Get(0)
	if err := checkEventName(what, name); err != nil {
		return "", nil, err
	}
	var payload []byte
	if c.Args().Len() == 2 {
		payload = []byte(c.Args().Get(1))
	}
	return name, payload, nil
}

func eventCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "event",
		Usage:     "send a user event to the whole mesh (event handlers with user or user:NAME run for it)",
		ArgsUsage: "NAME [PAYLOAD]",
		Description: "As serf event: the event is gossiped to every member, and each agent runs its handlers whose filter\n" +
			"is user or user:NAME, with the payload on stdin. Name and payload together must fit serf's 512 bytes." +
			"\n\nExamples:\n" +
			"  agent event deploy v42",
		Flags: append(rpcFlags(),
			&ucli.BoolFlag{Name: "coalesce", Value: true, Usage: "let agents deliver only the newest of events with this name that arrive together"}),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, _ string) error {
			name, payload, err := nameAndPayload(c, "event")
			if err != nil {
				return err
			}
			if err := cl.UserEvent(name, payload, c.Bool("coalesce")); err != nil {
				return fmt.Errorf("event %s: %w", name, err)
			}
			fmt.Fprintf(c.App.Writer, "event %s sent\n", name)
			return nil
		}),
	}
}

func queryCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "query",
		Usage:     "ask the mesh a question and print every answer (handlers with query or query:NAME answer it)",
		ArgsUsage: "NAME [PAYLOAD]",
		Description: "As serf query: the query is gossiped to the members that match --node and --tag, each agent runs its\n" +
			"handlers whose filter is query or query:NAME, and a handler's stdout is its answer. The command returns\n" +
			"when --timeout (default: serf's for the mesh's size) has passed. place and spawn are the agent's own." +
			"\n\nExamples:\n" +
			"  agent query --timeout 2s ping\n" +
			"  agent query --tag role=server --format json load",
		Flags: append(rpcFlags(), formatFlag(),
			&ucli.StringSliceFlag{Name: "node", Usage: "ask only this member; repeatable"},
			&ucli.StringSliceFlag{Name: "tag", Usage: "ask only members whose tag k matches regex (anchored), k=regex; repeatable"},
			&ucli.DurationFlag{Name: "timeout", Usage: "how long to wait for answers", DefaultText: "serf's, from the mesh's size"},
			&ucli.BoolFlag{Name: "no-ack", Usage: "do not ask members to acknowledge receipt"},
			&ucli.IntFlag{Name: "relay-factor", Usage: "members that relay each answer back, 0 to 5, for lossy networks"},
		),
		Action: withAgent(func(c *ucli.Context, cl *rpc.Client, format string) error {
			name, payload, err := nameAndPayload(c, "query")
			if err != nil {
				return err
			}
			req := rpc.QueryRequest{Name: name, Payload: payload, FilterNodes: c.StringSlice("node"),
				RequestAck: !c.Bool("no-ack"), Timeout: c.Duration("timeout")}
			if c.IsSet("timeout") && req.Timeout <= 0 {
				return fmt.Errorf("--timeout %s must be positive: write it like 500ms or 5s", req.Timeout)
			}
			if rf := c.Int("relay-factor"); rf < 0 || rf > 5 {
				return fmt.Errorf("--relay-factor %d is not from 0 to 5", rf)
			} else {
				req.RelayFactor = uint8(rf)
			}
			if tags := c.StringSlice("tag"); len(tags) > 0 {
				req.FilterTags = map[string]string{}
				for _, kv := range tags {
					k, v, err := agent.ParseTag(kv)
					if err != nil {
						return fmt.Errorf("--tag: %w", err)
					}
					req.FilterTags[k] = v
				}
			}
			var acks []string
			responses := map[string]string{}
			text := format == "text"
			err = cl.QuerySent(req, func() {
				if text {
					fmt.Fprintf(c.App.Writer, "query %s sent\n", name)
				}
			}, func(from string) {
				acks = append(acks, from)
				if text {
					fmt.Fprintf(c.App.Writer, "ack from %s\n", from)
				}
			}, func(r rpc.NodeResponse) {
				responses[r.From] = string(r.Payload)
				if text {
					fmt.Fprintf(c.App.Writer, "response from %s: %s\n", r.From, gossip.OneLine(strings.TrimRight(string(r.Payload), "\n")))
				}
			})
			if err != nil {
				return fmt.Errorf("query %s: %w", name, err)
			}
			sort.Strings(acks)
			if !text {
				if acks == nil {
					acks = []string{}
				}
				return writeJSON(c.App.Writer, map[string]any{"name": name, "acks": acks, "responses": responses})
			}
			if req.RequestAck {
				fmt.Fprintf(c.App.Writer, "%d acks, %d responses\n", len(acks), len(responses))
			} else {
				fmt.Fprintf(c.App.Writer, "%d responses\n", len(responses))
			}
			return nil
		}),
	}
}
