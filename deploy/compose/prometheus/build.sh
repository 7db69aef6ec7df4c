#!/usr/bin/env bash
# Builds the image of the compose file's optional `prometheus` service FROM scratch,
# from Debian's prometheus package (installed with apt-get if /usr/bin/prometheus is
# missing). No image is pulled.
#
# Usage: deploy/compose/prometheus/build.sh [--tag TAG]   [default: ringkv-prometheus:latest]
# Then:  docker-compose -f deploy/compose/docker-compose.yml --profile prometheus up -d
#        (http://127.0.0.1:9090, or ${RINGKV_COMPOSE_PROMETHEUS_PORT})
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TAG=ringkv-prometheus:latest
PROM=/usr/bin/prometheus
case ${1:-} in
    --tag) TAG=${2:?--tag needs a value} ;;
    --tag=*) TAG=${1#--tag=} ;;
    "") ;;
    -h | --help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
esac

START=$(date +%s%N)
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}
if [[ ! -x $PROM ]]; then
    echo "build.sh: $PROM is missing, installing Debian's prometheus package"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

CTX=$(mktemp -d "${TMPDIR:-/tmp}/ringkv-prometheus-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
ROOTFS=$CTX/rootfs
mkdir -p "$ROOTFS/usr/bin" "$ROOTFS/etc/prometheus" "$CTX/data"
cp "$PROM" "$ROOTFS/usr/bin/prometheus"
# shellcheck source=deploy/docker/shared_libraries.sh
source "$DIR/../../docker/shared_libraries.sh"
copy_shared_libraries "$PROM" "$ROOTFS"
# Debian's build serves its classic UI's static files from here.
if [[ -d /usr/share/prometheus/web ]]; then
    mkdir -p "$ROOTFS/usr/share/prometheus"
    cp -r /usr/share/prometheus/web "$ROOTFS/usr/share/prometheus/web"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/prometheus:/sbin/nologin\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$ROOTFS/etc/nsswitch.conf"
cp "$DIR/Dockerfile" "$CTX/Dockerfile"

VERSION=$("$PROM" --version 2>&1 | awk 'NR == 1 { print $3 }')
if ! OUT=$(DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --quiet \
    --label org.opencontainers.image.title=prometheus \
    --label "org.opencontainers.image.version=$VERSION" \
    -t "$TAG" "$CTX" 2>&1); then
    printf '%s\n' "$OUT" >&2
    exit 1
fi
END=$(date +%s%N)
SIZE=$(docker image inspect -f '{{.Size}}' "$TAG")
printf 'build.sh: built %s (prometheus %s), image size %.1f MB, build time %.1f s\n' "$TAG" "$VERSION" \
    "$(awk -v s="$SIZE" 'BEGIN { print s / 1e6 }')" "$(awk -v a="$START" -v b="$END" 'BEGIN { print (b - a) / 1e9 }')"
