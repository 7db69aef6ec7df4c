#!/usr/bin/env bash
# Renders a node's status page (GET /) in Debian's headless Chromium and writes a
# PNG, to look at what an operator sees. With no address it starts a throwaway
# three-node `ringkv dev` cluster, writes a few keys, and shoots node 1's page.
#
#   scripts/status_page_screenshot.sh [OUT.png] [HTTP_ADDR]
#
# BIN=path/to/ringkv picks the binary (default target/release/ringkv, built if
# missing). Installs chromium from Debian's packages when missing (needs root and apt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${1:-target/status-page.png}
ADDR=${2:-}
if ! command -v chromium >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "status page screenshot: skipped, no chromium (apt-get install chromium)" >&2
        exit 0
    fi
fi
BIN=${BIN:-target/release/ringkv}
[[ -x $BIN ]] || cargo build --release --bin ringkv
DEV_PID=
TMP=$(mktemp -d)
cleanup() {
    if [[ -n $DEV_PID ]]; then kill -TERM "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
if [[ -z $ADDR ]]; then
    BASE=17600
    "$BIN" dev --nodes 3 --base-port $BASE --data-dir "$TMP/dev" >"$TMP/dev.log" 2>&1 &
    DEV_PID=$!
    ADDR=127.0.0.1:$((BASE + 80))
    for _ in $(seq 1 100); do
        "$BIN" wait-healthy --connect 127.0.0.1:$BASE --timeout 1s >/dev/null 2>&1 && break
        sleep 0.3
    done
    for i in $(seq 1 50); do "$BIN" put "key-$i" "value-$i" --connect 127.0.0.1:$BASE >/dev/null; done
    # Two page loads: the second shows a request rate between them.
    "$BIN" health --ready --http "$ADDR" >/dev/null
fi
mkdir -p "$(dirname "$OUT")"
timeout 60 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$TMP/chromium" --window-size=1400,900 \
    --screenshot="$OUT" "http://$ADDR/" >/dev/null 2>&1
echo "status page of $ADDR: $OUT ($(stat -c %s "$OUT") bytes)"
