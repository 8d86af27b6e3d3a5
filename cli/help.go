package cli

import (
	"fmt"
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// --version prints what `agent version` prints.
func init() {
	ucli.VersionPrinter = func(c *ucli.Context) { fmt.Fprintf(c.App.Writer, "agent %s\n", c.App.Version) }
}

// routeArgs turns `agent help [COMMAND]` into `agent [COMMAND] --help`,
// and refuses a command the app does not have with the nearest one it
// has, before urfave/cli answers "No help topic" for either.
func routeArgs(app *ucli.App, args []string) ([]string, error) {
	if len(args) < 2 || strings.HasPrefix(args[1], "-") {
		return args, nil
	}
	name := args[1]
	if name == "help" {
		switch len(args) {
		case 2:
			return []string{args[0], "--help"}, nil
		case 3:
			if strings.HasPrefix(args[2], "-") {
				return []string{args[0], "--help"}, nil
			}
			if err := knownCommand(app, args[2]); err != nil {
				return nil, err
			}
			return []string{args[0], args[2], "--help"}, nil
		}
		return nil, usageError{"help takes at most one command: agent help members"}
	}
	return args, knownCommand(app, name)
}

func knownCommand(app *ucli.App, name string) error {
	if app.Command(name) != nil {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q", name)
	if near := nearestCommand(app, name); near != "" {
		msg += fmt.Sprintf(": did you mean %q?", near)
	}
	return usageError{msg + " (agent --help lists the commands)"}
}

// nearestCommand is the visible command closest to name in edit distance,
// when it is close enough to be a typo (at most a third of its letters).
func nearestCommand(app *ucli.App, name string) string {
	best, bestD := "", len(name)/3+1
	for _, c := range app.Commands {
		if c.Hidden {
			continue
		}
		if d := editDistance(name, c.Name); d < bestD || strings.HasPrefix(c.Name, name) && best == "" {
			best, bestD = c.Name, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
