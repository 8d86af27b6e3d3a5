#!/usr/bin/env bash
# Measures what an idle agent costs: starts 3 agents on 127.0.0.1-3 (ports
# 27946/27373/27374, so a running demo is not disturbed), lets them sit for
# SECONDS_IDLE (default 60), then prints each one's RSS and CPU time from
# /proc, and stops them all.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${AGENT_BIN:-$root/bin/agent}
idle=${SECONDS_IDLE:-60}
work=$(mktemp -d "${TMPDIR:-/tmp}/agent-idle.XXXXXX")
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
[ -x "$bin" ] || { echo "no agent binary at $bin: run 'make build' first" >&2; exit 1; }
for i in 1 2 3; do
  args=(run --node idle$i --bind 127.0.0.$i:27946 --rpc-addr 127.0.0.$i:27373 --http-addr 127.0.0.$i:27374 --data-dir "$work/$i")
  [ "$i" -gt 1 ] && args+=(--join 127.0.0.1:27946)
  "$bin" "${args[@]}" >"$work/$i.log" 2>&1 &
  pids+=($!)
done
sleep "$idle"
tck=$(getconf CLK_TCK)
for p in "${pids[@]}"; do
  rss=$(awk '/VmRSS/{print $2}' /proc/$p/status)
  read -r ut st < <(awk '{print $14, $15}' /proc/$p/stat)
  awk -v p="$p" -v rss="$rss" -v t="$(( ut + st ))" -v hz="$tck" -v s="$idle" \
    'BEGIN { printf "pid %s: RSS %.1f MiB, CPU %.2f s over %d s (%.2f%% of a core)\n", p, rss/1024, t/hz, s, 100*t/hz/s }'
done
"$bin" members --rpc-addr 127.0.0.1:27373
