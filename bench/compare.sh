#!/usr/bin/env bash
# Side-by-side benchmark of three servers speaking the Mesa conformance contract:
#   ours      the mesa-conformance binary (mesa-server; heartbeats and authentication on, rate limit off)
#   baseline  mesa-baseline (tokio-tungstenite directly, no features: the floor of what a wrapper can cost)
#   node      @cryb/mesa 1.5.8 from npm (bench/node/server.js)
# Each server runs pinned to CPU 0 (taskset -c 0), the load generator (mesa-bench) to CPU 1, and each
# scenario gets a freshly started server. Results: one JSON line per run in $OUT/results.jsonl, logs in $OUT,
# and a Markdown table with ratios (ours/baseline, ours/node) on stdout and in $OUT/table.md.
#
# Usage: bench/compare.sh [--quick] [--storm] [--cluster | --resume] [--out DIR] [--servers ours,baseline,node]
#   --quick   a smoke run of a few seconds per server (small counts, 0.5 s scenarios)
#   --storm   also run the storm scenario: 5 000 connections dropped at once, then 30 s of RSS samples
#             (about 40 s per server; with --quick 300 connections and 2 s)
#   --cluster run the cluster scenarios instead: two nodes on one fresh redis-server per run (ours: two
#             mesa-conformance with REDIS_URL; node: two bench/node/server.js with Mesa 1.5's redis option);
#             redis-server and node A on CPU 0, node B on CPU 1, mesa-bench unpinned. Servers: ours,node.
#   --resume  run the resumable-session benchmarks instead, ours only (the baseline and Mesa 1.5 have no
#             resumable sessions): idle memory per connection with and without resumable sessions, durable
#             versus volatile sends to user ids through SEND_TO (and durable to non-resumable sessions), and
#             resume storms (the in-memory engine keeps sessions in the process, so the sessions resume on the
#             node they were opened on). Server on CPU 0, mesa-bench on CPU 1, a fresh server per run.
# MESA_BENCH_PROFILE=dev runs the debug binaries instead (a smoke run; its figures mean nothing).
# Only loopback addresses are used. The script stops only the processes it started, by their PIDs.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
STORM=0
CLUSTER=0
RESUME=0
OUT=""
SERVERS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --storm) STORM=1 ;;
    --cluster) CLUSTER=1 ;;
    --resume) RESUME=1 ;;
    --out) OUT="$2"; shift ;;
    --servers) SERVERS="$2"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$CLUSTER" = 1 ] && [ "$RESUME" = 1 ]; then
  echo "--cluster and --resume are separate runs" >&2
  exit 2
fi
if [ "$RESUME" = 1 ]; then
  if [ -n "$SERVERS" ] && [ "$SERVERS" != ours ]; then
    echo "--resume: only ours has resumable sessions; the baseline and Mesa 1.5 have none" >&2
    exit 2
  fi
  SERVERS="ours"
fi
if [ -z "$SERVERS" ]; then
  if [ "$CLUSTER" = 1 ]; then SERVERS="ours,node"; else SERVERS="ours,baseline,node"; fi
fi
if [ "$CLUSTER" = 1 ] && [[ ",$SERVERS," == *",baseline,"* ]]; then
  echo "--cluster: the baseline has no cluster mode; use --servers ours,node" >&2
  exit 2
fi
OUT="${OUT:-$(mktemp -d /tmp/mesa-bench.XXXXXX)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

say() { printf '==> %s\n' "$*" >&2; }

# --- tools ---------------------------------------------------------------------------------------------
TOOLS="cargo taskset"
if [[ ",$SERVERS," == *",node,"* ]]; then TOOLS="$TOOLS node npm"; fi
if [ "$CLUSTER" = 1 ] || [ "$RESUME" = 1 ]; then TOOLS="$TOOLS redis-server ss"; fi
for tool in $TOOLS; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
  echo "needs at least 2 CPUs (server on CPU 0, generator on CPU 1); this machine has $(nproc)" >&2
  exit 1
fi

# MESA_BENCH_PROFILE=dev uses the debug binaries (for CI's smoke run after the tests built them); figures
# from such a run mean nothing.
PROFILE="${MESA_BENCH_PROFILE:-release}"
say "building $PROFILE binaries (mesa-bench, mesa-baseline, mesa-conformance)"
cargo build --profile "$PROFILE" -p mesa-bench -p mesa-conformance >&2
if [ "$PROFILE" = dev ]; then PROFILE_DIR=debug; else PROFILE_DIR="$PROFILE"; fi
BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/$PROFILE_DIR"

