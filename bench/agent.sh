#!/bin/sh
# The device agent end to end on loopback: publish -> workloads running
# (image cached, and image not cached), the agent's memory, and the bytes an
# update cycle writes to the state directory.
#
# One real setup, nothing mocked: Mosquitto (plain MQTT, loopback), Debian's
# docker-registry with TLS + htpasswd on a free loopback port, a TUF
# repository served as file:// metadata (`berth repo init`), a real
# `berth-agent` with its state directory on disk (/var/tmp) and the runtime
# state on tmpfs (/run, as on a device), running real containers with
# `berth-runtime`. Two workloads, `a` and `b`, from a tiny image (a static
# program that sleeps until SIGTERM), each with the uptime health gate of
# 1 s.
#
# Rows:
# 1. cached: N releases in a row, each changing one env var of workload `a`
#    (so `a` restarts, `b` keeps running; the image is already unpacked).
# 2. uncached: NU releases in a row, each giving `a` a new image with MB_NEW
#    (20) MB of new random layers, pushed to the registry beforehand
#    (`berth image push`, untimed).
# Each sample is timed from the start of `berth release publish` (which
# signs the release, writes the metadata, then publishes the MQTT
# notification and exits) to
#   running:   the first `status` (the agent's API, polled every POLL_MS over
#              one connection) in which the new container of `a` runs (a new
#              pid) and every workload runs — the switch is done, the health
#              gate has started;
#   committed: the first `status` with the new generation committed (after
#              the 1 s uptime gate).
# "notify ->" rows subtract the publish command's own time (so start at the
# moment the notification is sent; the command exits right after it).
# 3. memory: the agent's PSS/RSS (/proc/PID/smaps_rollup) after it committed
#    a release and sat idle IDLE_S (10) seconds; its peak RSS (VmHWM, reset
#    with `echo 5 > /proc/PID/clear_refs` just before) during an update that
#    pulls BIG_MB (100) MB of new layers.
# 4. writes: /proc/PID/io write_bytes of the agent per cached update cycle
#    (from one publish to the next; the agent's log goes to tmpfs, the
#    runtime state is on tmpfs, the cached cycle writes no blob), and the
#    growth of the state directory without blobs/ and images/.
#
# Usage: bench/agent.sh [N]      (as root; N cached updates, default 20)
# Env:   NU=10 uncached updates, MB_NEW=20, BIG_MB=100, IDLE_S=10, POLL_MS=5
#        (NU=0 or BIG_MB=0 skips those parts: a quick idle-memory run)
#        SMAPS=FILE keeps the idle agent's /proc/PID/smaps
#        EVICT=1 drops the agent binary from the page cache before starting
#        it (as after a reboot)
#        PROFILE=edge: the cargo profile of the binaries (edge: what devices
#        run, see the root Cargo.toml; release: the plain release profile)
#        SKIP_BUILD=1 (use the existing binaries), OUT=FILE (JSON)
#        KEEP=1 (keep the work directory), CARGO_TARGET_DIR as for cargo
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
N=${1:-${N:-20}}
NU=${NU:-10}
MB_NEW=${MB_NEW:-20}
BIG_MB=${BIG_MB:-100}
IDLE_S=${IDLE_S:-10}
POLL_MS=${POLL_MS:-5}
OUT=${OUT:-}
PROFILE=${PROFILE:-edge}

[ "$(id -u)" = 0 ] || { echo "agent.sh: run as root (the agent launches containers)" >&2; exit 1; }
for tool in docker-registry mosquitto htpasswd openssl python3 gcc; do
    command -v "$tool" >/dev/null || { echo "agent.sh: $tool is missing (tests/run.sh installs it)" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-$repo/target}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "== cargo build --profile $PROFILE -p berth-edge-agent -p berth-runtime --bins" >&2
    (cd "$repo" && cargo build --profile "$PROFILE" -q -p berth-edge-agent -p berth-runtime --bins)
