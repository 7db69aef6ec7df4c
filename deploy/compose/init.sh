#!/usr/bin/env bash
# Creates deploy/compose/cluster-secret, the compose cluster's shared secret, if it
# is missing: 32 random bytes as 64 hex digits, mode 0600, owned by 10001:10001 (the
# user the ringkv image runs as; compose bind-mounts the file as it is, and ringkv
# refuses a secret file others can read). An existing file is left alone (its
# owner and mode are checked). The secret is never printed.
#
# Usage: deploy/compose/init.sh [FILE]   (default: cluster-secret next to this script)
# deploy/docker/build.sh runs it, so `build.sh` then `docker-compose up -d` is all.
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FILE=${1:-$DIR/cluster-secret}
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

if [[ -e $FILE ]]; then
    owner=$(stat -c '%u:%g' "$FILE")
    mode=$(stat -c '%a' "$FILE")
    if [[ $owner != "$UID_GID" || $mode != 600 ]]; then
        echo "init.sh: $FILE exists but is $owner mode $mode; the container user needs $UID_GID mode 600:" >&2
        echo "  sudo chown $UID_GID $FILE && sudo chmod 600 $FILE" >&2
        exit 1
    fi
    echo "init.sh: $FILE exists ($UID_GID, mode 600), kept"
    exit 0
fi

TMP=$(mktemp "$(dirname "$FILE")/.cluster-secret.XXXXXX")
trap 'rm -f "$TMP"' EXIT
chmod 0600 "$TMP"
# 32 bytes from the kernel's CSPRNG, as hex, no newline.
head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n' >"$TMP"
if [[ $(wc -c <"$TMP") -ne 64 ]]; then
    echo "init.sh: could not read 32 random bytes" >&2
    exit 1
fi
if ! as_root chown "$UID_GID" "$TMP"; then
    echo "init.sh: cannot chown $TMP to $UID_GID (run as root, or install sudo)" >&2
    exit 1
fi
as_root mv "$TMP" "$FILE"
trap - EXIT
echo "init.sh: created $FILE (32 random bytes, hex; $UID_GID, mode 600)"
