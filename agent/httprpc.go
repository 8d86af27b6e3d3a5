package agent

import (
	"io"
	"net"
	"strconv"
	"sync"
)

// rpcOnHTTP is the HTTP listener as an RPC client meets it: a connection
// whose first byte opens a msgpack map (an RPC handshake, which holds no
// newline, so an HTTP server would wait for more until the client gave up)
// is answered at once with a short HTTP 400 naming the RPC address, and
// closed. Everything else is served as HTTP.
type rpcOnHTTP struct {
	net.Listener
	rpcAddr string
}

func (l rpcOnHTTP) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, rpcAddr: l.rpcAddr}, nil
}

// sniffConn checks the first byte its reader sees. Its first Read is made
// by the HTTP server's connection goroutine, never by Accept.
type sniffConn struct {
	net.Conn
	rpcAddr string
	once    sync.Once
	isRPC   bool
}

func (c *sniffConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return c.Conn.Read(p)
	}
	var n int
	var err error
	first := false
	c.once.Do(func() {
		first = true
		n, err = c.Conn.Read(p)
		if n > 0 && isMsgpackMap(p[0]) {
			c.isRPC = true
		}
	})
	if c.isRPC {
		body := "this is the agent's HTTP API; its RPC listens on " + c.rpcAddr + ": point --rpc-addr there\n"
		io.WriteString(c.Conn, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"+
			"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
		return 0, io.EOF
	}
	if first {
		return n, err
	}
	return c.Conn.Read(p)
}

// isMsgpackMap reports whether b starts a msgpack map (fixmap, map 16,
// map 32), as every RPC request header does.
func isMsgpackMap(b byte) bool { return b&0xf0 == 0x80 || b == 0xde || b == 0xdf }
