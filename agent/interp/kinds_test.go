package interp

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadKinds(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.json", `{"python": {"command": ["sh", "-m", "k", "--port", "{port}"],
		"env": {"A": "1"}, "max": 2, "args_pattern": "--profile=[a-z]+"}}`)
	kinds, err := LoadKinds(good)
	if err != nil {
		t.Fatal(err)
	}
	k := kinds["python"]
	if k.Max != 2 || k.Env["A"] != "1" || k.Args == nil {
		t.Fatalf("kind %+v", k)
	}
	if got := k.argv("py-1", "10.0.0.1:9000", "9000", []string{"--profile=dev"}); strings.Join(got, " ") != "sh -m k --port 9000 --profile=dev" {
		t.Fatalf("argv %q", got)
	}
	if err := k.CheckArgs([]string{"--profile=dev"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"--profile=dev;rm", "--profile=DEV", "$(id)"} {
		if err := k.CheckArgs([]string{bad}); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("argument %q: %v", bad, err)
		}
	}
	if err := Demo("/bin/agent").CheckArgs([]string{"-x"}); err == nil || !strings.Contains(err.Error(), "takes no extra arguments") {
		t.Fatalf("demo with an argument: %v", err)
	}

	for name, tc := range map[string]struct{ body, want string }{
		"not json":       {`{"python": `, "not a JSON object"},
		"unknown key":    {`{"python": {"command": ["sh"], "shell": true}}`, `"shell"`},
		"no command":     {`{"python": {"env": {}}}`, "has no command"},
		"empty program":  {`{"python": {"command": [""]}}`, "has no command"},
		"bad pattern":    {`{"python": {"command": ["sh"], "args_pattern": "("}}`, `args_pattern "("`},
		"redefine demo":  {`{"demo": {"command": ["sh"]}}`, "built in"},
		"bad name":       {`{"py thon": {"command": ["sh"]}}`, `"py thon"`},
		"negative max":   {`{"python": {"command": ["sh"], "max": -1}}`, "max -1"},
		"unknown user":   {`{"python": {"command": ["sh"], "user": "no-such-user-here"}}`, `"no-such-user-here"`},
		"bad env name":   {`{"python": {"command": ["sh"], "env": {"A=B": "1"}}}`, `"A=B"`},
		"list not table": {`[{"command": ["sh"]}]`, "not a JSON object"},
		"missing program": {`{"python": {"command": ["no-such-program-here"]}}`,
			`program "no-such-program-here" is not on the PATH`},
		"missing path":  {`{"python": {"command": ["/no/such/bin"]}}`, `program "/no/such/bin" does not exist`},
		"missing dir":   {`{"python": {"command": ["sh"], "dir": "/no/such/dir"}}`, `dir "/no/such/dir" does not exist`},
		"bad restart":   {`{"python": {"command": ["sh"], "restart": "always"}}`, `restart policy "always" is not known: use "no" or "on-failure"`},
		"type in terms": {`{"python": {"command": "sh"}}`, `"command" must be a list of strings, not a JSON string`},
		"users pattern": {`{"python": {"command": ["sh"], "args_pattern": "a("}}`, `args_pattern "a(" is not a regular expression: missing closing )`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadKinds(writeFile(t, dir, strings.ReplaceAll(name, " ", "-")+".json", tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to mention %s", err, tc.want)
			}
		})
	}
	for name, tc := range map[string]struct{ body, want string }{
		"go type names": {`{"python": {"command": "sh"}}`, "Go struct"},
		"wrapped regex": {`{"python": {"command": ["sh"], "args_pattern": "a("}}`, "(?:"},
	} {
		_, err := LoadKinds(writeFile(t, dir, strings.ReplaceAll(name, " ", "-")+".json", tc.body))
		if err == nil || strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: the error leaks %q: %v", name, tc.want, err)
		}
	}
	restart, err := LoadKinds(writeFile(t, dir, "restart.json", `{"py": {"command": ["sh"], "restart": "on-failure"}}`))
	if err != nil || restart["py"].Restart != RestartOnFailure {
		t.Fatalf("restart on-failure: %+v %v", restart, err)
	}
	if _, err := LoadKinds(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestChildEnvIsAnAllowlist(t *testing.T) {
	t.Setenv("AGENT_RPC_TOKEN", "secret")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("PATH", "/usr/bin")
	env := strings.Join(childEnv(Kind{Name: "python", Env: map[string]string{"B": "2", "A": "1"}}, "py-1", "10.0.0.1:9", "9"), "\n")
	if strings.Contains(env, "secret") {
		t.Fatalf("the agent's secrets reached the interpreter:\n%s", env)
	}
	for _, want := range []string{"PATH=/usr/bin", "A=1\nB=2", "AGENT_INTERPRETER_NAME=py-1", "AGENT_INTERPRETER_PORT=9"} {
		if !strings.Contains(env, want) {
			t.Errorf("env lacks %q:\n%s", want, env)
		}
	}
}
