#!/usr/bin/env bash
# Creates the compose cluster's TLS certificates and client tokens, if missing:
#
#   DIR/ca.crt, DIR/ca.key          the cluster CA (`ringkv certs init`); the key
#                                   stays on the host, never in a container
#   DIR/ringkv-N.crt, .key          node certificates for ringkv-N, localhost and
#                                   127.0.0.1 (the published ports); keys owned by
#                                   10001 (the image's user), mode 600
#   DIR/auth                        the auth file the nodes read (hashes only)
#   DIR/admin.token                 an admin token (0600, yours): repair, leave,
#                                   remove, drain, and everything below
#   DIR/app.token                   a write token for applications
#
# Usage: deploy/compose/security.sh [DIR]   (default: security/ next to this script)
# RINGKV_BIN picks the ringkv binary [default: target/release/ringkv, else the
# ringkv:latest image]. An existing DIR/ca.crt is kept, with everything made from
# it; remove DIR to start over. Tokens are never printed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIR=${1:-$HERE/security}
UID_GID=10001:10001

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

if [[ -e $DIR/ca.crt ]]; then
    echo "security.sh: $DIR/ca.crt exists, kept (remove $DIR to make new certificates and tokens)"
    exit 0
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

BIN=${RINGKV_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ringkv}
ringkv() {
    if [[ -x $BIN ]]; then
        "$BIN" "$@"
    else
        # The image's own binary, writing into DIR as the caller.
        docker run --rm --user "$(id -u):$(id -g)" --read-only -v "$DIR:$DIR" \
            "${RINGKV_IMAGE:-ringkv:latest}" "$@"
    fi
}

ringkv certs init --dir "$DIR" >/dev/null
for n in 1 2 3; do
    ringkv certs node "ringkv-$n" --dir "$DIR" >/dev/null
done
umask 077
: >"$DIR/auth.tmp"
for pair in admin:admin app:write; do
    name=${pair%%:*}
    role=${pair#*:}
    out=$(ringkv token create --role "$role" --name "$name")
    printf '%s\n' "$out" | sed -n 1p >"$DIR/$name.token"
    printf '%s\n' "$out" | sed -n 2p >>"$DIR/auth.tmp"
done
chmod 644 "$DIR/auth.tmp"
mv "$DIR/auth.tmp" "$DIR/auth"
for n in 1 2 3; do
    if ! as_root chown "$UID_GID" "$DIR/ringkv-$n.key"; then
        echo "security.sh: cannot chown $DIR/ringkv-$n.key to $UID_GID (run as root, or install sudo)" >&2
        exit 1
    fi
done
echo "security.sh: created $DIR (CA, node certificates for ringkv-1..3, auth file, admin.token, app.token)"
