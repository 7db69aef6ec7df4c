#!/usr/bin/env bash
# CPU per acknowledged operation of one build, one node and 3 nodes (N=3, R=2, W=2),
# load phase (puts) and YCSB A: the figures of BENCHMARKS.md's "replicated path"
# section. Run it for two builds in turn to compare them.
#
# Usage: bash scripts/cpu_per_op.sh [BINARY]     (default target/release/ringkv)
#        DURATION=15 RECORDS=50000 SETTLE=22 PROFILE=out-prefix
# With PROFILE set, the 3 server processes are sampled with `perf record` for 8 s
# during the 3-node run (PROFILE.data, PROFILE.txt: the top symbols).
# Every server listens on 127.0.0.1 only and is stopped when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

R=${1:-target/release/ringkv}
DURATION=${DURATION:-15}
RECORDS=${RECORDS:-50000}

. scripts/local_cluster.sh
figures() { grep -E "^(load|run) +(all|insert) |cpu:" || true; }
common=(--workload a --records "$RECORDS" --concurrency 64 --value-size 1000 --duration "${DURATION}s" --quiet)

echo "== one node"
$R serve --listen 127.0.0.1:7591 --data-dir "$WORK/one" >"$WORK/one.log" 2>&1 &
P=$!; PIDS+=("$P")
wait_port 127.0.0.1:7591
$R bench --connect 127.0.0.1:7591 "${common[@]}" --json "$WORK/one.json" | figures
kill -TERM "$P"; wait "$P" || true

echo "== three nodes (N=3, R=2, W=2)"
$R dev --nodes 3 --base-port 7592 --data-dir "$WORK/three" >"$WORK/dev.log" 2>&1 &
P=$!; PIDS+=("$P")
for p in 7592 7593 7594; do wait_port 127.0.0.1:$p; done
wait_members "$R" 127.0.0.1:7594 3
sleep "${SETTLE:-22}"
$R bench --connect 127.0.0.1:7592 127.0.0.1:7593 127.0.0.1:7594 --r 2 --w 2 "${common[@]}" \
  --json "$WORK/three.json" >"$WORK/three.txt" &
B=$!
if [ -n "${PROFILE:-}" ]; then
  sleep $((DURATION / 2 + 3))
  perf record -F 999 -p "$(pgrep -P "$P" | paste -sd,)" -o "$PROFILE.data" -- sleep 8 2>/dev/null
  perf report -i "$PROFILE.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep "%" | head -40 >"$PROFILE.txt"
fi
wait "$B"
figures <"$WORK/three.txt"
