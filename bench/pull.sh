#!/bin/sh
# Pull + verify + unpack of a ~100 MB multi-layer image from a loopback
# registry: `berth image pull --unpack` vs `skopeo copy docker://… oci:…`
# followed by `umoci unpack`, side by side in one run.
#
# The registry is Debian's docker-registry with TLS and htpasswd auth, on a
# free loopback port, its storage in the page cache. The image is built by
# umoci (not by Berth) from random, incompressible files in four layers of
# about 25 MB, pushed with skopeo, and pulled pinned by manifest digest.
# Every iteration starts from an empty store / layout and a fresh rootfs; the
# order of the tools alternates, after one warm-up each. Timed with
# /usr/bin/time -v: wall time and peak RSS (for skopeo + umoci: the sum of
# the two wall times and the larger RSS).
#
# berth's figure holds what a device does: the pull (TLS, sha256 and size cap
# of every blob as it streams, written to the store and fsynced, reference
# counts in sled), then the unpack from the store (blob digest and diff-id
# checked again while extracting in-root, and the rootfs measurement: a
# second full read + sha256 of every file).
#
# berth's pull --unpack overlaps the two: each layer is applied as soon as it
# and the layers below it are verified, while later layers still download.
#
# Usage: bench/pull.sh [N]     (as root; N iterations per tool, default 5)
# Env:   BERTH=path/to/berth (default: target/release/berth, built if missing)
#        BASELINE=path/to/another/berth: run it too, side by side (e.g. a
#          build of an earlier commit, to measure a change)
#        MB=25 per layer, LAYERS=4
#        RATE=bytes/s: pull through a loopback proxy that limits the registry →
#          client direction to RATE over all connections together (a link
#          slower than the machine, as on a gateway; default: no proxy)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
N=${1:-5}
MB=${MB:-25}
LAYERS=${LAYERS:-4}
[ "$(id -u)" = 0 ] || { echo "pull.sh: run as root (both unpackers keep owners)" >&2; exit 1; }
for tool in docker-registry skopeo umoci htpasswd openssl python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "pull.sh: $tool is missing (tests/run.sh installs it)" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-$repo/target}
BERTH=${BERTH:-$target/release/berth}
if [ ! -x "$BERTH" ]; then
    (cd "$repo" && cargo build --release -q -p berth-edge-agent --bin berth)
fi
BASELINE=${BASELINE:-}
tools="berth skopeo"
if [ -n "$BASELINE" ]; then
    [ -x "$BASELINE" ] || { echo "pull.sh: BASELINE=$BASELINE is not executable" >&2; exit 1; }
    tools="berth baseline skopeo"
fi

work=$(mktemp -d /var/tmp/berth-bench-pull.XXXXXX)
regpid=
proxypid=
cleanup() {
    for pid in $proxypid $regpid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- a registry with TLS and htpasswd on a free loopback port
cd "$work"
mkdir -p certs storage
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=bench CA" -keyout ca.key -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=registry \
    -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile server.ext -out server.pem 2>/dev/null
cp ca.pem certs/ca.crt
user=bench password=bench-password
htpasswd -Bbn "$user" "$password" > htpasswd 2>/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > config.yml <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
  secret: bench
  tls:
    certificate: $work/server.pem
    key: $work/server.key
auth:
  htpasswd:
    realm: bench
    path: $work/htpasswd
EOF
docker-registry serve config.yml 2> registry.log &
regpid=$!
python3 - "$port" <<'PY'
import socket, sys, time
for _ in range(500):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit("the registry did not start")
PY
host=127.0.0.1:$port

# --- the image: umoci-built, random files, pushed with skopeo
echo "building a $((MB * LAYERS)) MB ${LAYERS}-layer image with umoci in $work" >&2
umoci init --layout img >/dev/null
umoci new --image img:t >/dev/null
i=0
while [ $i -lt "$LAYERS" ]; do
    i=$((i + 1))
    src=src$i
    mkdir -p "$src/layer$i/a" "$src/layer$i/b"
    # Files of 4 MiB, 1 MiB and 64 KiB, random.
    left=$((MB * 1024))
    k=0
    while [ $left -gt 0 ]; do
        for kib in 4096 1024 64; do
            [ $left -gt 0 ] || break
            k=$((k + 1))
            head -c $((kib * 1024)) /dev/urandom > "$src/layer$i/$([ $((k % 2)) = 0 ] && echo a || echo b)/f$k"
            left=$((left - kib))
        done
    done
    umoci insert --image img:t "$src" / >/dev/null
    rm -rf "$src"
done
skopeo copy --quiet --dest-cert-dir certs --dest-creds "$user:$password" \
    --digestfile digest oci:img:t "docker://$host/bench/img:t"
digest=$(cat digest)
blobs=$(du -sm storage | cut -f1)
if [ -n "${RATE:-}" ]; then
    pport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 - "$pport" "$port" "$RATE" <<'PY' &
import asyncio, sys, time
listen, upstream, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
free = [0.0]  # when the shared link is next free
async def pump(r, w, limit):
    try:
        while True:
            b = await r.read(65536)
            if not b:
                break
            if limit:
                now = time.monotonic()
                free[0] = max(free[0], now) + len(b) / rate
                await asyncio.sleep(free[0] - now)
            w.write(b)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()
async def serve(cr, cw):
    ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
    await asyncio.gather(pump(cr, uw, False), pump(ur, cw, True))
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", listen)
    await s.serve_forever()
asyncio.run(main())
PY
    proxypid=$!
    python3 -c 'import socket, sys, time
for _ in range(500):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit("the rate-limiting proxy did not start")' "$pport"
    host=127.0.0.1:$pport
    echo "pulling through a link of $RATE bytes/s" >&2
fi
echo "registry holds ${blobs} MB; pulling $host/bench/img@$digest" >&2

# run TOOL -> "seconds rss_kib [pull_seconds]"
run() {
    tool=$1 out=$work/out-$tool
    rm -rf "$out"
    mkdir -p "$out"
    case $tool in
        berth|baseline)
            bin=$BERTH
            [ "$tool" = berth ] || bin=$BASELINE
            BERTH_REGISTRY_PASSWORD=$password /usr/bin/time -v -o "$out/time1" \
                "$bin" image pull --ca ca.pem --user "$user" --store "$out/store" \
                --unpack "$out/image" "$host/bench/img@$digest" > "$out/report"
            : > "$out/time2"
            ;;
        skopeo)
            /usr/bin/time -v -o "$out/time1" skopeo copy --quiet --src-cert-dir certs \
                --src-creds "$user:$password" "docker://$host/bench/img@$digest" "oci:$out/layout:t"
            /usr/bin/time -v -o "$out/time2" umoci unpack --image "$out/layout:t" "$out/bundle" >/dev/null
            : > "$out/report"
            ;;
    esac
    python3 - "$out" <<'PY'
