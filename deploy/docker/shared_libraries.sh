# Sourced by the image build scripts (deploy/docker/build.sh,
# deploy/compose/prometheus/build.sh): copies exactly the shared libraries `ldd`
# lists for a binary into a rootfs, at their paths, so the binary runs FROM scratch.
#
#   copy_shared_libraries BIN ROOTFS    # sets LIBS to what it copied; exits on an
#                                       # unresolved library

copy_shared_libraries() {
    local bin=$1 rootfs=$2 out line lib
    out=$(ldd "$bin" 2>&1 || true)
    if grep -q 'not found' <<<"$out"; then
        printf 'ldd cannot resolve every library of %s:\n%s\n' "$bin" "$out" >&2
        exit 1
    fi
    LIBS=()
    # "name => /path (0x...)", "/lib64/ld-linux... (0x...)", or nothing to copy
    # ("linux-vdso", "statically linked", "not a dynamic executable").
    while read -r line; do
        lib=
        if [[ $line == *" => "* ]]; then
            lib=$(sed -E 's/^.* => ([^ ]+) \(0x[0-9a-f]+\)$/\1/' <<<"$line")
        elif [[ $line == /* ]]; then
            lib=${line%% *}
        fi
        [[ -n $lib && $lib == /* ]] || continue
        LIBS+=("$lib")
        mkdir -p "$rootfs$(dirname "$lib")"
        # -L: the file itself, not a symlink into a directory the image lacks.
        cp -L "$lib" "$rootfs$lib"
    done <<<"$out"
}
