package rpc

import "time"

// CommandChecks lists a server's health checks; with Report it first
// records a ttl check's status (pass, warn, fail), as Consul's check
// update does.
const CommandChecks = "checks"

// ChecksRequest asks for the checks; Report names a ttl check whose Status
// (passing, warning or critical) and Note are recorded first.
type ChecksRequest struct {
	Report string
	Status string
	Note   string
}

// CheckView is one check and where it stands.
type CheckView struct {
	// Interpreter is set on an interpreter's kind check: whose it is.
	Interpreter string `msgpack:",omitempty"`
	Name        string
	Type        string
	Status      string // passing, warning, critical
	Output      string
	Since       time.Time // when it entered Status
	Checked     time.Time // its last result; zero: not run yet
}

// ChecksResponse lists the node's checks in their config order.
type ChecksResponse struct {
	Node   string
	Checks []CheckView
}

// Checks lists the agent's health checks, after recording a ttl report
// when req names one.
func (c *Client) Checks(req ChecksRequest) (ChecksResponse, error) {
	var resp ChecksResponse
	err := c.Call(CommandChecks, req, &resp)
	return resp, err
}

// CommandReload re-reads the agent's config files, as SIGHUP does.
const CommandReload = "reload"

// ReloadResponse says what the reload changed at once (Applied) and which
// changed settings take effect only at the next start (Restart), each a
// setting's name with a short note.
type ReloadResponse struct {
	Node    string
	Applied []string
	Restart []string
}

// Reload asks the agent to re-read its configuration. A bad file is an
// error and changes nothing.
func (c *Client) Reload() (ReloadResponse, error) {
	var resp ReloadResponse
	err := c.Call(CommandReload, struct{}{}, &resp)
	return resp, err
}
