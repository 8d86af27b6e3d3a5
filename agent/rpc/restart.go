package rpc

import "time"

// CommandRestartInterpreter restarts an interpreter in place, wherever it
// runs: its supervisor stops the program and starts it again with the
// same ports and connection file.
const CommandRestartInterpreter = "restart-interpreter"

// RestartRequest names the interpreter to restart in place.
type RestartRequest struct {
	Name string
}

// RestartResponse says whether the interpreter runs again, and where.
type RestartResponse struct {
	Name      string
	Host      string
	Restarted bool
	PID       int    // the new process
	Reason    string // why it was not restarted, when it was not
}

// RestartInterpreter restarts an interpreter in place.
func (c *Client) RestartInterpreter(name string) (RestartResponse, error) {
	var resp RestartResponse
	err := c.CallWithin(CommandRestartInterpreter, RestartRequest{Name: name}, &resp, 20*time.Second+c.timeout)
	return resp, err
}
