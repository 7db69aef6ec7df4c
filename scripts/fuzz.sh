#!/usr/bin/env bash
# Fuzzes every decoder of outside bytes with cargo-fuzz (libFuzzer), fuzz/README.md.
#
#   bash scripts/fuzz.sh                      # every target, FUZZ_SECONDS=30 each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh log_record object
#
# Installs cargo-fuzz if missing. The toolchain here is stable: RUSTC_BOOTSTRAP=1
# lets it take the nightly flags cargo-fuzz passes (CRATES.md). Builds without a
# sanitizer (-s none: ringkv's own code has no unsafe on these paths; Rust's
# checks catch out-of-bounds and overflow). Each run starts from the committed
# corpus fuzz/corpus/TARGET and writes new inputs to a scratch copy, so CI leaves
# the tree as it was. A crash fails the script and leaves its input in
# fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-30}
ALL=(client_frame peer_frame handshake gossip_datagram object log_record damaged_store http_request)
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
cd fuzz
for t in "${TARGETS[@]}"; do
    cargo fuzz build -s none -O "$t" >/dev/null
done
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "$scratch/$t"
    cp -r "corpus/$t/." "$scratch/$t/" 2>/dev/null || true
    log="$scratch/$t.log"
    if ! cargo fuzz run -s none -O "$t" "$scratch/$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz.sh: $t found a crash (its input is under fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
    summary+=("$t: $runs executions in ${SECONDS_EACH} s, coverage $cov, no crash")
    echo "fuzz.sh: ${summary[-1]}"
done
printf 'fuzz.sh: %s\n' "${summary[@]}"