fi
bin=$target/$PROFILE
for b in berth berth-agent berth-runtime; do
    [ -x "$bin/$b" ] || { echo "agent.sh: $bin/$b not built" >&2; exit 1; }
done

work=$(mktemp -d /var/tmp/berth-bench-agent.XXXXXX)
run=$(mktemp -d /run/berth-bench-agent.XXXXXX)
chmod 755 "$work" "$run"
regpid= mqpid= agentpid=
cleanup() {
    if [ -n "$agentpid" ]; then
        kill "$agentpid" 2>/dev/null || true
        wait "$agentpid" 2>/dev/null || true
    fi
    # The agent leaves its workloads running when it stops (by design).
    for c in $("$bin/berth-runtime" --root "$run/runtime" list -q 2>/dev/null); do
        "$bin/berth-runtime" --root "$run/runtime" delete --force "$c" >/dev/null 2>&1 || true
    done
    for p in $regpid $mqpid; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        cp "$run/agent.log" "$work/agent.log" 2>/dev/null || true
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    python3 - "$1" <<'PY'
import socket, sys, time
for _ in range(500):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit("nothing listens on port %s" % sys.argv[1])
PY
}

cd "$work"
# --- the registry: TLS + htpasswd, storage in the page cache
mkdir -p certs storage
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=bench CA" -keyout ca.key -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=registry \
    -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile server.ext -out server.pem 2>/dev/null
user=bench password=bench-password
htpasswd -Bbn "$user" "$password" > htpasswd 2>/dev/null
printf '%s' "$password" > registry-password
regport=$(free_port)
cat > registry.yml <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$regport
  secret: bench
  tls:
    certificate: $work/server.pem
    key: $work/server.key
auth:
  htpasswd:
    realm: bench
    path: $work/htpasswd
EOF
docker-registry serve registry.yml 2> registry.log &
regpid=$!
wait_port "$regport"

# --- the broker: Mosquitto, plain MQTT on loopback (the agent allows plain
# MQTT to a loopback broker only)
mqport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mqport" > mosquitto.conf
mosquitto -c mosquitto.conf 2> mosquitto.log &
mqpid=$!
wait_port "$mqport"

# --- keys and the TUF repository (root v1, 1-of-1 keys)
B="$bin/berth"
mkdir keys
for k in root online targets; do
    "$B" key generate --type ed25519 --out "keys/$k" >/dev/null
done
"$B" repo init "$work/repo" --root-key keys/root --timestamp-key keys/online.pub \
    --snapshot-key keys/online.pub --targets-key keys/targets.pub >/dev/null

# --- the workload program: sleeps until SIGTERM
mkdir -p src
cat > src/idle.c <<'EOF'
#include <signal.h>
#include <unistd.h>
static void on_term(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    for (;;) pause();
}
EOF
gcc -static -O2 -o src/idle src/idle.c
strip src/idle

# --- the agent: state on disk, runtime state, socket and log on tmpfs
cat > agent.toml <<EOF
[device]
id = "gw-bench"
fleet = "bench"

[paths]
state = "$work/state"
socket = "$run/agent.sock"
runtime = "$bin/berth-runtime"
runtime_root = "$run/runtime"

[mqtt]
host = "127.0.0.1"
port = $mqport

[trust]
metadata_url = "file://$work/repo/metadata"
root = "$work/repo/metadata/1.root.json"
refresh_s = 3600
jitter_s = 60

[registry]
ca = "$work/ca.pem"
user = "$user"
password_file = "$work/registry-password"
EOF
if [ "${EVICT:-0}" = 1 ]; then
    # As after a reboot: the agent's binary is not in the page cache, so
    # only what it reads is (a freshly built binary is cached whole, and
    # every page fault then maps its cached neighbours too).
    python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' \
        "$bin/berth-agent"
fi
BERTH_LOG=${BERTH_LOG:-info} "$bin/berth-agent" --config agent.toml \
    </dev/null >"$run/agent.log" 2>&1 &
