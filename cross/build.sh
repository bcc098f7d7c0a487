#!/usr/bin/env bash
# Cross-builds Berth's device binaries for ARM gateways:
#   aarch64-unknown-linux-musl      fully static (no libc needed on the device)
#   armv7-unknown-linux-gnueabihf   against the device's glibc (Debian armhf)
# On a fresh Debian machine it first installs what is missing (rustup targets,
# Debian's cross compilers and sysroots, qemu-user-static) — idempotently and
# quietly — then builds berth-agent, berth-runtime, berth and, once the hil
# package has it, berth-hil, with the `edge` profile (root Cargo.toml), and
# without `berth demo` (an operator's tool).
#
#   cross/build.sh                 both targets
#   cross/build.sh aarch64         one target (aarch64 | armv7 | a full triple)
#   cross/build.sh --setup         install the toolchain only (cross/test.sh uses it)
# Env: PROFILE=edge (any cargo profile), CARGO_TARGET_DIR as for cargo.
# Prints one line per binary: target, name, size in bytes, path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
profile=${PROFILE:-edge}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
all_targets=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)

setup() {
    local missing=() t p
    for t in "${all_targets[@]}"; do
        rustup target list --installed 2>/dev/null | grep -qx "$t" || missing+=("$t")
    done
    if ((${#missing[@]})); then
        echo "cross/build.sh: rustup target add ${missing[*]}" >&2
        rustup target add "${missing[@]}" >/dev/null 2>&1 \
            || { echo "cross/build.sh: rustup target add ${missing[*]} failed; run it by hand to see why" >&2; exit 1; }
    fi
    # The -dev sysroots are only recommended by the compilers, but the C
    # parts of dependencies (ring) need their headers.
    missing=()
    for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf \
             libc6-dev-armhf-cross qemu-user-static; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "cross/build.sh: missing packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
            exit 1
        fi
        echo "cross/build.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
            apt-get update -qq >/dev/null
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        }
    fi
}

# Whether the workspace has a binary target named $1 (berth-hil may not yet).
has_bin() {
    (cd "$repo" && cargo metadata --no-deps --format-version 1) \
        | tr '{' '\n' | grep -F "\"name\":\"$1\"" | grep -qF '"kind":["bin"]'
}

build() {
    local triple=$1 bins=(berth-agent berth berth-runtime) args=() b out
    if has_bin berth-hil; then
        bins+=(berth-hil)
        args+=(-p berth-hil)
    else
        echo "cross/build.sh: the workspace has no berth-hil binary yet (hil/ is a library); skipping it" >&2
    fi
    # Device binaries leave out `berth demo` and its embedded broker (the
    # edge-agent crate's default `demo` feature; no other crate here has
    # default features).
    args+=(-p berth-edge-agent -p berth-runtime --no-default-features)
    for b in "${bins[@]}"; do args+=(--bin "$b"); done
    (cd "$repo" && CARGO_TARGET_DIR="$target_dir" nice -n 10 cargo --config "$here/config.toml" \
        build --quiet --profile "$profile" --target "$triple" "${args[@]}")
    for b in "${bins[@]}"; do
        out="$target_dir/$triple/$profile/$b"
        printf '%s %s %s %s\n' "$triple" "$b" "$(stat -c %s "$out")" "$out"
    done
}

targets=()
for a in "$@"; do
    case $a in
        --setup) setup; exit 0 ;;
        aarch64) targets+=(aarch64-unknown-linux-musl) ;;
        armv7) targets+=(armv7-unknown-linux-gnueabihf) ;;
        aarch64-unknown-linux-musl | armv7-unknown-linux-gnueabihf) targets+=("$a") ;;
        *) echo "cross/build.sh: unknown argument $a (give aarch64, armv7 or --setup)" >&2; exit 2 ;;
    esac
done
((${#targets[@]})) || targets=("${all_targets[@]}")
setup
for t in "${targets[@]}"; do
    build "$t"
done
