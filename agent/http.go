package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/gossip"
)

// The HTTP API (on --http-addr, loopback by default) serves what operators
// look at: the member list, the interpreters, this agent, a live event
// stream, the load history behind the dashboard's charts, Prometheus
// metrics, and the dashboard itself. It only reads: changing the mesh is
// the RPC's job, which has a token.

// MemberJSON is one member as the HTTP API and `agent members --format
// json` show it: serf's fields plus what the tags mean here.
type MemberJSON struct {
	Name         string            `json:"name"`
	Addr         string            `json:"addr"`
	Port         uint16            `json:"port"`
	Status       string            `json:"status"`
	Tags         map[string]string `json:"tags"`
	Role         string            `json:"role,omitempty"`
	CPU          *float64          `json:"cpu,omitempty"`
	Mem          *float64          `json:"mem,omitempty"`
	Interpreters *int              `json:"interpreters,omitempty"`
	Capacity     int               `json:"capacity,omitempty"`  // servers: the most they accept; 0 no limit
	Draining     bool              `json:"draining,omitempty"`  // servers: taking no new interpreters
	Unhealthy    string            `json:"unhealthy,omitempty"` // servers and interpreters: their critical checks (hc)
	Host         string            `json:"host,omitempty"`      // interpreters: their server
	Kind         string            `json:"kind,omitempty"`      // interpreters
	Endpoint     string            `json:"endpoint,omitempty"`
}

// MemberView renders a member for JSON output.
func MemberView(name string, addr net.IP, port uint16, status string, tags map[string]string) MemberJSON {
	v := MemberJSON{Name: name, Addr: addr.String(), Port: port, Status: status, Tags: tags}
	if v.Tags == nil {
		v.Tags = map[string]string{}
	}
	t, _ := gossip.ParseTags(tags) // a malformed field of a foreign node shows as unknown
	v.Role, v.Host, v.Kind, v.Endpoint = string(t.Role), t.Host, t.Kind, t.Endpoint
	if t.Load != nil {
		v.CPU, v.Mem = &t.Load.CPU, &t.Load.Mem
	}
	if t.Role == gossip.RoleServer {
		ni := t.Interpreters
		v.Interpreters = &ni
		v.Capacity = t.Capacity
		v.Draining = t.Draining
	}
	v.Unhealthy = t.Critical
	return v
}

func memberJSON(m gossip.Member) MemberJSON {
	return MemberView(m.Name, m.Addr, m.Port, string(m.Status), m.Tags)
}

// loadPoint is one published load of a server, as this agent saw it.
type loadPoint struct {
	At  int64   `json:"t"` // unix milliseconds
	CPU float64 `json:"cpu"`
	Mem float64 `json:"mem"`
}

// loadHistory keeps the last points of every server's published load, from
// the member events this agent sees, for the dashboard's charts. Safe for
// concurrent use.
type loadHistory struct {
	mu     sync.Mutex
	points map[string][]loadPoint
	keep   time.Duration
	max    int
}

func newLoadHistory(keep time.Duration, max int) *loadHistory {
	return &loadHistory{points: map[string][]loadPoint{}, keep: keep, max: max}
}

func (h *loadHistory) record(m gossip.Member, now time.Time) {
	t, _ := gossip.ParseTags(m.Tags)
	if t.Role != gossip.RoleServer || t.Load == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	pts := h.points[m.Name]
	p := loadPoint{At: now.UnixMilli(), CPU: t.Load.CPU, Mem: t.Load.Mem}
	if n := len(pts); n > 0 && pts[n-1].CPU == p.CPU && pts[n-1].Mem == p.Mem {
		return // an update of other tags; the load did not move
	}
	pts = append(pts, p)
	cut := now.Add(-h.keep).UnixMilli()
	i := 0
	for i < len(pts) && (pts[i].At < cut || len(pts)-i > h.max) {
		i++
	}
	h.points[m.Name] = pts[i:]
}