agentpid=$!

echo "== machine: $(nproc) cpus, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "== berth-agent $PROFILE-profile binary: $(stat -c %s "$bin/berth-agent") bytes, tree $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$repo" diff --quiet HEAD -- edge-agent runtime Cargo.lock 2>/dev/null || echo +dirty)" >&2

export BERTH_REGISTRY_PASSWORD="$password"
python3 - <<EOF
import json, os, socket, statistics, subprocess, sys, time
sys.path.insert(0, "$here")
import smaps

work, run = "$work", "$run"
B = "$B"
N, NU, MB_NEW, BIG_MB, IDLE_S = $N, $NU, $MB_NEW, $BIG_MB, $IDLE_S
POLL = $POLL_MS / 1000.0
REG = "127.0.0.1:$regport"
AGENT = $agentpid
BROKER = "127.0.0.1:$mqport"
OUT = "$OUT"
FLEET = "bench"

def sh(argv, **kw):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if r.returncode != 0:
        sys.exit("FAILED: %s\n%s%s" % (" ".join(argv), r.stdout.decode(), r.stderr.decode()))
    return r.stdout.decode()

class Api:
    """A connection to the agent's API, one JSON line per request (the
    agent closes a connection after 30 s: reconnected when it does)."""
    def __init__(self, path):
        self.path = path
        self.connect(30)
    def connect(self, wait):
        deadline = time.time() + wait
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(self.path)
                break
            except OSError:
                self.s.close()
                if time.time() > deadline:
                    sys.exit("the agent's API did not come up; log: " + open(run + "/agent.log").read()[-3000:])
                time.sleep(0.05)
        self.f = self.s.makefile("rb")
    def status(self):
        try:
            self.s.sendall(b'{"cmd":"status"}\n')
            line = self.f.readline()
            if not line:
                raise OSError("closed")
        except OSError:
            self.s.close()
            self.connect(5)
            self.s.sendall(b'{"cmd":"status"}\n')
            line = self.f.readline()
        a = json.loads(line)
        if "ok" not in a:
            sys.exit("status failed: %r" % a)
        return a["ok"]

def pids(s):
    return {w["name"]: w["pid"] for w in s["workloads"] if w["status"] == "running" and w["pid"]}

# --- images ---------------------------------------------------------------
def build(name, common_mb=0, arch_mb=0):
    """An amd64 image: the idle program plus random files; returns its manifest digest."""
    d = os.path.join(work, "img-" + name)
    os.makedirs(d + "/rootfs-amd64", exist_ok=True)
    for sub in ("etc", "proc", "sys", "dev", "tmp", "run"):
        os.makedirs(d + "/rootfs/" + sub, exist_ok=True)
    open(d + "/rootfs/etc/passwd", "w").write("root:x:0:0:root:/:/bin/false\n")
    for sub, mb in (("rootfs", common_mb), ("rootfs-amd64", arch_mb)):
        left, k = mb << 20, 0
        while left > 0:
            n = min(left, 4 << 20)
            os.makedirs("%s/%s/data" % (d, sub), exist_ok=True)
            with open("%s/%s/data/f%d" % (d, sub, k), "wb") as f:
                f.write(os.urandom(n))
            left, k = left - n, k + 1
    sh(["cp", work + "/src/idle", d + "/rootfs-amd64/idle"])
    open(d + "/recipe.toml", "w").write('architectures = ["amd64"]\nentrypoint = ["/idle"]\n')
    out = sh([B, "image", "build", d, "-o", d + ".oci"])
    digest = next(l.split()[2] for l in out.splitlines() if l.startswith("manifest amd64 "))
    sh([B, "image", "push", d + ".oci", "%s/bench/%s:latest" % (REG, name),
        "--ca", work + "/ca.pem", "--user", "$user"])
    sh(["rm", "-rf", d])
    return digest

