package rpc

import "time"

// The project's commands for interpreters.
const (
	CommandSpawn           = "spawn"
	CommandInterpreters    = "interpreters"
	CommandStopInterpreter = "stop-interpreter"
)

// SpawnRequest asks the agent to elect a server and start an interpreter.
type SpawnRequest struct {
	Kind        string
	Key         string // idempotency key: the same key starts one interpreter
	Constraints []string
	Policy      string
	Args        []string
	Wait        bool          // return once the interpreter is alive in the asker's view
	Timeout     time.Duration // for --wait; zero: the agent's default
	// Restart is the restart policy, "no" or "on-failure"; empty: the
	// kind's own (default "no").
	Restart string
	// OwnerLease, when positive, has the interpreter's server stop it once
	// the agent that asked for it has been failed or left for that long
	// (its client's host died, say: a Jupyter kernel whose notebook server
	// went with its host). Zero: it runs until stopped.
	OwnerLease time.Duration
}

// Spawn failure codes, for scripts and exit codes.
const (
	SpawnUnknownKind = "unknown-kind"
	SpawnNoServer    = "no-server"
	SpawnRefused     = "refused"
	SpawnTimeout     = "timeout"
	SpawnBadRequest  = "bad-request"
	// SpawnMinority: a keyed spawn asked on a side of a partition that sees
	// no majority of the known servers alive.
	SpawnMinority = "minority"
	// SpawnDied: the interpreter started but exited during --wait.
	SpawnDied = "died"
	// SpawnConflict: a keyed spawn asked for another kind, other arguments
	// or another restart policy than the key's running interpreter has.
	SpawnConflict = "conflict"
)

// SpawnResponse says where the interpreter runs, or why none started.
type SpawnResponse struct {
	Name      string
	Node      string // the server
	Kind      string
	RequestID string
	PID       int
	Endpoint  string
	Existing  bool // an interpreter for the same key was already alive
	// Generation orders the placements of one key: a newer one has a
	// higher generation, and wins over an older copy after a heal.
	Generation int `msgpack:",omitempty"`
	// Coordinator is the server that decided a keyed spawn, when it was
	// not the agent asked.
	Coordinator string   `msgpack:",omitempty"`
	Attempts    []string // servers tried before the winner, with why they did not start it
	DecisionMS  float64
	TotalMS     float64
	// Connection is how to reach an interpreter whose kind writes a
	// connection file (a Jupyter kernel), its secret key included; only
	// the asker gets it, and only for an interpreter it started.
	Connection *Connection `msgpack:",omitempty"`
	Code       string      // empty on success
	Error      string
}

// InterpreterView is one interpreter as the asker's member list shows it.
type InterpreterView struct {
	Name       string
	Kind       string
	Host       string
	HostStatus string // the host server's status as this agent sees it
	Status     string // the interpreter member's own status
	Endpoint   string
	PID        int
	RequestID  string
	Restart    string // the restart policy
	Restarts   int    // how often it was restarted on its host
	Generation int    // how often the mesh re-placed it after its host failed
	// Ended says how a gone interpreter ended: "exit status 3", "stopped",
	// "duplicate", "gave up (…)", "host failed", "supervisor failed".
	Ended string
}

// InterpretersRequest asks for the interpreters in the agent's view: the
// live ones, and with All those gone within the reap window too.
type InterpretersRequest struct {
	All bool
}

// InterpretersResponse lists the interpreters in the mesh.
type InterpretersResponse struct {
	Interpreters []InterpreterView
}

// StopRequest asks for one interpreter to be stopped, wherever it runs.
type StopRequest struct {
	Name string
}

// StopResponse reports the outcome.
type StopResponse struct {
	Name   string
	Host   string
	Status string // the interpreter's status once the stop was seen
}

// Spawn starts an interpreter.
func (c *Client) Spawn(req SpawnRequest) (SpawnResponse, error) {
	var resp SpawnResponse
	// The agent bounds the spawn itself (election, start, --wait); the
	// client allows for that plus its own timeout.
	err := c.CallWithin(CommandSpawn, req, &resp, SpawnBudget(req.Timeout)+c.timeout)
	return resp, err
}

// DefaultSpawnWait is how long a spawn with Wait waits for the interpreter
// to be alive in the asker's view when the request does not say.
const DefaultSpawnWait = 30 * time.Second

// SpawnBudget is the longest an agent works on one spawn: the election and
// up to three start attempts, then the wait.
func SpawnBudget(wait time.Duration) time.Duration {
	if wait <= 0 {
		wait = DefaultSpawnWait
	}
	return 35*time.Second + wait
}

// Interpreters lists the live interpreters in the mesh; with all, those
// gone within the reap window too.
func (c *Client) Interpreters(all bool) ([]InterpreterView, error) {
	var resp InterpretersResponse
	err := c.Call(CommandInterpreters, InterpretersRequest{All: all}, &resp)
	return resp.Interpreters, err
}

// StopInterpreter stops an interpreter.
func (c *Client) StopInterpreter(name string) (StopResponse, error) {
	var resp StopResponse
	err := c.CallWithin(CommandStopInterpreter, StopRequest{Name: name}, &resp, 30*time.Second+c.timeout)
	return resp, err
}
