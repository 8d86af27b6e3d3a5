// Command agent is the gossip membership and interpreter placement agent:
// `agent run` starts the daemon on a host, the other commands talk to it.
package main

import "github.com/meshagent/agent/cli"

func main() { cli.Main() }