import os, sys
t = 0.0
rss = 0
for f in ("time1", "time2"):
    for line in open(os.path.join(sys.argv[1], f)):
        line = line.strip()
        if line.startswith("Elapsed (wall clock) time"):
            v = line.rsplit(" ", 1)[1].split(":")
            t += sum(float(x) * 60 ** i for i, x in enumerate(reversed(v)))
        elif line.startswith("Maximum resident set size"):
            rss = max(rss, int(line.rsplit(" ", 1)[1]))
pull = ""
for tok in open(os.path.join(sys.argv[1], "report")).read().split():
    if tok.startswith("seconds="):
        pull = tok.split("=")[1]
print(t, rss, pull)
PY
    rm -rf "$out"
}

for tool in $tools; do
    run "$tool" >/dev/null
done
: > results
k=0
while [ $k -lt "$N" ]; do
    # Each iteration rotates the order, so no tool always runs first.
    order=$(echo $tools | awk -v k=$k '{ for (i = 0; i < NF; i++) printf "%s ", $((i + k) % NF + 1) }')
    for tool in $order; do
        echo "$tool $(run "$tool")" >> results
    done
    k=$((k + 1))
done

# Bytes that pass through sha256 in berth's pipeline: every blob once when
# pulled and once when unpacked, every uncompressed layer once (diff id), and
# the unpacked files once more (measurement).
compressed=$(python3 - "$work/img" <<'PY'
import json, os, sys
lay = sys.argv[1]
idx = json.load(open(os.path.join(lay, "index.json")))
m = json.load(open(os.path.join(lay, "blobs/sha256", idx["manifests"][0]["digest"][7:])))
print(m["config"]["size"] + sum(l["size"] for l in m["layers"]))
PY
)
uncompressed=$((MB * LAYERS * 1024 * 1024))
python3 - results "$compressed" "$uncompressed" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
comp, unc = int(sys.argv[2]), int(sys.argv[3])
res = {}
for row in rows:
    tool, t, rss = row[0], float(row[1]), int(row[2])
    r = res.setdefault(tool, {"t": [], "rss": [], "pull": []})
    r["t"].append(t); r["rss"].append(rss)
    if len(row) > 3:
        r["pull"].append(float(row[3]))
MB = 1e6
ntools = len(res)
print(f"image: {comp / MB:.1f} MB compressed in its blobs, {unc / MB:.1f} MB of files; "
      f"{len(rows) // ntools} runs per tool")
print(f"{'tool':22} {'median s':>9} {'min s':>7} {'peak RSS MiB':>13}")
names = {"berth": "berth pull+unpack", "baseline": "baseline pull+unpack",
         "skopeo": "skopeo+umoci"}
for tool in ("berth", "baseline", "skopeo"):
    if tool not in res:
        continue
    r = res[tool]
    print(f"{names[tool]:22} {statistics.median(r['t']):9.3f} {min(r['t']):7.3f} "
          f"{max(r['rss']) / 1024:13.1f}")
b, s = statistics.median(res["berth"]["t"]), statistics.median(res["skopeo"]["t"])
print(f"berth / (skopeo + umoci) time ratio: {b / s:.2f}")
if "baseline" in res:
    base = statistics.median(res["baseline"]["t"])
    print(f"berth / baseline time ratio: {b / base:.2f}")
pull = statistics.median(res["berth"]["pull"])
hashed = 2 * comp + 2 * unc
print(f"berth pull phase (fetch + verify + store, until the last blob is verified): "
      f"{pull:.3f} s = {comp / pull / MB:.0f} MB/s "
      f"of verified blobs ({comp / pull / 1.85e9 * 100:.0f}% of sha256's 1.85 GB/s per core)")
print(f"whole pipeline: {hashed / MB:.0f} MB through sha256 in {b:.3f} s = "
      f"{hashed / b / MB:.0f} MB/s ({hashed / b / 1.85e9 * 100:.0f}% of one core's sha256)")
PY
