#!/usr/bin/env bash
# Side-by-side benchmark of three servers speaking the Mesa conformance contract:
#   ours      the mesa-conformance binary (mesa-server; heartbeats and authentication on, rate limit off)
#   baseline  mesa-baseline (tokio-tungstenite directly, no features: the floor of what a wrapper can cost)
#   node      @cryb/mesa 1.5.8 from npm (bench/node/server.js)
# Each server runs pinned to CPU 0 (taskset -c 0), the load generator (mesa-bench) to CPU 1, and each
# scenario gets a freshly started server. Results: one JSON line per run in $OUT/results.jsonl, logs in $OUT,
# and a Markdown table with ratios (ours/baseline, ours/node) on stdout and in $OUT/table.md.
#
# Usage: bench/compare.sh [--quick] [--storm] [--out DIR] [--servers ours,baseline,node]
#   --quick   a smoke run of a few seconds per server (small counts, 0.5 s scenarios)
#   --storm   also run the storm scenario: 5 000 connections dropped at once, then 30 s of RSS samples
#             (about 40 s per server; with --quick 300 connections and 2 s)
# Only loopback addresses are used. The script stops only the processes it started, by their PIDs.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
STORM=0
OUT=""
SERVERS="ours,baseline,node"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --storm) STORM=1 ;;
    --out) OUT="$2"; shift ;;
    --servers) SERVERS="$2"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-$(mktemp -d /tmp/mesa-bench.XXXXXX)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

say() { printf '==> %s\n' "$*" >&2; }

# --- tools ---------------------------------------------------------------------------------------------
for tool in cargo node npm taskset; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
  echo "needs at least 2 CPUs (server on CPU 0, generator on CPU 1); this machine has $(nproc)" >&2
  exit 1
fi

say "building release binaries (mesa-bench, mesa-baseline, mesa-conformance)"
cargo build --release -p mesa-bench -p mesa-conformance >&2
BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/release"

if [[ ",$SERVERS," == *",node,"* ]] && [ ! -d bench/node/node_modules/@cryb/mesa ]; then
  say "installing @cryb/mesa 1.5.8 in bench/node"
  (cd bench/node && npm ci --no-audit --no-fund >&2)
fi

# Connections are file descriptors: let the servers (started from here) use the hard limit too.
ulimit -n "$(ulimit -Hn)" || true

# --- servers -------------------------------------------------------------------------------------------
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

port_of() {
  case "$1" in ours) echo 4101 ;; baseline) echo 4102 ;; node) echo 4103 ;; esac
}

# start_server NAME LOG: starts it on CPU 0 and waits until its port accepts connections.
start_server() {
  local name="$1" log="$2" port
  port="$(port_of "$name")"
  case "$name" in
    ours) PORT="$port" RUST_LOG=warn taskset -c 0 "$BIN/mesa-conformance" >"$log" 2>&1 & ;;
    baseline) PORT="$port" taskset -c 0 "$BIN/mesa-baseline" >"$log" 2>&1 & ;;
    node) PORT="$port" taskset -c 0 node bench/node/server.js >"$log" 2>&1 & ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      sleep 0.3
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$name exited; see $log" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name did not listen on $port within 10 s; see $log" >&2
  exit 1
}

# --- scenarios -----------------------------------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
  SCENARIOS=(
    "idle-1k|idle -n 1000 --hold 500ms"
    "fanout-200-64B-max|fanout -r 200 -p 64 -d 500ms --drain 2s"
    "fanout-500x50hz-256B|fanout -r 500 -p 256 --rate 50 -d 500ms --drain 2s"
    "echo-20x10|echo -c 20 -k 10 -d 500ms"
    "connect-c10|connect -c 10 -d 500ms"
  )
else
  SCENARIOS=(
    "idle-19k|idle -n 19000 --hold 10s"
    "fanout-1k-64B-max|fanout -r 1000 -p 64 -d 10s --drain 10s"
    "fanout-5kx50hz-256B|fanout -r 5000 -p 256 --rate 50 -d 10s --drain 10s"
    "echo-100x10|echo -c 100 -k 10 -d 10s"
    "connect-c50|connect -c 50 -d 10s"
  )
fi
if [ "$STORM" = 1 ]; then
  if [ "$QUICK" = 1 ]; then
    SCENARIOS+=("storm-300|storm -n 300 -m 2 -p 512 --hold 200ms --watch 2s")
  else
    SCENARIOS+=("storm-5k|storm -n 5000 -m 4 -p 1024 --hold 2s --watch 30s")
  fi
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "($(git status --porcelain -- crates 2>/dev/null | wc -l | tr -d ' ') uncommitted changes under crates/)"
  echo "cpus: $(nproc), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "node: $(node --version)"
  echo "mode: $([ "$QUICK" = 1 ] && echo quick || echo full)$([ "$STORM" = 1 ] && echo " + storm")"
} | tee "$OUT/run.txt" >&2

IFS=',' read -r -a SERVER_LIST <<< "$SERVERS"
for entry in "${SCENARIOS[@]}"; do
  name="${entry%%|*}"
  args="${entry#*|}"
  for server in "${SERVER_LIST[@]}"; do
    log="$OUT/$name.$server"
    say "$name on $server (load $(cut -d' ' -f1 /proc/loadavg))"
    start_server "$server" "$log.server.log"
    # shellcheck disable=SC2086 # $args is a list of arguments
    if taskset -c 1 "$BIN/mesa-bench" $args \
        --url "ws://127.0.0.1:$(port_of "$server")/" --server-pid "$SERVER_PID" \
        --name "$name" --label "$server" >"$log.out" 2>"$log.err"; then
      grep '^{"tool":"mesa-bench"' "$log.out" >> "$RESULTS" || true
    else
      echo "mesa-bench failed for $name on $server; see $log.err" >&2
    fi
    cleanup
    # Let the server's exit and its sockets settle before the next server starts.
    if [ "$QUICK" = 1 ]; then sleep 0.2; else sleep 1; fi
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/run.txt" >&2

"$BIN/mesa-bench" compare "$RESULTS" --ours ours --against "$(echo "$SERVERS" | sed 's/^ours,\{0,1\}//; s/,ours//')" \
  | tee "$OUT/table.md"
say "results in $OUT (results.jsonl, table.md, logs)"
