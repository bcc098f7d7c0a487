#!/usr/bin/env bash
# Runs Berth's tests built for aarch64-unknown-linux-musl under qemu-user
# (qemu-aarch64-static), on an x86-64 Debian host, as root:
#   - every unit test of the workspace (the libraries of all crates and the
#     `berth` binary; the other binaries have none);
#   - the end-to-end tests that need no kernel features beyond qemu-user's:
#     trust_client, trust_signer, image_unpack and image_pull (the registry
#     client against Debian's docker-registry on loopback). These spawn the
#     `berth` binary, also built for aarch64: the kernel runs it through the
#     binfmt_misc entry of qemu-user-static, registered here when missing.
#   - except the few tests listed in unit_skips and e2e_skips below, each
#     with the reason.
# Debug build, the workspace's dev profile. Prints, last, one line:
#   "aarch64 under qemu: N passed, M failed"
#
#   cross/test.sh             everything above
#   cross/test.sh FILTER…     only tests matching a filter (cargo test's)
# Env: CARGO_TARGET_DIR as for cargo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
triple=aarch64-unknown-linux-musl

"$here/build.sh" --setup

# binfmt_misc: the aarch64 `berth` the e2e tests spawn is run by the kernel,
# which needs qemu-aarch64 registered (qemu-user-static does it on hosts
# booted with systemd; elsewhere it is done here, once).
binfmt=/proc/sys/fs/binfmt_misc
if [[ ! -e $binfmt/qemu-aarch64 ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "cross/test.sh: qemu-aarch64 is not registered in $binfmt; run as root once to register it" >&2; exit 1; }
    [[ -e $binfmt/register ]] || mount -t binfmt_misc binfmt_misc "$binfmt"
    if command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 2>/dev/null; then
        :
    else
        # The line Debian ships for systemd-binfmt; F: the interpreter is
        # opened now, so it also works inside other mount namespaces.
        cat /usr/lib/binfmt.d/qemu-aarch64.conf >"$binfmt/register"
    fi
fi
grep -qx enabled "$binfmt/qemu-aarch64" \
    || { echo "cross/test.sh: $binfmt/qemu-aarch64 is registered but disabled; enable it: echo 1 > $binfmt/qemu-aarch64" >&2; exit 1; }

cd "$repo"
cargo_arm() {
    nice -n 10 cargo --config "$here/config.toml" "$@"
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Only `berth` is spawned by the end-to-end tests run here.
echo "== aarch64: cargo build --bin berth, cargo test --no-run" >&2
cargo_arm build --quiet --target "$triple" -p berth-edge-agent --bin berth
cargo_arm test --quiet --target "$triple" --workspace --lib --bin berth --no-run
cargo_arm test --quiet --target "$triple" -p berth-tests --test e2e --no-run

# Tests that need what qemu-user does not emulate, each with the reason.
unit_skips=(
    # open_tree/mount_setattr (the idmapped image view): not implemented by
    # qemu-user (ENOSYS); the e2e runtime_idmap tests cover it natively.
    --skip rootfs::tests::idmapped_view_shows_image_ids_shifted_and_leaves_the_tree_alone
    # Reads the resident pages of its own executable's mappings: under
    # qemu-user /proc/self is the emulator's, whose mappings the guest's
    # madvise does not touch; it runs natively.
    --skip memory::tests::unmapping_keeps_the_program_running_and_lowers_its_resident_set
)
e2e_skips=(
    # Runs a berth-agent that launches containers (namespaces, seccomp).
    --skip image_pull::auth::agent_pulls_a_release_through_token_auth_with_a_pull_only_account
)

status=0
echo "== aarch64 under qemu: unit tests" >&2
cargo_arm test --target "$triple" --workspace --lib --bin berth -- "$@" "${unit_skips[@]}" 2>&1 | tee -a "$log" || status=1
echo "== aarch64 under qemu: end-to-end tests (trust, images, registry client)" >&2
filters=("$@")
((${#filters[@]})) || filters=(trust_client:: trust_signer:: image_unpack:: image_pull::)
cargo_arm test --target "$triple" -p berth-tests --test e2e -- "${filters[@]}" "${e2e_skips[@]}" 2>&1 | tee -a "$log" || status=1
awk '/^test result:/ { p += $4; f += $6 } END { printf "aarch64 under qemu: %d passed, %d failed\n", p, f }' "$log"
exit $status
