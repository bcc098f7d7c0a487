#!/bin/sh
# Idle memory of berth-agent: the static aarch64 build under qemu-user
# (qemu-aarch64-static) beside the native x86-64 build, same configuration.
#
# Each agent starts on a fresh state directory with a pinned root of a
# repository made by `berth repo init` (file:// metadata, no release
# published, no MQTT), refreshes once, and sits idle IDLE_S (10) seconds;
# then PSS and RSS are read from /proc/PID/smaps_rollup (as bench/agent.sh
# does for the native agent after a commit). Under qemu-user the figures are
# those of the qemu process: the emulator itself, its translated-code cache
# and the emulated program's memory together. A third row runs a static
# aarch64 program that only waits (pause(2)) under qemu the same way: the
# difference between the two qemu rows is about what the agent itself holds.
#
# Usage: bench/agent-idle-arch.sh    (needs the builds below; no root needed)
#   native:  cargo build --profile edge -p berth-edge-agent --bins
#   aarch64: cross/build.sh aarch64
# Env: IDLE_S=10, RUNS=3 (median of), PROFILE=edge (the native build's cargo
#      profile; the aarch64 build is always edge), CARGO_TARGET_DIR as for cargo.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
IDLE_S=${IDLE_S:-10}
RUNS=${RUNS:-3}
PROFILE=${PROFILE:-edge}
native=$target/$PROFILE
arm=$target/aarch64-unknown-linux-musl/edge
for b in "$native/berth-agent" "$native/berth" "$arm/berth-agent"; do
    [ -x "$b" ] || { echo "agent-idle-arch.sh: $b is not built (see the usage in this script)" >&2; exit 1; }
done
command -v qemu-aarch64-static >/dev/null \
    || { echo "agent-idle-arch.sh: qemu-aarch64-static is missing (cross/build.sh --setup installs it)" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() {
    [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

. "$here/idle-repo.sh"
idle_repo "$native/berth" "$work"

# One sample: prints "PSS_KB RSS_KB".
sample() { # $1: key, then the command
    skey=$1
    shift
    rm -rf "$work/state" "$work/run"
    case $skey in
        pause) mkdir -p "$work/run"; "$@" >"$work/$skey.log" 2>&1 & pid=$!; : >"$work/run/agent.sock" ;;
        *) "$@" --config "$work/agent.toml" --set "paths.state=$work/state" \
            --set "paths.socket=$work/run/agent.sock" --set "paths.runtime_root=$work/run/runtime" \
            >"$work/$skey.log" 2>&1 &
           pid=$! ;;
    esac
    i=0
    until [ -e "$work/run/agent.sock" ]; do
        kill -0 "$pid" 2>/dev/null || { echo "agent-idle-arch.sh: the $skey agent exited:" >&2; cat "$work/$skey.log" >&2; exit 1; }
        i=$((i + 1))
        [ $i -lt 600 ] || { echo "agent-idle-arch.sh: the $skey agent did not open its socket" >&2; exit 1; }
        sleep 0.1
    done
    sleep "$IDLE_S"
    awk '/^Pss:/ { p = $2 } /^Rss:/ { r = $2 } END { print p, r }' "/proc/$pid/smaps_rollup"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

# The emulator's own footprint: an aarch64 program that only waits.
printf '#include <unistd.h>\nint main(void) { pause(); return 0; }\n' >"$work/pause.c"
aarch64-linux-gnu-gcc -static -Os -o "$work/pause" "$work/pause.c"

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

report() { # $1: key, $2: label, then the command
    key=$1
    label=$2
    shift 2
    : >"$work/samples"
    n=0
    while [ $n -lt "$RUNS" ]; do
        sample "$key" "$@" >>"$work/samples"
        n=$((n + 1))
    done
    pss=$(cut -d' ' -f1 "$work/samples" | median)
    rss=$(cut -d' ' -f2 "$work/samples" | median)
    printf '%-34s PSS %6.1f MiB  RSS %6.1f MiB  (median of %d, idle %d s)\n' \
        "$label" "$(echo "$pss / 1024" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$RUNS" "$IDLE_S"
}

report native "x86-64 native, $PROFILE ($(stat -c %s "$native/berth-agent") B)" "$native/berth-agent"
report qemu "aarch64 under qemu ($(stat -c %s "$arm/berth-agent") B)" qemu-aarch64-static "$arm/berth-agent"
report pause "qemu + a program that only waits" qemu-aarch64-static "$work/pause"
