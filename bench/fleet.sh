#!/bin/sh
# Fleet simulation (berth-hil fleet): N release-built agents against one
# Mosquitto (TLS, client certificates), one Distribution registry (TLS,
# htpasswd) and one TUF metadata server, REAL of them (default 2) with real
# containers, the rest with the agent's recording runtime. Prints, per
# size, the time from the notification until every device reports the new
# generation, and the broker's, registry's and metadata server's load.
#
#   bench/fleet.sh                 # 100, 300 and 1000 devices
#   bench/fleet.sh 50 200          # these sizes
#   SKIP_BUILD=1 REAL=5 bench/fleet.sh 100
#   PAYLOAD_KIB=0 bench/fleet.sh 1000   # a configuration change: the
#                                       # release's image is on the devices
# Needs root and the tools of hil/README.md; about 4 MiB (PSS) and 15
# threads per device (pid_max bounds the fleet size).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
out=${OUT:-$(mktemp -d /var/tmp/berth-fleet-bench.XXXXXX)}
mkdir -p "$out"
[ "${SKIP_BUILD:-}" = 1 ] || (cd "$here" && cargo build --release --quiet --bins)
status=0
for n in ${*:-100 300 1000}; do
    echo "== $n devices (load $(cut -d' ' -f1-3 /proc/loadavg))"
    if "$target/release/berth-hil" fleet --devices "$n" --real "${REAL:-2}" \
        --payload-kib "${PAYLOAD_KIB:-64}" \
        --work "$out/fleet-$n" > "$out/fleet-$n.log" 2>&1; then :; else status=1; fi
    sed -n '/^fleet of/,$p' "$out/fleet-$n.log"
    grep -q '^fleet of' "$out/fleet-$n.log" || tail -5 "$out/fleet-$n.log"
    echo "   log $out/fleet-$n.log"
done
exit $status
