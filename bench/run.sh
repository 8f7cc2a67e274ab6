#!/usr/bin/env bash
# Side-by-side benchmarks (EVALUATION.md, "Speed"), written to bench/RESULTS.md.
#
#   bench/run.sh [RUNS]        (default 3 runs; medians and ratios reported)
#
# Starts a local redis-server and a Perennial release build, pins the servers
# to core 0 and the load clients to core 1 (when there are two cores), and
# measures in the same run: PING at 50 connections, pipeline 1 and 16,
# against redis-server through the same client (perennial bench --redis) and
# with redis-benchmark; RECOMMEND top-10 over ml-latest-small at 1, 16 and 64
# connections beside numpy's single-core matrix-vector bound, and at 16
# connections open loop at half that throughput; feedback ingest
# (perennial replay, fsync everysec) beside River's BiasedMF predict+learn
# rate; and freshness. Needs redis-server/redis-benchmark (Debian
# redis-server, redis-tools), python3 with numpy, and River (pip install
# river) for the ingest peer (reported as not measured without it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${1:-3}"
DATA="${PERENNIAL_DATA:-$ROOT/../shared/data/ml-latest-small}"
BIN="$ROOT/.build/release/perennial"
OUT="$(mktemp -d)"
PORT=7996 RPORT=6390
SERVER_CPU="" CLIENT_CPU=""
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then SERVER_CPU="taskset -c 0"; CLIENT_CPU="taskset -c 1"; fi

(cd "$ROOT" && swift build -c release --product perennial >/dev/null)
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install -y redis-server redis-tools)"; exit 1; }

cleanup() { kill "${PPID_SERVER:-}" "${RPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

$SERVER_CPU redis-server --port $RPORT --save '' --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
RPID=$!

start_perennial() {
    rm -rf "$OUT/data"
    printf '[server]\nport = %d\ndata_dir = "%s"\n[log]\nfsync = "everysec"\n' $PORT "$OUT/data" >"$OUT/perennial.toml"
    $SERVER_CPU "$BIN" serve --config "$OUT/perennial.toml" >"$OUT/server.log" 2>&1 &
    PPID_SERVER=$!
    for _ in $(seq 50); do "$BIN" bench ping --port $PORT --connections 1 --duration 0.1 >/dev/null 2>&1 && return; sleep 0.1; done
    echo "the server did not start"; cat "$OUT/server.log"; exit 1
}
stop_perennial() { kill "$PPID_SERVER"; wait "$PPID_SERVER" 2>/dev/null || true; }
# A process's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS"
    start_perennial
    # Ingest: the E1 stream (all of ml-latest-small) from one client.
    $CLIENT_CPU "$BIN" replay --data "$DATA" --port $PORT --no-texts | tail -1 >"$OUT/replay-$run.txt"
    for p in 1 16; do
        # The servers' CPU time over each run too: when the client's core is
        # saturated, CPU per request compares the servers where req/s cannot.
        c0=$(cpu_ticks "$PPID_SERVER")
        $CLIENT_CPU "$BIN" bench ping --port $PORT --connections 50 --pipeline $p --duration 5 --json "$OUT/ping-p$p-$run.json" >/dev/null
        echo $(( $(cpu_ticks "$PPID_SERVER") - c0 )) >"$OUT/ping-p$p-$run.ticks"
        c0=$(cpu_ticks "$RPID")
        $CLIENT_CPU "$BIN" bench ping --redis 127.0.0.1:$RPORT --connections 50 --pipeline $p --duration 5 --json "$OUT/redis-p$p-$run.json" >/dev/null
        echo $(( $(cpu_ticks "$RPID") - c0 )) >"$OUT/redis-p$p-$run.ticks"
        $CLIENT_CPU redis-benchmark -p $RPORT -t ping_mbulk -c 50 -P $p -n 400000 -q --csv >"$OUT/rb-p$p-$run.csv" 2>/dev/null || true
    done
    for c in 1 16 64; do
        $CLIENT_CPU "$BIN" bench recommend --port $PORT --connections $c --duration 5 --json "$OUT/rec-c$c-$run.json" >/dev/null
    done
    # The closed loop above measures capacity: at 16 connections its latency
    # is mostly queueing (16 requests in line). Latency at a load below
    # capacity is an open-loop run at half the 16-connection throughput.
    HALF=$(python3 -c "import json; print(max(100, int(json.load(open('$OUT/rec-c16-$run.json'))['throughput'] / 2)))")
    $CLIENT_CPU "$BIN" bench recommend --port $PORT --connections 16 --rate "$HALF" --duration 5 --json "$OUT/rec-open-$run.json" >/dev/null
    echo "$HALF" >"$OUT/rec-open-rate-$run.txt"
    $CLIENT_CPU "$BIN" bench freshness --port $PORT --samples 2000 --json "$OUT/fresh-$run.json" >/dev/null
    stop_perennial
    # The host itself: how often each core is taken away while idle (a
    # virtual machine's neighbours, the kernel). Stalls over 1 ms put a floor
    # under any p99 measured here.
    $SERVER_CPU python3 "$ROOT/bench/peers.py" stalls --seconds 3 >"$OUT/stalls-server-$run.json" &
    $CLIENT_CPU python3 "$ROOT/bench/peers.py" stalls --seconds 3 >"$OUT/stalls-client-$run.json"
    wait $!
    # Peers computed in the same run.
    OPENBLAS_NUM_THREADS=1 $CLIENT_CPU python3 "$ROOT/bench/peers.py" matvec --items 9742 --dim 64 >"$OUT/matvec-$run.json"
    OPENBLAS_NUM_THREADS=1 $CLIENT_CPU python3 "$ROOT/bench/peers.py" river --data "$DATA" >"$OUT/river-$run.json" || echo '{}' >"$OUT/river-$run.json"
done

python3 "$ROOT/bench/peers.py" report --dir "$OUT" --runs "$RUNS" >"$ROOT/bench/RESULTS.md"
cat "$ROOT/bench/RESULTS.md"
