package interp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/meshagent/agent/internal/durable"
)

// This file keeps what a server knows of requests across its restarts:
// the highest generation of each, its unresolved orphans, the claims it
// granted lately, and the servers it knows. The rules count on a majority of the servers to know
// of every placement: a placement took a majority's grants, and any later
// election hears from a majority, so one server in both remembers it. A
// server that forgot it all in a restart broke that: chaos seed 867 placed
// a key at generation 0 with the bids of four of seven servers, one of
// which had granted, and seen, generation 1 before its restart, and the
// stale generation 0 was the last answer (the-answer-stands). Serf's own
// snapshot keeps its clocks the same way.
//
// The journal is one line of JSON a change, appended, in the data dir; a
// restart folds it and writes it anew, compact. A torn last line (the
// agent died while writing it) is skipped. Appends are not synced, as
// serf's snapshot's are not: an agent crash loses nothing, a power loss
// may lose the last moments.

// journalName is the journal's file in the data dir.
const journalName = "requests.journal"

// journalRec is one line of the journal. K says what it records.
type journalRec struct {
	K string    `json:"k"` // "g" generation, "o" orphan, "x" orphan resolved, "d" forgotten, "c" claim, "u" claim withdrawn, "p" a claim's floor, "s" a server known, "l" a server gone
	R string    `json:"r"` // request id
	G int       `json:"g,omitempty"`
	O *Instance `json:"o,omitempty"`
	F time.Time `json:"f,omitzero"` // an orphan's failedAt, a claim's first
	T time.Time `json:"t,omitzero"` // a claim's latest
	A string    `json:"a,omitempty"`
	N uint64    `json:"n,omitempty"` // a claim's attempt
}

// journal appends records to the file. Safe for concurrent use; a write
// error is logged once, and the journal then keeps nothing more (the
// agent runs on with what it knows in memory).
type journal struct {
	mu       sync.Mutex
	path     string
	f        *os.File
	appended int // lines since the last compaction
	logger   *slog.Logger
	failed   bool
}

// add appends recs.
func (j *journal) add(recs ...journalRec) {
	if j == nil || len(recs) == 0 {
		return
	}
	lines := encodeRecs(recs)
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.failed || j.f == nil {
		return
	}
	if _, err := j.f.Write(lines); err != nil {
		j.failed = true
		j.logger.Error("cannot write the requests journal; what this server knows of requests will not outlive a restart",
			"path", j.path, "err", err)
		return
	}
	j.appended += len(recs)
}

