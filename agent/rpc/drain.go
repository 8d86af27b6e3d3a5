package rpc

import "time"

// CommandDrain takes a server out of placement, or puts it back.
const CommandDrain = "drain"

// DrainRequest starts a drain (the server refuses new interpreters; its
// running ones keep going), with Stop its running ones are stopped at
// Deadline from now; Undo ends the drain and any pending stop. A request
// without Stop keeps a pending stop; NoStop cancels it (and keeps the
// drain).
type DrainRequest struct {
	Deadline time.Duration
	Stop     bool
	Undo     bool
	NoStop   bool
}

// DrainResponse is the server's drain state after the request.
type DrainResponse struct {
	Node     string
	Draining bool
	Running  int       // interpreters still running there
	StopAt   time.Time // when they will be stopped; zero: not at all
	// Kept says the request left a pending stop as it was; Replaced is the
	// stop time this request replaced or cancelled (zero: none).
	Kept     bool
	Replaced time.Time
}

// Drain starts, changes or ends a drain of the agent's server.
func (c *Client) Drain(req DrainRequest) (DrainResponse, error) {
	var resp DrainResponse
	err := c.Call(CommandDrain, req, &resp)
	return resp, err
}