if [[ ",$SERVERS," == *",node,"* ]] && [ ! -d bench/node/node_modules/@cryb/mesa ]; then
  say "installing @cryb/mesa 1.5.8 in bench/node"
  (cd bench/node && npm ci --no-audit --no-fund >&2)
fi

# Connections are file descriptors: let the servers (started from here) use the hard limit too.
ulimit -n "$(ulimit -Hn)" || true

# --- servers -------------------------------------------------------------------------------------------
SERVER_PID=""
# Cluster runs: node B and the redis-server (node A is SERVER_PID).
SERVER_B_PID=""
REDIS_PID=""
stop_pid() {
  local pid="$1"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
cleanup() {
  # The nodes first, so that they leave Redis while it still runs.
  stop_pid "$SERVER_PID"
  stop_pid "$SERVER_B_PID"
  stop_pid "$REDIS_PID"
  SERVER_PID=""
  SERVER_B_PID=""
  REDIS_PID=""
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

# --- cluster runs (--cluster) ---------------------------------------------------------------------------
# free_port: a port of 127.0.0.1 nothing listens on now (the server started on it fails if taken meanwhile).
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 30000))
    if [ -z "$(ss -Htln "sport = :$port" 2>/dev/null)" ]; then
      echo "$port"
      return 0
    fi
  done
  echo "no free port found" >&2
  exit 1
}

# wait_port PORT PID NAME LOG: waits until PORT accepts connections (PID must stay alive).
wait_port() {
  local port="$1" pid="$2" name="$3" log="$4"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "$name exited; see $log" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name did not listen on $port within 10 s; see $log" >&2
  exit 1
}

# start_node NAME PORT CPU LOG: one gateway of the cluster on REDIS_URL; prints nothing, sets NODE_PID.
start_node() {
  local name="$1" port="$2" cpu="$3" log="$4"
  case "$name" in
    ours) REDIS_URL="$REDIS_URL" REDIS_STREAMS="${REDIS_STREAMS:-0}" PORT="$port" RUST_LOG=warn taskset -c "$cpu" \
            "$BIN/mesa-conformance" >"$log" 2>&1 & ;;
    node) REDIS_URL="$REDIS_URL" PORT="$port" taskset -c "$cpu" node bench/node/server.js >"$log" 2>&1 & ;;
    *) echo "no cluster mode for $name" >&2; exit 2 ;;
  esac
  NODE_PID=$!
  wait_port "$port" "$NODE_PID" "$name node" "$log"
}

# start_cluster NAME LOGPREFIX: a fresh redis-server (CPU 0, nothing on disk), node A (CPU 0), node B (CPU 1).
start_cluster() {
  local name="$1" prefix="$2"
  REDIS_PORT="$(free_port)"
  mkdir -p "$prefix.redis"
  taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$prefix.redis" >"$prefix.redis.log" 2>&1 &
  REDIS_PID=$!
  wait_port "$REDIS_PORT" "$REDIS_PID" "redis-server" "$prefix.redis.log"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  PORT_A="$(free_port)"
  start_node "$name" "$PORT_A" 0 "$prefix.a.log"
  SERVER_PID="$NODE_PID"
  PORT_B="$(free_port)"
  while [ "$PORT_B" = "$PORT_A" ]; do PORT_B="$(free_port)"; done
  start_node "$name" "$PORT_B" 1 "$prefix.b.log"
  SERVER_B_PID="$NODE_PID"
  sleep 0.5
}

