package rpc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestQueryEndsWhenItsClientGoes: a client that hangs up during a long
// query cancels it, and its connection slot is free again at once.
func TestQueryEndsWhenItsClientGoes(t *testing.T) {
	ts := startServer(t, ServerConfig{MaxConns: 1}, nil)
	ended := make(chan error, 1)
	ts.fake.query = func(ctx context.Context, _ QueryRequest, _ func(string), _ func(NodeResponse)) error {
		<-ctx.Done()
		ended <- ctx.Err()
		return nil
	}
	c, err := Dial(ts.addr, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	go c.Query(QueryRequest{Name: "long", Timeout: time.Hour}, nil, nil)
	ts.fake.waitFor(t, "the query in the backend", func() bool { return len(ts.fake.queries) == 1 })
	c.Close()
	if err := recv(t, ended, "the query to be cancelled"); !errors.Is(err, context.Canceled) {
		t.Fatalf("query ended with %v", err)
	}
	// The slot is free: the next client (the only one allowed) is served.
	var next *Client
	deadline := time.Now().Add(5 * time.Second)
	for {
		next, err = Dial(ts.addr, ClientConfig{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after the client left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer next.Close()
	if _, err := next.Members(); err != nil {
		t.Fatalf("members after the client left: %v", err)
	}
}

// TestCloseCancelsQueriesAndHandlers: Close does not wait out a query or a
// registered command that still has a client: their context is cancelled.
func TestCloseCancelsQueriesAndHandlers(t *testing.T) {
	ts := startServer(t, ServerConfig{}, func(s *Server) {
		s.Register("wait", func(b Body) (any, error) {
			<-b.Context().Done()
			return nil, errors.New("cancelled")
		})
	})
	ts.fake.query = func(ctx context.Context, _ QueryRequest, _ func(string), _ func(NodeResponse)) error {
		<-ctx.Done()
		return nil
	}
	q := dial(t, ts.addr, ClientConfig{})
	h := dial(t, ts.addr, ClientConfig{})
	go q.Query(QueryRequest{Name: "long", Timeout: time.Hour}, nil, nil)
	go h.Call("wait", struct{}{}, nil)
	ts.fake.waitFor(t, "the query in the backend", func() bool { return len(ts.fake.queries) == 1 })
	closed := make(chan error, 1)
	go func() { closed <- ts.Close() }()
	if err := recv(t, closed, "Close with a query and a command in progress"); err != nil {
		t.Fatal(err)
	}
}

// TestCheckQueryRefusesInTheHeader: a query the backend cannot send is
// refused before the header says it went out, so the client's Query
// returns the reason and nothing reaches the backend's Query.
func TestCheckQueryRefusesInTheHeader(t *testing.T) {
	ts := startServer(t, ServerConfig{}, nil)
	ts.fake.checkQuery = func(req QueryRequest) error {
		return errors.New(`query name "place" is the agent's own`)
	}
	c := dial(t, ts.addr, ClientConfig{})
	err := c.Query(QueryRequest{Name: "place"}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "the agent's own") {
		t.Fatalf("query: %v", err)
	}
	if len(ts.fake.queries) != 0 {
		t.Fatalf("the refused query reached the backend")
	}
	if _, err := c.Members(); err != nil {
		t.Fatalf("the connection did not carry on: %v", err)
	}
}

// TestCommandEndsWhenItsClientGoes: a client that hangs up while a
// registered command (spawn, place) waits cancels the command's context,
// and its connection slot is free again; a command whose client stays is
// answered as before, and the connection serves the next request.
func TestCommandEndsWhenItsClientGoes(t *testing.T) {
	started, ended := make(chan error, 1), make(chan error, 1)
	ts := startServer(t, ServerConfig{MaxConns: 1}, func(s *Server) {
		s.Register("wait", func(b Body) (any, error) {
			started <- nil
			<-b.Context().Done()
			ended <- b.Context().Err()
			return nil, errors.New("cancelled")
		})
		s.Register("quick", func(b Body) (any, error) {
			return map[string]string{"ok": "yes"}, b.Context().Err()
		})
	})
	c, err := Dial(ts.addr, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := c.Call("quick", struct{}{}, &got); err != nil || got["ok"] != "yes" {
		t.Fatalf("quick: %v %v", got, err)
	}
	if err := c.Call("quick", struct{}{}, &got); err != nil {
		t.Fatalf("a second command on the connection: %v", err)
	}
	go c.Call("wait", struct{}{}, nil)
	recv(t, started, "the command to run")
	c.Close()
	if err := recv(t, ended, "the command to be cancelled"); !errors.Is(err, context.Canceled) {
		t.Fatalf("command ended with %v", err)
	}
	var next *Client
	deadline := time.Now().Add(5 * time.Second)
	for {
		next, err = Dial(ts.addr, ClientConfig{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after the client left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer next.Close()
	if _, err := next.Members(); err != nil {
		t.Fatalf("members after the client left: %v", err)
	}
}
