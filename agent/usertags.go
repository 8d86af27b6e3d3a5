package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/internal/durable"
)

// userTagsFileName keeps, in the data dir, the changes made to this
// agent's tags with `agent tags` (or serf's own tags RPC), so that a
// restart keeps them, as serf's -tags-file does. serf's file holds the
// whole tag set and refuses -tag beside it; ours holds only the changes, so
// --tag still gives the tags a fresh agent starts with, and the changes
// win over it: a key set keeps the value set, a key deleted stays deleted.
const userTagsFileName = "tags.json"

// tagChanges is the tags file: the keys the user set, with their values,
// and the --tag keys the user deleted.
type tagChanges struct {
	Set     map[string]string `json:"set,omitempty"`
	Deleted []string          `json:"deleted,omitempty"`
}

func (a *Agent) userTagsPath() string {
	if a.cfg.DataDir == "" {
		return ""
	}
	return filepath.Join(a.cfg.DataDir, userTagsFileName)
}

// loadTagChanges reads the tags file; no file is no changes.
func loadTagChanges(path string) (tagChanges, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return tagChanges{}, nil
	}
	if err != nil {
		return tagChanges{}, fmt.Errorf("read %s: %w", path, err)
	}
	var c tagChanges
	if err := json.Unmarshal(data, &c); err != nil {
		return tagChanges{}, fmt.Errorf("%s is damaged (%v): fix it, or delete it to start with the --tag tags only", path, err)
	}
	for k, v := range c.Set {
		if err := gossip.CheckTag(k, v); err != nil {
			return tagChanges{}, fmt.Errorf("%s: %w: fix it, or delete it to start with the --tag tags only", path, err)
		}
	}
	for _, k := range slices.Concat(slices.Collect(maps.Keys(c.Set)), c.Deleted) {
		if gossip.IsReservedTag(k) {
			return tagChanges{}, fmt.Errorf("%s names tag %q, which the agent sets itself: remove it from the file, or delete the file", path, k)
		}
	}
	return c, nil
}

// writeTagChanges replaces the tags file, atomically.
func writeTagChanges(path string, c tagChanges) error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(path, append(data, '\n'), 0o600)
}

// apply returns base (the --tag tags) with the changes made over it.
func (c tagChanges) apply(base map[string]string) map[string]string {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]string{}
	}
	for _, k := range c.Deleted {
		delete(out, k)
	}
	maps.Copy(out, c.Set)
	return out
}

// with returns the changes once set and remove are made too. A deletion is
// kept only for a key --tag gives (base): any other key is gone once it
// leaves Set.
func (c tagChanges) with(base, set map[string]string, remove []string) tagChanges {
	next := tagChanges{Set: maps.Clone(c.Set)}
	if next.Set == nil {
		next.Set = map[string]string{}
	}
	deleted := map[string]bool{}
	for _, k := range c.Deleted {
		deleted[k] = true
	}
	for _, k := range remove {
		delete(next.Set, k)
		if _, ok := base[k]; ok {
			deleted[k] = true
		}
	}
	for k, v := range set {
		next.Set[k] = v
		delete(deleted, k)
	}
	for k := range deleted {
		next.Deleted = append(next.Deleted, k)
	}
	sort.Strings(next.Deleted)
	return next
}

// overrides describes the --tag tags (base) that the changes replace or
// delete, one "k=v (set to w)" or "k=v (deleted)" each, sorted.
func (c tagChanges) overrides(base map[string]string) []string {
	var out []string
	for k, v := range base {
		if w, ok := c.Set[k]; ok && w != v {
			out = append(out, fmt.Sprintf("%s=%s (set to %s)", k, v, w))
		} else if !ok && slices.Contains(c.Deleted, k) {
			out = append(out, fmt.Sprintf("%s=%s (deleted)", k, v))
		}
	}
	sort.Strings(out)
	return out
}

// restoreUserTags applies the changes kept in the data dir over the --tag
// tags, before the node first gossips them. The data dir is locked.
func (a *Agent) restoreUserTags() error {
	path := a.userTagsPath()
	if path == "" {
		return nil
	}
	c, err := loadTagChanges(path)
	if err != nil {
		return err
	}
	a.tagsMu.Lock()
	a.tags.changes = c
	a.tags.extra = c.apply(a.cfg.Tags)
	a.tagsMu.Unlock()
	if len(c.Set) == 0 && len(c.Deleted) == 0 {
		return nil
	}
	a.logger.Info("tags changed with agent tags before the restart are kept", "file", path,
		"set", len(c.Set), "deleted", len(c.Deleted))
	if over := c.overrides(a.cfg.Tags); len(over) > 0 {
		a.logger.Warn("--tag "+strings.Join(over, ", ")+": changed with agent tags before the restart, which wins over --tag; "+
			"agent tags --set or --delete changes it again", "file", path)
	}
	return nil
}
