#!/usr/bin/env bash
# Berth's test command. On a fresh Debian machine (as root) it installs what the
# tests need — idempotently and quietly — then runs the format check, clippy,
# and every test of the workspace.
#
#   tests/run.sh            # everything
#   tests/run.sh e2e        # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: real peers and tools the tests drive.
packages=(busybox-static crun runc uidmap gcc libc6-dev util-linux openssl
          docker-registry skopeo umoci mosquitto mosquitto-clients
          gcc-aarch64-linux-gnu time apache2-utils python3-jwt python3-cryptography)
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
trap 'rm -f "$log"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$log"
# One closing line over every test binary: "N passed, M failed".
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
