package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Interpreter is one interpreter a server started: enough to find it again
// after the agent restarts and to answer a repeated request.
type Interpreter struct {
	Name          string    `json:"name"`
	Kind          string    `json:"kind"`
	RequestID     string    `json:"rid"`
	SupervisorPID int       `json:"supervisor_pid"`
	PID           int       `json:"pid"` // the interpreter process itself
	Endpoint      string    `json:"endpoint"`
	Spec          string    `json:"spec"` // the supervisor's spec file, which identifies it
	Started       time.Time `json:"started"`
	// Restart is its restart policy; Args the request's extra arguments;
	// Gen how often the mesh re-placed the request; Restarts how often
	// this host restarted it. A server needs them to start it again.
	Restart  string   `json:"restart,omitempty"`
	Args     []string `json:"args,omitempty"`
	Gen      int      `json:"gen,omitempty"`
	Restarts int      `json:"restarts,omitempty"`
	// Ordered is the generation of the spawn order that started this
	// request here, plus one, carried over the host's restarts of it
	// (which take newer generations): what a take-back of that order
	// stops. Zero when unknown.
	Ordered int `json:"ordered,omitempty"`
	// Owner is the agent that asked for it, and OwnerLease how long that
	// agent may be gone before its server stops it; zero: no lease.
	Owner      string        `json:"owner,omitempty"`
	OwnerLease time.Duration `json:"owner_lease,omitempty"`
}

// ErrDuplicate is returned when a name or request id is already registered.
var ErrDuplicate = errors.New("already registered")

// Registry is the set of interpreters a server runs. Names and request ids
// are unique, so one request can never start two interpreters. Not safe for
// concurrent use; the agent guards it.
type Registry struct {
	byName map[string]Interpreter
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{byName: map[string]Interpreter{}} }

// Add registers i, unless its name or request id is taken.
func (r *Registry) Add(i Interpreter) error {
	if i.Name == "" || i.RequestID == "" {
		return fmt.Errorf("interpreter %q with request id %q: both are required", i.Name, i.RequestID)
	}
	if _, ok := r.byName[i.Name]; ok {
		return fmt.Errorf("interpreter %s: %w", i.Name, ErrDuplicate)
	}
	if other, ok := r.ByRequestID(i.RequestID); ok {
		return fmt.Errorf("request %s already started %s: %w", i.RequestID, other.Name, ErrDuplicate)
	}
	r.byName[i.Name] = i
	return nil
}

// Get returns the interpreter called name.
func (r *Registry) Get(name string) (Interpreter, bool) {
	i, ok := r.byName[name]
	return i, ok
}

// ByRequestID returns the interpreter started for a request id.
func (r *Registry) ByRequestID(rid string) (Interpreter, bool) {
	for _, i := range r.byName {
		if i.RequestID == rid {
			return i, true
		}
	}
	return Interpreter{}, false
}

// Remove drops the interpreter called name and reports whether it was there.
func (r *Registry) Remove(name string) bool {
	_, ok := r.byName[name]
	delete(r.byName, name)
	return ok
}

// Len is the number of interpreters registered.
func (r *Registry) Len() int { return len(r.byName) }

// CountKind is the number of interpreters of one kind.
func (r *Registry) CountKind(kind string) int {
	n := 0
	for _, i := range r.byName {
		if i.Kind == kind {
			n++
		}
	}
	return n
}

// List returns every interpreter, sorted by name.
func (r *Registry) List() []Interpreter {
	out := make([]Interpreter, 0, len(r.byName))
	for _, i := range r.byName {
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

// Retain keeps the interpreters for which alive holds and returns the ones
// it dropped, sorted by name.
func (r *Registry) Retain(alive func(Interpreter) bool) []Interpreter {
	var dropped []Interpreter
	for _, i := range r.List() {
		if !alive(i) {
			delete(r.byName, i.Name)
			dropped = append(dropped, i)
		}
	}
	return dropped
}

// registryFile is the registry's durable form; Version lets a later agent
// read an older file or refuse a newer one clearly.
type registryFile struct {
	Version      int           `json:"version"`
	Interpreters []Interpreter `json:"interpreters"`
}

const registryVersion = 1

// Marshal encodes the registry for its file.
func (r *Registry) Marshal() ([]byte, error) {
	return json.MarshalIndent(registryFile{Version: registryVersion, Interpreters: r.List()}, "", "  ")
}

// UnmarshalRegistry decodes a registry file. Entries that repeat a name or
// request id are an error: the file is damaged, and guessing which entry is
// right could start a second interpreter for one request.
func UnmarshalRegistry(data []byte) (*Registry, error) {
	var f registryFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("registry is not valid JSON: %w", err)
	}
	if f.Version != registryVersion {
		return nil, fmt.Errorf("registry version %d is not %d: it was written by another agent version", f.Version, registryVersion)
	}
	r := NewRegistry()
	for _, i := range f.Interpreters {
		if err := r.Add(i); err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
	}
	return r, nil
}
