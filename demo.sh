#!/usr/bin/env bash
# Berth demo: builds Berth, then `berth demo` — an embedded MQTT broker, a
# local signed repository, the sample images, and a real berth-agent running
# real containers: v1 runs, v2 restarts only what changed, a broken v3 is
# rolled back, a tampered release is refused. Run as root on Debian: ./demo.sh
set -euo pipefail
cd "$(dirname "$0")"

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: run as root (workloads run in user namespaces mapped to subordinate ids)" >&2
    exit 1
fi
missing=()
for p in gcc libc6-dev gcc-aarch64-linux-gnu uidmap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "demo.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== building berth, berth-agent and berth-runtime"
cargo build --quiet --bins -p berth-edge-agent -p berth-runtime
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
exec "$bin/berth" demo --images images "$@"
