#!/usr/bin/env bash
# Builds Berth's Debian package from already-built binaries, with dpkg-deb
# only (no extra tool):
#
#   cross/deb.sh ARCH [PROFILE]
#     ARCH     arm64 (aarch64-unknown-linux-musl, static), armhf
#              (armv7-unknown-linux-gnueabihf) or amd64 (this host's build)
#     PROFILE  the cargo profile the binaries were built with: edge (default,
#              cross/build.sh), release, or debug/dev (`cargo build`)
# Env: CARGO_TARGET_DIR as for cargo; OUT=DIR for the .deb (default
#      $CARGO_TARGET_DIR/deb); COMPRESS=xz (dpkg-deb -Z: xz, gzip, zstd,
#      none). Prints the path of the package.
#
# Contents: the binaries in /usr/bin, the systemd unit
# (edge-agent/systemd/berth-agent.service), /etc/berth/agent.toml as a
# conffile (cross/debian/agent.toml), the state directory /var/lib/berth
# (root, 0711, what berth-agent sets), the README, and the maintainer scripts
# of cross/debian/. berth-hil is included when it was built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
usage="usage: cross/deb.sh arm64|armhf|amd64 [edge|release|debug]"
arch=${1:?$usage}
profile=${2:-edge}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=${OUT:-$target_dir/deb}

case $arch in
    arm64) bindir=$target_dir/aarch64-unknown-linux-musl ;;
    armhf) bindir=$target_dir/armv7-unknown-linux-gnueabihf ;;
    amd64) bindir=$target_dir ;;
    *) echo "cross/deb.sh: unknown architecture $arch; $usage" >&2; exit 2 ;;
esac
case $profile in
    dev | debug) bindir=$bindir/debug ;;
    *) bindir=$bindir/$profile ;;
esac
how="cargo build --profile $profile --bins"
[[ $arch == amd64 ]] || how="cross/build.sh (PROFILE=$profile)"

bins=(berth-agent berth-runtime berth)
for b in "${bins[@]}"; do
    [[ -x $bindir/$b ]] || { echo "cross/deb.sh: $bindir/$b is missing; build it first: $how" >&2; exit 1; }
done
[[ -x $bindir/berth-hil ]] && bins+=(berth-hil)

# The ELF machine must match the package architecture.
declare -A machine=([arm64]=AArch64 [armhf]=ARM [amd64]=X86-64)
for b in "${bins[@]}"; do
    m=$(LC_ALL=C readelf -h "$bindir/$b" | sed -n 's/^ *Machine: *//p')
    [[ $m == *"${machine[$arch]}"* ]] \
        || { echo "cross/deb.sh: $bindir/$b is built for $m, not $arch" >&2; exit 1; }
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/etc/berth" "$root/usr/share/doc/berth" "$root/var/lib"
install -d -m 0711 "$root/var/lib/berth"
for b in "${bins[@]}"; do
    install -m 0755 "$bindir/$b" "$root/usr/bin/$b"
done
install -m 0644 "$repo/edge-agent/systemd/berth-agent.service" "$root/lib/systemd/system/"
install -m 0644 "$here/debian/agent.toml" "$root/etc/berth/agent.toml"
install -m 0644 "$repo/README.md" "$here/debian/copyright" "$root/usr/share/doc/berth/"
for s in postinst prerm postrm; do
    install -m 0755 "$here/debian/$s" "$root/DEBIAN/$s"
done
echo /etc/berth/agent.toml >"$root/DEBIAN/conffiles"

# Shared libraries the binaries need (none for the static arm64 build), as
# package dependencies with the newest glibc symbol version they use.
depends=()
needed=$(for b in "${bins[@]}"; do LC_ALL=C readelf -d "$root/usr/bin/$b"; done \
    | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u)
for lib in $needed; do
    case $lib in
        libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | librt.so.1 | ld-linux*)
            glibc=$(for b in "${bins[@]}"; do LC_ALL=C readelf -W --dyn-syms "$root/usr/bin/$b"; done \
                | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
            depends+=("libc6 (>= $glibc)") ;;
        libgcc_s.so.1) depends+=("libgcc-s1") ;;
        *) echo "cross/deb.sh: the binaries need $lib, which no dependency covers; add it here" >&2; exit 1 ;;
    esac
done
deps_sed="/^@DEPENDS@\$/d"
if ((${#depends[@]})); then
    deps_sed="s/^@DEPENDS@\$/Depends: $(printf '%s\n' "${depends[@]}" | sort -u | paste -sd, | sed 's/,/, /g')/"
fi
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "$deps_sed" \
    "$here/debian/control" >"$root/DEBIAN/control"

mkdir -p "$out"
deb=$out/berth_${version}_$arch.deb
dpkg-deb --root-owner-group -Z"${COMPRESS:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
