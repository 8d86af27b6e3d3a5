package interp

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// FuzzSpawnOrder: spawn and stop orders come from the network. Decoding
// must never panic, and the checks a server applies to an order (kind
// lookup, argument pattern) must hold up on whatever decodes.
func FuzzSpawnOrder(f *testing.F) {
	for _, o := range []spawnOrder{
		{RequestID: "k0123456789abcdef", Kind: "demo", Asker: "s1"},
		{RequestID: "r", Kind: "python", Args: []string{"--profile=dev", "$(id)"}},
	} {
		data, _ := msgpack.Marshal(o)
		f.Add(data)
	}
	f.Add([]byte{0x81, 0xa3, 'r', 'i', 'd', 0xc0})
	kind := Kind{Name: "python", Command: []string{"sh"}}
	kind.Args = mustArgs(f, "--profile=[a-z]+")
	f.Fuzz(func(t *testing.T, data []byte) {
		var o spawnOrder
		if err := msgpack.Unmarshal(data, &o); err != nil {
			return
		}
		_ = kind.CheckArgs(o.Args)
		_ = InterpreterName(o.Kind, o.RequestID)
		again, err := msgpack.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		var back spawnOrder
		if err := msgpack.Unmarshal(again, &back); err != nil || !reflect.DeepEqual(normalOrder(o), normalOrder(back)) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, o, back)
		}
		var s stopOrder
		_ = msgpack.Unmarshal(data, &s)
	})
}

func normalOrder(o spawnOrder) spawnOrder {
	if len(o.Args) == 0 {
		o.Args = nil
	}
	return o
}

func mustArgs(f *testing.F, pattern string) *regexp.Regexp {
	k, err := loadKindFromJSON(`{"x": {"command": ["sh"], "args_pattern": "` + pattern + `"}}`)
	if err != nil {
		f.Fatal(err)
	}
	return k["x"].Args
}

// FuzzLoadKinds: the interpreters file decides what a server will run; no
// content may panic the loader or yield a kind without a program.
func FuzzLoadKinds(f *testing.F) {
	f.Add(`{"python": {"command": ["python3", "-m", "k", "--port", "{port}"], "max": 2, "args_pattern": "--x=[0-9]+"}}`)
	f.Add(`{"r": {"command": ["R"], "env": {"A": "1"}, "dir": "/tmp"}}`)
	f.Add(`{"demo": {"command": ["sh"]}}`)
	f.Add(`{"x": {"command": []}}`)
	f.Fuzz(func(t *testing.T, body string) {
		kinds, err := loadKindFromJSON(body)
		if err != nil {
			return
		}
		for name, k := range kinds {
			if len(k.Command) == 0 || k.Command[0] == "" || name == BuiltinKind {
				t.Fatalf("accepted kind %q with command %q", name, k.Command)
			}
		}
	})
}

func loadKindFromJSON(body string) (map[string]Kind, error) {
	dir, err := os.MkdirTemp("", "kinds")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "kinds.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		return nil, err
	}
	return LoadKinds(path)
}