def workload(name, digest, gen, deadline=30):
    return ('[[workloads]]\nname = "%s"\nimage = { registry = "%s", repository = "bench/%s", '
            'digests = { amd64 = "%s" } }\nenv = { GEN = "%s" }\n'
            'health = { check = "uptime", seconds = 1, deadline_s = %d }\n\n'
            % (name, REG, digest[1], digest[0], gen, deadline))

gen = 0
def publish(a, b, gen_a):
    """Publishes the next generation; returns (t0, t_published)."""
    global gen
    gen += 1
    p = "%s/release-%d.toml" % (work, gen)
    open(p, "w").write('schema = 1\nfleet = "%s"\ngeneration = %d\n\n' % (FLEET, gen)
                       + workload("a", a, gen_a) + workload("b", b, 1))
    t0 = time.perf_counter()
    sh([B, "release", "publish", "--fleet", FLEET, p, "--repo", work + "/repo",
        "--key", work + "/keys/online", "--key", work + "/keys/targets", "--broker", BROKER])
    return t0, time.perf_counter()

def wait_update(api, t0, old_a, sampler=None):
    """Polls status: (running_s, committed_s) after t0."""
    running = None
    deadline = time.perf_counter() + 300
    while time.perf_counter() < deadline:
        s = api.status()
        now = time.perf_counter()
        if sampler:
            sampler()
        p = pids(s)
        if running is None and "a" in p and "b" in p and p["a"] != old_a:
            running = now - t0
        if s["current"] == gen and s["phase"] == "idle":
            if s["failed"] == gen or running is None:
                sys.exit("generation %d did not run: %r" % (gen, s))
            return running, now - t0, p["a"]
        if s["failed"] == gen:
            sys.exit("generation %d failed: %r\nlog: %s" % (gen, s, open(run + "/agent.log").read()[-3000:]))
        time.sleep(POLL)
    sys.exit("generation %d timed out; log: %s" % (gen, open(run + "/agent.log").read()[-3000:]))

def io(pid):
    return {k: int(v) for k, v in (l.split(": ") for l in open("/proc/%d/io" % pid).read().splitlines())}

def rollup(pid):
    out = {}
    for l in open("/proc/%d/smaps_rollup" % pid).read().splitlines()[1:]:
        k, v = l.split(":")
        out[k] = int(v.split()[0])
    return out

def breakdown(pid):
    """PSS in KiB by kind of mapping (bench/smaps.py), and the thread names."""
    exe = os.readlink("/proc/%d/exe" % pid)
    rows = smaps.breakdown(smaps.parse(open("/proc/%d/smaps" % pid).read().splitlines()), exe)
    kinds = {k: r["pss"] for k, r in rows.items()}
    threads = [open("/proc/%d/task/%s/comm" % (pid, t)).read().strip()
               for t in sorted(os.listdir("/proc/%d/task" % pid), key=int)]
    return kinds, threads

def switches(pid):
    """Context switches of each thread so far (wake-ups), by thread id."""
    n = {}
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            for l in open("/proc/%d/task/%s/status" % (pid, t)):
                if l.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    n[t] = n.get(t, 0) + int(l.split()[1])
        except OSError:
            pass
    return n

def vm(pid, key):
    for l in open("/proc/%d/status" % pid):
        if l.startswith(key + ":"):
            return int(l.split()[1])

def state_bytes():
    """Bytes under the state directory, blobs/ and images/ excluded."""
    total = 0
    st = work + "/state"
    for root, dirs, files in os.walk(st):
        if root == st:
            dirs[:] = [d for d in dirs if d not in ("blobs", "images")]
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def row(name, xs):
    xs = [x * 1000 for x in xs]
    return {"name": name, "p50_ms": statistics.median(xs), "p90_ms": pct(xs, 90),
            "min_ms": min(xs), "max_ms": max(xs), "n": len(xs)}

api = Api(run + "/agent.sock")
print("== building and pushing the base image", file=sys.stderr)
base = (build("idle"), "idle")

