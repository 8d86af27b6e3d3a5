package agent

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The changes made with agent tags, over the --tag tags: what a restart
// applies, step by step.
func TestTagChanges(t *testing.T) {
	base := map[string]string{"zone": "a", "rack": "r1"}
	type step struct {
		set     map[string]string
		remove  []string
		want    map[string]string // the tags after the step
		deleted []string          // the --tag keys recorded as deleted
		over    []string
	}
	var c tagChanges
	for i, s := range []step{
		{set: map[string]string{"dc": "east", "zone": "b"}, want: map[string]string{"zone": "b", "rack": "r1", "dc": "east"},
			over: []string{"zone=a (set to b)"}},
		{remove: []string{"dc", "rack", "nosuch"}, want: map[string]string{"zone": "b"}, deleted: []string{"rack"},
			over: []string{"rack=r1 (deleted)", "zone=a (set to b)"}},
		{set: map[string]string{"rack": "r1", "zone": "a"}, want: map[string]string{"zone": "a", "rack": "r1"}},
		{remove: []string{"zone"}, want: map[string]string{"rack": "r1"}, deleted: []string{"zone"}, over: []string{"zone=a (deleted)"}},
	} {
		c = c.with(base, s.set, s.remove)
		if got := c.apply(base); !maps.Equal(got, s.want) {
			t.Errorf("step %d: tags %v, want %v", i, got, s.want)
		}
		if !slices.Equal(c.Deleted, s.deleted) {
			t.Errorf("step %d: deleted %v, want %v", i, c.Deleted, s.deleted)
		}
		if got := c.overrides(base); !slices.Equal(got, s.over) {
			t.Errorf("step %d: overrides %q, want %q", i, got, s.over)
		}
		path := filepath.Join(t.TempDir(), userTagsFileName)
		if err := writeTagChanges(path, c); err != nil {
			t.Fatal(err)
		}
		back, err := loadTagChanges(path)
		if err != nil || !maps.Equal(back.apply(base), s.want) {
			t.Errorf("step %d: the file gives %v (%v), want %v", i, back.apply(base), err, s.want)
		}
	}
	if got := base; !maps.Equal(got, map[string]string{"zone": "a", "rack": "r1"}) {
		t.Errorf("the --tag tags changed: %v", got)
	}
}

// A tags file the agent cannot use stops the start, naming the file, what
// is wrong and what to do.
func TestLoadTagChangesRefusesABadFile(t *testing.T) {
	dir := t.TempDir()
	if c, err := loadTagChanges(filepath.Join(dir, "none.json")); err != nil || len(c.Set)+len(c.Deleted) != 0 {
		t.Errorf("no file: %+v, %v; want no changes", c, err)
	}
	for _, tc := range []struct{ name, data, want string }{
		{"damaged", `{"set":`, "is damaged"},
		{"a bad tag", `{"set":{"a b":"x"}}`, "fix it, or delete it to start with the --tag tags only"},
		{"a reserved key set", `{"set":{"cpu":"1"}}`, `names tag "cpu", which the agent sets itself`},
		{"a reserved key deleted", `{"deleted":["role"]}`, `names tag "role", which the agent sets itself`},
	} {
		path := filepath.Join(dir, tc.name+".json")
		if err := os.WriteFile(path, []byte(tc.data), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadTagChanges(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s and saying %q", tc.name, err, path, tc.want)
		}
	}
}
