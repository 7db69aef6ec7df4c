#!/usr/bin/env bash
# Builds the ringkv container image FROM scratch: nothing is pulled from a registry.
#
# Usage: deploy/docker/build.sh [--bin PATH] [--tag TAG] [--no-init]
#   --bin PATH   the ringkv binary to package [default: target/release/ringkv,
#                built with `cargo build --release --bin ringkv` if missing]
#   --tag TAG    the image tag [default: ringkv:latest]
#   --no-init    do not run deploy/compose/init.sh and security.sh (which create
#                the compose cluster's secret, certificates and tokens if missing)
#
# The binary may be dynamically linked (glibc): the exact shared libraries `ldd`
# lists are copied next to it, at the same paths. glibc >= 2.34 has the `files` and
# `dns` NSS modules built into libc.so.6, so with /etc/nsswitch.conf saying
# `hosts: files dns` names resolve inside the container (Docker provides
# /etc/resolv.conf and /etc/hosts, even in a scratch container). A static binary
# (musl, or glibc with +crt-static) works too: ldd then lists nothing.
#
# The image runs as 10001:10001 (user ringkv) and writes only /data, so it runs
# with a read-only root filesystem (`docker run --read-only`, compose
# `read_only: true`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=
TAG=ringkv:latest
INIT=true

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --bin)
            [[ $# -ge 2 ]] || { echo "build.sh: --bin needs a path" >&2; exit 2; }
            BIN=$2
            shift 2
            ;;
        --bin=*) BIN=${1#--bin=}; shift ;;
        --tag)
            [[ $# -ge 2 ]] || { echo "build.sh: --tag needs a value" >&2; exit 2; }
            TAG=$2
            shift 2
            ;;
        --tag=*) TAG=${1#--tag=}; shift ;;
        --no-init) INIT=false; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

START=$(date +%s%N)

if [[ -z $BIN ]]; then
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/ringkv
    if [[ ! -x $BIN ]]; then
        echo "build.sh: $BIN is missing, building it (cargo build --release --bin ringkv)"
        (cd "$ROOT" && cargo build --release --bin ringkv)
    fi
fi
if [[ ! -f $BIN || ! -x $BIN ]]; then
    echo "build.sh: $BIN is not an executable file" >&2
    exit 1
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

if ! docker info >/dev/null 2>&1; then
    echo "build.sh: cannot talk to the Docker daemon (docker info failed)" >&2
    exit 1
fi

CTX=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
ROOTFS=$CTX/rootfs
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/etc" "$ROOTFS/run/secrets" "$CTX/data"

# The binary, and its shared libraries at the paths the dynamic loader uses.
# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
# "/lib64/ld-linux-x86-64.so.2 (0x...)", "linux-vdso.so.1 (0x...)" (in the kernel:
# nothing to copy), or "statically linked" / "not a dynamic executable".
cp "$BIN" "$ROOTFS/usr/local/bin/ringkv"
chmod 0755 "$ROOTFS/usr/local/bin/ringkv"
# deploy/kubernetes/README.md runs `kubectl exec ... -- /ringkv ...`.
ln -s usr/local/bin/ringkv "$ROOTFS/ringkv"
# shellcheck source=deploy/docker/shared_libraries.sh
source "$ROOT/deploy/docker/shared_libraries.sh"
copy_shared_libraries "$BIN" "$ROOTFS"

# Users: root owns the files, the process runs as ringkv (10001).
cat >"$ROOTFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
ringkv:x:10001:10001:ringkv:/data:/sbin/nologin
EOF
cat >"$ROOTFS/etc/group" <<'EOF'
root:x:0:
ringkv:x:10001:
EOF
# files and dns are built into glibc >= 2.34: no libnss_*.so to copy.
cat >"$ROOTFS/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$ROOTFS/etc/passwd" "$ROOTFS/etc/group" "$ROOTFS/etc/nsswitch.conf"
cp "$ROOT/deploy/docker/Dockerfile" "$CTX/Dockerfile"

VERSION=$("$BIN" --version 2>/dev/null | awk '{print $2}' || true)
REVISION=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || true)
if [[ -n $REVISION ]] && ! git -C "$ROOT" diff --quiet HEAD 2>/dev/null; then
    REVISION=$REVISION-dirty
fi

echo "build.sh: $BIN -> $TAG"
echo "build.sh: shared libraries: ${LIBS[*]:-none (static binary)}"
# The legacy builder unless the caller chose: this Docker client may lack buildx,
# and a FROM scratch image gains nothing from BuildKit. Its output (a deprecation
# notice) is shown only when the build fails.
if ! BUILD_OUT=$(DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --quiet \
    --label org.opencontainers.image.title=ringkv \
    --label "org.opencontainers.image.description=A leaderless, eventually consistent, Dynamo-style key-value store" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.version=${VERSION:-unknown}" \
    --label "org.opencontainers.image.revision=${REVISION:-unknown}" \
    -t "$TAG" "$CTX" 2>&1); then
    printf '%s\n' "$BUILD_OUT" >&2
    echo "build.sh: docker build failed" >&2
    exit 1
fi

if $INIT; then
    # The compose cluster's secret, certificates and tokens (created once, never
    # printed).
    bash "$ROOT/deploy/compose/init.sh"
    RINGKV_BIN=$BIN RINGKV_IMAGE=$TAG bash "$ROOT/deploy/compose/security.sh"
fi

END=$(date +%s%N)
SIZE=$(docker image inspect -f '{{.Size}}' "$TAG")
echo "build.sh: built $TAG ($(docker image inspect -f '{{.Id}}' "$TAG" | cut -c1-19))"
printf 'build.sh: image size %s bytes (%.1f MB), build time %.1f s\n' \
    "$SIZE" "$(awk -v s="$SIZE" 'BEGIN { print s / 1e6 }')" \
    "$(awk -v a="$START" -v b="$END" 'BEGIN { print (b - a) / 1e9 }')"
