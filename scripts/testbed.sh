#!/usr/bin/env bash
# The real multi-host test bed, for a person to watch: 5 hosts, each a Linux
# network namespace with its own address on a private bridge (10.231.0.0/24,
# only inside the namespaces), each running a real agent. It shows
# `agent members` from h1, then walks through a partition (h1 h2 h3 | h4 h5)
# and its heal, printing every change of view with its time. Needs root.
#
#   scripts/testbed.sh          the walkthrough; then everything is removed
#   KEEP=1 scripts/testbed.sh   keep the hosts up afterwards, until Ctrl-C
#   scripts/testbed.sh clean    remove what a crashed run left behind
#
# HOSTS (default 5) and PROFILE (default local) change the bed. Whatever
# happens (an error, Ctrl-C), the namespaces, links, agents and files it
# made are removed on the way out.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${AGENT_BIN:-$root/bin/agent}

if [ "$(id -u)" != 0 ]; then
  echo "the test bed makes network namespaces, which needs root: sudo $0 $*" >&2
  exit 1
fi
for tool in ip:iproute2 nft:nftables go:golang; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "no ${tool%%:*} command: install ${tool#*:} (apt-get install ${tool#*:})" >&2
    exit 1
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/agent-testbed.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$root" && go build -o "$work/walkthrough" ./scripts/testbed/walkthrough)

if [ "${1:-}" = clean ]; then
  "$work/walkthrough" -clean
  exit
fi
if [ ! -x "$bin" ]; then
  echo "no agent binary at $bin: run 'make build' (or 'make testbed') first" >&2
  exit 1
fi
args=(-agent "$bin" -hosts "${HOSTS:-5}" -profile "${PROFILE:-local}")
if [ -n "${KEEP:-}" ]; then
  args+=(-keep)
fi
"$work/walkthrough" "${args[@]}"
