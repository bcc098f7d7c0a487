#!/bin/sh
# Container lifecycle latency and peak RSS: berth-runtime vs crun vs runc.
#
# One `X --root R run --bundle B ID` (create -> start -> /bin/true exits ->
# delete) per sample, a fresh ID every time, the runtimes interleaved in one
# run (each iteration runs every row once, in a new random order), all on the same
# busybox bundle. Extra rows: a floor (same namespaces via unshare(1) + chroot
# + exec of the bundle's /bin/true) and berth's verified `launch` path
# (rootfs measurement + hardened spec + user namespace) on the probe image.
# The launch's peer rows run the very spec that `launch` generates (user
# namespace in a subordinate range, seccomp filter, limits, masked paths,
# read-only root) with crun and with `berth-runtime run`, over a copy of the
# rootfs owned by that range: the same isolation work without the
# verification.
#
# State directories (--root) are on a tmpfs (/dev/shm), as /run is on the
# devices and for crun's and runc's defaults.
#
# Everything runs inside a private mount namespace in which the cgroup2 mount
# at /sys/fs/cgroup/unified is unmounted: crun 1.8 refuses the v1/v2 hybrid
# layout of the build machines. Host mounts are untouched. berth-runtime runs
# in the same namespace (if it cannot, the script says so and runs it outside
# via nsenter into PID 1's mount namespace).
#
# Per row: wall-time median/p90 and the CPU time (user + system) of the whole
# process tree from wait4(2): on a loaded machine wall time is mostly run-queue
# wait, which CPU time leaves out.
#
# Usage: bench/lifecycle.sh [N]        (as root; N iterations, default 200)
# Env:   N=200 WARMUP=10 RSS_RUNS=10 SKIP_BUILD=1 (use the existing static release binary)
#        OUT=FILE  also write the results as JSON to FILE
#        BASELINE=FILE  another berth-runtime binary (e.g. an earlier commit's)
#                  measured in the same run: two more rows, "(baseline)"
#        ROWS="crun run, launch's spec|berth-runtime launch|baseline launch"
#                  only these rows ('|'-separated names as printed): a
#                  focused comparison, more rounds in the same time
#        GAP=0.1   seconds of quiet before every sample: a gateway launches a
#                  container now and then, not hundreds back to back, and
#                  the kernel's deferred work (RCU grace periods, namespace
#                  and cgroup teardown) has settled by then. Default 0.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
N=${1:-${N:-200}}
WARMUP=${WARMUP:-10}
RSS_RUNS=${RSS_RUNS:-10}
OUT=${OUT:-}
BASELINE=${BASELINE:-}
ROWS=${ROWS:-}
GAP=${GAP:-0}

[ "$(id -u)" = 0 ] || { echo "lifecycle.sh: run as root (runc/crun need it)" >&2; exit 1; }
for tool in crun runc unshare chroot python3 /usr/bin/time busybox cc; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "lifecycle.sh: $tool is missing (apt-get install -y crun runc time busybox-static)" >&2
        exit 1
    }
done

work=$(mktemp -d /tmp/berth-bench-lifecycle.XXXXXX)
chmod 755 "$work"
state=$(mktemp -d /dev/shm/berth-bench-state.XXXXXX)
chmod 755 "$state"
# The runtime as gateways run it: one static executable (static-pie, so still
# randomised), with packed relative relocations. The dynamic loader's work at
# each of the runtime's two execve's — mapping libc, libm and libgcc_s,
# binding their symbols, applying 15 k relocation records — is left out.
# `--target` keeps the flags off build scripts and proc-macros.
triple=$(rustc -vV | sed -n 's/^host: //p')
static_flags="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
berth="${CARGO_TARGET_DIR:-$repo/target}/$triple/release/berth-runtime"

