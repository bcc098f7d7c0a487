#!/bin/sh
# Unpack of a ~100 MB multi-layer image: `berth image unpack` vs `umoci unpack`.
#
# The image is built by umoci (not by Berth) from files of this machine: four
# layers of about 25 MB each (small text files from /usr/share, shared
# libraries, compilers' data, executables), plus a whiteout layer. Both tools
# unpack the same OCI layout into a fresh directory, interleaved in one run
# (the order alternates every iteration), after one warm-up each; the blobs
# are in the page cache for both. Each run is timed with /usr/bin/time -v:
# wall time and peak RSS. berth's figure includes what a device does:
# blob digest and diff-id verification of every layer, the safe in-root
# extraction, and the rootfs measurement (a second full read + SHA-256).
# umoci's includes its mtree manifest of the rootfs.
#
# Usage: bench/unpack.sh [N]     (as root; N iterations per tool, default 5)
# Env:   BERTH=path/to/berth (default: target/release/berth, built if missing)
#        MB=25 per layer
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
N=${1:-5}
MB=${MB:-25}
[ "$(id -u)" = 0 ] || { echo "unpack.sh: run as root (both tools keep owners)" >&2; exit 1; }
for tool in umoci python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "unpack.sh: $tool is missing" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-$repo/target}
BERTH=${BERTH:-$target/release/berth}
if [ ! -x "$BERTH" ]; then
    (cd "$repo" && cargo build --release -q -p berth-edge-agent --bin berth)
fi

work=$(mktemp -d /var/tmp/berth-bench-unpack.XXXXXX)
trap 'rm -rf "$work"' EXIT
img="$work/layout"

# Copies files from SRC (sorted, regular files and symlinks) into DIR until
# about $MB megabytes.
fill() {
    src=$1 dir=$2
    mkdir -p "$dir"
    find "$src" -xdev \( -type f -o -type l \) -printf '%s %p\n' 2>/dev/null | sort -k2 |
        awk -v max=$((MB * 1024 * 1024)) '{ if (t + $1 > max) exit; t += $1; print $2 }' |
        while read -r f; do
            mkdir -p "$dir$(dirname "$f")"
            cp -a "$f" "$dir$f" 2>/dev/null || true
        done
}

echo "building a $((MB * 4)) MB 5-layer image with umoci in $work" >&2
umoci init --layout "$img" >/dev/null
umoci new --image "$img:t" >/dev/null
i=0
for src in /usr/share/doc /usr/lib/x86_64-linux-gnu /usr/lib/gcc /usr/bin; do
    i=$((i + 1))
    fill "$src" "$work/src$i"
    umoci insert --image "$img:t" "$work/src$i" / >/dev/null
    rm -rf "$work/src$i"
done
umoci insert --image "$img:t" --whiteout /usr/share/doc/bash >/dev/null 2>&1 || true
layers=$(du -sm "$img/blobs" | cut -f1)
echo "layout: ${layers} MB of blobs" >&2

# run TOOL DEST -> "seconds rss_kib"
run() {
    tool=$1 dest=$2
    rm -rf "$dest" "$dest.log"
    case $tool in
        berth) /usr/bin/time -v -o "$dest.log" "$BERTH" image unpack "$img" "$dest" >/dev/null ;;
        umoci) /usr/bin/time -v -o "$dest.log" umoci unpack --image "$img:t" "$dest" >/dev/null ;;
    esac
    python3 - "$dest.log" <<'PY'
import sys
t = rss = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("Elapsed (wall clock) time"):
        v = line.rsplit(" ", 1)[1].split(":")
        t = sum(float(x) * 60 ** i for i, x in enumerate(reversed(v)))
    elif line.startswith("Maximum resident set size"):
        rss = int(line.rsplit(" ", 1)[1])
print(t, rss)
PY
    rm -rf "$dest"
}

run berth "$work/warm-berth" >/dev/null
run umoci "$work/warm-umoci" >/dev/null
: > "$work/results"
k=0
while [ $k -lt "$N" ]; do
    if [ $((k % 2)) -eq 0 ]; then order="berth umoci"; else order="umoci berth"; fi
    for tool in $order; do
        echo "$tool $(run "$tool" "$work/out-$tool")" >> "$work/results"
    done
    k=$((k + 1))
done

python3 - "$work/results" "$layers" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
res = {}
for tool, t, rss in rows:
    res.setdefault(tool, ([], []))
    res[tool][0].append(float(t)); res[tool][1].append(int(rss))
print(f"image: {sys.argv[2]} MB of blobs, {len(rows) // 2} runs per tool")
print(f"{'tool':8} {'median s':>9} {'min s':>7} {'peak RSS MiB':>13}")
for tool in ("berth", "umoci"):
    ts, rs = res[tool]
    print(f"{tool:8} {statistics.median(ts):9.3f} {min(ts):7.3f} {max(rs) / 1024:13.1f}")
b, u = statistics.median(res["berth"][0]), statistics.median(res["umoci"][0])
print(f"berth/umoci time ratio: {b / u:.2f}")
PY