run_cluster() {
  if [ "$QUICK" = 1 ]; then
    SCENARIOS=(
      "cluster-idle-1k|idle -n 1000 --hold 500ms"
      "cluster-fanout-200-64B-max|fanout -r 200 -p 64 -d 500ms --drain 2s"
      "cluster-fanout-500x50hz-256B|fanout -r 500 -p 256 --rate 50 -d 500ms --drain 2s"
      "cluster-targeted-200x500hz|targeted -r 200 --rate 500 -p 64 -d 500ms --drain 2s"
    )
  else
    SCENARIOS=(
      "cluster-idle-19k|idle -n 19000 --hold 10s"
      "cluster-fanout-1k-64B-max|fanout -r 1000 -p 64 -d 10s --drain 10s"
      "cluster-fanout-2kx50hz-256B|fanout -r 2000 -p 256 --rate 50 -d 10s --drain 10s"
      "cluster-targeted-1kx500hz|targeted -r 1000 --rate 500 -p 256 -d 10s --drain 10s"
      "cluster-targeted-1kx2000hz|targeted -r 1000 --rate 2000 -p 256 -d 10s --drain 10s"
    )
  fi
  IFS=',' read -r -a SERVER_LIST <<< "$SERVERS"
  for entry in "${SCENARIOS[@]}"; do
    name="${entry%%|*}"
    args="${entry#*|}"
    for server in "${SERVER_LIST[@]}"; do
      log="$OUT/$name.$server"
      say "$name on $server (load $(cut -d' ' -f1 /proc/loadavg))"
      start_cluster "$server" "$log"
      extra=()
      if [[ "$args" == targeted* ]]; then
        extra=(--redis-url "$REDIS_URL" --dispatch "$([ "$server" = node ] && echo mesa15 || echo ours)")
      fi
      # shellcheck disable=SC2086 # $args is a list of arguments
      if "$BIN/mesa-bench" $args "${extra[@]}" \
          --url "ws://127.0.0.1:$PORT_A/" --url-b "ws://127.0.0.1:$PORT_B/" \
          --server-pid "$SERVER_PID" --server-b-pid "$SERVER_B_PID" \
          --redis-pid "$REDIS_PID" --redis-port "$REDIS_PORT" \
          --name "$name" --label "$server" >"$log.out" 2>"$log.err"; then
        grep '^{"tool":"mesa-bench"' "$log.out" >> "$RESULTS" || true
      else
        echo "mesa-bench failed for $name on $server; see $log.err" >&2
      fi
      cleanup
      if [ "$QUICK" = 1 ]; then sleep 0.2; else sleep 1; fi
    done
  done
}

# --- resumable sessions (--resume) ---------------------------------------------------------------------
# Each entry: name|label|arguments. Runs of one name are compared by label: resume-on against resume-off
# (idle), durable against volatile and against durable sends to non-resumable sessions (no-resume), and the
# resume storms alone.
run_resume() {
  local sendto storm
  if [ "$QUICK" = 1 ]; then
    sendto="targeted --via client -r 200 --fanout 20 -p 256 -d 500ms --drain 2s"
    storm="resume -n 300 -m 5 --gap 300ms --linger 300ms --timeout 10s"
    ENTRIES=(
      "idle-1k-resume|resume-off|idle -n 1000 --hold 500ms"
      "idle-1k-resume|resume-on|idle -n 1000 --hold 500ms --resumable"
      "sendto-200x20-max|durable|$sendto --rate 0 --resumable"
      "sendto-200x20-max|volatile|$sendto --rate 0 --resumable --volatile"
      "sendto-200x20-max|no-resume|$sendto --rate 0"
      "sendto-200x20-100hz|durable|$sendto --rate 100 --resumable"
      "sendto-200x20-100hz|volatile|$sendto --rate 100 --resumable --volatile"
      "sendto-200x20-100hz|no-resume|$sendto --rate 100"
      "resume-300-dropped|ours|$storm --send dropped"
      "resume-300-connected|ours|$storm --send connected"
      "resume-300-connected-acked|ours|$storm --send connected --resume-from acked"
      "resume-300-dropped|redis-other-node|$storm --send dropped"
    )
  else
    sendto="targeted --via client -r 1000 --fanout 100 -p 256 -d 10s --drain 10s"
    storm="resume -n 5000"
    ENTRIES=(
      "idle-19k-resume|resume-off|idle -n 19000 --hold 10s"
      "idle-19k-resume|resume-on|idle -n 19000 --hold 10s --resumable"
      "sendto-1kx100-max|durable|$sendto --rate 0 --resumable"
      "sendto-1kx100-max|volatile|$sendto --rate 0 --resumable --volatile"
      "sendto-1kx100-max|no-resume|$sendto --rate 0"
      "sendto-1kx100-500hz|durable|$sendto --rate 500 --resumable"
      "sendto-1kx100-500hz|volatile|$sendto --rate 500 --resumable --volatile"
      "sendto-1kx100-500hz|no-resume|$sendto --rate 500"
      "resume-5k-dropped|ours|$storm -m 10 --send dropped"
      "resume-5k-connected|ours|$storm -m 10 --send connected"
      "resume-5k-connected-acked|ours|$storm -m 10 --send connected --resume-from acked"
      "resume-5k-dropped-m100|ours|$storm -m 100 --send dropped"
      # Not -m 100 across Redis: 500 000 appends in one burst are more than one redis-server takes within
      # the engine's publish timeout (2 s), and the sends past it are refused (mesa-conformance ignores
      # send errors), so the storm would measure refused sends, not resumes.
      "resume-5k-dropped|redis-other-node|$storm -m 10 --send dropped"
      "resume-5k-connected-acked|redis-other-node|$storm -m 10 --send connected --resume-from acked"
    )
  fi
  for entry in "${ENTRIES[@]}"; do
    name="${entry%%|*}"
    rest="${entry#*|}"
    label="${rest%%|*}"
    args="${rest#*|}"
    log="$OUT/$name.$label"
    say "$name as $label (load $(cut -d' ' -f1 /proc/loadavg))"
    local target=()
    if [ "$label" = redis-other-node ]; then
      # Two nodes keeping the streams in one redis-server: sessions opened on A resume on B.
      REDIS_STREAMS=1 start_cluster ours "$log"
      target=(--url "ws://127.0.0.1:$PORT_A/" --url-b "ws://127.0.0.1:$PORT_B/"
        --server-pid "$SERVER_PID" --server-b-pid "$SERVER_B_PID")
    else
      start_server ours "$log.server.log"
      target=(--url "ws://127.0.0.1:$(port_of ours)/" --server-pid "$SERVER_PID")
    fi
    # shellcheck disable=SC2086 # $args is a list of arguments
    if taskset -c 1 "$BIN/mesa-bench" $args "${target[@]}" \
        --name "$name" --label "$label" >"$log.out" 2>"$log.err"; then
      grep '^{"tool":"mesa-bench"' "$log.out" >> "$RESULTS" || true
    else
      echo "mesa-bench failed for $name as $label; see $log.err" >&2
    fi
    cleanup
    if [ "$QUICK" = 1 ]; then sleep 0.2; else sleep 1; fi
  done
}

