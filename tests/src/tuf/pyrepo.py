"""Builds and edits TUF repositories with python-tuf's Metadata API, for Berth's tests.

State lives in DIR: keys/<role>-<n>.pem (PKCS#8 private keys), metadata/ (served:
N.root.json, N.<role>.json, <role>.json, timestamp.json) and targets/ (hash-prefixed).

  pyrepo.py init DIR [--delegations M] [--targets N] [--keytype ed25519|ecdsa]
                     [--root-keys N] [--root-threshold K] [--succinct BITS]
  pyrepo.py add-target DIR PATH FILE [--role ROLE]   # role, snapshot, timestamp bumped
  pyrepo.py publish DIR [ROLE ...]                  # bump roles, snapshot, timestamp
  pyrepo.py timestamp DIR [--version V] [--expires-days D]
  pyrepo.py rotate-root DIR [--rotate ROLE ...] [--no-old-sig] [--sign-with N]
"""

import argparse
import hashlib
import os
import sys
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

TOP = ["root", "timestamp", "snapshot", "targets"]


def now_plus(days):
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


class Repo:
    def __init__(self, d):
        self.d = d
        self.meta = os.path.join(d, "metadata")
        self.targets = os.path.join(d, "targets")
        self.keys = os.path.join(d, "keys")

    def gen(self, name, keytype):
        signer = (
            CryptoSigner.generate_ecdsa()
            if keytype == "ecdsa"
            else CryptoSigner.generate_ed25519()
        )
        with open(os.path.join(self.keys, name + ".pem"), "wb") as f:
            f.write(signer.private_bytes)
        return signer

    def signer(self, name):
        with open(os.path.join(self.keys, name + ".pem"), "rb") as f:
            priv = load_pem_private_key(f.read(), None)
        return CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key()))

    def signers_for(self, role):
        names = sorted(
            n[:-4] for n in os.listdir(self.keys) if n.startswith(role + "-") and n.endswith(".pem")
        )
        return [self.signer(n) for n in names]

    def load(self, role):
        return Metadata.from_file(os.path.join(self.meta, role + ".json"))

    def write(self, md, role, signers, versioned=True):
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        ser = JSONSerializer(compact=False)
        if versioned:
            md.to_file(os.path.join(self.meta, f"{md.signed.version}.{role}.json"), ser)
        md.to_file(os.path.join(self.meta, f"{role}.json"), ser)

    def add_target_file(self, md, path, data):
        tf = TargetFile.from_data(path, data, ["sha256"])
        md.signed.targets[path] = tf
        h = tf.hashes["sha256"]
        d, base = os.path.split(path)
        out = os.path.join(self.targets, d, f"{h}.{base}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as f:
            f.write(data)

    def publish(self, roles, ts_version=None, ts_days=1):
        snap = self.load("snapshot")
        for role in roles:
            md = self.load(role)
            md.signed.version += 1
            md.signed.expires = now_plus(30)
            self.write(md, role, self.signers_for(role))
            snap.signed.meta[f"{role}.json"] = MetaFile(version=md.signed.version)
        snap.signed.version += 1
        snap.signed.expires = now_plus(7)
        self.write(snap, "snapshot", self.signers_for("snapshot"))
        self.timestamp(ts_version, ts_days)

    def timestamp(self, version=None, days=1):
        ts = self.load("timestamp")
        raw = open(os.path.join(self.meta, "snapshot.json"), "rb").read()
        snap = Metadata.from_bytes(raw)
        ts.signed.snapshot_meta = MetaFile(
            version=snap.signed.version,
            length=len(raw),
            hashes={"sha256": hashlib.sha256(raw).hexdigest()},
        )
        ts.signed.version = version if version is not None else ts.signed.version + 1
        ts.signed.expires = now_plus(days)
        self.write(ts, "timestamp", self.signers_for("timestamp"), versioned=False)


def init(a):
    r = Repo(a.dir)
    for d in (r.meta, r.targets, r.keys):
        os.makedirs(d, exist_ok=True)
    root = Root(expires=now_plus(365), consistent_snapshot=True)
    signers = {}
    for role in TOP:
        n = a.root_keys if role == "root" else 1
        for i in range(n):
            s = r.gen(f"{role}-{i}", a.keytype)
            signers.setdefault(role, []).append(s)
            root.add_key(s.public_key, role)
    root.roles["root"].threshold = a.root_threshold
    targets = Targets(expires=now_plus(30))
    for i in range(a.targets):
        r.add_target_file(Metadata(targets), f"files/file-{i}.txt", f"content {i}\n".encode())
    if a.delegations:
        targets.delegations = Delegations(keys={}, roles={})
    snapshot = Snapshot(expires=now_plus(7))
    for i in range(a.delegations):
        name = f"team-{i}"
        s = r.gen(f"{name}-0", a.keytype)
        targets.delegations.keys[s.public_key.keyid] = s.public_key
        targets.delegations.roles[name] = DelegatedRole(
            name=name,
            keyids=[s.public_key.keyid],
            threshold=1,
            terminating=True,
            paths=[f"team-{i}/*"],
        )
        dmd = Metadata(Targets(expires=now_plus(30)))
        r.add_target_file(dmd, f"team-{i}/release.json", f'{{"team": {i}}}\n'.encode())
        r.write(dmd, name, [s])
        snapshot.meta[f"{name}.json"] = MetaFile(version=1)
    if a.succinct:
        s = r.gen("bins-0", a.keytype)
        succinct = SuccinctRoles([s.public_key.keyid], 1, a.succinct, "bin")
        targets.delegations = Delegations(
            keys={s.public_key.keyid: s.public_key}, succinct_roles=succinct
        )
        owner = succinct.get_role_for_target("succinct/a.txt")
        for name in succinct.get_roles():
            dmd = Metadata(Targets(expires=now_plus(30)))
            if name == owner:
                r.add_target_file(dmd, "succinct/a.txt", b"binned\n")
            r.write(dmd, name, [s])
            snapshot.meta[f"{name}.json"] = MetaFile(version=1)
    r.write(Metadata(root), "root", signers["root"])
    r.write(Metadata(targets), "targets", signers["targets"])
    r.write(Metadata(snapshot), "snapshot", signers["snapshot"])
    ts = Metadata(Timestamp(expires=now_plus(1)))
    r.write(ts, "timestamp", signers["timestamp"], versioned=False)
    r.timestamp(version=1)


def add_target(a):
    r = Repo(a.dir)
    md = r.load(a.role)
    r.add_target_file(md, a.path, open(a.file, "rb").read())
    md.to_file(os.path.join(r.meta, a.role + ".json"))
    r.publish([a.role])


def rotate_root(a):
    r = Repo(a.dir)
    md = r.load("root")
    old = r.signers_for("root")
    for role in a.rotate:
        for key in list(r.signers_for(role)):
            md.signed.revoke_key(key.public_key.keyid, role)
        for n in os.listdir(r.keys):
            if n.startswith(role + "-"):
                os.rename(os.path.join(r.keys, n), os.path.join(r.keys, "old-" + n))
        s = r.gen(f"{role}-0", "ed25519")
        md.signed.add_key(s.public_key, role)
        md.signed.roles[role].threshold = 1
    md.signed.version += 1
    md.signed.expires = now_plus(365)
    new = r.signers_for("root")
    signers = list(new)
    if not a.no_old_sig:
        have = {s.public_key.keyid for s in signers}
        signers += [s for s in old if s.public_key.keyid not in have]
    if a.sign_with:
        signers = signers[: a.sign_with]
    r.write(md, "root", signers)
    if any(role in a.rotate for role in ("timestamp", "snapshot", "targets")):
        r.publish(["targets"] if "targets" in a.rotate else [])


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init")
    i.add_argument("dir")
    i.add_argument("--delegations", type=int, default=0)
    i.add_argument("--targets", type=int, default=1)
    i.add_argument("--keytype", default="ed25519")
    i.add_argument("--root-keys", type=int, default=1)
    i.add_argument("--root-threshold", type=int, default=1)
    i.add_argument("--succinct", type=int, default=0, help="hash-bin bit length")
    t = sub.add_parser("add-target")
    t.add_argument("dir")
    t.add_argument("path")
    t.add_argument("file")
    t.add_argument("--role", default="targets")
    pb = sub.add_parser("publish")
    pb.add_argument("dir")
    pb.add_argument("roles", nargs="*")
    ts = sub.add_parser("timestamp")
    ts.add_argument("dir")
    ts.add_argument("--version", type=int)
    ts.add_argument("--expires-days", type=float, default=1)
    rr = sub.add_parser("rotate-root")
    rr.add_argument("dir")
    rr.add_argument("--rotate", nargs="*", default=[])
    rr.add_argument("--no-old-sig", action="store_true")
    rr.add_argument("--sign-with", type=int, default=0)
    a = p.parse_args()
    if a.cmd == "init":
        init(a)
    elif a.cmd == "add-target":
        add_target(a)
    elif a.cmd == "publish":
        Repo(a.dir).publish(a.roles)
    elif a.cmd == "timestamp":
        Repo(a.dir).timestamp(a.version, a.expires_days)
    elif a.cmd == "rotate-root":
        rotate_root(a)


if __name__ == "__main__":
    sys.exit(main())
