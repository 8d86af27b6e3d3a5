package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/state"
)

// tagState is the one owner of the local node's tags. The user's tags, the
// published load and the interpreter count change from different goroutines
// (RPC, the load loop, the spawner); each change rebuilds the whole map here
// under one lock, so no update can undo another.
type tagState struct {
	extra     map[string]string // the user's own tags: --tag with changes applied
	changes   tagChanges        // the changes made with agent tags, kept in the data dir
	latest    *gossip.Load      // the newest average, not necessarily published
	healthy   bool              // load sampling works
	published state.Published   // what the tags carry
	updates   uint64            // load publications, for stats
	deaf      bool              // load updates held: this node's probes go unanswered
}

// buildTagsLocked renders the tags from the state; a.tagsMu must be held.
func (a *Agent) buildTagsLocked() map[string]string {
	t := gossip.Tags{Role: a.cfg.Role, Extra: a.tags.extra}
	if a.cfg.Role == gossip.RoleServer {
		if a.tags.published.Valid {
			t.Load = &gossip.Load{CPU: a.tags.published.CPU, Mem: a.tags.published.Mem}
		}
		t.Interpreters = a.tags.published.Interpreters
		if !a.tags.published.Valid {
			t.Interpreters = a.runningInterpreters()
		}
		t.Capacity = a.cfg.Capacity
		t.Draining = a.draining()
	}
	return t.Map()
}

// updateUserTags sets and deletes the user's own tags.
func (a *Agent) updateUserTags(set map[string]string, remove []string) error {
	for k := range set {
		if gossip.IsReservedTag(k) {
			return fmt.Errorf("tag %q is set by the agent itself and cannot be changed", k)
		}
	}
	for _, k := range remove {
		if gossip.IsReservedTag(k) {
			return fmt.Errorf("tag %q is set by the agent itself and cannot be deleted", k)
		}
	}
	a.tagsMu.Lock()
	defer a.tagsMu.Unlock()
	if a.leaving.Load() {
		return errors.New("this agent is leaving the mesh: its tags no longer change")
	}
	old, oldChanges := a.tags.extra, a.tags.changes
	changes := oldChanges.with(a.cfg.Tags, set, remove)
	next := changes.apply(a.cfg.Tags)
	// As serf's agent: the change is kept before it is gossiped, so a
	// restart never loses a change the mesh has seen.
	path := a.userTagsPath()
	if path != "" {
		if err := writeTagChanges(path, changes); err != nil {
			return fmt.Errorf("tags not changed: %w", err)
		}
	}
	a.tags.extra, a.tags.changes = next, changes
	if err := a.node.SetTags(a.buildTagsLocked()); err != nil {
		a.tags.extra, a.tags.changes = old, oldChanges
		if path != "" {
			if werr := writeTagChanges(path, oldChanges); werr != nil {
				a.logger.Error("tags not changed, but the tags file keeps the change: the next start applies it", "file", path, "err", werr)
			}
		}
		return err
	}
	return nil
}

// observeLoad records a new average and publishes it when the policy says
// it is worth gossiping.
func (a *Agent) observeLoad(l gossip.Load, now time.Time) {
	a.tagsMu.Lock()
	defer a.tagsMu.Unlock()
	a.tags.latest = &l
	if a.leaving.Load() {
		return // the leave is the last word; a tag update would race it
	}
	// A node whose probes go unanswered is failed or about to be; a tag
	// update would revive it everywhere until the mesh fails it again, a
	// flap per update (issue 14). It publishes once it hears the mesh.
	// gossip.Node.SetTags holds every other change while deaf (user tags,
	// drain, the republish after a join: issue 31); load is held here as
	// well, so that what is published stays what the mesh was told.
	if a.node.Deaf() {
		if !a.tags.deaf {
			a.tags.deaf = true
			a.logger.Warn("this node's probes go unanswered: load updates are held until it hears the mesh again",
				"health_score", a.node.HealthScore())
		}
		return
	}
	if a.tags.deaf {
		a.tags.deaf = false
		a.logger.Info("this node hears the mesh again: load updates resume")
	}
	ni := a.runningInterpreters()
	ok, why := a.cfg.Publish.Decide(a.tags.published, l.CPU, l.Mem, ni, now)
	if !ok {
		return
	}
	old := a.tags.published
	a.tags.published = state.Published{CPU: state.Round1(l.CPU), Mem: state.Round1(l.Mem), Interpreters: ni, At: now, Valid: true}
	if err := a.node.SetTags(a.buildTagsLocked()); err != nil {
		a.tags.published = old
		if a.leaving.Load() {
			// The leave began while the update waited for its broadcast.
			a.logger.Debug("load not published: the agent is leaving", "err", err)
			return
		}
		a.logger.Error("could not publish load", "err", err)
		return
	}
	a.tags.updates++
	a.logger.Debug("load published", "cpu", a.tags.published.CPU, "mem", a.tags.published.Mem, "ni", ni, "why", why)
}

func (a *Agent) setLoadHealthy(ok bool) {
	a.tagsMu.Lock()
	a.tags.healthy = ok
	a.tagsMu.Unlock()
}

// currentLoad is the newest average and whether sampling works.
func (a *Agent) currentLoad() (gossip.Load, bool) {
	a.tagsMu.Lock()
	defer a.tagsMu.Unlock()
	if a.tags.latest == nil {
		return gossip.Load{}, false
	}
	return *a.tags.latest, a.tags.healthy
}

// loadUpdates counts the load publications so far.
func (a *Agent) loadUpdates() uint64 {
	a.tagsMu.Lock()
	defer a.tagsMu.Unlock()
	return a.tags.updates
}
