package cli

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent"
	"github.com/meshagent/agent/agent/rpc"
)

func placeCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "place",
		Usage: "run the placement election without starting anything: every bid and the winner",
		Description: "The local agent asks every alive server for a bid and elects one, exactly as spawn would;\n" +
			"the bids say why each server was rejected.\n\nExit codes besides 0 and 1 (agent --help lists all):\n" + exitCodesText("place") +
			"\n\nExamples:\n" +
			"  agent place --kind demo\n" +
			"  agent place --kind python --constraint gpu=yes --policy binpack --format json",
		Flags: append(rpcFlags(), formatFlag(),
			&ucli.StringFlag{Name: "kind", Usage: "interpreter kind to place, e.g. demo"},
			&ucli.StringSliceFlag{Name: "constraint", Usage: "server tag k must match regex (anchored), k=regex; repeatable"},
			&ucli.StringFlag{Name: "policy", Usage: "spread (least loaded, default) or binpack (fill the busiest that has room)"},
			&ucli.DurationFlag{Name: "timeout", Usage: "how long to wait for bids", DefaultText: "the agent's --place-timeout"},
		),
		Action: place,
	}
}

func place(c *ucli.Context) error {
	format, err := checkFormat(c)
	if err != nil {
		return err
	}
	if c.String("kind") == "" {
		return errors.New("place needs --kind, e.g. agent place --kind demo")
	}
	if err := checkKind(c.String("kind")); err != nil {
		return err
	}
	if d := c.Duration("timeout"); c.IsSet("timeout") && d <= 0 {
		return fmt.Errorf("--timeout %s must be positive: write it like 500ms or 2s", d)
	}
	cl, err := dial(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	resp, err := cl.Place(rpc.PlaceRequest{Kind: c.String("kind"), Constraints: c.StringSlice("constraint"),
		Policy: c.String("policy"), Timeout: c.Duration("timeout")})
	if err != nil {
		return fmt.Errorf("place: %w", err)
	}
	if format == "json" {
		if err := writeJSON(c.App.Writer, placeJSON(resp)); err != nil {
			return err
		}
	} else {
		writePlaceText(c.App.Writer, resp)
	}
	if resp.Error != "" {
		return withCode(ExitNoServer, errors.New(resp.Error))
	}
	return nil
}

type bidJSON struct {
	Node       string   `json:"node"`
	CPU        float64  `json:"cpu"`
	Mem        float64  `json:"mem"`
	Running    int      `json:"running"`
	Pending    int      `json:"pending"`
	Reserved   int      `json:"reserved"`
	Capacity   int      `json:"capacity"`
	Healthy    bool     `json:"healthy"`
	OffersKind bool     `json:"offers_kind"`
	Refusal    string   `json:"refusal,omitempty"`
	Score      *float64 `json:"score,omitempty"`
	Rank       int      `json:"rank,omitempty"`
	Rejected   string   `json:"rejected,omitempty"`
}

func placeJSON(r rpc.PlaceResponse) map[string]any {
	bids := make([]bidJSON, 0, len(r.Bids))
	for _, b := range r.Bids {
		j := bidJSON{Node: b.Node, CPU: b.CPU, Mem: b.Mem, Running: b.Running, Pending: b.Pending, Reserved: b.Reserved,
			Capacity: b.Capacity, Healthy: b.Healthy, OffersKind: b.OffersKind, Refusal: b.Refusal, Rank: b.Rank, Rejected: b.Rejected}
		if b.Rank > 0 {
			score := b.Score
			j.Score = &score
		}
		bids = append(bids, j)
	}
	out := map[string]any{
		"request_id": r.RequestID, "policy": r.Policy, "winner": r.Winner, "runner_up": r.RunnerUp,
		"reason": r.Reason, "bids": bids, "missing": nonNil(r.Missing), "decision_ms": r.DecisionMS,
	}
	if r.Error != "" {
		out["error"] = r.Error
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func writePlaceText(w io.Writer, r rpc.PlaceResponse) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RANK\tNODE\tCPU\tMEM\tINTERP\tSCORE\tRESULT")
	for _, b := range r.Bids {
		rank, score, result := "-", "-", "eligible"
		if b.Rank > 0 {
			rank, score = strconv.Itoa(b.Rank), strconv.FormatFloat(b.Score, 'f', 1, 64)
			if b.Rank == 1 {
				result = "winner"
			}
		} else {
			result = "rejected: " + b.Rejected
		}
		interp := strconv.Itoa(b.Running + b.Pending + b.Reserved)
		if b.Capacity > 0 {
			interp += "/" + strconv.Itoa(b.Capacity)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f%%\t%.1f%%\t%s\t%s\t%s\n", rank, b.Node, b.CPU, b.Mem, interp, score, result)
	}
	tw.Flush()
	if len(r.Missing) > 0 {
		fmt.Fprintf(w, "no answer from: %s\n", strings.Join(r.Missing, ", "))
	}
	if r.Winner != "" {
		fmt.Fprintf(w, "winner: %s (%s policy) — %s\n", r.Winner, r.Policy, r.Reason)
	}
	fmt.Fprintf(w, "decision in %.1f ms\n", r.DecisionMS)
}

// checkKind refuses a --kind no server can offer: kind names follow the
// rule of an --interpreters file (agent.CheckKindName), so a longer or
// stranger one is a typo, not "no eligible server".
func checkKind(kind string) error {
	if err := agent.CheckKindName(kind); err != nil {
		return fmt.Errorf("--kind: %w, e.g. --kind demo", err)
	}
	return nil
}
