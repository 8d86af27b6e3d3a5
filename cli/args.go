package cli

import (
	"fmt"
	"regexp"
	"strings"

	ucli "github.com/urfave/cli/v2"
)

// urfave/cli stops reading flags at the first positional argument, so
// `agent stop NAME --rpc-addr X` would pass "--rpc-addr" and "X" on as
// arguments and talk to the default agent. Users of serf and most CLIs
// expect flags anywhere, so the command line is reordered before parsing:
// every flag of the command (with its value) moves in front of the
// positional arguments, in order. `--` still ends the flags: what follows
// it is left alone.

// reorderArgs returns args (the whole argv, program name first) with the
// flags of the named command moved before its positional arguments. An
// unknown command, or one with subcommands, is left as it is.
func reorderArgs(app *ucli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	cmd := app.Command(args[1])
	if cmd == nil || len(cmd.Subcommands) > 0 {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*ucli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, positional []string
	rest := args[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			positional = append(positional, rest[i:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if takesValue[name] && i+1 < len(rest) {
			i++
			flags = append(flags, rest[i])
		}
	}
	out := append([]string{args[0], args[1]}, flags...)
	return append(out, positional...)
}

// noArgs is the Before of a command that takes no positional argument:
// a stray word is an error naming it, never silently ignored.
func noArgs(hint string) ucli.BeforeFunc {
	return func(c *ucli.Context) error {
		if c.Args().Len() == 0 {
			return nil
		}
		msg := fmt.Sprintf("%s takes no arguments, got %q", c.Command.Name, c.Args().First())
		if hint != "" {
			msg += ": " + hint
		}
		return usageError{msg}
	}
}

// chainBefore runs the Before functions in order, stopping at an error.
func chainBefore(fns ...ucli.BeforeFunc) ucli.BeforeFunc {
	return func(c *ucli.Context) error {
		for _, fn := range fns {
			if fn == nil {
				continue
			}
			if err := fn(c); err != nil {
				return err
			}
		}
		return nil
	}
}

// usageError is a mistake on the command line; the message says the fix.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// singleDash finds flag names as Go's flag package writes them ("-name").
var singleDash = regexp.MustCompile(`(^|[\s:])-([a-z][a-z0-9-]*)`)

// onUsageError replaces urfave/cli's reply to a bad flag (the message and
// the whole help, with single-dash flag names) with one line that names
// the flag as users type it and where to read more.
func onUsageError(c *ucli.Context, err error, isSubcommand bool) error {
	msg := singleDash.ReplaceAllString(err.Error(), "$1--$2")
	msg = strings.Replace(msg, ": parse error", "", 1)
	name := "agent"
	if c.Command != nil && c.Command.Name != "" {
		name += " " + c.Command.Name
	}
	return usageError{fmt.Sprintf("%s (see %s --help)", msg, name)}
}
