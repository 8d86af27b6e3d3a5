package main

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/meshagent/agent/cli"
)

// TestDocsHelpHasExamples: `agent --help` and every command's --help show
// an example, as serf's and consul's help do: an "Examples:" line followed
// by command lines that run that command.
func TestDocsHelpHasExamples(t *testing.T) {
	var top bytes.Buffer
	cli.Run([]string{"agent", "--help"}, &top, &top)
	commands := helpCommands(top.String())
	if len(commands) < 10 {
		t.Fatalf("agent --help lists %d commands: is the pattern broken?\n%s", len(commands), top.String())
	}
	if len(helpExamples(top.String(), "agent ")) == 0 {
		t.Errorf("agent --help has no examples:\n%s", top.String())
	}
	for _, c := range commands {
		var help bytes.Buffer
		cli.Run([]string{"agent", c, "--help"}, &help, &help)
		if len(helpExamples(help.String(), "agent "+c+" ")) == 0 {
			t.Errorf("agent %s --help has no example of agent %s:\n%s", c, c, help.String())
		}
	}
	t.Logf("checked the help of agent and its %d commands", len(commands))
}

// helpExamples returns the example lines under "Examples:" in a help text
// that start with prefix.
func helpExamples(help, prefix string) []string {
	var out []string
	in := false
	for _, line := range strings.Split(help, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "Examples:":
			in = true
		case in && trimmed == "":
			in = false
		case in && strings.HasPrefix(trimmed+" ", prefix):
			out = append(out, trimmed)
		}
	}
	return out
}

// helpCommands reads the command names from the COMMANDS section of
// `agent --help`.
func helpCommands(help string) []string {
	var out []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "COMMANDS:"):
			in = true
		case in && (line == "" || !strings.HasPrefix(line, " ")):
			in = false
		case in:
			name := strings.TrimSuffix(strings.Fields(line)[0], ",")
			if name != "help" && name != "h" {
				out = append(out, name)
			}
		}
	}
	return out
}
