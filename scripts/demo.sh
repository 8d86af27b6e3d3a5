#!/usr/bin/env bash
# Starts a 3-agent mesh on loopback (127.0.0.1-3, gossip port 7946, RPC port
# 7373), prints `agent members`, then keeps the agents running until Ctrl-C,
# or for DURATION (e.g. DURATION=30s) when that is set. Every agent it started
# is stopped on the way out, whatever the reason.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${AGENT_BIN:-$root/bin/agent}
work=$(mktemp -d "${TMPDIR:-/tmp}/agent-demo.XXXXXX")
pids=()

# supervisors lists the interpreter supervisors this demo's agents started
# (`agent interpreter --spec $work/...`): they run detached, in sessions of
# their own, so stopping the agents does not stop them.
supervisors() {
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *" interpreter --spec $work/"*) echo "${d#/proc/}" ;;
    esac
  done
}

stop_all() {
  trap - EXIT INT TERM
  # Interpreters first: each supervisor stops its interpreter's process
  # group (SIGTERM, then SIGKILL after its grace) and leaves the mesh.
  sups=$(supervisors)
  if [ -n "$sups" ]; then
    echo
    echo "stopping $(echo "$sups" | wc -w) interpreters..."
    kill -TERM $sups 2>/dev/null || true
    for _ in $(seq 1 150); do
      [ -z "$(supervisors)" ] && break
      sleep 0.1
    done
    sups=$(supervisors)
    [ -n "$sups" ] && kill -KILL $sups 2>/dev/null || true
  fi
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "stopping ${#pids[@]} agents (graceful leave)..."
    kill -TERM "${pids[@]}" 2>/dev/null || true
    # Bounded wait for the leaves, then make sure nothing is left behind.
    for _ in $(seq 1 100); do
      alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ $alive -eq 0 ] && break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  echo "logs were in $work; removing it"
  rm -rf "$work"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

if [ ! -x "$bin" ]; then
  echo "no agent binary at $bin: run 'make build' (or 'make demo') first" >&2
  exit 1
fi

for i in 1 2 3; do
  addr=127.0.0.$i
  args=(run --node "node$i" --bind "$addr:7946" --rpc-addr "$addr:7373" --http-addr "$addr:7374"
        --data-dir "$work/node$i" --tag "demo=yes" --log-level info)
  [ "$i" -gt 1 ] && args+=(--join 127.0.0.1:7946)
  "$bin" "${args[@]}" >"$work/node$i.log" 2>&1 &
  pids+=($!)
  echo "started node$i on $addr (pid $!, log $work/node$i.log)"
done

# Bounded poll until the first agent sees three alive members.
for _ in $(seq 1 100); do
  n=$("$bin" members --rpc-addr 127.0.0.1:7373 --status alive --format json 2>/dev/null | grep -c '"name"' || true)
  [ "$n" = 3 ] && break
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "an agent exited early; its log:" >&2
      cat "$work"/node*.log >&2
      exit 1
    fi
  done
  sleep 0.1
done

echo
"$bin" members --rpc-addr 127.0.0.1:7373
echo
echo "try:  $bin members            (talks to 127.0.0.1:7373)"
echo "      $bin members --rpc-addr 127.0.0.2:7373 --format json"
echo "      $bin monitor --rpc-addr 127.0.0.3:7373"
echo "      $bin spawn --kind demo --wait"
echo "      dashboard: http://127.0.0.1:7374/"
if [ -n "${DURATION:-}" ]; then
  echo "running for $DURATION..."
  sleep "$DURATION"
else
  echo "press Ctrl-C to stop the cluster"
  while true; do sleep 3600; done
fi
