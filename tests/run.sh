#!/usr/bin/env bash
# Berth's test command. On a fresh Debian machine (as root) it installs what the
# tests need — idempotently and quietly — then runs the format check, clippy,
# every test of the workspace, and then the aarch64 stage under qemu-user
# (cross/test.sh, which installs the cross toolchain and qemu-user-static).
#
#   tests/run.sh            # everything
#   tests/run.sh e2e        # extra arguments go to `cargo test` (native only)
# Env: BERTH_QEMU=0|1 leaves out / forces the aarch64 stage.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: real peers and tools the tests drive. The cross
# compilers' sysroots are only recommended by them, but the sample images'
# arm64 halves are compiled against them; the armhf compiler and qemu are
# what cross/build.sh would otherwise install in the middle of the run
# (the package test builds through it).
packages=(busybox-static crun runc uidmap gcc libc6-dev util-linux openssl
          docker-registry skopeo umoci mosquitto mosquitto-clients
          gcc-aarch64-linux-gnu libc6-dev-arm64-cross
          gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static
          time apache2-utils python3-jwt python3-cryptography)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "tests/run.sh: missing packages ${missing[*]}; install them as root" >&2
        exit 1
    fi
    echo "tests/run.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PyPI: python-tuf, the reference TUF implementation the trust tests interoperate with.
if ! python3 -c 'import tuf.ngclient' >/dev/null 2>&1; then
    echo "tests/run.sh: installing python-tuf" >&2
    python3 -m pip install -q tuf >/dev/null 2>&1 \
        || python3 -m pip install -q --break-system-packages tuf >/dev/null
fi

# An unprivileged account for the rootless-mode tests.
if [[ $(id -u) -eq 0 ]] && ! id berthtest >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin berthtest
fi
# Its subordinate ids (one slot, below the runtime's own pool at 1 << 20), so
# the unprivileged tests cover the newuidmap path.
if [[ $(id -u) -eq 0 ]]; then
    grep -q '^berthtest:' /etc/subuid 2>/dev/null || usermod --add-subuids 100000-165535 berthtest
    grep -q '^berthtest:' /etc/subgid 2>/dev/null || usermod --add-subgids 100000-165535 berthtest
fi

for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component" >/dev/null 2>&1 || true
done

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build --bins" >&2
cargo build --workspace --bins --quiet
echo "== cargo test" >&2
log=$(mktemp)
qlog=$(mktemp)
trap 'rm -f "$log" "$qlog"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=1
native=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed", p, f }' "$log")

# aarch64 under qemu-user, after the native tests: the unit tests and the
# end-to-end tests qemu-user can run (cross/test.sh says which). Part of a
# full run (BERTH_QEMU=0 leaves it out); with test-name filters as
# arguments only when BERTH_QEMU=1, with the same filters.
qemu="aarch64 under qemu: not run (BERTH_QEMU=1 runs it)"
if [[ ${BERTH_QEMU:-$(($# == 0))} == 1 ]]; then
    echo "== aarch64 under qemu (cross/test.sh)" >&2
    cross/test.sh "$@" 2>&1 | tee "$qlog" || status=1
    qemu=$(tail -n1 "$qlog")
    [[ $qemu == "aarch64 under qemu: "* ]] || { qemu="aarch64 under qemu: stopped before its tests (see above)"; status=1; }
fi
echo "native: $native"
echo "$qemu"
# One closing line over every test binary, both stages: "N passed, M failed".
cat "$log" "$qlog" | awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }'
exit $status
