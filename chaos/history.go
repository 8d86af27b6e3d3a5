// Package chaos is the chaos checker's pure half: the seeded schedule of
// faults and client operations that a run plays (Schedule), the history a
// run records (History), and the checker of the rules for interpreters
// under faults over that history (Check), which prints the shortest slice
// of the history that shows each violation.
//
// Two drivers play a schedule: simulation/ on whole agents in virtual time
// (interpreter processes replaced by an in-memory double), and the test
// bed in scripts/ on real processes in network namespaces. Both record the
// same History, so one checker judges both.
//
// It must never do I/O, read a clock or use a global random source: a
// schedule is a pure function of its seed and settings, and times are
// offsets from the run's start, recorded by the driver.
package chaos

import "time"

// OpKind is what a client asked of an agent.
type OpKind string

// The client operations.
const (
	OpSpawn  OpKind = "spawn"
	OpStop   OpKind = "stop"
	OpSignal OpKind = "signal"
)

// Outcome is how an operation ended, as Jepsen records it.
type Outcome string

// The outcomes.
const (
	// OK: it succeeded, and what it says is true.
	OK Outcome = "ok"
	// Fail: it failed definitely: it changed nothing.
	Fail Outcome = "fail"
	// Info: its outcome is unknown (a timeout): it may or may not have
	// taken effect, and the checker assumes either.
	Info Outcome = "info"
)

// Op is one client operation: invoked at Invoked, answered at Completed.
type Op struct {
	ID    int    `json:"id"`
	Kind  OpKind `json:"kind"`
	Agent string `json:"agent"` // the agent asked

	// Spawn: the idempotency key ("" for an unkeyed spawn), the restart
	// policy asked for ("on-failure" or ""), and whether it waited for
	// the interpreter to be alive.
	Key     string `json:"key,omitempty"`
	Restart string `json:"restart,omitempty"`
	Wait    bool   `json:"wait,omitempty"`

	// Stop and signal: the interpreter named. Spawn, when OK: the
	// interpreter the answer named, its host, its generation, and whether
	// the answer was an interpreter that already ran.
	Name     string `json:"name,omitempty"`
	Host     string `json:"host,omitempty"`
	Gen      int    `json:"gen,omitempty"`
	Existing bool   `json:"existing,omitempty"`
	// RID is the request id: derived from Key, or from the answer; for a
	// stop or a signal, the named interpreter's, when the driver knows it.
	RID string `json:"rid,omitempty"`
	// Signal, for a signal: the one sent. SIGTERM and SIGINT may end an
	// interpreter cleanly, which no restart policy undoes.
	Signal string `json:"signal,omitempty"`

	Invoked   time.Duration `json:"invoked"`
	Completed time.Duration `json:"completed"`
	Outcome   Outcome       `json:"outcome"`
	Code      string        `json:"code,omitempty"` // the failure code
	Error     string        `json:"error,omitempty"`

	// AliveAtAnswer, for a spawn with Wait answered OK: whether the
	// driver found the named interpreter's process alive right when the
	// answer came.
	AliveAtAnswer bool `json:"alive_at_answer,omitempty"`
}

// FaultKind is what the nemesis did.
type FaultKind string

// The faults. Each starts at a Fault's At and ends at its Until (zero:
// it has no end of its own, as a crash, which a later restart ends).
const (
	FaultPartition       FaultKind = "partition"        // Groups cannot reach each other
	FaultOneWay          FaultKind = "one-way"          // From cannot reach To; To reaches From
	FaultFlap            FaultKind = "flap"             // a partition that comes and goes every Period
	FaultLoss            FaultKind = "loss"             // Rate of packets lost between every pair
	FaultPause           FaultKind = "pause"            // Hosts[0] holds all its traffic (SIGSTOP)
	FaultCrashHost       FaultKind = "crash-host"       // everything on Hosts[0] dies
	FaultCrashAgent      FaultKind = "crash-agent"      // Hosts[0]'s agent dies; supervisors keep running
	FaultCrashSupervisor FaultKind = "crash-supervisor" // one supervisor on Hosts[0] dies (Pick chooses which)
	FaultRestartHost     FaultKind = "restart-host"     // Hosts[0] boots again (KeepData: with its data dir)
	FaultRestartAgent    FaultKind = "restart-agent"    // Hosts[0]'s agent starts again (KeepData: with its data dir)
	FaultClusterRestart  FaultKind = "cluster-restart"  // every agent stops and starts again; supervisors keep running
	FaultDrain           FaultKind = "drain"            // Hosts[0] takes no new interpreters (Stop: and stops its own)
	FaultUndrain         FaultKind = "undrain"          // Hosts[0]'s drain ends
)

// Fault is one action of the nemesis.
type Fault struct {
	Kind     FaultKind     `json:"kind"`
	At       time.Duration `json:"at"`
	Until    time.Duration `json:"until,omitempty"`
	Hosts    []string      `json:"hosts,omitempty"`
	Groups   [][]string    `json:"groups,omitempty"` // partition, flap
	From     []string      `json:"from,omitempty"`   // one-way
	To       []string      `json:"to,omitempty"`     // one-way
	Rate     float64       `json:"rate,omitempty"`   // loss
	Period   time.Duration `json:"period,omitempty"` // flap
	KeepData bool          `json:"keep_data,omitempty"`
	Stop     bool          `json:"stop,omitempty"` // drain
	Pick     int           `json:"pick,omitempty"` // crash-supervisor: index into the host's supervisors, by name
}

// Process is one interpreter process the driver found running: ground
// truth, read from the hosts (the double's table, or /proc in every
// namespace), not from any agent's list.
type Process struct {
	Name string `json:"name"`
	RID  string `json:"rid"`
	Host string `json:"host"`
	Gen  int    `json:"gen"`
}

// Listed is one interpreter an agent lists alive.
type Listed struct {
	Name string `json:"name"`
	RID  string `json:"rid"`
	Host string `json:"host"`
	Gen  int    `json:"gen"`
}

// Snapshot is what the driver saw at one moment: every process on every
// host, and what each agent that runs and can reach every other lists.
type Snapshot struct {
	At        time.Duration       `json:"at"`
	Processes []Process           `json:"processes"`
	Lists     map[string][]Listed `json:"lists"` // by agent
	// Quiet says no fault was in force at At and none had been for the
	// settle time: the mesh is whole, so every rule applies in full.
	Quiet bool `json:"quiet"`
}

// Event is a lifecycle event an agent reported (interpreter-gave-up,
// interpreter-replaced, interpreter-duplicate, interpreter-restart,
// interpreter-stopped), as the agent's event stream carries it.
type Event struct {
	At    time.Duration `json:"at"`
	Agent string        `json:"agent"`
	Type  string        `json:"type"`
	Name  string        `json:"name"`
	RID   string        `json:"rid"`
	Host  string        `json:"host,omitempty"`
	Gen   int           `json:"gen,omitempty"`
}

// History is one run: what was asked, what the nemesis did, what the
// agents said, and what the driver saw.
type History struct {
	Seed   int64         `json:"seed"`
	Agents []string      `json:"agents"`
	Settle time.Duration `json:"settle"` // T_settle
	// LastHeal is when the last fault ended (every host back, every
	// partition healed); End, when the run stopped recording.
	LastHeal time.Duration `json:"last_heal"`
	End      time.Duration `json:"end"`

	Ops       []Op       `json:"ops"`
	Faults    []Fault    `json:"faults"`
	Events    []Event    `json:"events"`
	Snapshots []Snapshot `json:"snapshots"`
}
