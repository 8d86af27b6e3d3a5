package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/bidding"
	"github.com/meshagent/agent/gossip"
)

// backend is the agent as the RPC server sees it: it translates between the
// wire types of agent/rpc and the gossip node. Safe for concurrent use, as
// the gossip node is.
type backend struct{ a *Agent }

var _ rpc.Backend = (*backend)(nil)

func toWireMember(m gossip.Member) rpc.Member {
	return rpc.Member{
		Name: m.Name, Addr: m.Addr, Port: m.Port, Tags: m.Tags, Status: string(m.Status),
		ProtocolMin: m.ProtocolMin, ProtocolMax: m.ProtocolMax, ProtocolCur: m.ProtocolCur,
		DelegateMin: m.DelegateMin, DelegateMax: m.DelegateMax, DelegateCur: m.DelegateCur,
	}
}

func (b *backend) Members() []rpc.Member {
	ms := b.a.node.Members()
	out := make([]rpc.Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, toWireMember(m))
	}
	return out
}

func (b *backend) Join(addrs []string, replay bool) (int, error) {
	for _, addr := range addrs {
		if err := checkJoinAddr(addr); err != nil {
			return 0, err
		}
	}
	n, err := b.a.node.Join(addrs, replay)
	if n > 0 {
		// Some answered: that is a join, as serf counts it.
		if err != nil {
			b.a.logger.Warn("join reached only some addresses", "joined", n, "err", err)
		}
		return n, nil
	}
	return n, err
}

func (b *backend) Leave() error {
	b.a.logger.Info("leave requested over rpc")
	err := b.a.Leave()
	b.a.leaveOnce.Do(func() { close(b.a.leftCh) })
	return err
}

// ForceLeave marks a failed member as left. Serf accepts any name and says
// nothing; here an unknown name or an alive member is an error that says so,
// since "marked as left" would be a lie for both.
func (b *backend) ForceLeave(node string, prune bool) error {
	status := gossip.StatusNone
	for _, m := range b.a.node.Members() {
		if m.Name == node {
			status = m.Status
		}
	}
	switch status {
	case gossip.StatusNone:
		return fmt.Errorf("no member named %q in this agent's member list (agent members lists them)", node)
	case gossip.StatusAlive:
		return fmt.Errorf("%q is alive: force-leave is for failed members; to take it out of the mesh, run agent leave against its agent", node)
	}
	return b.a.node.ForceLeave(node, prune)
}

// UpdateTags changes the user's own tags; the tags the agent derives (role,
// load, interpreter fields) cannot be set or deleted from outside. Tags are
// checked here, not only by our CLI: serf's own client sends them as given.
func (b *backend) UpdateTags(set map[string]string, remove []string) error {
	if err := gossip.CheckTags(set); err != nil {
		return err
	}
	return b.a.updateUserTags(set, remove)
}

func (b *backend) UserEvent(name string, payload []byte, coalesce bool) error {
	return b.a.node.UserEvent(name, payload, coalesce)
}

// ownQueries are the query names placement uses; a user's query of one of
// them would reach the placement handlers.
var ownQueries = []string{bidding.QueryName, "spawn"} // "spawn": the start order's query

// IsOwnQuery reports whether a query name is one the agent itself uses.
func IsOwnQuery(name string) bool { return slices.Contains(ownQueries, name) }

func queryParams(req rpc.QueryRequest) gossip.QueryParams {
	return gossip.QueryParams{
		FilterNodes: req.FilterNodes,
		FilterTags:  req.FilterTags,
		RequestAck:  req.RequestAck,
		RelayFactor: req.RelayFactor,
		Timeout:     req.Timeout,
	}
}

func (b *backend) CheckQuery(req rpc.QueryRequest) error {
	if IsOwnQuery(req.Name) {
		return fmt.Errorf("query name %q is the agent's own (placement uses it): choose another name", req.Name)
	}
	if size := b.a.node.QuerySize(req.Name, req.Payload, queryParams(req)); size > gossip.QuerySizeLimit {
		return fmt.Errorf("query %q would take %d bytes, over serf's %d-byte limit for a query's name, payload and filters: "+
			"send a shorter payload (or fewer --node and --tag filters)", req.Name, size, gossip.QuerySizeLimit)
	}
	return nil
}

func (b *backend) Query(ctx context.Context, req rpc.QueryRequest, onAck func(string), onResponse func(rpc.NodeResponse)) error {
	if err := b.CheckQuery(req); err != nil {
		return err
	}
	return b.a.node.Query(ctx, req.Name, req.Payload, queryParams(req), onAck, func(from string, payload []byte) {
		onResponse(rpc.NodeResponse{From: from, Payload: payload})
	})
}

func (b *backend) Keys(op rpc.KeyOp, key string) (rpc.KeyResponse, error) {
	gop := map[rpc.KeyOp]gossip.KeyOp{
		rpc.KeyInstall: gossip.KeyInstall, rpc.KeyUse: gossip.KeyUse,
		rpc.KeyRemove: gossip.KeyRemove, rpc.KeyList: gossip.KeyList,
	}[op]
	if !b.a.node.EncryptionEnabled() {
		// Serf answers with one "keyring is empty" per member.
		return rpc.KeyResponse{}, errors.New("gossip encryption is off in this mesh, so there are no keys to manage: " +
			"start every agent with --encrypt (make a key with agent keygen)")
	}
	r, err := b.a.node.Keys(gop, key)
	return rpc.KeyResponse{Messages: r.Messages, Keys: r.Keys, NumNodes: r.NumNodes, NumErr: r.NumErr, NumResp: r.NumResp}, err
}

func (b *backend) Stats() map[string]map[string]string {
	a := b.a
	local := a.node.LocalMember()
	return map[string]map[string]string{
		"agent": {
			"name":        local.Name,
			"role":        string(a.cfg.Role),
			"version":     Version,
			"profile":     a.cfg.Profile,
			"gossip":      a.node.Addr(),
			"rpc":         a.RPCAddr(),
			"load":        a.load.String(),
			"tag_updates": strconv.FormatUint(a.loadUpdates(), 10),
		},
		"runtime": {
			"os":         runtime.GOOS,
			"arch":       runtime.GOARCH,
			"version":    runtime.Version(),
			"goroutines": strconv.Itoa(runtime.NumGoroutine()),
			"cpu_count":  strconv.Itoa(runtime.NumCPU()),
		},
		"serf": a.node.Stats(),
		"tags": local.Tags,
	}
}

func (b *backend) Coordinate(node string) (rpc.Coordinate, bool) {
	c, ok := b.a.node.Coordinate(node)
	return rpc.Coordinate{Vec: c.Vec, Error: c.Error, Adjustment: c.Adjustment, Height: c.Height}, ok
}

func (b *backend) SubscribeEvents(fn func(rpc.Event)) (cancel func()) {
	return b.a.node.Subscribe(func(e gossip.Event) {
		ev := rpc.Event{Type: string(e.Type), LTime: e.LTime, Name: e.Name, Payload: e.Payload, Coalesce: e.Coalesce}
		for _, m := range e.Members {
			ev.Members = append(ev.Members, toWireMember(m))
		}
		if e.Query != nil {
			ev.Respond = e.Query.Respond
			ev.Deadline = e.Query.Deadline
		}
		fn(ev)
	})
}

func (b *backend) SubscribeLogs(level slog.Level, fn func(string)) (cancel func()) {
	return b.a.logs.Subscribe(level, fn)
}
