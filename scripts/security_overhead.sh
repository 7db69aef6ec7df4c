#!/usr/bin/env bash
# What TLS and tokens cost, against plaintext, in one run (BENCHMARKS.md, "TLS and
# tokens").
#
#   bash scripts/security_overhead.sh          # DURATION=10 RECORDS=100000
#
# With the release binary, for plain (no TLS, no auth file) and then secure (TLS on
# the client port and between the nodes, an auth file, a write token):
#   1. one node: YCSB C, then A, closed loop, 1 KB values, 64 in flight;
#   2. three nodes (N=3, R=W=2, a shared secret): YCSB C, then A.
# Output: bench-results/security/<mode>-<nodes>-<workload>.json and summary.txt,
# with secure/plain ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RINGKV:-${CARGO_TARGET_DIR:-target}/release/ringkv}
DURATION=${DURATION:-10}
RECORDS=${RECORDS:-100000}
OUT=bench-results/security
mkdir -p "$OUT"
W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

"$R" certs init --dir "$W/pki" >/dev/null
"$R" certs node node --dir "$W/pki" >/dev/null
tok=$("$R" token create --role write --name bench)
TOKEN=$(printf '%s\n' "$tok" | sed -n 1p)
printf '%s\n' "$tok" | sed -n 2p >"$W/auth"
printf 'a secret of at least 16 bytes for the benchmark\n' >"$W/secret"
chmod 600 "$W/secret"

field() { # FILE EXPR
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

client_flags() { # MODE
  if [[ $1 == secure ]]; then
    echo "--tls-ca $W/pki/ca.crt --token $TOKEN"
  fi
}

wait_up() { # MODE ADDR
  for _ in $(seq 1 600); do
    # shellcheck disable=SC2046
    "$R" status --connect "$2" $(client_flags "$1") >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "node at $2 did not come up" >&2
  return 1
}

start() { # MODE K: K nodes on 127.0.0.1:7491.., seeded with the first
  local mode=$1 k=$2 i port flags
  NODES=()
  for i in $(seq 1 "$k"); do
    port=$((7490 + i))
    flags=(--data-dir "$W/$mode-$k-$i" --listen 127.0.0.1:$port --http-listen 127.0.0.1:$((7590 + i))
      --node-id "n$i" --cluster-secret-file "$W/secret" --n "$k" --r $(( k > 1 ? 2 : 1 ))
      --w $(( k > 1 ? 2 : 1 )) --shutdown-delay 0s)
    [[ $i -gt 1 ]] && flags+=(--seed 127.0.0.1:7491)
    if [[ $mode == secure ]]; then
      flags+=(--tls-cert "$W/pki/node.crt" --tls-key "$W/pki/node.key" --tls-ca "$W/pki/ca.crt"
        --auth-file "$W/auth")
    fi
    "$R" serve "${flags[@]}" >"$W/$mode-$k-$i.log" 2>&1 &
    PIDS+=($!); NODES+=($!)
    wait_up "$mode" 127.0.0.1:$port
  done
  if [[ $k -gt 1 ]]; then
    # shellcheck disable=SC2046
    "$R" wait-healthy --connect 127.0.0.1:7491 --members "$k" --timeout 2m $(client_flags "$mode") >/dev/null
  fi
}

stop() {
  for p in "${NODES[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${NODES[@]}"; do wait "$p" 2>/dev/null || true; done
}

summary="$OUT/summary.txt"
: >"$summary"
for k in 1 3; do
  for mode in plain secure; do
    echo "== $mode, $k node(s)"
    start "$mode" "$k"
    connect=$(for i in $(seq 1 "$k"); do printf '127.0.0.1:%s ' $((7490 + i)); done)
    # shellcheck disable=SC2046,SC2086
    b=("$R" bench --connect $connect --records "$RECORDS" --concurrency 64 --value-size 1000 $(client_flags "$mode"))
    "${b[@]}" --workload c --duration "${DURATION}s" --json "$OUT/$mode-$k-c.json" >/dev/null
    "${b[@]}" --workload a --skip-load --duration "${DURATION}s" --json "$OUT/$mode-$k-a.json" >/dev/null
    stop
  done
  for w in c a; do
    p=$(field "$OUT/plain-$k-$w.json" "int(d['throughput_ops_per_sec'])")
    s=$(field "$OUT/secure-$k-$w.json" "int(d['throughput_ops_per_sec'])")
    pp=$(field "$OUT/plain-$k-$w.json" "d['run']['p99_us']/1000")
    sp=$(field "$OUT/secure-$k-$w.json" "d['run']['p99_us']/1000")
    printf '%s node(s) YCSB %s: plain %s ops/s p99 %.2f ms | TLS+token %s ops/s p99 %.2f ms | ratio %.3f\n' \
      "$k" "${w^^}" "$p" "$pp" "$s" "$sp" "$(python3 -c "print($s / $p)")" | tee -a "$summary"
  done
done
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo) GiB, $(uname -r), $(date -u +%F)" | tee -a "$summary"
