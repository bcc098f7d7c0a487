#!/bin/sh
# Builds a static C sample workload, images/NAME/NAME.c with its recipe
# images/NAME/recipe.toml, into an OCI image layout for amd64 and arm64 with
# `berth image build`: reproducible, so the same sources always give the same
# digests (the printed index digest is what a release pins per platform).
#   images/build-static.sh NAME OUT      # berth from $BERTH, else from PATH
# Needs gcc (static glibc) and aarch64-linux-gnu-gcc (Debian gcc-aarch64-linux-gnu).
set -eu
name=${1:?usage: build-static.sh NAME OUT}
out=${2:?usage: build-static.sh NAME OUT}
here=$(cd "$(dirname "$0")/$name" && pwd)
berth=${BERTH:-berth}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/rootfs/etc" "$stage/rootfs-amd64" "$stage/rootfs-arm64"
for d in proc sys dev tmp run data; do mkdir -p "$stage/rootfs/$d"; done
printf 'root:x:0:0:root:/:/bin/false\napp:x:1000:1000:app:/data:/bin/false\n' > "$stage/rootfs/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' > "$stage/rootfs/etc/group"
flags="-static -O2 -Wall -Wextra -ffile-prefix-map=$here=. -Wl,--build-id=none"
gcc $flags -o "$stage/rootfs-amd64/$name" "$here/$name.c"
aarch64-linux-gnu-gcc $flags -o "$stage/rootfs-arm64/$name" "$here/$name.c"
strip "$stage/rootfs-amd64/$name"
aarch64-linux-gnu-strip "$stage/rootfs-arm64/$name"
cp "$here/recipe.toml" "$stage/recipe.toml"
rm -rf "$out"
"$berth" image build "$stage" -o "$out"
