package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/meshagent/agent/gossip"
	"github.com/meshagent/agent/internal/durable"
)

// peersFileName is the agent's record of the members it last knew, kept in
// the data dir. serf's own snapshot is not enough for a rejoin after kill -9:
// it flushes its buffer only when a later line is appended, so in a quiet
// mesh the members learnt at join time can still be in memory when the
// process dies, and the restarted agent then knows nobody.
const peersFileName = "peers.json"

// peersRecord is the peers file: the gossip addresses of the other alive
// members, and whether this agent left on purpose (then it does not rejoin
// by itself, as with serf).
type peersRecord struct {
	Peers   []string  `json:"peers"`
	Left    bool      `json:"left"`
	Written time.Time `json:"written"`
}

func (a *Agent) peersPath() string {
	if a.cfg.DataDir == "" {
		return ""
	}
	return filepath.Join(a.cfg.DataDir, peersFileName)
}

// loadPeers returns the addresses recorded for a rejoin and whether the
// agent left the mesh on purpose before it stopped (then, as with serf, it
// rejoins them only with --rejoin). No record is no peers.
func loadPeers(path string) (peers []string, left bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	var rec peersRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, false, fmt.Errorf("%s is damaged (%v): delete it, and give --join to find the mesh", path, err)
	}
	return rec.Peers, rec.Left, nil
}

// alivePeers lists the gossip addresses of the other alive members, sorted.
func (a *Agent) alivePeers() []string {
	self := a.node.Name()
	var peers []string
	for _, m := range a.node.Members() {
		if m.Name == self || m.Status != gossip.StatusAlive {
			continue
		}
		peers = append(peers, net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))))
	}
	sort.Strings(peers)
	return peers
}

func (a *Agent) writePeers(peers []string, left bool) error {
	data, err := json.MarshalIndent(peersRecord{Peers: peers, Left: left, Written: a.clock.Now().UTC()}, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(a.peersPath(), append(data, '\n'), 0o600)
}

// recordPeers rewrites the peers file when the set of alive peers changes,
// at once for the first change and then at most once per interval, so that a
// flapping mesh does not turn into a stream of disk writes. An empty set is
// never recorded: an agent that is alone (just restarted, or cut off) has
// nothing better to offer than the members it knew before.
func (a *Agent) recordPeers(changed <-chan struct{}, interval time.Duration) {
	var last []string
	for {
		select {
		case <-a.shutdownCh:
			return
		case <-changed:
		}
		peers := a.alivePeers()
		if len(peers) == 0 || slices.Equal(peers, last) {
			continue
		}
		var err error
		a.peersMu.Lock()
		if !a.peersLeft {
			err = a.writePeers(peers, false)
		}
		a.peersMu.Unlock()
		if err != nil {
			a.logger.Warn("could not record peers for rejoin", "err", err)
		}
		last = peers
		select {
		case <-a.shutdownCh:
			return
		case <-a.clock.After(interval):
		}
	}
}
