package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	serfclient "github.com/hashicorp/serf/client"

	"github.com/meshagent/agent/agent/rpc"
)

// The user-facing edge: flags, tags, names, exit codes, errors, the HTTP
// API and the serf commands, each item through the real binary against one
// agent on loopback.

// edgeAgent is the agent the edge tests talk to, with handlers that record
// what they saw in files under dir.
type edgeAgent struct {
	*testAgent
	dir string
}

func (e edgeAgent) file(name string) string {
	data, _ := os.ReadFile(filepath.Join(e.dir, name))
	return string(data)
}

func startEdgeAgent(t *testing.T) edgeAgent {
	dir := t.TempDir()
	a := newTestAgent(t, 1)
	stopInterpreters(t, a) // none should start; if one did, it is stopped
	a.start(t, "--load-source", "fixed:cpu=30,mem=30",
		"--tag", "dc=a,b", "--tag", "r=east",
		// One handler for two events: before, the comma made two handlers.
		"--event-handler", "member-join,member-update=echo $SERF_EVENT >> "+filepath.Join(dir, "member-events"),
		"--event-handler", "user:deploy=cat >> "+filepath.Join(dir, "deploy"),
		"--event-handler", "query:ping=printf pong-$(cat)",
		"--http-allow-host", "agent.example")
	waitFor(t, "the agent's first load publication", 10*time.Second, func() bool {
		return membersOf(t, a)[a.name].Tags["cpu"] != ""
	})
	return edgeAgent{a, dir}
}