// rewrite replaces the file with recs, compact, and appends after them
// from now on. The callers hold the memory's and the claims' locks.
func (j *journal) rewrite(recs []journalRec) error {
	lines := encodeRecs(recs)
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := durable.WriteFile(j.path, lines, 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", j.path, err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.appended, j.failed = f, 0, false
	return nil
}

// encodeRecs is recs as the journal's lines.
func encodeRecs(recs []journalRec) []byte {
	var buf bytes.Buffer
	for _, r := range recs {
		line, _ := json.Marshal(r)
		buf.Write(line)
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// close closes the file.
func (j *journal) close() {
	if j == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
}

// needsCompaction says whether the appended lines outgrew what they
// describe: live is how many records a compact file would hold.
func (j *journal) needsCompaction(live int) bool {
	if j == nil {
		return false
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return !j.failed && j.appended > 4096+4*live
}

// readJournal reads the records in path: none when there is no file. It
// skips lines it cannot read (a torn last line) and says how many.
func readJournal(path string) (recs []journalRec, skipped int, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var r journalRec
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.R == "" {
			skipped++
			continue
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return recs, skipped + 1, nil // a line past the buffer: the rest is unread, as torn
	}
	return recs, skipped, nil
}

// openJournal folds the journal in dir into m and c, as at now, then
// writes it anew, compact, and returns it for the appends that follow.
func openJournal(dir string, m *memory, c *claims, now time.Time, logger *slog.Logger) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	j := &journal{path: dir + string(os.PathSeparator) + journalName, logger: logger}
	recs, skipped, err := readJournal(j.path)
	if err != nil {
		return nil, err
	}
	if skipped > 0 {
		logger.Warn("skipped unreadable lines of the requests journal (a write cut short by a crash)", "path", j.path, "lines", skipped)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	m.fold(recs, now)
	c.fold(recs, now)
	if err := j.rewrite(append(m.recordsLocked(), c.recordsLocked()...)); err != nil {
		return nil, err
	}
	m.j, c.j = j, j
	return j, nil
}

// compact writes the journal anew when its appends outgrew what they
// describe.
func compactJournal(j *journal, m *memory, c *claims) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	live := len(m.written) + len(m.servers) + len(c.floor)
	for _, cs := range c.reqs {
		live += len(cs)
	}
	if !j.needsCompaction(live) {
		return nil
	}
	return j.rewrite(append(m.recordsLocked(), c.recordsLocked()...))
}

// fold takes in the journal's records: the last word on each request
// stands. Each request counts as seen at now. m.mu is held.
func (m *memory) fold(recs []journalRec, now time.Time) {
	for _, rec := range recs {
		r := m.reqs[rec.R]
		switch rec.K {
		case "g":
			if r == nil {
				r = &remembered{gen: rec.G}
				m.reqs[rec.R] = r
			}
			r.gen, r.seen = max(r.gen, rec.G), now
		case "o":
			if r != nil && rec.O != nil {
				o := *rec.O
				r.orphan, r.failedAt = &o, rec.F
			}
		case "x":
			if r != nil {
				r.orphan = nil
			}
		case "d":
			delete(m.reqs, rec.R)
		case "s":
			m.servers[rec.R] = now
		case "l":
			delete(m.servers, rec.R)
		}
	}
	m.written = map[string]writtenReq{}
	for rid, r := range m.reqs {
		m.written[rid] = writtenOf(r)
	}
}

// recordsLocked is the memory as journal records. m.mu is held.
func (m *memory) recordsLocked() []journalRec {
	var out []journalRec
	for rid, r := range m.reqs {
		out = append(out, journalRec{K: "g", R: rid, G: r.gen})
		if r.orphan != nil {
			out = append(out, journalRec{K: "o", R: rid, O: r.orphan, F: r.failedAt})
		}
	}
	for name := range m.servers {
		out = append(out, journalRec{K: "s", R: name})
	}
	return out
}

// writtenReq is what the journal says of one request, to tell what
// changed.
type writtenReq struct {
	gen    int
	orphan string // the orphan's name, empty when none
}

func writtenOf(r *remembered) writtenReq {
	w := writtenReq{gen: r.gen}
	if r.orphan != nil {
		w.orphan = r.orphan.Name
	}
	return w
}

// persistLocked appends what changed of rid since the journal last heard
// of it. m.mu is held.
func (m *memory) persistLocked(rid string) {
	if m.j == nil {
		return
	}
	r := m.reqs[rid]
	w, had := m.written[rid]
	if r == nil {
		if had {
			delete(m.written, rid)
			m.j.add(journalRec{K: "d", R: rid})
		}
		return
	}
	now := writtenOf(r)
	if had && now == w {
		return
	}
	var recs []journalRec
	if !had || now.gen != w.gen {
		recs = append(recs, journalRec{K: "g", R: rid, G: r.gen})
	}
	switch {
	case r.orphan != nil && now.orphan != w.orphan:
		recs = append(recs, journalRec{K: "o", R: rid, O: r.orphan, F: r.failedAt})
	case r.orphan == nil && w.orphan != "":
		recs = append(recs, journalRec{K: "x", R: rid})
	}
	m.written[rid] = now
	m.j.add(recs...)
}

// fold takes in the journal's claims still fresh at now, and the floors
// younger than genKeep. c.mu is held.
func (c *claims) fold(recs []journalRec, now time.Time) {
	if c.reqs == nil {
		c.reqs = map[string][]claim{}
	}
	for _, rec := range recs {
		switch rec.K {
		case "c":
			cs := c.reqs[rec.R]
			x := claim{asker: rec.A, attempt: rec.N, gen: rec.G, first: rec.F, at: rec.T}
			if k := indexOfAsker(cs, rec.A); k >= 0 {
				cs[k] = x
			} else {
				c.reqs[rec.R] = append(cs, x)
			}
		case "u":
			cs := c.reqs[rec.R]
			if k := indexOfAsker(cs, rec.A); k >= 0 && cs[k].attempt <= rec.N {
				c.reqs[rec.R] = append(cs[:k:k], cs[k+1:]...)
			}
		case "p":
			if c.floor == nil {
				c.floor = map[string]claimFloor{}
			}
			if f, ok := c.floor[rec.R]; !ok || rec.G >= f.gen {
				c.floor[rec.R] = claimFloor{gen: rec.G, asker: rec.A, attempt: rec.N, at: rec.T}
			}
		}
	}
	c.pruneFloorLocked(now)
	for rid, cs := range c.reqs {
		var fresh []claim
		for _, x := range cs {
			if now.Sub(x.at) <= claimKeep {
				fresh = append(fresh, x)
			}
		}
		if len(fresh) == 0 {
			delete(c.reqs, rid)
		} else {
			c.reqs[rid] = fresh
		}
	}
}

// recordsLocked is the claims as journal records. c.mu is held.
func (c *claims) recordsLocked() []journalRec {
	var out []journalRec
	for rid, cs := range c.reqs {
		for _, x := range cs {
			out = append(out, claimRec(rid, x))
		}
	}
	for rid, f := range c.floor {
		out = append(out, floorRec(rid, f))
	}
	return out
}

func floorRec(rid string, f claimFloor) journalRec {
	return journalRec{K: "p", R: rid, A: f.asker, N: f.attempt, G: f.gen, T: f.at}
}

func claimRec(rid string, x claim) journalRec {
	return journalRec{K: "c", R: rid, A: x.asker, N: x.attempt, G: x.gen, F: x.first, T: x.at}
}

func indexOfAsker(cs []claim, asker string) int {
	for k, x := range cs {
		if x.asker == asker {
			return k
		}
	}
	return -1
}
