#!/usr/bin/env bash
# Berth demo: build the runtime, build and measure the sample image, launch it
# with the hardened defaults and show the security profile it sees from
# inside; then tamper with the image and watch the launch being refused.
# Run as root on Debian: ./demo.sh
set -euo pipefail
cd "$(dirname "$0")"

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: run as root (the runtime maps each workload to a subordinate id range)" >&2
    exit 1
fi
missing=()
for p in busybox-static gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== building berth-runtime (release profile for edge devices)"
cargo build --release --quiet -p berth-runtime
rt=${CARGO_TARGET_DIR:-$PWD/target}/release/berth-runtime
work=$(mktemp -d /var/tmp/berth-demo.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
root="$work/state"

echo "== building the sample image (images/probe) and recording its measurement"
images/probe/build.sh "$work/probe"
measurement=$("$rt" measure --record "$work/probe")
echo "   measurement: $measurement"

echo
echo "== launching it: the probe reports what it sees from inside the container"
"$rt" --root "$root" launch --image "$work/probe" --measurement "$measurement" demo
cat <<'TXT'

   Cap*=0          no capabilities at all        NoNewPrivs=1  no privilege gain via exec
   Seccomp=2       default filter active         *=EPERM       denied system calls
   uid_map         container root = an unprivileged subordinate host id
   write /=EROFS   read-only rootfs              write /tmp=ok tmpfs (nosuid,nodev,noexec)
   interfaces=lo   private network, no route out fds=0,1,2     only stdio inherited
TXT

echo
echo "== tampering with one byte of /bin/busybox in a copy of the image"
cp -a "$work/probe" "$work/tampered"
printf '\x00' | dd of="$work/tampered/rootfs/bin/busybox" bs=1 seek=1000 conv=notrunc status=none
if "$rt" --root "$root" launch --image "$work/tampered" --measurement "$measurement" demo-tampered; then
    echo "demo.sh: the tampered image was launched: this is a bug" >&2
    exit 1
fi
echo "   refused, as it must be."