# Generation 1: pulls the base image (warm-up, not counted).
t0, tp = publish(base, base, 0)
_, _, pid_a = wait_update(api, t0, None)

# --- 1. cached updates, and the bytes each cycle writes ----------------------
print("== %d cached updates (env of workload a changes)" % N, file=sys.stderr)
cached = {"run": [], "commit": [], "pub": []}
writes, wchar = [], []
sb0 = state_bytes()
io_prev = io(AGENT)
for i in range(N + 1):
    t0, tp = publish(base, base, gen + 1)
    r, c, pid_a = wait_update(api, t0, pid_a)
    if i == 0:  # one more warm-up (first cached update)
        io_prev = io(AGENT); sb0 = state_bytes()
        continue
    cached["run"].append(r); cached["commit"].append(c); cached["pub"].append(tp - t0)
    time.sleep(0.3)  # the agent's post-update housekeeping
    cur = io(AGENT)
    writes.append(cur["write_bytes"] - io_prev["write_bytes"])
    wchar.append(cur["wchar"] - io_prev["wchar"])
    io_prev = cur
sb1 = state_bytes()

# --- 3a. idle memory ------------------------------------------------------
print("== idle %d s" % IDLE_S, file=sys.stderr)
io_idle0 = io(AGENT)
sw0 = switches(AGENT)
time.sleep(IDLE_S)
sw1 = switches(AGENT)
idle_wakeups = sum(v - sw0.get(t, 0) for t, v in sw1.items()) / IDLE_S
if os.environ.get("SMAPS"):
    open(os.environ["SMAPS"], "w").write(open("/proc/%d/smaps" % AGENT).read())
idle = rollup(AGENT)
idle_kinds, idle_threads = breakdown(AGENT)
io_idle1 = io(AGENT)
idle_rss = vm(AGENT, "VmRSS")
hwm_before = vm(AGENT, "VmHWM")

# --- 2. uncached updates ----------------------------------------------------
print("== %d uncached updates (%d MB of new layers each)" % (NU, MB_NEW), file=sys.stderr)
uncached = {"run": [], "commit": [], "pub": []}
for i in range(NU):
    img = ("sha256:0", "u%d" % i)
    img = (build(img[1], arch_mb=MB_NEW), img[1])
    time.sleep(1)
    t0, tp = publish(img, base, gen + 1)
    r, c, pid_a = wait_update(api, t0, pid_a)
    uncached["run"].append(r); uncached["commit"].append(c); uncached["pub"].append(tp - t0)

# --- 3b. peak RSS during a BIG_MB update -----------------------------------------
peak_sampled = [0]
def sample():
    peak_sampled[0] = max(peak_sampled[0], vm(AGENT, "VmRSS"))
