package rpc

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// CommandSignalInterpreter delivers a signal to an interpreter, wherever it
// runs.
const CommandSignalInterpreter = "signal-interpreter"

// AllowedSignals are the signals an interpreter may be sent through the
// mesh, by their names: an interrupt, a polite stop and a kill.
var AllowedSignals = []string{"SIGINT", "SIGTERM", "SIGKILL"}

var signalNumbers = map[string]int{"SIGINT": 2, "SIGTERM": 15, "SIGKILL": 9}

// ParseSignal turns "INT", "sigint", "SIGINT" or "2" into the signal's
// canonical name and number. Anything outside AllowedSignals is an error
// that names the allowed ones.
func ParseSignal(s string) (string, int, error) {
	name := strings.ToUpper(strings.TrimSpace(s))
	if n, err := strconv.Atoi(name); err == nil {
		for k, v := range signalNumbers {
			if v == n {
				return k, v, nil
			}
		}
	}
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if n, ok := signalNumbers[name]; ok {
		return name, n, nil
	}
	return "", 0, fmt.Errorf("signal %q is not allowed: use one of %s", s, strings.Join(AllowedSignals, ", "))
}

// SignalRequest names an interpreter and the signal for it.
type SignalRequest struct {
	Name   string
	Signal string
}

// SignalResponse says whether the signal reached the interpreter's process
// group, and where it runs.
type SignalResponse struct {
	Name      string
	Host      string
	Signal    string // the canonical name, e.g. SIGINT
	Delivered bool
	PID       int    // the interpreter's process (group) it went to
	Reason    string // why it was not delivered, when it was not
}

// SignalInterpreter delivers an allowlisted signal to an interpreter.
func (c *Client) SignalInterpreter(name, signal string) (SignalResponse, error) {
	var resp SignalResponse
	err := c.CallWithin(CommandSignalInterpreter, SignalRequest{Name: name, Signal: signal}, &resp, 20*time.Second+c.timeout)
	return resp, err
}
