# Sourced by the bench scripts: a scratch directory and the processes started, both
# cleaned up on exit, and waiting for local nodes to answer and to agree.

# Every process a script starts goes in PIDS: on exit each gets SIGTERM and is
# waited for, and $WORK is removed.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Waits (bounded, 30 s) until something accepts connections on host:port.
wait_port() { # host:port
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing answers on $1" >&2; exit 1
}

# Waits (bounded, 20 s) until the node at host:port owns partitions on a ring of
# `count` members, with binary `ringkv`.
wait_members() { # ringkv host:port count
  for _ in $(seq 1 100); do
    n=$("$1" ring --json --connect "$2" 2>/dev/null \
      | python3 -c "import json,sys;print(len(json.load(sys.stdin)['counts']))" 2>/dev/null || echo 0)
    [ "$n" = "$3" ] && return 0
    sleep 0.2
  done
}
