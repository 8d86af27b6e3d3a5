// Package cli is the `agent` command line: urfave/cli commands, their flags,
// text and JSON output, and exit codes. Client commands reach a running agent
// only through agent/rpc; `agent run` is the one command that starts an agent
// in this process. This package holds no cluster logic of its own.
package cli
