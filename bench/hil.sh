#!/bin/sh
# Hardware-in-loop fault campaigns (hil/scenarios/), each against its own
# local lab (Mosquitto with TLS + client certificates, Debian's
# docker-registry with TLS, a TUF repository from `berth repo init` served
# over HTTPS) and one simulated device (a real `berth-agent` with real
# containers; power = its process group and its containers).
#
#   bench/hil.sh                       # every campaign, power-cut at 500 cycles
#   CYCLES=50 bench/hil.sh power-cut   # one campaign, 50 cycles
#   CYCLES=N overrides every campaign's cycle count; SEED=S fixes the seed.
# Each campaign prints its summary (cycles, faults injected, bad states,
# volume data lost, time to recover) and writes $OUT/NAME.xml (JUnit).
# Needs root (containers, tmpfs), mosquitto, docker-registry, htpasswd,
# openssl, python3, gcc (tests/run.sh installs them).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
out=${OUT:-$(mktemp -d /var/tmp/berth-hil-bench.XXXXXX)}
mkdir -p "$out"
(cd "$here" && cargo build --quiet --bins)
campaigns=${*:-power-cut power-cut-phases partition corrupt-blob clock-back disk-full}
status=0
for c in $campaigns; do
    set -- run "$here/hil/scenarios/$c.toml" --work "$out/$c" --junit "$out/$c.xml"
    [ -n "${CYCLES:-}" ] && set -- "$@" --cycles "$CYCLES"
    [ -n "${SEED:-}" ] && set -- "$@" --seed "$SEED"
    echo "== $c"
    start=$(date +%s)
    if "$target/debug/berth-hil" "$@" > "$out/$c.log" 2>&1; then :; else status=1; fi
    sed -n '/^scenario /,$p' "$out/$c.log"
    echo "   wall $(( $(date +%s) - start )) s; log $out/$c.log"
done
exit $status
