#!/usr/bin/env bash
# Reproduces every figure of BENCHMARKS.md's "YCSB" section on this machine:
#   - Redis (redis-server and redis-benchmark, Debian's packages) at the same value
#     size and concurrency, as the yardstick;
#   - ringkv single node and 3 nodes (N=3, R=2, W=2): workloads A, B, C;
#   - the latency/throughput curve of workload A on one node (open loop, --target
#     stepped from 10 % of the closed-loop throughput to past saturation);
#   - workload A on 3 nodes at half of its own closed-loop throughput (HALF_RUNS
#     runs, judged on the median p99);
#   - workload A on 3 nodes with node-2 killed and restarted mid-run.
# Every ringkv run also reports the CPU it cost per acknowledged operation, over the
# bench and every server process (read from /proc; `ringkv bench` finds the servers
# by their listening sockets).
# Writes JSON and SVG of every run to bench-results/ycsb/ and the tables to
# bench-results/ycsb/TABLE.md.
#
# Usage: bash scripts/bench_table.sh        (DURATION=30 RECORDS=100000 CONCURRENCY=64)
# Needs: cargo, python3, and redis-server/redis-benchmark (installed with apt-get if
# missing and running as root). Every server it starts listens on 127.0.0.1 only and
# is stopped when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30}
CURVE_DURATION=${CURVE_DURATION:-20}
HALF_RUNS=${HALF_RUNS:-5}
RECORDS=${RECORDS:-100000}
CONCURRENCY=${CONCURRENCY:-64}
VALUE=${VALUE:-1000}
OUT=bench-results/ycsb
R=target/release/ringkv

if ! command -v redis-benchmark >/dev/null || ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
  else
    echo "redis-server and redis-benchmark are needed (apt-get install redis-server redis-tools)" >&2
    exit 1
  fi
fi

cargo build --release --bin ringkv
mkdir -p "$OUT"

. scripts/local_cluster.sh

stop() { # pid
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

echo "== machine"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpus: $(nproc)  model: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB  kernel: $(uname -r)"
  echo "ringkv: $($R --version)  redis: $(redis-server --version | awk '{print $3}')"
} | tee "$OUT/machine.txt"

echo "== redis: redis-benchmark -c $CONCURRENCY -d $VALUE"
redis-server --port 7390 --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
RP=$!; PIDS+=("$RP")
wait_port 127.0.0.1:7390
redis-benchmark -p 7390 -c "$CONCURRENCY" -d "$VALUE" -r "$RECORDS" -n $((RECORDS * 4)) -t set,get --csv \
  | tee "$OUT/redis.csv"
stop "$RP"

echo "== one node"
$R serve --listen 127.0.0.1:7391 --data-dir "$WORK/one" >"$WORK/one.log" 2>&1 &
NP=$!; PIDS+=("$NP")
wait_port 127.0.0.1:7391
common=(--records "$RECORDS" --concurrency "$CONCURRENCY" --value-size "$VALUE" --quiet)
$R bench --connect 127.0.0.1:7391 --workload c "${common[@]}" --duration "${DURATION}s" \
  --json "$OUT/one-node-c.json" --plot "$OUT/one-node-c.svg"
for w in a b; do
  $R bench --connect 127.0.0.1:7391 --workload $w --skip-load "${common[@]}" --duration "${DURATION}s" \
    --json "$OUT/one-node-$w.json" --plot "$OUT/one-node-$w.svg"
done

echo "== one node, workload A, latency against offered load"
SAT=$(python3 -c "import json;print(int(json.load(open('$OUT/one-node-a.json'))['throughput_ops_per_sec']))")
for pct in 10 25 50 75 90 100 110; do
  t=$((SAT * pct / 100))
  $R bench --connect 127.0.0.1:7391 --workload a --skip-load "${common[@]}" --duration "${CURVE_DURATION}s" \
    --target "$t" --json "$OUT/curve-a-$pct.json" --plot "$OUT/curve-a-$pct.svg"
done
# The half-load point again: one 20 s run on a shared VM is at the mercy of its
# stalls, so the target is judged on the median of HALF_RUNS runs.
for i in $(seq 2 "$HALF_RUNS"); do
  $R bench --connect 127.0.0.1:7391 --workload a --skip-load "${common[@]}" --duration "${CURVE_DURATION}s" \
    --target $((SAT / 2)) --json "$OUT/curve-a-50-run$i.json" --plot "$OUT/curve-a-50-run$i.svg"
done
stop "$NP"

echo "== three nodes (N=3, R=2, W=2)"
$R dev --nodes 3 --base-port 7392 --data-dir "$WORK/three" >"$WORK/dev.log" 2>&1 &
DP=$!; PIDS+=("$DP")
for p in 7392 7393 7394; do wait_port 127.0.0.1:$p; done
wait_members "$R" 127.0.0.1:7394 3
# A cluster that has just formed keeps asking the owners of its earlier rings (the
# rings of one and two members) until its ring has been stable for two repair
# rounds (2 x 10 s): measured before that, the first 20 s of a run ask up to twice
# as many replicas. Measure the settled cluster.
sleep "${SETTLE:-25}"
three=(--connect 127.0.0.1:7392 127.0.0.1:7393 127.0.0.1:7394 --r 2 --w 2)
$R bench "${three[@]}" --workload c "${common[@]}" --duration "${DURATION}s" \
  --json "$OUT/three-nodes-c.json" --plot "$OUT/three-nodes-c.svg"
for w in a b; do
  $R bench "${three[@]}" --workload $w --skip-load "${common[@]}" --duration "${DURATION}s" \
    --json "$OUT/three-nodes-$w.json" --plot "$OUT/three-nodes-$w.svg"
done

echo "== three nodes, workload A at half of its closed-loop throughput"
SAT3=$(python3 -c "import json;print(int(json.load(open('$OUT/three-nodes-a.json'))['throughput_ops_per_sec']))")
for i in $(seq 1 "$HALF_RUNS"); do
  $R bench "${three[@]}" --workload a --skip-load "${common[@]}" --duration "${CURVE_DURATION}s" \
    --target $((SAT3 / 2)) --json "$OUT/three-nodes-a-half-run$i.json" --plot "$OUT/three-nodes-a-half-run$i.svg"
done
stop "$DP"

echo "== three nodes, workload A, node-2 killed at 20 s and restarted at 40 s"
$R bench --nodes 3 --base-port 7396 --workload a --records 20000 --concurrency "$CONCURRENCY" \
  --value-size "$VALUE" --quiet --duration 60s --timeout-ms 2000 \
  --kill-node node-2 --at 20s --restart-at 40s \
  --json "$OUT/three-nodes-a-kill.json" --plot "$OUT/three-nodes-a-kill.svg"

python3 scripts/bench_table.py "$OUT" | tee "$OUT/TABLE.md"
