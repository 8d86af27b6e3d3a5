package agent

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshagent/agent/agent/rpc"
)

func frame(t *testing.T, values ...any) []byte {
	var buf bytes.Buffer
	for _, v := range values {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
	}
	return buf.Bytes()
}

type header struct {
	Command string
	Seq     uint64
}

// TestBadRPCInputLeavesTheAgentWhole throws bad input at a real agent's
// RPC port. Each time the agent answers with an error or closes that one
// connection, logs one line, stays up, and loses nothing it holds.
func TestBadRPCInputLeavesTheAgentWhole(t *testing.T) {
	var logs syncBuffer
	a := startAgentLogging(t, "target", "127.0.0.1", &logs, func(c *Config) {
		c.RPCToken = "right-token"
		c.Tags = map[string]string{"keep": "me"}
	})
	hello := frame(t, header{"handshake", 1}, map[string]int{"Version": 1})
	auth := frame(t, header{"auth", 2}, map[string]string{"AuthKey": "right-token"})
	oversize := append(append([]byte{}, hello...), auth...)
	oversize = append(oversize, frame(t, header{"event", 3})...)
	oversize = append(oversize, 0xdb, 0x7f, 0xff, 0xff, 0xff) // a str32 claiming 2 GiB

	cases := []struct {
		name    string
		input   []byte
		wantErr string // in the reply, when the agent answers instead of closing
		wantLog string
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "", "closing rpc connection"},
		{"truncated msgpack", []byte{0x82, 0xa7, 'C', 'o', 'm'}, "", ""},
		{"command before handshake", frame(t, header{"members", 1}), "Handshake required", "closing rpc connection"},
		{"wrong token", append(hello, frame(t, header{"auth", 2}, map[string]string{"AuthKey": "guess"})...), "Invalid authentication token", "wrong token"},
		{"no auth", append(hello, frame(t, header{"members", 2})...), "Authentication required", "before auth"},
		{"unknown command", append(append(hello, auth...), frame(t, header{"format-disk", 3})...), "Unsupported command", "closing rpc connection"},
		{"wrong types", append(append(hello, auth...), frame(t, header{"members-filtered", 3}, map[string]any{"Tags": 42, "Status": []int{1}})...), "members-filtered", ""},
		{"oversize frame", oversize, "", "size limit"},
	}
	before := a.Node().Members()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logged := logs.String()
			c, err := net.Dial("tcp", a.RPCAddr())
			if err != nil {
				t.Fatal(err)
			}
			c.Write(tc.input)
			if tc.name == "truncated msgpack" {
				c.(*net.TCPConn).CloseWrite()
			}
			reply := readUntil(c, tc.wantErr, 5*time.Second)
			c.Close()
			if tc.wantErr != "" && !bytes.Contains(reply, []byte(tc.wantErr)) {
				t.Errorf("reply %q lacks %q", reply, tc.wantErr)
			}
			if tc.wantLog != "" {
				poll(t, "the agent to log the bad input", func() bool {
					return strings.Contains(strings.TrimPrefix(logs.String(), logged), tc.wantLog)
				})
			}
			// Still up and whole: a proper client works, and the member list
			// and tags are what they were.
			cl, err := rpc.Dial(a.RPCAddr(), rpc.ClientConfig{Token: "right-token"})
			if err != nil {
				t.Fatalf("the agent stopped answering: %v", err)
			}
			ms, err := cl.Members()
			cl.Close()
			if err != nil || len(ms) != len(before) || ms[0].Tags["keep"] != "me" {
				t.Fatalf("after bad input: members %+v, err %v", ms, err)
			}
		})
	}
	after := a.Node().Tags()
	if after["keep"] != "me" || after["role"] != before[0].Tags["role"] {
		t.Fatalf("tags changed: %v -> %v", before[0].Tags, after)
	}
}

// readUntil reads what the agent sends until want appears, the agent closes
// the connection, or limit passes.
func readUntil(c net.Conn, want string, limit time.Duration) []byte {
	c.SetReadDeadline(time.Now().Add(limit))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil || (want != "" && bytes.Contains(got, []byte(want))) {
			return got
		}
	}
}
