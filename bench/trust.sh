#!/usr/bin/env bash
# Trust benchmarks, side by side in one run on the same machine:
#  1. a full refresh of a python-tuf-built repository with 1000 targets and 10
#     delegated roles (each delegated role looked up once), served over loopback
#     HTTP: berth's client vs python-tuf's ngclient — wall time and peak RSS of the
#     whole process, median of RUNS;
#  2. ed25519 verifications per second on one core: berth's verify path vs
#     `openssl speed ed25519`.
#
#   bench/trust.sh            # RUNS=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p berth-trust --example trust_bench
BENCH=$CARGO_TARGET_DIR/release/examples/trust_bench

work=$(mktemp -d)
srv=
cleanup() { [[ -n $srv ]] && kill "$srv" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

python3 tests/src/tuf/pyrepo.py init "$work/repo" --targets 1000 --delegations 10
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/repo" >/dev/null 2>&1 &
srv=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
    sleep 0.1
done
url=http://127.0.0.1:$port
targets=()
for i in $(seq 0 9); do targets+=("team-$i/release.json"); done

cat > "$work/ng.py" <<'PY'
import os, shutil, sys
from tuf.ngclient import Updater
mdir, root, url = sys.argv[1:4]
os.makedirs(mdir)
shutil.copy(root, os.path.join(mdir, "root.json"))
u = Updater(metadata_dir=mdir, metadata_base_url=url + "/metadata/", bootstrap=None)
u.refresh()
for t in sys.argv[4:]:
    assert u.get_targetinfo(t) is not None, t
PY

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
measure_named() { local name=$1; shift; for _ in $(seq "$RUNS"); do
    rm -rf "$work/state"
    /usr/bin/time -f '%e %M' -o "$work/t" "$@" >/dev/null
    cat "$work/t" >>"$work/$name.times"
done; }

root=$work/repo/metadata/1.root.json
measure_named berth "$BENCH" refresh "$url/metadata" "$root" "$work/state" "${targets[@]}"
measure_named ngclient python3 "$work/ng.py" "$work/state" "$root" "$url" "${targets[@]}"

b_t=$(cut -d' ' -f1 "$work/berth.times" | median); b_m=$(cut -d' ' -f2 "$work/berth.times" | median)
p_t=$(cut -d' ' -f1 "$work/ngclient.times" | median); p_m=$(cut -d' ' -f2 "$work/ngclient.times" | median)
echo "full refresh, 1000 targets + 10 delegated roles, loopback HTTP (median of $RUNS):"
printf '  berth     %6.3f s  peak RSS %6d KiB\n' "$b_t" "$b_m"
printf '  ngclient  %6.3f s  peak RSS %6d KiB\n' "$p_t" "$p_m"
awk -v b="$b_t" -v p="$p_t" -v bm="$b_m" -v pm="$p_m" \
    'BEGIN { printf "  ratio ngclient/berth: time %.1fx, memory %.1fx\n", (b > 0 ? p / b : 0), pm / bm }'

ours=$("$BENCH" verify 3 | sed -E 's/.*: ([0-9]+)\/s.*/\1/')
theirs=$(openssl speed -seconds 3 ed25519 2>/dev/null | awk '/Ed25519/ {print $NF}' | cut -d. -f1)
echo "ed25519 verifications per second, one core:"
echo "  berth (ed25519-dalek, verify_strict)  $ours/s"
echo "  openssl speed ed25519                 $theirs/s"
awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "  ratio berth/openssl: %.2f\n", a / b }'
