#!/usr/bin/env bash
# Starts a 3-agent mesh on loopback, prints `agent members`, then keeps the
# agents running until Ctrl-C, or for DURATION (e.g. DURATION=30s) when that
# is set. Every agent it started is stopped on the way out, whatever the
# reason.
#
# Where the agents listen:
#   ADDRS      the agents' addresses, one agent each, separated by spaces or
#              commas (default "127.0.0.1 127.0.0.2 127.0.0.3"); an address
#              may repeat.
#   BASE_PORT  unset (the default): each agent takes the first ports free on
#              its address from 7946 (gossip), 7373 (RPC) and 7374 (HTTP)
#              upward, so the demo runs beside another agent. Set: the ports
#              are fixed, agent i (from 0) on BASE_PORT+3i (gossip), +1 (RPC)
#              and +2 (HTTP), and a port in use is an error.
# It prints where each agent listens.
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
  # Whatever happens here, go on stopping: a closed terminal or pipe makes
  # the messages fail, not the cleanup.
  trap - EXIT INT TERM HUP
  trap '' PIPE
  set +e
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
    echo "logs were in $work; removing it"
  fi
  rm -rf "$work"
}
trap stop_all EXIT
# A closed terminal (HUP) or output pipe (PIPE) stops the demo as Ctrl-C
# does, instead of killing the script with its agents left running.
trap 'exit 130' INT TERM HUP PIPE

if [ ! -x "$bin" ]; then
  echo "no agent binary at $bin: run 'make build' (or 'make demo') first" >&2
  exit 1
fi

read -r -a addrs <<<"$(echo "${ADDRS:-127.0.0.1 127.0.0.2 127.0.0.3}" | tr ',' ' ')"
if [ ${#addrs[@]} -eq 0 ]; then
  echo "ADDRS is empty: give the agents' addresses, e.g. ADDRS=\"127.0.0.1 127.0.0.2\"" >&2
  exit 1
fi
if [ -n "${BASE_PORT:-}" ] && ! [[ $BASE_PORT =~ ^[0-9]+$ && $BASE_PORT -ge 1 && $((BASE_PORT + 3 * ${#addrs[@]})) -le 65536 ]]; then
  echo "BASE_PORT=$BASE_PORT is not a port that leaves room for ${#addrs[@]} agents (3 ports each): give one from 1 to $((65536 - 3 * ${#addrs[@]})), or leave it unset to pick free ports" >&2
  exit 1
fi

# taken holds " ADDR:PORT " for every TCP or UDP socket bound on this host
# (from /proc/net), "*" standing for the wildcard address, plus the ports
# this script has given out.
taken=" "
hexip() { # 8 hex digits of /proc/net, in host (little-endian) order
  echo "$((16#${1:6:2})).$((16#${1:4:2})).$((16#${1:2:2})).$((16#${1:0:2}))"
}
for f in /proc/net/tcp /proc/net/udp /proc/net/tcp6 /proc/net/udp6; do
  [ -r "$f" ] || continue
  while read -r _ local _; do
    h=${local%%:*} p=${local##*:}
    [[ $p =~ ^[0-9A-F]{4}$ ]] || continue # the header line
    case ${#h} in
      8) ip=$(hexip "$h") ;;
      32) case $h in
            00000000000000000000000000000000) ip='*' ;;
            0000000000000000FFFF0000*) ip=$(hexip "${h:24:8}") ;;
            *) continue ;; # IPv6 proper: no clash with an IPv4 address
          esac ;;
      *) continue ;;
    esac
    [ "$ip" = 0.0.0.0 ] && ip='*'
    taken+="$ip:$((16#$p)) "
  done <"$f"
done
in_use() { [[ $taken == *" $1:$2 "* || $taken == *" *:$2 "* ]]; }

# pick sets port to the first port free on $1 from $2 up (or exactly $2 when
# BASE_PORT fixes it) and marks it given out.
pick() {
  port=$2
  if [ -n "${BASE_PORT:-}" ]; then
    if in_use "$1" "$port"; then
      echo "port $port on $1 is in use (BASE_PORT=$BASE_PORT): choose another BASE_PORT, or leave it unset to pick free ports" >&2
      exit 1
    fi
  else
    while in_use "$1" "$port"; do
      port=$((port + 1))
      if [ "$port" -gt 65535 ]; then
        echo "no free port on $1 from $2 up: give BASE_PORT" >&2
        exit 1
      fi
    done
  fi
  taken+="$1:$port "
}

gossips=() rpcs=() https=()
for i in "${!addrs[@]}"; do
  addr=${addrs[$i]}
  if [ -n "${BASE_PORT:-}" ]; then
    g=$((BASE_PORT + 3 * i)) r=$((BASE_PORT + 3 * i + 1)) h=$((BASE_PORT + 3 * i + 2))
  else
    g=7946 r=7373 h=7374
  fi
  pick "$addr" $g && gossips+=("$addr:$port")
  pick "$addr" $r && rpcs+=("$addr:$port")
  pick "$addr" $h && https+=("$addr:$port")
done

for i in "${!addrs[@]}"; do
  n=node$((i + 1))
  args=(run --node "$n" --bind "${gossips[$i]}" --rpc-addr "${rpcs[$i]}" --http-addr "${https[$i]}"
        --data-dir "$work/$n" --tag "demo=yes" --log-level info)
  [ "$i" -gt 0 ] && args+=(--join "${gossips[0]}")
  "$bin" "${args[@]}" >"$work/$n.log" 2>&1 &
  pids+=($!)
  echo "started $n: gossip ${gossips[$i]}, rpc ${rpcs[$i]}, http http://${https[$i]}/ (pid $!, log $work/$n.log)"
done
rpc=${rpcs[0]}

# Bounded poll until the first agent sees three alive members.
for _ in $(seq 1 100); do
  n=$("$bin" members --rpc-addr "$rpc" --status alive --format json 2>/dev/null | grep -c '"name"' || true)
  [ "$n" = ${#addrs[@]} ] && break
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
"$bin" members --rpc-addr "$rpc"
echo
echo "the CLI talks to 127.0.0.1:7373 unless told otherwise; for this demo:"
echo "      export AGENT_RPC_ADDR=$rpc"
echo "try:  $bin members"
echo "      $bin members --rpc-addr ${rpcs[${#rpcs[@]} - 1]} --format json"
echo "      $bin monitor"
echo "      $bin spawn --kind demo --wait"
echo "      dashboard: http://${https[0]}/"
if [ -n "${DURATION:-}" ]; then
  echo "running for $DURATION..."
  sleep "$DURATION"
else
  echo "press Ctrl-C to stop the cluster"
  while true; do sleep 3600; done
fi
