#!/bin/sh
# Builds the probe sample image into an unpacked image directory:
#   OUT/rootfs       busybox (static) + /probe + mount points
#   OUT/config.json  OCI image configuration
# Reproducible: fixed modes, owners and content; no timestamps are measured.
# Usage: images/probe/build.sh OUT
set -eu
out=${1:?usage: build.sh OUT}
here=$(cd "$(dirname "$0")" && pwd)
busybox=$(command -v busybox)
rm -rf "$out"
mkdir -p "$out/rootfs"
r="$out/rootfs"
for d in bin etc proc sys dev tmp run data var; do mkdir -p "$r/$d"; done
cp "$busybox" "$r/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$r/bin/$applet"
done
cc -static -O2 -o "$r/probe" "$here/probe.c"
strip "$r/probe"
printf 'root:x:0:0:root:/:/bin/sh\napp:x:1000:1000:app:/data:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$r/etc/passwd"
printf 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' > "$r/etc/group"
chmod -R u=rwX,go=rX "$r"
chmod 1777 "$r/tmp"
chown -R 0:0 "$r"
cat > "$out/config.json" <<'JSON'
{
  "architecture": "amd64",
  "os": "linux",
  "config": {
    "Entrypoint": ["/probe"],
    "Cmd": ["profile"],
    "Env": ["PATH=/bin"],
    "WorkingDir": "/"
  },
  "rootfs": {"type": "layers", "diff_ids": []}
}
JSON
chmod 755 "$out"
