#!/bin/sh
# Rootfs measurement throughput: `berth-runtime measure` (BLAKE3, and with
# SHA-256 as measurements of earlier releases) vs `sha256sum` over the same
# files (content hashing alone, no metadata, no order).
#
# The tree: the probe image's busybox rootfs plus ~100 MiB of generated files
# (a mix of 4 KiB .. 8 MiB, 40 directories, symlinks), page cache warm. The
# two commands alternate, ROUNDS times each; medians are reported.
#
# Usage: bench/measure.sh            (any user; builds the release binary)
# Env:   ROUNDS=7 SKIP_BUILD=1
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
ROUNDS=${ROUNDS:-7}
berth="$repo/target/release/berth-runtime"
for tool in python3 sha256sum /usr/bin/time busybox; do
    command -v "$tool" >/dev/null 2>&1 || { echo "measure.sh: $tool is missing" >&2; exit 1; }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$repo" && cargo build --release -p berth-runtime)
fi

work=$(mktemp -d /tmp/berth-bench-measure.XXXXXX)
trap 'rm -rf "$work"' EXIT
sh "$repo/images/probe/build.sh" "$work/img" >/dev/null
python3 - "$work/img/rootfs/data" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(7)
sizes = [4096] * 2000 + [65536] * 400 + [1 << 20] * 40 + [8 << 20] * 4
total = 0
for i, n in enumerate(sizes):
    d = os.path.join(root, "d%02d" % (i % 40))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(rnd.randbytes(n))
    total += n
    if i % 100 == 0:
        os.symlink("f%05d" % i, os.path.join(d, "l%05d" % i))

PY
tree="$work/img/rootfs"
bytes=$(find "$tree" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
files=$(find "$tree" | wc -l)
cat "$(find "$tree" -type f)" >/dev/null 2>&1 || find "$tree" -type f -exec cat {} + >/dev/null

python3 - "$berth" "$tree" "$bytes" "$files" "$ROUNDS" <<'PY'
import statistics, subprocess, sys, tempfile, time
berth, tree, nbytes, files, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rows = {
    "berth-runtime measure": [berth, "measure", tree],
    "  --algorithm sha256": [berth, "measure", "--algorithm", "sha256", tree],
    "find | xargs sha256sum": ["sh", "-c", "find \"$0\" -type f -print0 | xargs -0 sha256sum >/dev/null", tree],
}
t = {k: [] for k in rows}
rss = {k: [] for k in rows}
for i in range(rounds + 1):
    for k, argv in (list(rows.items()) if i % 2 else list(rows.items())[::-1]):
        with tempfile.NamedTemporaryFile("r") as f:
            t0 = time.perf_counter()
            subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name] + argv, check=True, stdout=subprocess.DEVNULL)
            dt = time.perf_counter() - t0
            if i:
                t[k].append(dt)
                rss[k].append(int(f.read().split()[-1]))
ref = statistics.median(t["find | xargs sha256sum"])
print("tree: %.1f MiB in %s entries; %d rounds, page cache warm" % (nbytes / 2**20, files, rounds))
print("%-24s %10s %10s %8s %10s" % ("row", "median s", "MiB/s", "ratio", "maxRSS MiB"))
for k in rows:
    m = statistics.median(t[k])
    print("%-24s %10.3f %10.0f %7.2fx %10.1f" % (k, m, nbytes / 2**20 / m, m / ref, statistics.median(rss[k]) / 1024))
PY