cleanup() {
    # Best effort: containers left by an interrupted run, then the work dir.
    for r in crun runc crun-hard; do
        if [ -d "$state/root-$r" ]; then
            for c in $("${r%-hard}" --root "$state/root-$r" list -q 2>/dev/null); do
                "${r%-hard}" --root "$state/root-$r" delete -f "$c" >/dev/null 2>&1 || true
            done
        fi
    done
    for r in root-berth root-launch root-base root-base-launch root-berth-hard; do
        if [ -x "$berth" ] && [ -d "$state/$r" ]; then
            for c in $("$berth" --root "$state/$r" list -q 2>/dev/null); do
                "$berth" --root "$state/$r" delete -f "$c" >/dev/null 2>&1 || true
            done
        fi
    done
    rm -rf "$work" "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "== RUSTFLAGS=\"$static_flags\" cargo build --release -p berth-runtime --target $triple" >&2
    (cd "$repo" && RUSTFLAGS="$static_flags" cargo build --release -p berth-runtime --target "$triple")
fi
[ -x "$berth" ] || { echo "lifecycle.sh: $berth not built" >&2; exit 1; }
# Every berth binary measured is a copy written here by cp, one after the
# other: how a file's pages came into the page cache (written by the linker,
# by cp, or read in by exec's page faults) changes what each exec of it
# costs, by up to ~0.9 ms per launch on the build machines for the very same
# binary. Copies written alike are compared alike.
cp "$berth" "$work/berth-runtime"
berth="$work/berth-runtime"

echo "== probe image and /bin/true bundle in $work" >&2
sh "$repo/images/probe/build.sh" "$work/img" >/dev/null
"$berth" measure --record "$work/img" >/dev/null
mkdir -p "$work/bundle" "$state/root-berth" "$state/root-crun" "$state/root-runc" "$state/root-launch" \
    "$state/root-base" "$state/root-base-launch" "$state/root-crun-hard" "$state/root-berth-hard"
if [ -n "$BASELINE" ]; then
    [ -x "$BASELINE" ] || { echo "lifecycle.sh: BASELINE=$BASELINE is not an executable" >&2; exit 1; }
    # Under the work dir and written alike (see above).
    cp "$BASELINE" "$work/berth-baseline"
    # Its own copy of the image, measured by it (an earlier release may
    # measure with another algorithm, or not read this one's measurements).
    cp -a "$work/img" "$work/img-baseline"
    "$work/berth-baseline" measure --record "$work/img-baseline" >/dev/null
fi
cp -a "$work/img/rootfs" "$work/bundle/rootfs"
(cd "$work/bundle" && runc spec)
python3 - "$work/bundle/config.json" <<'EOF'
import json, sys
p = sys.argv[1]
s = json.load(open(p))
s["process"]["args"] = ["/bin/true"]
s["process"]["terminal"] = False
json.dump(s, open(p, "w"), indent=1)
EOF

cat > "$work/bench.py" <<'EOF'
import json, os, random, signal, statistics, subprocess, sys, tempfile, threading, time

cfg = json.load(open(sys.argv[1]))
N, WARMUP, RSS_RUNS, GAP = cfg["n"], cfg["warmup"], cfg["rss_runs"], cfg["gap"]
rows = cfg["rows"]  # [{"name", "argv" (with {id}), "rss": bool}]
DEVNULL = subprocess.DEVNULL
SAMPLE_TIMEOUT = 30
tag = os.getpid()

def run(argv, cid):
    """Wall time (ns) and CPU time (user + system, s) of the process tree."""
    argv = [a.replace("{id}", cid) for a in argv]
    t0 = time.perf_counter_ns()
    # A process group of its own: a sample that hangs is killed whole after
    # SAMPLE_TIMEOUT seconds and the run fails naming it.
    p = subprocess.Popen(argv, stdin=DEVNULL, stdout=DEVNULL, stderr=subprocess.PIPE,
                         process_group=0)
    hung = threading.Event()
    def kill():
        hung.set()
        os.killpg(p.pid, signal.SIGKILL)
    timer = threading.Timer(SAMPLE_TIMEOUT, kill)
    timer.start()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    timer.cancel()
    dt = time.perf_counter_ns() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if hung.is_set():
        sys.exit("HUNG (killed after %d s): %s" % (SAMPLE_TIMEOUT, " ".join(argv)))
    if p.returncode != 0:
        sys.exit("FAILED (rc %d): %s\n%s" % (p.returncode, " ".join(argv), err.decode(errors="replace")))
    return dt, ru.ru_utime + ru.ru_stime

shuffle = random.Random(20261124)
samples = {r["name"]: [] for r in rows}
cpu = {r["name"]: [] for r in rows}
for i in range(WARMUP + N):
    # Every row once per iteration, in a new random order each time (fixed
    # seed): a runtime's leftovers (the kernel tears namespaces and cgroups
    # down asynchronously) land on a different row every time.
    order = rows[:]
    shuffle.shuffle(order)
    for r in order:
        if GAP:
            time.sleep(GAP)
        dt, c = run(r["argv"], "b%d-%d-%d" % (tag, rows.index(r), i))
        if i >= WARMUP:
            samples[r["name"]].append(dt / 1e6)
            cpu[r["name"]].append(c * 1e3)

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

rss = {}
for j in range(RSS_RUNS):
    for r in rows:
        if not r.get("rss"):
            continue
        with tempfile.NamedTemporaryFile("r") as f:
            run(["/usr/bin/time", "-f", "%M", "-o", f.name] + r["argv"], "r%d-%d-%d" % (tag, rows.index(r), j))
            rss.setdefault(r["name"], []).append(int(f.read().split()[-1]))

ref = next((r["name"] for r in rows if r["name"].startswith("crun")), rows[0]["name"])
res = {}
for r in rows:
    xs = samples[r["name"]]
    res[r["name"]] = {"median_ms": statistics.median(xs), "p90_ms": pct(xs, 90),
                      "min_ms": min(xs), "mean_ms": statistics.fmean(xs), "n": len(xs),
                      "cpu_median_ms": statistics.median(cpu[r["name"]])}
    if r["name"] in rss:
        res[r["name"]]["max_rss_kb_median"] = statistics.median(rss[r["name"]])
        res[r["name"]]["max_rss_kb_range"] = [min(rss[r["name"]]), max(rss[r["name"]])]
cm, cp, cc = res[ref]["median_ms"], res[ref]["p90_ms"], res[ref]["cpu_median_ms"]
print("%-28s %9s %9s %9s %11s %10s %8s %9s %12s" % ("row", "median ms", "p90 ms", "min ms", "median/crun", "p90/crun", "cpu ms", "cpu/crun", "maxRSS MB"))
for name, v in res.items():
    v["median_vs_crun"] = v["median_ms"] / cm
    v["p90_vs_crun"] = v["p90_ms"] / cp
    v["cpu_vs_crun"] = v["cpu_median_ms"] / cc
    m = "%.1f" % (v["max_rss_kb_median"] / 1024) if "max_rss_kb_median" in v else "-"
    print("%-28s %9.2f %9.2f %9.2f %10.2fx %9.2fx %8.2f %8.2fx %12s" % (name, v["median_ms"], v["p90_ms"], v["min_ms"], v["median_vs_crun"], v["p90_vs_crun"], v["cpu_median_ms"], v["cpu_vs_crun"], m))
hard = res.get("crun run, launch's spec")
if hard:
    for name in [n for n in res if n.endswith(" launch")]:
        v = res[name]
        print("%-28s %9s %9s %9s %10.2fx %9.2fx %8s %8.2fx   (against crun on the launch's spec)" % (name, "", "", "", v["median_ms"] / hard["median_ms"], v["p90_ms"] / hard["p90_ms"], "", v["cpu_median_ms"] / hard["cpu_median_ms"]))
if GAP:
    print("(each sample after %g s of quiet)" % GAP)
print("(N=%d per row after %d warm-up rounds, rows in a new random order each iteration; cpu = median user+system time of the whole process tree (wait4 rusage); maxRSS = median of %d runs of /usr/bin/time -f %%M, in MiB)" % (N, WARMUP, RSS_RUNS))
if cfg.get("out"):
    json.dump({"rows": res, "n": N, "warmup": WARMUP, "rss_runs": RSS_RUNS, "gap_s": GAP}, open(cfg["out"], "w"), indent=1)
EOF

# The private mount namespace the peers need: hybrid cgroups -> pure v1.
# (`exec` keeps the measured process tree free of an extra shell.)
inns() {
    unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null || true; exec "$@"' inns "$@"
}

b="$work/bundle"
echo "== checking each runtime once in the benchmark namespace" >&2
inns crun --root "$state/root-crun" run --bundle "$b" check-crun
inns runc --root "$state/root-runc" run --bundle "$b" check-runc
berth_wrap=""
if inns "$berth" --root "$state/root-berth" run --bundle "$b" check-berth; then
    echo "   berth-runtime works in the benchmark namespace" >&2
else
    echo "   berth-runtime FAILS in the benchmark namespace: running it outside (nsenter -t 1 -m, which adds a fork+exec to every berth sample)" >&2
    berth_wrap="nsenter -t 1 -m"
fi
inns "$berth" --root "$state/root-launch" launch --image "$work/img" \
    --measurement "@$work/img/measurement" check-launch -- /bin/true

# The peers of `launch`: the spec it generates, taken from a detached launch,
# run by crun (with berth's seccomp filter written as an OCI profile, from
# runtime/src/seccomp.rs) and by `berth-runtime run` (its built-in filter),
# over a copy of the rootfs owned by the launch's id range.
echo "== hardened spec of a launch, for crun and berth-runtime run" >&2
inns "$berth" --root "$state/root-launch" launch -d --image "$work/img" \
    --measurement "@$work/img/measurement" spec-of-launch -- /bin/sleep 60
cp "$state/root-launch/bundles/spec-of-launch/config.json" "$work/launch-spec.json"
inns "$berth" --root "$state/root-launch" delete -f spec-of-launch
mkdir -p "$work/hard-crun" "$work/hard-berth"
cp -a "$work/img/rootfs" "$work/hard-crun/rootfs"
python3 - "$work" "$repo/runtime/src/seccomp.rs" <<'EOF'
import json, os, re, sys
work, filt = sys.argv[1], open(sys.argv[2]).read()
s = json.load(open(work + "/launch-spec.json"))
shift = s["linux"]["uidMappings"][0]["hostID"]
root = work + "/hard-crun/rootfs"
for d, dirs, files in os.walk(root):
    for n in [d] + [os.path.join(d, x) for x in dirs + files]:
        st = os.lstat(n)
        os.lchown(n, st.st_uid + shift, st.st_gid + shift)
s["process"]["args"] = ["/bin/true"]
s["root"] = {"path": root, "readonly": True}
def names(const):
    body = re.search(r"const %s: &\[libc::c_long\] = &\[(.*?)\];" % const, filt, re.S).group(1)
    return re.findall(r"libc::SYS_(\w+)", body)
newuser = [{"index": 0, "value": 0x10000000, "valueTwo": 0x10000000, "op": "SCMP_CMP_MASKED_EQ"}]
crun = json.loads(json.dumps(s))
crun.pop("annotations", None)
crun["linux"]["cgroupsPath"] = "/berth-bench/hardened-crun"
crun["linux"]["seccomp"] = {
    "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [
        {"names": names("DENIED") + names("DENIED_ARCH"), "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": names("DENIED_NEWUSER"), "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": newuser},
    ]}
