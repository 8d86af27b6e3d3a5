package rpc

// Connection is what a client needs to reach an interpreter whose kind
// asks for a connection file (a Jupyter kernel): its address, its named
// ports and its per-interpreter secret. The server sends it only to the
// agent that asked for the spawn, which hands it to its RPC client; it is
// never gossiped in tags.
type Connection struct {
	IP              string
	Transport       string         // "tcp"
	Ports           map[string]int // shell, iopub, stdin, control, hb for Jupyter
	Key             string         // the HMAC key of the messages, hex
	SignatureScheme string         // "hmac-sha256"
	KernelName      string
}