hwm_reset = hwm_big = r_big = c_big = 0
if BIG_MB:
    print("== one update pulling %d MB of new layers" % BIG_MB, file=sys.stderr)
    big = (build("big", common_mb=BIG_MB // 2, arch_mb=BIG_MB - BIG_MB // 2), "big")
    time.sleep(2)
    open("/proc/%d/clear_refs" % AGENT, "w").write("5")
    hwm_reset = vm(AGENT, "VmHWM")
    t0, tp = publish(big, base, gen + 1)
    r_big, c_big, pid_a = wait_update(api, t0, pid_a, sample)
    hwm_big = vm(AGENT, "VmHWM")

rows = [row("cached: publish -> running", cached["run"]),
        row("cached: notify -> running", [a - b for a, b in zip(cached["run"], cached["pub"])]),
        row("cached: publish -> committed (1 s gate)", cached["commit"]),
        row("cached: berth release publish itself", cached["pub"])]
if NU:
    rows += [row("uncached %d MB: publish -> running" % MB_NEW, uncached["run"]),
             row("uncached %d MB: notify -> running" % MB_NEW, [a - b for a, b in zip(uncached["run"], uncached["pub"])]),
             row("uncached %d MB: publish -> committed" % MB_NEW, uncached["commit"])]
print("%-44s %8s %8s %8s %8s %4s" % ("row", "p50 ms", "p90 ms", "min ms", "max ms", "n"))
for r in rows:
    print("%-44s %8.1f %8.1f %8.1f %8.1f %4d" % (r["name"], r["p50_ms"], r["p90_ms"], r["min_ms"], r["max_ms"], r["n"]))
mem = {"idle_pss_kb": idle["Pss"], "idle_rss_kb": idle["Rss"],
       "idle_private_kb": idle.get("Private_Clean", 0) + idle.get("Private_Dirty", 0),
       "idle_anon_kb": idle.get("Anonymous", 0), "vmhwm_before_big_kb": hwm_before,
       "vmhwm_after_reset_kb": hwm_reset, "peak_rss_big_update_kb": hwm_big,
       "peak_rss_sampled_kb": peak_sampled[0], "big_update_publish_to_running_ms": r_big * 1000,
       "big_update_publish_to_committed_ms": c_big * 1000}
print("memory: idle (after %d s) PSS %.2f MiB, RSS %.2f MiB (private %.2f MiB, anon %.2f MiB)"
      % (IDLE_S, idle["Pss"] / 1024, idle["Rss"] / 1024, mem["idle_private_kb"] / 1024, mem["idle_anon_kb"] / 1024))
print("memory: idle PSS by mapping: %s; %d threads: %s"
      % (", ".join("%s %.2f MiB" % (k, v / 1024) for k, v in sorted(idle_kinds.items(), key=lambda kv: -kv[1]) if v >= 16),
         len(idle_threads), " ".join(idle_threads)))
mem["idle_pss_by_mapping_kb"] = idle_kinds
mem["idle_threads"] = idle_threads
mem["idle_wakeups_per_s"] = idle_wakeups
print("idle: %.1f context switches/s over all threads" % idle_wakeups)
if BIG_MB:
    print("memory: peak RSS during the %d MB update %.2f MiB (VmHWM reset to %.2f MiB before it; highest sampled VmRSS %.2f MiB; VmHWM before the reset %.2f MiB); publish -> running %.0f ms"
        % (BIG_MB, hwm_big / 1024, hwm_reset / 1024, peak_sampled[0] / 1024, hwm_before / 1024, r_big * 1000))
wr = {"write_bytes_p50": statistics.median(writes), "write_bytes_max": max(writes),
      "write_bytes_mean": statistics.fmean(writes), "wchar_p50": statistics.median(wchar),
      "state_growth_per_cycle": (sb1 - sb0) / N, "state_bytes_after": sb1,
      "idle_write_bytes_per_s": (io_idle1["write_bytes"] - io_idle0["write_bytes"]) / IDLE_S}
print("writes per cached update cycle (agent, /proc/PID/io): write_bytes p50 %.1f KiB, max %.1f KiB, mean %.1f KiB; wchar p50 %.1f KiB"
      % (wr["write_bytes_p50"] / 1024, wr["write_bytes_max"] / 1024, wr["write_bytes_mean"] / 1024, wr["wchar_p50"] / 1024))
print("state directory without blobs/ and images/: %.1f KiB after, grew %.1f KiB per cycle; idle writes %.1f KiB/s"
      % (sb1 / 1024, wr["state_growth_per_cycle"] / 1024, wr["idle_write_bytes_per_s"] / 1024))
print("(N=%d cached, NU=%d uncached, status polled every %.0f ms; %s profile; load %s)" % (N, NU, POLL * 1000, "$PROFILE", open("/proc/loadavg").read().split()[:3]))
if OUT:
    json.dump({"rows": rows, "memory": mem, "writes": wr, "n": N, "nu": NU, "profile": "$PROFILE",
               "loadavg": open("/proc/loadavg").read().split()[:3]}, open(OUT, "w"), indent=1)
EOF
