#!/bin/sh
# Writes default.pgo, the CPU profile the go command builds the agent with
# (profile-guided optimization: `go build` takes default.pgo from the main
# package's directory). The profile is the mesh's own work: a partition
# and a crash of NODES nodes (default 500) in virtual time, running the
# production gossip code (memberlist, serf, msgpack) that a real agent
# runs. About 3 minutes on 2 cores.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
NODES=${NODES:-500}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# Without a profile, so that default.pgo does not depend on the one before it.
$GO test -pgo=off -c -o "$tmp/simulation.test" ./simulation
for scenario in partition crash; do
	printf '{"scenario":"%s","nodes":%d,"seed":1,"profile":"fast","out":"%s"}\n' \
		"$scenario" "$NODES" "$tmp/$scenario.json" >"$tmp/$scenario.job"
	echo "profiling a $NODES-node $scenario in virtual time"
	AGENT_SIMULATE_VIRTUAL_JOB="$tmp/$scenario.job" "$tmp/simulation.test" \
		-test.run '^TestVirtualRun$' -test.cpuprofile "$tmp/$scenario.pprof" >"$tmp/$scenario.log" 2>&1 ||
		{ cat "$tmp/$scenario.log" >&2; exit 1; }
done
$GO tool pprof -proto "$tmp/partition.pprof" "$tmp/crash.pprof" >"$tmp/default.pgo" 2>/dev/null
mv "$tmp/default.pgo" default.pgo
echo "wrote default.pgo ($(wc -c <default.pgo) bytes)"
