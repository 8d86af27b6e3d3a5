package cli

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sort"

	ucli "github.com/urfave/cli/v2"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

func keygenCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "keygen",
		Usage: "print a new random gossip encryption key (32 bytes, base64) for --encrypt",
		Description: "Examples:\n" +
			"  agent keygen                                          # once, for the whole mesh",
		Action: func(c *ucli.Context) error {
			key := make([]byte, 32)
			if _, err := rand.Read(key); err != nil {
				return fmt.Errorf("read random bytes: %w", err)
			}
			fmt.Fprintln(c.App.Writer, base64.StdEncoding.EncodeToString(key))
			return nil
		},
	}
}

func keysCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "keys",
		Usage: "manage the gossip keyring across the whole mesh",
		Description: "Rotate a key without downtime: --install NEW on one agent (every node learns it), then --use NEW,\n" +
			"then --remove OLD. Each node that fails is named; the exit code is 1 when any did." +
			"\n\nExamples:\n" +
			"  agent keys --install NEW && agent keys --use NEW && agent keys --remove OLD\n" +
			"  agent keys --list",
		Flags: append(rpcFlags(), formatFlag(),
			&ucli.StringFlag{Name: "install", Usage: "add this base64 key to every node's keyring"},
			&ucli.StringFlag{Name: "use", Usage: "make this installed key the one every node encrypts with"},
			&ucli.StringFlag{Name: "remove", Usage: "remove this key from every node's keyring"},
			&ucli.BoolFlag{Name: "list", Usage: "list the keys installed in the mesh and how many nodes hold each"},
		),
		Action: keys,
	}
}

func keys(c *ucli.Context) error {
	format, err := checkFormat(c)
	if err != nil {
		return err
	}
	var op, key string
	n := 0
	for _, f := range []string{"install", "use", "remove"} {
		if v := c.String(f); v != "" {
			op, key = f, v
			n++
		}
	}
	if c.Bool("list") {
		op = "list"
		n++
	}
	if n != 1 {
		return errors.New("give exactly one of --install KEY, --use KEY, --remove KEY or --list")
	}
	if key != "" {
		if _, err := gossip.DecodeKey(key); err != nil {
			return fmt.Errorf("--%s: %w", op, err)
		}
	}
	cl, err := dial(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	var resp rpc.KeyResponse
	switch op {
	case "install":
		resp, err = cl.InstallKey(key)
	case "use":
		resp, err = cl.UseKey(key)
	case "remove":
		resp, err = cl.RemoveKey(key)
	case "list":
		resp, err = cl.ListKeys()
	}
	w := c.App.Writer
	if format == "json" {
		if err != nil && resp.NumNodes == 0 {
			return fmt.Errorf("keys --%s: %w", op, err)
		}
		if jerr := writeJSON(w, keysJSON(op, resp)); jerr != nil {
			return jerr
		}
		if resp.NumErr > 0 || err != nil {
			return fmt.Errorf("keys --%s failed on %d of %d nodes", op, resp.NumErr, resp.NumNodes)
		}
		return nil
	}
	if op == "list" && resp.NumNodes > 0 {
		fmt.Fprintf(w, "keys installed in the mesh (%d nodes):\n", resp.NumNodes)
		listed := make([]string, 0, len(resp.Keys))
		for k := range resp.Keys {
			listed = append(listed, k)
		}
		sort.Strings(listed)
		for _, k := range listed {
			fmt.Fprintf(w, "  %s  on %d of %d nodes\n", k, resp.Keys[k], resp.NumNodes)
		}
	} else if resp.NumNodes > 0 {
		fmt.Fprintf(w, "%s: %d of %d nodes answered, %d failed\n", op, resp.NumResp, resp.NumNodes, resp.NumErr)
	}
	reportKeyFailures(w, resp)
	if err != nil {
		return fmt.Errorf("keys --%s: %w", op, err)
	}
	if resp.NumErr > 0 {
		return fmt.Errorf("keys --%s failed on %d nodes", op, resp.NumErr)
	}
	return nil
}

// keysJSON is the mesh's answer as JSON: every key and how many nodes hold
// it (list), and every node that failed, with why.
func keysJSON(op string, r rpc.KeyResponse) map[string]any {
	out := map[string]any{"op": op, "nodes": r.NumNodes, "answered": r.NumResp, "failed": r.NumErr,
		"failures": nonNilMap(r.Messages)}
	if op == "list" {
		keys := make(map[string]int, len(r.Keys))
		for k, n := range r.Keys {
			keys[k] = n
		}
		out["keys"] = keys
	}
	return out
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func reportKeyFailures(w io.Writer, resp rpc.KeyResponse) {
	nodes := make([]string, 0, len(resp.Messages))
	for n := range resp.Messages {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		fmt.Fprintf(w, "  %s: %s\n", n, resp.Messages[n])
	}
}