func (h *loadHistory) snapshot() map[string][]loadPoint {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string][]loadPoint, len(h.points))
	for k, v := range h.points {
		out[k] = append([]loadPoint(nil), v...)
	}
	return out
}

// startHTTP serves the HTTP API on --http-addr, when set.
func (a *Agent) startHTTP() error {
	if a.cfg.HTTPAddr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/members", a.httpMembers)
	mux.HandleFunc("GET /v1/interpreters", a.httpInterpreters)
	mux.HandleFunc("GET /v1/agent/self", a.httpSelf)
	mux.HandleFunc("GET /v1/history", a.httpHistory)
	mux.HandleFunc("GET /v1/events", a.httpEvents)
	mux.HandleFunc("GET /v1/checks", a.httpChecks)
	mux.HandleFunc("GET /metrics", a.httpMetrics)
	mux.Handle("GET /", dashboardHandler())

	ln := rpcOnHTTP{Listener: a.httpLn, rpcAddr: a.RPCAddr()} // opened by Start before the node gossips
	a.http = &http.Server{Handler: a.guardHTTP(a.countRequests(mux)), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return a.httpCtx }}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.logger.Error("http server stopped", "err", err)
		}
	}()
	return nil
}

// HTTPAddr is where the HTTP API listens; empty when it is off.
func (a *Agent) HTTPAddr() string {
	if a.httpLn == nil {
		return ""
	}
	return a.httpLn.Addr().String()
}