json.dump(crun, open(work + "/hard-crun/config.json", "w"), indent=1)
s["linux"]["cgroupsPath"] = "/berth-bench/hardened-berth"
json.dump(s, open(work + "/hard-berth/config.json", "w"), indent=1)
EOF
inns crun --root "$state/root-crun-hard" run --bundle "$work/hard-crun" check-crun-hard
inns "$berth" --root "$state/root-berth-hard" run --bundle "$work/hard-berth" check-berth-hard
base=""
if [ -n "$BASELINE" ]; then
    base="$work/berth-baseline"
    inns $berth_wrap "$base" --root "$state/root-base" run --bundle "$b" check-base
fi

python3 - "$work/cfg.json" "$ROWS" <<EOF
import json, shlex, sys
wrap = shlex.split("$berth_wrap")
rows = [
  {"name": "berth-runtime run", "rss": True,
   "argv": wrap + ["$berth", "--root", "$state/root-berth", "run", "--bundle", "$b", "{id}"]},
  {"name": "crun run", "rss": True,
   "argv": ["crun", "--root", "$state/root-crun", "run", "--bundle", "$b", "{id}"]},
  {"name": "runc run", "rss": True,
   "argv": ["runc", "--root", "$state/root-runc", "run", "--bundle", "$b", "{id}"]},
  {"name": "floor unshare+chroot", "rss": False,
   "argv": ["unshare", "-m", "-u", "-i", "-p", "-n", "--fork", "chroot", "$b/rootfs", "/bin/true"]},
  {"name": "berth-runtime launch", "rss": True,
   "argv": wrap + ["$berth", "--root", "$state/root-launch", "launch", "--image", "$work/img",
            "--measurement", "@$work/img/measurement", "{id}", "--", "/bin/true"]},
  {"name": "crun run, launch's spec", "rss": True,
   "argv": ["crun", "--root", "$state/root-crun-hard", "run", "--bundle", "$work/hard-crun", "{id}"]},
  {"name": "berth run, launch's spec", "rss": True,
   "argv": wrap + ["$berth", "--root", "$state/root-berth-hard", "run", "--bundle", "$work/hard-berth", "{id}"]},
]
base = "$base"
if base:
    rows += [
      {"name": "baseline run", "rss": True,
       "argv": wrap + [base, "--root", "$state/root-base", "run", "--bundle", "$b", "{id}"]},
      {"name": "baseline launch", "rss": True,
       "argv": wrap + [base, "--root", "$state/root-base-launch", "launch", "--image", "$work/img-baseline",
                "--measurement", "@$work/img-baseline/measurement", "{id}", "--", "/bin/true"]},
    ]
only = [n for n in sys.argv[2].split("|") if n]
if only:
    unknown = sorted(set(only) - {r["name"] for r in rows})
    if unknown:
        sys.exit("lifecycle.sh: ROWS names no row %s (rows: %s)" % (unknown, " | ".join(r["name"] for r in rows)))
    rows = [r for r in rows if r["name"] in only]
json.dump({"n": $N, "warmup": $WARMUP, "rss_runs": $RSS_RUNS, "gap": float("$GAP"), "rows": rows, "out": "$OUT"}, open(sys.argv[1], "w"))
EOF

echo "== machine: $(nproc) cpus, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)" >&2
echo "== berth-runtime release binary ($triple, static-pie): $(stat -c %s "$berth") bytes, sha256 $(sha256sum "$berth" | cut -c1-16), tree $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$repo" diff --quiet HEAD -- runtime Cargo.toml Cargo.lock 2>/dev/null || echo +dirty)" >&2
echo "== $(crun --version | head -1), $(runc --version | head -1)" >&2
echo "== running N=$N (+$WARMUP warm-up) interleaved iterations" >&2
inns python3 "$work/bench.py" "$work/cfg.json"
