package main

// Tests of the documentation: README.md and docs/*.md.
//
// Runnable examples. A shell example is run by TestDocsExamples when its
// fence is "```sh runnable" and the lines right after the closing fence are
// one or more comments of the form
//
//	<!-- output: REGEXP -->
//
// Each REGEXP (Go syntax) must match somewhere in what the block printed,
// stdout and stderr together. The block runs in `bash -e -o pipefail`
// against a three-agent loopback mesh the test starts, with the agent
// binary first on PATH, AGENT_RPC_ADDR set to the first agent's RPC
// address and AGENT_HTTP_ADDR to its HTTP address. The blocks run in the
// order of the files and within a file, on the same mesh, so one that
// changes the mesh (a drain, a spawn) undoes it. Mark only examples that
// run on loopback without root, Jupyter or network namespaces.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/meshagent/agent/agent"
	"github.com/meshagent/agent/cli"
)

// docFiles is the documentation the tests read: the README and every page
// under docs/.
func docFiles(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(pages)
	return append([]string{"README.md"}, pages...)
}

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// proseLines returns the lines of a markdown text outside fenced code
// blocks, with their 1-based numbers.
func proseLines(text string) (lines []string, numbers []int) {
	fence := false
	for i, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fence = !fence
			continue
		}
		if !fence {
			lines = append(lines, line)
			numbers = append(numbers, i+1)
		}
	}
	return lines, numbers
}

var headingRE = regexp.MustCompile(`^#{1,6} +(.+?) *#*$`)

// anchors returns the #anchors GitHub makes for a markdown text's
// headings: lower case, spaces to '-', punctuation other than '-' and '_'
// dropped; a repeated anchor gets -1, -2, ...
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	lines, _ := proseLines(text)
	for _, line := range lines {
		m := headingRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		a := githubAnchor(m[1])
		if n := seen[a]; n > 0 {
			out[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			out[a] = true
		}
		seen[a]++
	}
	return out
}

func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

var (
	inlineCodeRE = regexp.MustCompile("`[^`]*`")
	linkRE       = regexp.MustCompile(`\]\(([^)\s]+)\)`)
)

// TestDocsLinks: every relative link and #anchor in README.md and docs/*.md
// resolves: the file exists, and the anchor is one of its headings'.
func TestDocsLinks(t *testing.T) {
	files := docFiles(t)
	anchorsOf := map[string]map[string]bool{}
	for _, f := range files {
		anchorsOf[filepath.Clean(f)] = anchors(readDoc(t, f))
	}
	links, withAnchor := 0, 0
	for _, f := range files {
		lines, numbers := proseLines(readDoc(t, f))
		for i, line := range lines {
			line = inlineCodeRE.ReplaceAllString(line, "")
			for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				links++
				path, anchor, _ := strings.Cut(target, "#")
				resolved := filepath.Clean(f)
				if path != "" {
					resolved = filepath.Join(filepath.Dir(f), path)
					if _, err := os.Stat(resolved); err != nil {
						t.Errorf("%s:%d: link %q: %s does not exist", f, numbers[i], target, resolved)
						continue
					}
				}
				if anchor == "" {
					continue
				}
				withAnchor++
				as, ok := anchorsOf[resolved]
				if !ok {
					if strings.HasSuffix(resolved, ".md") {
						as = anchors(readDoc(t, resolved))
					} else {
						t.Errorf("%s:%d: link %q: an anchor into %s, which is not markdown", f, numbers[i], target, resolved)
						continue
					}
				}
				if !as[anchor] {
					t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", f, numbers[i], target, resolved, anchor)
				}
			}
		}
	}
	if links == 0 {
		t.Fatal("no relative links found: is the link pattern broken?")
	}
	t.Logf("checked %d relative links (%d with an #anchor) in %d files", links, withAnchor, len(files))
}

// TestDocsPagesSayWhoTheyAreFor: every page under docs/ starts, after its
// title, with a paragraph saying who it is for.
func TestDocsPagesSayWhoTheyAreFor(t *testing.T) {
	for _, f := range docFiles(t)[1:] {
		text := readDoc(t, f)
		title, rest, _ := strings.Cut(text, "\n")
		if !strings.HasPrefix(title, "# ") {
			t.Errorf("%s does not start with a title", f)
			continue
		}
		if first := strings.TrimSpace(rest); !strings.HasPrefix(first, "For ") {
			t.Errorf("%s: the first paragraph does not say who the page is for (\"For …\"): %.60q", f, first)
		}
	}
}

// configTable is docs/configuration.md's reference table, by flag name.
type configRow struct {
	line                     int
	flag, env, key, defaults string
}

func configTable(t *testing.T) map[string]configRow {
	t.Helper()
	const page = "docs/configuration.md"
	rows := map[string]configRow{}
	flagRE := regexp.MustCompile("^`--([a-z0-9-]+)")
	lines, numbers := proseLines(readDoc(t, page))
	for i, line := range lines {
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 5 {
			t.Fatalf("%s:%d: a row of %d cells, want 5 (flag, env, file key, default, meaning): %s", page, numbers[i], len(cells), line)
		}
		m := flagRE.FindStringSubmatch(strings.TrimSpace(cells[0]))
		if m == nil {
			t.Fatalf("%s:%d: no flag in %q", page, numbers[i], cells[0])
		}
		if _, dup := rows[m[1]]; dup {
			t.Errorf("%s:%d: --%s documented twice", page, numbers[i], m[1])
		}
		rows[m[1]] = configRow{line: numbers[i], flag: cells[0], env: cells[1], key: cells[2], defaults: strings.TrimSpace(cells[3])}
	}
	return rows
}

