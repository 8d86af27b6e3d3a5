package rpc

import "time"

// CommandPlace runs the placement election without starting anything.
const CommandPlace = "place"

// PlaceRequest asks for an election: which kind, under which constraints
// (key=regex, anchored) and policy (spread or binpack).
type PlaceRequest struct {
	Kind        string
	Constraints []string
	Policy      string
	Timeout     time.Duration // zero: the agent's --place-timeout
}

// BidView is one server's bid as the election saw it.
type BidView struct {
	Node       string
	CPU, Mem   float64
	Running    int
	Pending    int
	Reserved   int // the asker's own reservations still counted against it
	Capacity   int
	Healthy    bool
	OffersKind bool
	Refusal    string
	Score      float64 // eligible bids only
	Rank       int     // 1 is the winner; 0 for rejected bids
	Rejected   string  // why the election rejected it, empty when eligible
}

// PlaceResponse is the election's result. Error is set, and Winner empty,
// when no server was eligible; the bids still say why.
type PlaceResponse struct {
	RequestID  string
	Policy     string
	Winner     string
	RunnerUp   string
	Reason     string
	Bids       []BidView
	Missing    []string // servers in the asker's view that did not answer in time
	DecisionMS float64
	Error      string
}

// Place runs the election on the agent.
func (c *Client) Place(req PlaceRequest) (PlaceResponse, error) {
	var resp PlaceResponse
	err := c.Call(CommandPlace, req, &resp)
	return resp, err
}
