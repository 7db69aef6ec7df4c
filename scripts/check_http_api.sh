#!/usr/bin/env bash
# Conformance of the HTTP port to docs/openapi.yaml: starts one `ringkv serve` node
# on 127.0.0.1 (free ports, data in a temporary directory), waits for /readyz, and
# runs schemathesis (pinned, in a venv under ~/.cache) against the document and the
# node. Every response must be one the document allows: its status, content type,
# headers and JSON body (the schemas are closed), no 5xx, and invalid requests
# (out-of-range options, missing `member`, bad counter bodies, ...) must get a 4xx;
# following the document's links, contexts answered by a read or a write are taken
# back, a key just written is found and one just deleted is not. A fixed seed and a
# bounded number of test cases per operation (about half a minute in all).
#
# Usage: scripts/check_http_api.sh [BINARY]    (default target/debug/ringkv)
# Env:   CHECK_HTTP_API_EXAMPLES  test cases per operation and phase (default 100)
#        CHECK_HTTP_API_SEED      the seed (default 20261206)
#        (ringkv serve refuses unknown RINGKV_* variables: the node is started
#        without any, so none of the caller's settings reach it either)
# Tools: python3 (with venv, installed with apt-get when missing), curl.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SCHEMATHESIS_VERSION=4.32.5
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/ringkv-schemathesis-$SCHEMATHESIS_VERSION
SCHEMA=$ROOT/docs/openapi.yaml
EXAMPLES=${CHECK_HTTP_API_EXAMPLES:-100}
SEED=${CHECK_HTTP_API_SEED:-20261206}
# What every response is held to; the last two follow the links of the document
# (a GET after a DELETE is 404, after a write it finds the key).
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,missing_required_header,unsupported_method,use_after_free,ensure_resource_availability