# resume_tables: the three tables of a --resume run, from $RESULTS.
resume_tables() {
  echo "Idle memory per connection, resumable sessions on and off:"
  echo
  grep '"name":"idle-' "$RESULTS" | "$BIN/mesa-bench" compare - --ours resume-on --against resume-off
  echo
  echo "Sends to user ids through SEND_TO: durable and volatile to resumable sessions, durable to non-resumable ones:"
  echo
  grep '"name":"sendto-' "$RESULTS" | "$BIN/mesa-bench" compare - --ours durable --against volatile,no-resume
  echo
  echo "Resume storms: ours = one node, in memory (sessions resume where they were opened); redis-other-node = two nodes on one redis-server keeping the streams, sessions opened on A resume on B:"
  echo
  grep '"name":"resume-' "$RESULTS" | "$BIN/mesa-bench" compare - --ours redis-other-node --against ours
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
  echo "node: $(node --version 2>/dev/null || echo none)"
  echo "mode: $([ "$QUICK" = 1 ] && echo quick || echo full)$([ "$STORM" = 1 ] && echo " + storm")$([ "$CLUSTER" = 1 ] && echo " cluster")$([ "$RESUME" = 1 ] && echo " resume")"
  if [ "$CLUSTER" = 1 ]; then
    echo "pinning: redis-server + node A on CPU 0, node B on CPU 1, mesa-bench unpinned"
    echo "redis: $(redis-server --version | cut -d' ' -f3)"
  fi
} | tee "$OUT/run.txt" >&2

if [ "$CLUSTER" = 1 ]; then
  run_cluster
elif [ "$RESUME" = 1 ]; then
  run_resume
else
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
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/run.txt" >&2

if [ "$RESUME" = 1 ]; then
  resume_tables | tee "$OUT/table.md"
else
  "$BIN/mesa-bench" compare "$RESULTS" --ours ours --against "$(echo "$SERVERS" | sed 's/^ours,\{0,1\}//; s/,ours//')" \
    | tee "$OUT/table.md"
fi
say "results in $OUT (results.jsonl, table.md, logs)"
