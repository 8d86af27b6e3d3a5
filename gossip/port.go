package gossip

import (
	"fmt"
	"net"
)

// FreePort returns a port free for both TCP and UDP on ip, as a node binds
// both. The port is released before it is returned, so another process may
// take it first; Start then fails and says which port was taken.
func FreePort(ip string) (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err == nil {
			u.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no port free for both TCP and UDP on %s", ip)
}
