#!/usr/bin/env bash
# YCSB C and A on one node, through the client port (tarpc) and through the HTTP
# data API, in one run against one node: BENCHMARKS.md's "HTTP against the client
# port" table. The HTTP runs use `ringkv bench --http` (one keep-alive HTTP/1.1
# connection per worker); everything else is the same.
#
# Usage: bash scripts/http_vs_rpc.sh [BINARY]   (default target/release/ringkv)
#        DURATION=15 RECORDS=50000 CONCURRENCY=64 OUT=bench-results/http
# The node listens on 127.0.0.1 only and is stopped when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

R=${1:-target/release/ringkv}
DURATION=${DURATION:-15}
RECORDS=${RECORDS:-50000}
CONCURRENCY=${CONCURRENCY:-64}
OUT=${OUT:-bench-results/http}
mkdir -p "$OUT"

. scripts/local_cluster.sh
$R serve --listen 127.0.0.1:7595 --http-listen 127.0.0.1:7596 --data-dir "$WORK/one" \
  >"$WORK/one.log" 2>&1 &
PIDS+=("$!")
wait_port 127.0.0.1:7595
wait_port 127.0.0.1:7596

common=(--connect 127.0.0.1:7595 --records "$RECORDS" --concurrency "$CONCURRENCY"
  --value-size 1000 --quiet)
# The records once, through the client port; every run after reads and updates them.
$R bench "${common[@]}" --workload c --duration 1s >/dev/null
for w in c a; do
  for via in rpc http; do
    extra=(); [ "$via" = http ] && extra=(--http 127.0.0.1:7596)
    echo "== YCSB $w via $via"
    $R bench "${common[@]}" --workload "$w" --duration "${DURATION}s" --skip-load "${extra[@]}" \
      --json "$OUT/$w-$via.json" | grep -E "^run +(all|read|update) |cpu:" || true
  done
done
