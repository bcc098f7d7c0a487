#!/bin/sh
# Memory of the self-update launcher while it supervises the agent.
#
# With `[self_update]`, the installed berth-agent is a launcher that stays
# the service's main process and runs the agent as its child (see
# edge-agent/src/selfupdate/launch.rs). This starts the release
# `berth-agent` so configured, on a fresh state directory with a pinned root
# of a repository made by `berth repo init` (file:// metadata, no release,
# no MQTT), waits until the child agent has opened its API socket, lets
# both sit idle IDLE_S (10) seconds, and reads PSS, RSS and the private
# part of each from /proc/PID/smaps_rollup, with their thread counts and
# wake-ups (context switches) per second over the idle period. Side
# by side: the agent it supervises (the peer that does the work), and a
# floor, `sleep` (coreutils, dynamically linked), the least a process
# costs. PSS splits the pages the launcher and its child share (the same
# binary, mapped in both): its sum over the two is what the pair costs.
#
# Usage: bench/launcher.sh      (no root needed)
#   needs: cargo build --release -p berth-edge-agent --bins
# Env: IDLE_S=10, RUNS=3 (median of), CARGO_TARGET_DIR as for cargo,
#      BIN=DIR to take berth-agent and berth from DIR instead of release/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
IDLE_S=${IDLE_S:-10}
RUNS=${RUNS:-3}
bin=${BIN:-$target/release}
for b in "$bin/berth-agent" "$bin/berth"; do
    [ -x "$b" ] || { echo "launcher.sh: $b is not built (cargo build --release -p berth-edge-agent --bins)" >&2; exit 1; }
done

work=$(mktemp -d)
pid=
floor=
cleanup() {
    [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    [ -z "$floor" ] || { kill "$floor" 2>/dev/null || true; wait "$floor" 2>/dev/null || true; }
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

. "$here/idle-repo.sh"
idle_repo "$bin/berth" "$work"
cat >>"$work/agent.toml" <<EOF
[self_update]
deadline_s = 300
tries = 2
EOF

# Context switches of all a process's threads so far.
switches() {
    cat /proc/"$1"/task/*/status | awk '/ctxt_switches:/ { n += $2 } END { print n }'
}

# "PSS_KB RSS_KB PRIVATE_KB THREADS WAKEUPS_PER_S" of a process (private:
# the pages it shares with no other process, what stopping it frees); $2:
# its switches when the idle period began.
mem() {
    awk '/^Pss:/ { p = $2 } /^Rss:/ { r = $2 } /^Private_(Clean|Dirty):/ { u += $2 } END { printf "%s %s %s ", p, r, u }' \
        "/proc/$1/smaps_rollup"
    awk '/^Threads:/ { printf "%s ", $2 }' "/proc/$1/status"
    echo "$(switches "$1") $2 $IDLE_S" | awk '{ printf "%.1f", ($1 - $2) / $3 }'
}

# One sample: prints the launcher's, then the agent's, then the floor's mem.
sample() {
    rm -rf "$work/state" "$work/run"
    "$bin/berth-agent" --config "$work/agent.toml" --set "paths.state=$work/state" \
        --set "paths.socket=$work/run/agent.sock" --set "paths.runtime_root=$work/run/runtime" \
        >"$work/agent.log" 2>&1 &
    pid=$!
    i=0
    until [ -e "$work/run/agent.sock" ]; do
        kill -0 "$pid" 2>/dev/null || { echo "launcher.sh: the launcher exited:" >&2; cat "$work/agent.log" >&2; exit 1; }
        i=$((i + 1))
        [ $i -lt 600 ] || { echo "launcher.sh: the agent did not open its socket" >&2; cat "$work/agent.log" >&2; exit 1; }
        sleep 0.1
    done
    child=$(cut -d' ' -f1 "$work/state/agent/child")
    [ "$(cat "/proc/$child/stat" | cut -d' ' -f4)" = "$pid" ] \
        || { echo "launcher.sh: $child is not the launcher's child" >&2; exit 1; }
    sleep 1000 &
    floor=$!
    s0=$(switches "$pid") s1=$(switches "$child") s2=$(switches "$floor")
    sleep "$IDLE_S"
    echo "$(mem "$pid" "$s0") $(mem "$child" "$s1") $(mem "$floor" "$s2")"
    kill "$floor"
    wait "$floor" 2>/dev/null || true
    floor=
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

: >"$work/samples"
n=0
while [ $n -lt "$RUNS" ]; do
    sample >>"$work/samples"
    n=$((n + 1))
done

# Column $1 of the samples, median, in MiB (col) or as it is (raw).
col() { cut -d' ' -f"$1" "$work/samples" | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] / 1024 }'; }
raw() { cut -d' ' -f"$1" "$work/samples" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
row() {
    printf '%-24s PSS %6s MiB  RSS %6s MiB  private %6s MiB  threads %s  wake-ups/s %s\n' "$1" \
        "$(col "$2")" "$(col $(($2 + 1)))" "$(col $(($2 + 2)))" "$(raw $(($2 + 3)))" "$(raw $(($2 + 4)))"
}
echo "idle $IDLE_S s after the agent opened its socket; median of $RUNS; $(stat -c %s "$bin/berth-agent") B berth-agent"
row "launcher (berth-agent)" 1
row "agent, its child" 6
row "floor: sleep" 11
awk -v runs="$RUNS" '{ l += $1; a += $6 } END { printf "launcher / agent PSS: %.2f (mean of %d)\n", l / a, runs }' "$work/samples"