// TestDocsFlagTable: the configuration reference documents every flag of
// `agent run` (as its help lists them) and no other, each with its
// environment variable, its config-file key, whether it repeats, and its
// default as the agent's own option table gives it.
func TestDocsFlagTable(t *testing.T) {
	rows := configTable(t)

	var help bytes.Buffer
	if code := cli.Run([]string{"agent", "run", "--help"}, &help, &help); code != 0 {
		t.Fatalf("agent run --help: exit %d\n%s", code, help.String())
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+)`).FindAllStringSubmatch(help.String(), -1) {
		if m[1] != "help" {
			flags[m[1]] = true
		}
	}
	if len(flags) < len(agent.Options()) {
		t.Fatalf("agent run --help lists %d flags, fewer than the %d options: is the pattern broken?\n%s", len(flags), len(agent.Options()), help.String())
	}
	for f := range flags {
		if _, ok := rows[f]; !ok {
			t.Errorf("docs/configuration.md does not document --%s", f)
		}
	}
	for f, r := range rows {
		if !flags[f] {
			t.Errorf("docs/configuration.md:%d documents --%s, which `agent run` does not have", r.line, f)
		}
	}

	firstCode := regexp.MustCompile("`([^`]*)`")
	for _, o := range agent.Options() {
		r, ok := rows[o.Name]
		if !ok {
			continue // reported above
		}
		where := fmt.Sprintf("docs/configuration.md:%d (--%s)", r.line, o.Name)
		if !strings.Contains(r.env, "`"+o.EnvVar()+"`") {
			t.Errorf("%s: environment variable %q, want `%s`", where, r.env, o.EnvVar())
		}
		if !strings.HasPrefix(r.key, "`"+o.FileKey()+"`") {
			t.Errorf("%s: file key %q, want `%s`", where, r.key, o.FileKey())
		}
		if got := strings.Contains(r.flag, "(repeatable)"); got != o.Repeatable {
			t.Errorf("%s: documented repeatable %v, the option %v", where, got, o.Repeatable)
		}
		switch def := o.Default(); {
		case o.DefaultText != "":
			// A default that depends on the host or another setting:
			// described in words, as help describes it.
			if r.defaults == "" {
				t.Errorf("%s: no default given (help says %q)", where, def)
			}
		case def == "":
			if !strings.HasPrefix(r.defaults, "none") {
				t.Errorf("%s: default %q, but the option has none (write \"none\")", where, r.defaults)
			}
		default:
			m := firstCode.FindStringSubmatch(r.defaults)
			if m == nil || m[1] != def {
				t.Errorf("%s: default %q, the agent's is `%s`", where, r.defaults, def)
			}
		}
	}
	t.Logf("checked %d documented settings against %d flags of agent run", len(rows), len(flags))
}

// docExample is one runnable shell block and what its output must match.
type docExample struct {
	where  string // file:line
	script string
	want   []*regexp.Regexp
}

var outputRE = regexp.MustCompile(`^<!-- output: (.+) -->$`)

func runnableExamples(t *testing.T) []docExample {
	t.Helper()
	var out []docExample
	for _, f := range docFiles(t) {
		lines := strings.Split(readDoc(t, f), "\n")
		for i := 0; i < len(lines); i++ {
			if strings.TrimSpace(lines[i]) != "```sh runnable" {
				continue
			}
			ex := docExample{where: fmt.Sprintf("%s:%d", f, i+1)}
			j := i + 1
			for ; j < len(lines) && strings.TrimSpace(lines[j]) != "```"; j++ {
				ex.script += lines[j] + "\n"
			}
			for j++; j < len(lines); j++ {
				m := outputRE.FindStringSubmatch(strings.TrimSpace(lines[j]))
				if m == nil {
					break
				}
				re, err := regexp.Compile(m[1])
				if err != nil {
					t.Fatalf("%s: output pattern %q: %v", ex.where, m[1], err)
				}
				ex.want = append(ex.want, re)
			}
			if len(ex.want) == 0 {
				t.Errorf("%s: a runnable example without an <!-- output: … --> line after it", ex.where)
			}
			out = append(out, ex)
			i = j - 1
		}
	}
	return out
}

// TestDocsExamples runs every shell example of README.md and docs/*.md
// marked runnable against three agents on 127.0.0.1-3, and checks each
// one's output against the patterns written after it.
func TestDocsExamples(t *testing.T) {
	examples := runnableExamples(t)
	if len(examples) == 0 {
		t.Fatal("no runnable examples found")
	}
	agents := spawnCluster(t)
	env := append(os.Environ(),
		"PATH="+filepath.Dir(agentBin)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"AGENT_RPC_ADDR="+agents[0].rpc,
		"AGENT_HTTP_ADDR="+agents[0].http,
	)
	files := map[string]bool{}
	for _, ex := range examples {
		files[strings.Split(ex.where, ":")[0]] = true
		t.Run(ex.where, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", ex.script)
			cmd.Env = env
			cmd.Dir = t.TempDir()
			// The example and everything it starts form one process group,
			// killed on a timeout and, should anything linger, when the
			// example ends.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
			cmd.WaitDelay = 5 * time.Second
			t.Cleanup(func() {
				if cmd.Process != nil {
					syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				}
			})
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s failed: %v\n--- script\n%s--- output\n%s", ex.where, err, ex.script, out)
			}
			if testing.Verbose() {
				t.Logf("output of %s:\n%s", ex.where, out)
			}
			for _, re := range ex.want {
				if !re.Match(out) {
					t.Errorf("%s: output does not match %q\n--- script\n%s--- output\n%s", ex.where, re, ex.script, out)
				}
			}
		})
	}
	t.Logf("ran %d runnable examples from %d files", len(examples), len(files))
}