// runCLIEnv is runCLI with more environment variables.
func runCLIEnv(t testing.TB, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func TestUserFacingEdge(t *testing.T) {
	a := startEdgeAgent(t)
	rpcAddr := []string{"--rpc-addr", a.rpc}

	t.Run("item 1 commas stay inside values", func(t *testing.T) {
		// The handler with two filters ran for the agent's own join; the
		// tag update below is the second event.
		if _, errOut, code := runCLI(t, "tags", "--rpc-addr", a.rpc, "--set", "zone=eu,west"); code != 0 {
			t.Fatalf("tags --set zone=eu,west: code %d %s", code, errOut)
		}
		waitFor(t, "the two-filter handler to see member-join and member-update", 10*time.Second, func() bool {
			got := a.file("member-events")
			return strings.Contains(got, "member-join\n") && strings.Contains(got, "member-update\n")
		})
		me := membersOf(t, a.testAgent)[a.name]
		if me.Tags["dc"] != "a,b" || me.Tags["zone"] != "eu,west" {
			t.Fatalf("tags %v: want dc=a,b and zone=eu,west", me.Tags)
		}
		if strings.Contains(a.p.log.String(), "not found") {
			t.Fatalf("a piece of a split handler ran as a command:\n%s", a.p.log.String())
		}
		for _, tc := range []struct {
			name string
			args []string
		}{
			{"members --tag with a comma", []string{"members", "--tag", "dc=a,b"}},
			{"members --tag regex with {1,3}", []string{"members", "--tag", "r=e{1,3}ast"}},
			{"place --constraint regex with {1,3}", []string{"place", "--kind", "demo", "--constraint", "r=e{1,3}ast"}},
		} {
			if out, errOut, code := runCLI(t, append(tc.args, rpcAddr...)...); code != 0 || !strings.Contains(out, a.name) {
				t.Errorf("%s: code %d\n%s%s", tc.name, code, out, errOut)
			}
		}
	})

	t.Run("item 2 flags after arguments", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			code int
			want string // in stderr
		}{
			// Each reaches the agent at --rpc-addr (not 127.0.0.1:7373, where
			// nothing listens), which answers.
			{"stop NAME --rpc-addr", []string{"stop", "no-such-interp", "--rpc-addr", a.rpc}, 1, "no-such-interp"},
			{"force-leave NODE --rpc-addr", []string{"force-leave", "ghost", "--rpc-addr", a.rpc}, 1, `no member named "ghost"`},
			{"force-leave NODE --prune --rpc-addr", []string{"force-leave", "ghost", "--prune", "--rpc-addr", a.rpc}, 1, `no member named "ghost"`},
			{"join ADDR --rpc-addr", []string{"join", "127.0.0.1:1", "--rpc-addr", a.rpc}, 1, "join 127.0.0.1:1"},
			// Commands without arguments name the stray one.
			{"members NAME", []string{"members", "n1", "--rpc-addr", a.rpc}, 1, `members takes no arguments, got "n1"`},
			{"leave NAME", []string{"leave", "foo", "--rpc-addr", a.rpc}, 1, `leave takes no arguments, got "foo"`},
			{"info X", []string{"info", "x", "--rpc-addr", a.rpc}, 1, `info takes no arguments`},
			{"interpreters X", []string{"interpreters", "x", "--rpc-addr", a.rpc}, 1, `interpreters takes no arguments`},
			{"monitor X", []string{"monitor", "x", "--rpc-addr", a.rpc}, 1, `monitor takes no arguments`},
			{"keygen X", []string{"keygen", "x"}, 1, `keygen takes no arguments`},
		} {
			_, errOut, code := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "no agent answers") {
				t.Errorf("%s: code %d, stderr %q; want code %d naming %q", tc.name, code, errOut, tc.code, tc.want)
			}
		}
		if _, ok := membersOf(t, a.testAgent)[a.name]; !ok {
			t.Fatal("the agent is gone after `leave foo --rpc-addr`")
		}
	})

	t.Run("item 3 tags refuse control characters from every source", func(t *testing.T) {
		forged := "a\nFAKE\t1.2.3.4\tserver\tx=y"
		cfg := filepath.Join(t.TempDir(), "tags.json")
		os.WriteFile(cfg, []byte(`{"tag": {"nl": "a\nFAKE"}}`), 0o600)
		for _, tc := range []struct {
			source string
			args   []string
			env    []string
			want   []string
		}{
			{"--tag flag", []string{"run", "--node", "x", "--tag", "nl=" + forged}, nil, []string{"--tag", `"nl"`, "newline"}},
			{"AGENT_TAG", []string{"run", "--node", "x"}, []string{"AGENT_TAG=tb=a\tb"}, []string{"AGENT_TAG", `"tb"`, "a tab"}},
			{"config file", []string{"run", "--node", "x", "--config-file", cfg}, nil, []string{"tags.json", `"nl"`, "newline"}},
			{"tags --set", []string{"tags", "--rpc-addr", a.rpc, "--set", "nl=" + forged}, nil, []string{"--set", `"nl"`, "newline"}},
			{"tags --set key", []string{"tags", "--rpc-addr", a.rpc, "--set", "a\tb=x"}, nil, []string{"--set", `"a\tb"`, "a tab"}},
		} {
			_, errOut, code := runCLIEnv(t, tc.env, tc.args...)
			for _, w := range tc.want {
				if code != 1 || !strings.Contains(errOut, w) {
					t.Errorf("%s: code %d, stderr %q; want exit 1 naming %s", tc.source, code, errOut, w)
				}
			}
		}
		// The RPC checks too: our Go client and serf's own send tags as given.
		cl, err := rpc.Dial(a.rpc, rpc.ClientConfig{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if err := cl.UpdateTags(map[string]string{"nl": forged}, nil); err == nil || !strings.Contains(err.Error(), `"nl"`) {
			t.Errorf("rpc tags with a newline: %v", err)
		}
		sc, err := serfclient.ClientFromConfig(&serfclient.Config{Addr: a.rpc, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		if err := sc.UpdateTags(map[string]string{"cr": "a\rb"}, nil); err == nil || !strings.Contains(err.Error(), "carriage return") {
			t.Errorf("serf client tags with a carriage return: %v", err)
		}
		out, _, _ := runCLI(t, "members", "--rpc-addr", a.rpc)
		if strings.Contains(out, "FAKE") || strings.Count(out, "\n") != 2 {
			t.Fatalf("members after refused tags:\n%s", out)
		}
	})

	t.Run("item 6 one table of exit codes", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			code int
		}{
			{"place ok", []string{"place", "--kind", "demo"}, 0},
			{"members no match", []string{"members", "--name", "nobody"}, 2},
			{"place no eligible server", []string{"place", "--kind", "demo", "--constraint", "dc=nowhere"}, 3},
			{"spawn no eligible server", []string{"spawn", "--kind", "demo", "--constraint", "dc=nowhere"}, 3},
			{"spawn no eligible server, json", []string{"spawn", "--kind", "demo", "--constraint", "dc=nowhere", "--format", "json"}, 3},
			{"spawn unknown kind", []string{"spawn", "--kind", "cobol"}, 4},
			{"place without --kind", []string{"place"}, 1},
		} {
			out, errOut, code := runCLI(t, append(tc.args, rpcAddr...)...)
			if code != tc.code {
				t.Errorf("%s: code %d, want %d\n%s%s", tc.name, code, tc.code, out, errOut)
			}
			if strings.HasSuffix(tc.name, "json") && !strings.Contains(out, `"code": "no-server"`) {
				t.Errorf("%s: the JSON's code disagrees with the exit code:\n%s", tc.name, out)
			}
		}
		help, _, _ := runCLI(t, "--help")
		for _, want := range []string{"3  place, spawn", "7  spawn", "8  spawn"} {
			if !strings.Contains(help, want) {
				t.Errorf("agent --help lacks %q:\n%s", want, help)
			}
		}
	})

	t.Run("item 7 errors and help speak to users", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "dur.json")
		os.WriteFile(cfg, []byte(`{"leave_timeout": "soon"}`), 0o600)
		for _, tc := range []struct {
			name   string
			args   []string
			want   []string
			refuse []string
		}{
			{"place error said once", []string{"place", "--kind", "demo", "--constraint", "dc=(", "--rpc-addr", a.rpc},
				[]string{"Error: place: "}, []string{"place: agent", "agent: place", "place: place"}},
			{"no wire command names", []string{"members", "--tag", "dc=(", "--rpc-addr", a.rpc},
				[]string{"dc"}, []string{"members-filtered"}},
			{"tags --set blames --set", []string{"tags", "--set", "novalue", "--rpc-addr", a.rpc},
				[]string{"--set", `"novalue"`}, []string{"--tag"}},
			{"config file names the file key", []string{"run", "--node", "x", "--config-file", cfg},
				[]string{`"leave_timeout"`, `"soon"`}, []string{"leave-timeout"}},
			{"bad value is one line with --names", []string{"spawn", "--wait-timeout", "abc", "--rpc-addr", a.rpc},
				[]string{"--wait-timeout", "agent spawn --help"}, []string{"Incorrect Usage", "NAME:", " -wait-timeout"}},
			{"negative place timeout", []string{"place", "--kind", "demo", "--timeout", "-5s", "--rpc-addr", a.rpc},
				[]string{"--timeout", "positive"}, nil},
		} {
			_, errOut, code := runCLI(t, tc.args...)
			if code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
				t.Errorf("%s: code %d, want one error line: %q", tc.name, code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("%s: stderr %q lacks %q", tc.name, errOut, w)
				}
			}
			for _, r := range tc.refuse {
				if strings.Contains(errOut, r) {
					t.Errorf("%s: stderr %q holds %q", tc.name, errOut, r)
				}
			}
			if strings.Count(errOut, "--rpc-token-file") > 1 {
				t.Errorf("%s: the token advice twice: %q", tc.name, errOut)
			}
		}
		help, _, _ := runCLI(t, "run", "--help")
		if !regexp.MustCompile(`--node value +unique name of this node in the mesh \(default: the host name\) \[\$AGENT_NODE\]`).MatchString(help) {
			t.Errorf("run --help, --node line:\n%s", help)
		}
		if !strings.Contains(help, "--encrypt value ") || !strings.Contains(help, "agent keygen") {
			t.Errorf("run --help, --encrypt line:\n%s", help)
		}
	})

	t.Run("item 8 secrets are not echoed", func(t *testing.T) {
		const almost = "cg8StVXbQJ0gPvMd9o7yrgAlmostAKey=="
		for _, args := range [][]string{
			{"run", "--node", "x", "--encrypt", almost},
			{"keys", "--install", almost, "--rpc-addr", a.rpc},
		} {
			_, errOut, code := runCLI(t, args...)
			if code != 1 || strings.Contains(errOut, almost) || !strings.Contains(errOut, "base64") {
				t.Errorf("%v: code %d, stderr %q: want exit 1, what is wrong, not the key", args[:1], code, errOut)
			}
		}
	})

	t.Run("item 9 no small lies", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			args     []string
			code     int
			want     string
			wantOut  string // the whole of stdout
			maxLines int    // of stderr
		}{
			{"force-leave alive", []string{"force-leave", a.name, "--rpc-addr", a.rpc}, 1, "is alive", "", 1},
			{"force-leave unknown", []string{"force-leave", "ghost", "--rpc-addr", a.rpc}, 1, "no member named", "", 1},
			{"keys --list unencrypted", []string{"keys", "--list", "--rpc-addr", a.rpc}, 1, "encryption is off", "", 1},
			{"advertise 0.0.0.0", []string{"run", "--node", "x", "--advertise", "0.0.0.0:7946"}, 1, "--advertise", "", 1},
			{"node name over 128 bytes", []string{"run", "--node", strings.Repeat("n", 3000)}, 1, "128", "", 1},
			{"event handler =", []string{"run", "--node", "x", "--event-handler", "="}, 1, "--event-handler", "", 1},
			{"no match prints no header", []string{"members", "--name", "nobody", "--rpc-addr", a.rpc}, 2, "no member matches", "", 1},
		} {
			out, errOut, code := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) || out != tc.wantOut ||
				strings.Count(strings.TrimSpace(errOut), "\n")+1 > tc.maxLines {
				t.Errorf("%s: code %d, stdout %q, stderr %q; want code %d, %q", tc.name, code, out, errOut, tc.code, tc.want)
			}
		}
	})

	t.Run("item 10 HTTP answers only its own names", func(t *testing.T) {
		get := func(host, path string) *http.Response {
			req, _ := http.NewRequest("GET", "http://"+a.http+path, nil)
			if host != "" {
				req.Host = host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp
		}
		port := a.http[strings.LastIndex(a.http, ":"):]
		for _, tc := range []struct {
			host string
			code int
		}{
			{"", http.StatusOK}, // the listen address
			{"localhost" + port, http.StatusOK},
			{a.name + port, http.StatusOK},
			{"[::1]" + port, http.StatusOK},
			{"agent.example", http.StatusOK}, // --http-allow-host
			{"evil.example" + port, http.StatusMisdirectedRequest},
			{"rebind.attacker.test", http.StatusMisdirectedRequest},
		} {
			for _, path := range []string{"/v1/members", "/metrics", "/"} {
				resp := get(tc.host, path)
				if resp.StatusCode != tc.code || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
					t.Errorf("Host %q %s: status %d, nosniff %q; want %d", tc.host, path, resp.StatusCode,
						resp.Header.Get("X-Content-Type-Options"), tc.code)
				}
			}
		}
		if csp := get("", "/").Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("dashboard CSP %q lacks frame-ancestors 'none'", csp)
		}
		// The README names every metric the agent serves.
		resp, err := http.Get("http://" + a.http + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		readme, _ := os.ReadFile("README.md")
		for _, m := range regexp.MustCompile(`(?m)^# TYPE (agent_\w+)`).FindAllStringSubmatch(string(body), -1) {
			if !strings.Contains(string(readme), "`"+m[1]+"`") {
				t.Errorf("README does not name metric %s", m[1])
			}
		}
	})

	t.Run("item 11 event, query and keys --format json", func(t *testing.T) {
		if out, errOut, code := runCLI(t, "event", "deploy", "v1.2", "--rpc-addr", a.rpc); code != 0 || !strings.Contains(out, "deploy") {
			t.Fatalf("event: code %d %s%s", code, out, errOut)
		}
		waitFor(t, "the user:deploy handler to get the payload", 10*time.Second, func() bool { return a.file("deploy") == "v1.2" })

		out, errOut, code := runCLI(t, "query", "ping", "x", "--timeout", "2s", "--format", "json", "--rpc-addr", a.rpc)
		var q struct {
			Acks      []string
			Responses map[string]string
		}
		if code != 0 || json.Unmarshal([]byte(out), &q) != nil || q.Responses[a.name] != "pong-x" || len(q.Acks) != 1 {
			t.Fatalf("query --format json: code %d %+v\n%s%s", code, q, out, errOut)
		}
		out, _, code = runCLI(t, "query", "ping", "--timeout", "2s", "--rpc-addr", a.rpc)
		if code != 0 || !strings.Contains(out, fmt.Sprintf("response from %s: pong-", a.name)) || !strings.Contains(out, "1 acks, 1 responses") {
			t.Fatalf("query: code %d\n%s", code, out)
		}
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"the agent's own query", []string{"query", "place", "--timeout", "1s"}, "the agent's own"},
			{"no name", []string{"event"}, "needs a name"},
			{"name with a newline", []string{"event", "a\nb"}, "one word"},
		} {
			_, errOut, code := runCLI(t, append(tc.args, rpcAddr...)...)
			if code != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("%s: code %d, stderr %q; want %q", tc.name, code, errOut, tc.want)
			}
		}
	})
}