if [[ $# -gt 1 ]]; then
    echo "usage: $0 [BINARY]" >&2
    exit 2
fi
BIN=${1:-target/debug/ringkv}
[[ $BIN == /* ]] || BIN=$ROOT/$BIN
if [[ ! -x $BIN ]]; then
    echo "check_http_api: no ringkv binary at $BIN (build it, or pass its path)" >&2
    exit 2
fi

START=$SECONDS
TMP=$(mktemp -d)
NODE_PID=
ST_PID=
cleanup() {
    local rc=$?
    if [[ -n $ST_PID ]]; then
        kill -TERM "$ST_PID" 2>/dev/null || true
        wait "$ST_PID" 2>/dev/null || true
    fi
    if [[ -n $NODE_PID ]] && kill -0 "$NODE_PID" 2>/dev/null; then
        kill -TERM "$NODE_PID" 2>/dev/null || true
        # --shutdown-delay 0s: the node exits within ~2 s; then it is killed.
        for _ in $(seq 50); do
            kill -0 "$NODE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# --- schemathesis ---------------------------------------------------------------
install_schemathesis() {
    local st=$VENV/bin/st
    if [[ -x $st ]] && [[ $("$st" --version 2>/dev/null) == "st, version $SCHEMATHESIS_VERSION" ]]; then
        return 0
    fi
    echo "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV" >&2
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 without the venv module.
        rm -rf "$VENV"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION"
    [[ $("$st" --version) == "st, version $SCHEMATHESIS_VERSION" ]]
}
install_schemathesis

# --- one node -------------------------------------------------------------------
# Two distinct free ports: both sockets are bound at once, then released.
read -r RPC_PORT HTTP_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
')
BASE=http://127.0.0.1:$HTTP_PORT
UNSET_RINGKV=()
for v in $(compgen -e); do
    if [[ $v == RINGKV_* ]]; then
        UNSET_RINGKV+=(-u "$v")
    fi
done
env "${UNSET_RINGKV[@]}" "$BIN" serve --data-dir "$TMP/data" --listen "127.0.0.1:$RPC_PORT" \
    --http-listen "127.0.0.1:$HTTP_PORT" --shutdown-delay 0s >"$TMP/node.log" 2>&1 &
NODE_PID=$!

node_log() {
    echo "--- node log (last 40 lines) ---" >&2
    tail -n 40 "$TMP/node.log" >&2 || true
}
ready=false
for _ in $(seq 300); do # 30 s
    if ! kill -0 "$NODE_PID" 2>/dev/null; then
        echo "check_http_api: the node exited before it was ready" >&2
        node_log
        echo "check_http_api: FAILED (node did not start, $((SECONDS - START)) s)"
        exit 1
    fi
    if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/readyz" || true) == 200 ]]; then
        ready=true
        break
    fi
    sleep 0.1
done
if ! $ready; then
    echo "check_http_api: /readyz did not answer 200 within 30 s" >&2
    node_log
    echo "check_http_api: FAILED (node not ready, $((SECONDS - START)) s)"
    exit 1
fi

# --- schemathesis run -----------------------------------------------------------
# The document allows r, pr, w and pw from 1 to 255 and timeout_ms up to 2^32-1 (what
# parses); the node refuses with 400 invalid_options r, pr, w, pw above its N and
# timeout_ms above 60000 (MAX_TIMEOUT_MS, src/coordinator/mod.rs). Drawn from the
# whole range, most requests would stop there and few would reach a read or a
# write. The run's copy of the document (never the file) takes the node's limits as
# maxima: valid requests then reach the store, and values above them are sent as
# invalid ones, which the node must refuse with a 4xx.
if ! N=$(curl -s --max-time 5 "$BASE/v1/cluster/health" |
    python3 -c 'import json, sys; print(int(json.load(sys.stdin)["n"]))'); then
    echo "check_http_api: FAILED (no N from /v1/cluster/health, $((SECONDS - START)) s)"
    exit 1
fi
MAX_TIMEOUT_MS=60000
mkdir -p "$TMP/hooks"
cat >"$TMP/hooks/ringkv_st_hooks.py" <<PY
import schemathesis


@schemathesis.hook
def before_load_schema(context, raw_schema):
    for name in ("R", "PR", "W", "PW"):
        raw_schema["components"]["parameters"][name]["schema"]["maximum"] = $N
    raw_schema["components"]["parameters"]["TimeoutMs"]["schema"]["maximum"] = $MAX_TIMEOUT_MS
PY
# run_st NAME OPTION...: one schemathesis run, from the temporary directory (so
# nothing, hypothesis' files included, lands in the repository); its output is
# printed, its counts kept for the summary.
RUNS=()
FAILED_RUNS=()
run_st() {
    local name=$1 rc=0 counts
    shift
    # In the background with `wait`, so that a signal stops it (and the node) at once.
    (
        cd "$TMP"
        export PYTHONPATH=$TMP/hooks SCHEMATHESIS_HOOKS=ringkv_st_hooks
        exec "$VENV/bin/st" run "$SCHEMA" \
            --url "$BASE" \
            --checks "$CHECKS" \
            --max-examples "$EXAMPLES" \
            --seed "$SEED" \
            --workers 1 \
            --request-timeout 10 \
            --generation-database none \
            --suppress-health-check too_slow \
            --no-color \
            "$@"
    ) >"$TMP/st-$name.log" 2>&1 &
    ST_PID=$!
    wait "$ST_PID" || rc=$?
    ST_PID=
    cat "$TMP/st-$name.log"
    counts=$(grep -Eo '[0-9]+ generated, [^=]*[^= ]' "$TMP/st-$name.log" | tail -n 1 || true)
    RUNS+=("$name: ${counts:-no summary}")
    if [[ $rc -ne 0 ]]; then
        FAILED_RUNS+=("$name")
    fi
}
# Every operation through every phase. One worker: the order of the requests is
# reproducible, and with two, Python 3.11's parser failed in hypothesis' threads
# ("AST constructor recursion depth mismatch").
run_st all --phases examples,coverage,fuzzing,stateful
# The stateful phase starts its scenarios from POSTs when there are any: on the
# registers alone it starts from PUT, and follows the links with the contexts
# (PUT, GET, PUT/DELETE with the answered X-Ringkv-Context, GET after DELETE is 404).
# (schemathesis draws some link choices from a true random source: the scenarios
# vary a little between runs.)
run_st kv-stateful --phases stateful --include-path-regex '^/v1/kv/'

SUMMARY="$(IFS=';'; echo "${RUNS[*]}" | sed 's/;/; /g'); N=$N, seed $SEED, $EXAMPLES examples per operation, $((SECONDS - START)) s"
if [[ ${#FAILED_RUNS[@]} -gt 0 ]]; then
    node_log
    echo "check_http_api: FAILED (${FAILED_RUNS[*]}), schemathesis $SCHEMATHESIS_VERSION against $(basename "$BIN"): $SUMMARY"
    exit 1
fi
echo "check_http_api: passed, schemathesis $SCHEMATHESIS_VERSION against $(basename "$BIN"): $SUMMARY"
