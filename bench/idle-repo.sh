# Sourced by the idle-memory benchmarks (bench/agent-idle-arch.sh,
# bench/launcher.sh): `idle_repo BERTH DIR` makes keys and an empty
# repository (`berth repo init`, file:// metadata, no release) in DIR and
# an agent configuration DIR/agent.toml whose device pins its root.
idle_repo() {
    mkdir -p "$2/keys"
    for k in root online targets; do
        "$1" key generate --type ed25519 --out "$2/keys/$k" >/dev/null
    done
    "$1" repo init "$2/repo" --root-key "$2/keys/root" \
        --timestamp-key "$2/keys/online.pub" --snapshot-key "$2/keys/online.pub" \
        --targets-key "$2/keys/targets.pub" >/dev/null
    cat >"$2/agent.toml" <<CONF
[device]
id = "bench"
fleet = "bench"
[trust]
metadata_url = "file://$2/repo/metadata"
root = "$2/repo/metadata/1.root.json"
CONF
}