// TestKeysAsJSONAndTokenAdviceOnce: on an encrypted agent with an RPC
// token, keys --list --format json gives the keys, and a missing or wrong
// token is explained once.
func TestKeysAsJSONAndTokenAdviceOnce(t *testing.T) {
	key, _, _ := runCLI(t, "keygen")
	key = strings.TrimSpace(key)
	a := newTestAgent(t, 1)
	a.rpcToken = filepath.Join(t.TempDir(), "token")
	os.WriteFile(a.rpcToken, []byte("right\n"), 0o600)
	a.start(t, "--encrypt", key, "--rpc-token-file", a.rpcToken)
	for _, args := range [][]string{{}, {"--rpc-token", "guess"}} {
		_, errOut, code := runCLI(t, append([]string{"members", "--rpc-addr", a.rpc}, args...)...)
		if code != 1 || strings.Count(errOut, "--rpc-token-file") != 1 || strings.Count(errOut, "\n") != 1 {
			t.Errorf("members %v: code %d, stderr %q: want the advice once", args, code, errOut)
		}
	}
	out, errOut, code := runCLI(t, "keys", "--list", "--format", "json", "--rpc-addr", a.rpc, "--rpc-token-file", a.rpcToken)
	var r struct {
		Op    string
		Nodes int
		Keys  map[string]int
	}
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || r.Op != "list" || r.Nodes != 1 || r.Keys[key] != 1 {
		t.Fatalf("keys --list --format json: code %d %+v\n%s%s", code, r, out, errOut)
	}
}
