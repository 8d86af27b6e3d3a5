package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent"
	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

func membersCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "members",
		Usage: "list the members of the mesh as the local agent sees them",
		Description: "Filters are anchored regular expressions: --status 'alive|failed', --tag dc=east.*\n" +
			"Exit code 2 when no member matches." +
			"\n\nExamples:\n" +
			"  agent members --role server --status alive\n" +
			"  agent members --tag 'dc=east.*' --format json\n" +
			"  agent members --name 'nosuch.*' || echo \"exit $?\"      # exit 2: nothing matched",
		Flags: append(rpcFlags(), formatFlag(),
			&ucli.StringFlag{Name: "status", Usage: "only members whose status matches (alive, leaving, left, failed)"},
			&ucli.StringFlag{Name: "role", Usage: "only members whose role matches (server, interpreter)"},
			&ucli.StringFlag{Name: "name", Usage: "only members whose name matches"},
			&ucli.StringSliceFlag{Name: "tag", Usage: "only members with tag k matching regex, k=regex; repeatable"},
		),
		Action: members,
	}
}

func viewOf(m rpc.Member) agent.MemberJSON {
	return agent.MemberView(m.Name, m.Addr, m.Port, m.Status, m.Tags)
}

func members(c *ucli.Context) error {
	format, err := checkFormat(c)
	if err != nil {
		return err
	}
	tags := map[string]string{}
	for _, kv := range c.StringSlice("tag") {
		k, v, err := agent.ParseTag(kv)
		if err != nil {
			return fmt.Errorf("--tag: %w", err)
		}
		tags[k] = v
	}
	if r := c.String("role"); r != "" {
		tags[gossip.TagRole] = r
	}
	cl, err := dial(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	var ms []rpc.Member
	if len(tags) > 0 || c.String("status") != "" || c.String("name") != "" {
		ms, err = cl.MembersFiltered(tags, c.String("status"), c.String("name"))
	} else {
		ms, err = cl.Members()
	}
	if err != nil {
		return fmt.Errorf("members: %w", err)
	}
	views := make([]agent.MemberJSON, 0, len(ms))
	for _, m := range ms {
		views = append(views, viewOf(m))
	}
	sort.Slice(views, func(i, j int) bool { return views[i].Name < views[j].Name })

	if format == "json" {
		if err := writeJSON(c.App.Writer, map[string]any{"members": views}); err != nil {
			return err
		}
	} else if len(views) > 0 {
		writeMembersTable(c.App.Writer, views)
	}
	if len(views) == 0 {
		return withCode(ExitNoMatch, errors.New("no member matches"))
	}
	return nil
}

func writeMembersTable(w io.Writer, views []agent.MemberJSON) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSTATUS\tROLE\tCPU\tMEM\tINTERP\tTAGS")
	for _, v := range views {
		role := gossip.OneLine(dash(v.Role))
		if v.Draining {
			role += " (draining)"
		}
		if v.Unhealthy != "" {
			role += " (unhealthy: " + gossip.OneLine(v.Unhealthy) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", gossip.OneLine(v.Name),
			net.JoinHostPort(v.Addr, strconv.Itoa(int(v.Port))), v.Status, role,
			percent(v.CPU), percent(v.Mem), count(v.Interpreters), otherTags(v.Tags))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func percent(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p, 'f', 1, 64) + "%"
}

func count(n *int) string {
	if n == nil {
		return "-"
	}
	return strconv.Itoa(*n)
}

// otherTags lists the tags that have no column of their own.
func otherTags(tags map[string]string) string {
	var kv []string
	for k, v := range tags {
		switch k {
		case gossip.TagRole, gossip.TagCPU, gossip.TagMem, gossip.TagRunning:
			continue
		}
		kv = append(kv, gossip.OneLine(k)+"="+gossip.OneLine(v))
	}
	sort.Strings(kv)
	if len(kv) == 0 {
		return "-"
	}
	return strings.Join(kv, ",")
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
