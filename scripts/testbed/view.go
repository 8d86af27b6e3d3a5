package testbed

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// View is what each asked agent reports: observer → member → status.
type View map[string]map[string]string

// View asks hosts (every host when none is named) in parallel for their
// member lists. A host whose agent does not answer before ctx ends, or
// runs no agent, is left out: never ask a paused agent, it cannot answer.
func (b *Testbed) View(ctx context.Context, hosts ...*Host) View {
	if len(hosts) == 0 {
		hosts = b.Hosts
	}
	v := View{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms, err := h.Members(ctx)
			if err != nil {
				return
			}
			st := make(map[string]string, len(ms))
			for name, m := range ms {
				st[name] = m.Status
			}
			mu.Lock()
			v[h.Name] = st
			mu.Unlock()
		}()
	}
	wg.Wait()
	return v
}

// All reports whether every observer answered and sees every target with
// status.
func (v View) All(observers, targets []*Host, status string) bool {
	for _, o := range observers {
		st, ok := v[o.Name]
		if !ok {
			return false
		}
		for _, t := range targets {
			if st[t.Name] != status {
				return false
			}
		}
	}
	return true
}

// Any reports whether some observer sees some target with status.
func (v View) Any(observers, targets []*Host, status string) bool {
	for _, o := range observers {
		for _, t := range targets {
			if v[o.Name][t.Name] == status {
				return true
			}
		}
	}
	return false
}

// Changes lists, sorted, how each observer's view moved from prev to v:
// "h1 sees h4 failed (was alive)". Observers missing from v are skipped.
func (v View) Changes(prev View) []string {
	var out []string
	for obs, st := range v {
		for name, status := range st {
			was, ok := prev[obs][name]
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("%s sees %s %s (new)", obs, name, status))
			case was != status:
				out = append(out, fmt.Sprintf("%s sees %s %s (was %s)", obs, name, status, was))
			}
		}
		for name := range prev[obs] {
			if _, ok := st[name]; !ok {
				out = append(out, fmt.Sprintf("%s no longer lists %s", obs, name))
			}
		}
	}
	sort.Strings(out)
	return out
}
