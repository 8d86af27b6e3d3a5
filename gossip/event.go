package gossip

import (
	"time"

	"github.com/hashicorp/serf/serf"
)

// EventType names what happened.
type EventType string

// The events a node delivers. Member event names match serf's, so that
// serf's event filters ("member-join", "user:deploy") keep their meaning.
const (
	EventMemberJoin   EventType = "member-join"
	EventMemberLeave  EventType = "member-leave"
	EventMemberFailed EventType = "member-failed"
	EventMemberUpdate EventType = "member-update"
	EventMemberReap   EventType = "member-reap"
	EventUser         EventType = "user"
	EventQuery        EventType = "query"
)

// Event is a member, user or query event seen by the local node.
type Event struct {
	Type    EventType
	Members []Member // member events

	LTime    uint64 // user and query events
	Name     string
	Payload  []byte
	Coalesce bool   // user events
	Query    *Query // query events
}

// Query is a query that reached this node; Respond answers it.
type Query struct {
	From     string // the node that asked, as serf reports it
	Name     string
	Payload  []byte
	LTime    uint64
	Deadline time.Time // answers after it are dropped by serf
	q        *serf.Query
}

// Respond sends the answer back to the asker. It fails after the query's
// deadline, or when called twice.
func (q *Query) Respond(payload []byte) error { return q.q.Respond(payload) }

func eventFromSerf(e serf.Event) (Event, bool) {
	switch e := e.(type) {
	case serf.MemberEvent:
		ev := Event{Members: make([]Member, 0, len(e.Members))}
		switch e.Type {
		case serf.EventMemberJoin:
			ev.Type = EventMemberJoin
		case serf.EventMemberLeave:
			ev.Type = EventMemberLeave
		case serf.EventMemberFailed:
			ev.Type = EventMemberFailed
		case serf.EventMemberUpdate:
			ev.Type = EventMemberUpdate
		case serf.EventMemberReap:
			ev.Type = EventMemberReap
		default:
			return Event{}, false
		}
		for _, m := range e.Members {
			ev.Members = append(ev.Members, memberFromSerf(m))
		}
		return ev, true
	case serf.UserEvent:
		return Event{Type: EventUser, LTime: uint64(e.LTime), Name: e.Name, Payload: e.Payload, Coalesce: e.Coalesce}, true
	case *serf.Query:
		q := &Query{From: e.SourceNode(), Name: e.Name, Payload: e.Payload, LTime: uint64(e.LTime), Deadline: e.Deadline(), q: e}
		return Event{Type: EventQuery, LTime: q.LTime, Name: e.Name, Payload: e.Payload, Query: q}, true
	}
	return Event{}, false
}
