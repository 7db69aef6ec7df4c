#!/usr/bin/env bash
# Both storage engines side by side, in one run (BENCHMARKS.md, "Storage engines").
#
#   bash scripts/storage_backends.sh          # DURATION=15 RECORDS=100000 BIG=1000000
#
# For each engine (log, then fjall), with the release binary:
#   1. one node: YCSB C and A closed-loop (saturation), then A and C at half of it
#      (--target), 1 KB values over RECORDS records, 64 in flight;
#   2. three nodes (ringkv dev, N=3, R=W=2): YCSB A closed-loop;
#   3. one node loaded with BIG keys of 100-byte values: resident memory and disk
#      bytes, then the time until it answers again after SIGTERM and after kill -9.
# Output: bench-results/backends/<engine>-*.json and summary.txt (the table).
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RINGKV:-${CARGO_TARGET_DIR:-target}/release/ringkv}
DURATION=${DURATION:-15}
RECORDS=${RECORDS:-100000}
BIG=${BIG:-1000000}
OUT=bench-results/backends
mkdir -p "$OUT"
W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

wait_up() { # ADDR
  for _ in $(seq 1 600); do
    "$R" status --connect "$1" >/dev/null 2>&1 && return 0
    sleep 0.02
  done
  echo "node at $1 did not come up" >&2
  return 1
}

field() { # FILE EXPR
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

# Starts the big node again and sets ms to the time until it answers.
restart_big() {
  local t0 t1
  t0=$(date +%s%N)
  "$R" serve --storage "$engine" --data-dir "$big" --listen $addr \
    --http-listen 127.0.0.1:7482 >>"$W/$engine-big.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  wait_up $addr
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
}

summary="$OUT/summary.txt"
: > "$summary"
for engine in log fjall; do
  echo "== $engine"
  addr=127.0.0.1:7481
  "$R" serve --storage "$engine" --data-dir "$W/$engine-1" --listen $addr \
    --http-listen 127.0.0.1:7482 >"$W/$engine-1.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  wait_up $addr
  b=("$R" bench --connect $addr --records "$RECORDS" --concurrency 64 --value-size 1000)
  "${b[@]}" --workload c --duration "${DURATION}s" --json "$OUT/$engine-c.json" >/dev/null
  "${b[@]}" --workload a --skip-load --duration "${DURATION}s" --json "$OUT/$engine-a.json" >/dev/null
  a=$(field "$OUT/$engine-a.json" "int(d['throughput_ops_per_sec'])")
  c=$(field "$OUT/$engine-c.json" "int(d['throughput_ops_per_sec'])")
  "${b[@]}" --workload a --skip-load --duration "${DURATION}s" --target $((a / 2)) \
    --json "$OUT/$engine-a-half.json" >/dev/null
  "${b[@]}" --workload c --skip-load --duration "${DURATION}s" --target $((c / 2)) \
    --json "$OUT/$engine-c-half.json" >/dev/null
  kill -TERM $pid; wait $pid || true

  RINGKV_STORAGE=$engine "$R" dev --nodes 3 --base-port 7483 --data-dir "$W/$engine-3" \
    >"$W/$engine-3.log" 2>&1 &
  dev=$!; PIDS+=($dev)
  wait_up 127.0.0.1:7483
  sleep 20 # the ring of a new cluster settles
  "$R" bench --connect 127.0.0.1:7483 127.0.0.1:7484 127.0.0.1:7485 --r 2 --w 2 \
    --records "$RECORDS" --concurrency 64 --value-size 1000 --workload a \
    --duration "${DURATION}s" --json "$OUT/$engine-3-a.json" >/dev/null
  kill -TERM $dev; wait $dev || true

  big=$W/$engine-big
  "$R" serve --storage "$engine" --data-dir "$big" --listen $addr \
    --http-listen 127.0.0.1:7482 >"$W/$engine-big.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  wait_up $addr
  "$R" bench --connect $addr --records "$BIG" --operations 1000 --concurrency 50 \
    --value-size 100 --workload c --json "$OUT/$engine-big-load.json" >/dev/null
  sleep 3
  rss_kb=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
  kill -TERM $pid; wait $pid || true
  disk=$(du -sb "$big" | cut -f1)
  restart_big; term_ms=$ms
  # More writes, so the kill finds recent records that were never hinted.
  "$R" bench --connect $addr --records "$BIG" --operations 20000 --concurrency 50 \
    --value-size 100 --workload a --skip-load >/dev/null
  kill -9 $pid; wait $pid 2>/dev/null || true
  restart_big; kill_ms=$ms
  got=$("$R" get user000000999999 --connect $addr | wc -c)
  kill -TERM $pid; wait $pid || true
  # Live bytes: the keys and values the user stored.
  live=$(( BIG * (16 + 100) ))
  {
    printf '%s one-node-A %s ops/s p99 %.2f ms | A at half (%s/s): p99 %.2f ms\n' "$engine" "$a" \
      "$(field "$OUT/$engine-a.json" "d['run']['p99_us']/1000")" $((a / 2)) \
      "$(field "$OUT/$engine-a-half.json" "d['run']['p99_us']/1000")"
    printf '%s one-node-C %s ops/s p99 %.2f ms | C at half (%s/s): p99 %.2f ms\n' "$engine" "$c" \
      "$(field "$OUT/$engine-c.json" "d['run']['p99_us']/1000")" $((c / 2)) \
      "$(field "$OUT/$engine-c-half.json" "d['run']['p99_us']/1000")"
    printf '%s three-node-A %s ops/s p99 %.2f ms\n' "$engine" \
      "$(field "$OUT/$engine-3-a.json" "int(d['throughput_ops_per_sec'])")" \
      "$(field "$OUT/$engine-3-a.json" "d['run']['p99_us']/1000")"
    printf '%s %s keys: RSS %s MiB, disk %s MB (%.2f bytes per live byte), restart after SIGTERM %s ms, after kill -9 %s ms (last key %s bytes)\n' \
      "$engine" "$BIG" $((rss_kb / 1024)) $((disk / 1000000)) \
      "$(python3 -c "print($disk / $live)")" "$term_ms" "$kill_ms" "$got"
  } | tee -a "$summary"
  grep -h "hint\|recomputed" "$W/$engine-big.log" | head -3 || true
done
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo) GiB, $(uname -r), $(date -u +%F)" | tee -a "$summary"