func writeJSONResponse(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (a *Agent) httpMembers(w http.ResponseWriter, r *http.Request) {
	ms := a.node.Members()
	out := make([]MemberJSON, 0, len(ms))
	for _, m := range ms {
		out = append(out, memberJSON(m))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSONResponse(w, map[string]any{"members": out})
}

// InterpreterJSON is one interpreter as the HTTP API and `agent
// interpreters --format json` show it.
type InterpreterJSON struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`
	Host       string `json:"host"`
	HostStatus string `json:"host_status"`
	Status     string `json:"status"`
	Endpoint   string `json:"endpoint"`
	PID        int    `json:"pid"`
	RequestID  string `json:"request_id"`
	Restart    string `json:"restart"`
	Restarts   int    `json:"restarts"`
	Generation int    `json:"generation"`
	Ended      string `json:"ended,omitempty"`
}

// InterpretersView renders interpreters for JSON output.
func InterpretersView(list []rpc.InterpreterView) []InterpreterJSON {
	out := make([]InterpreterJSON, 0, len(list))
	for _, i := range list {
		out = append(out, InterpreterJSON{Name: i.Name, Kind: i.Kind, Host: i.Host, HostStatus: i.HostStatus,
			Status: i.Status, Endpoint: i.Endpoint, PID: i.PID, RequestID: i.RequestID,
			Restart: i.Restart, Restarts: i.Restarts, Generation: i.Generation, Ended: i.Ended})
	}
	return out
}

func (a *Agent) httpInterpreters(w http.ResponseWriter, r *http.Request) {
	// Every interpreter the agent lists, gone ones too (the dashboard
	// shows how they ended); ?live=1 keeps only the live ones.
	writeJSONResponse(w, map[string]any{"interpreters": InterpretersView(a.interps.List(r.URL.Query().Get("live") != "1"))})
}

func (a *Agent) httpSelf(w http.ResponseWriter, r *http.Request) {
	local := a.node.LocalMember()
	writeJSONResponse(w, map[string]any{
		"name": local.Name, "role": string(a.cfg.Role), "version": Version, "profile": a.cfg.Profile,
		"gossip": a.node.Addr(), "rpc": a.RPCAddr(), "http": a.HTTPAddr(), "encrypted": a.node.EncryptionEnabled(),
		"tags": local.Tags, "members": len(a.node.Members()),
	})
}

func (a *Agent) httpHistory(w http.ResponseWriter, r *http.Request) {
	writeJSONResponse(w, map[string]any{"window_s": int(a.history.keep.Seconds()), "now": a.clock.Now().UnixMilli(),
		"servers": a.history.snapshot()})
}

// httpEvents streams member events as server-sent events: one event per
// change, named by its type, with the members as they are now and the
// agent's time in unix milliseconds ("t"), the clock /v1/history uses. A client that
// reads too slowly loses events rather than holding up the mesh; it sees a
// "resync" event and should reload the member list.
func (a *Agent) httpEvents(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	events := make(chan gossip.Event, 256)
	lost := make(chan struct{}, 1)
	cancel := a.node.Subscribe(func(e gossip.Event) {
		if e.Type == gossip.EventUser || e.Type == gossip.EventQuery {
			return
		}
		select {
		case events <- e:
		default:
			select {
			case lost <- struct{}{}:
			default:
			}
		}
	})
	defer cancel()
	lifecycle, cancelLifecycle := a.events.subscribe()
	defer cancelLifecycle()
	fmt.Fprint(w, "retry: 2000\n\n")
	flusher.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.shutdownCh:
			return
		case <-ping.C:
			fmt.Fprint(w, ": ping\n\n")
		case <-lost:
			fmt.Fprint(w, "event: resync\ndata: {}\n\n")
		case data := <-lifecycle:
			var e struct{ Type string }
			json.Unmarshal(data, &e)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, data)
		case e := <-events:
			members := make([]MemberJSON, 0, len(e.Members))
			for _, m := range e.Members {
				members = append(members, memberJSON(m))
			}
			data, _ := json.Marshal(map[string]any{"type": e.Type, "t": a.clock.Now().UnixMilli(), "members": members})
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, data)
		}
		flusher.Flush()
	}
}

// guardHTTP answers only requests whose Host header names this agent, so
// that a page on another site cannot read the API through DNS rebinding
// (its requests carry the attacker's host name), and tells browsers not to
// guess content types.
func (a *Agent) guardHTTP(next http.Handler) http.Handler {
	allowed := a.httpHostAllowed()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !allowed(r.Host) {
			a.metrics.httpRequests.WithLabelValues("refused_host").Inc()
			http.Error(w, fmt.Sprintf("this agent does not answer to host %q: use its address, or start it with --http-allow-host %s",
				hostOnly(r.Host), hostOnly(r.Host)), http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// httpHostAllowed returns the Host header check: IP addresses (a
// rebinding attack needs a DNS name), localhost, the node and host names,
// and --http-allow-host; "*" there turns the check off.
func (a *Agent) httpHostAllowed() func(host string) bool {
	names := map[string]bool{"localhost": true, strings.ToLower(a.cfg.NodeName): true}
	if h, err := os.Hostname(); err == nil && h != "" {
		names[strings.ToLower(h)] = true
	}
	for _, h := range a.cfg.HTTPAllowHosts {
		if h == "*" {
			return func(string) bool { return true }
		}
		names[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	return func(host string) bool {
		if host == "" {
			return true // HTTP/1.0 without Host: not a browser
		}
		h := hostOnly(host)
		if net.ParseIP(h) != nil {
			return true
		}
		return names[strings.ToLower(strings.TrimSuffix(h, "."))]
	}
}

// hostOnly drops the port of a Host header, and the brackets of an IPv6
// address.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

// countRequests counts HTTP requests by path for /metrics.
func (a *Agent) countRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		if path != "/metrics" && path != "/v1/events" && !isAPIPath(path) {
			path = "/"
		}
		a.metrics.httpRequests.WithLabelValues(path).Inc()
		next.ServeHTTP(w, r)
	})
}

func isAPIPath(p string) bool {
	switch p {
	case "/v1/members", "/v1/interpreters", "/v1/agent/self", "/v1/history":
		return true
	}
	return false
}
