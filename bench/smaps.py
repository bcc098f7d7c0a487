#!/usr/bin/env python3
"""A process's PSS broken down by mapping, from /proc/PID/smaps.

Usage: bench/smaps.py PID|SMAPS_FILE [EXE]     (EXE: the program's path when
       reading a saved smaps file; with a PID it is /proc/PID/exe)
       --json prints the rows as JSON instead of a table.

Rows (KiB of PSS, of RSS, and of private dirty/anonymous memory):
  binary text        the program's executable segment (r-x)
  binary rodata      its read-only data, as mapped from the file (r--,
                     nothing written)
  binary relro       read-only after relocation (r-- with anonymous pages:
                     .data.rel.ro and the GOT, written by the loader at
                     start, then made read-only)
  binary data+bss    its writable segment (rw-)
  heap               [heap] (brk: glibc's main arena)
  thread stacks      anonymous mappings right after a guard page (---p)
  main stack         [stack]
  anonymous          every other anonymous mapping (mmap'd allocations
                     such as a database's page cache, other malloc arenas)
  libc, loader, ...  each other file by name; [vdso] and the like by name
"""
import json
import os
import sys


def parse(lines):
    maps, cur = [], None
    for line in lines:
        f = line.split()
        if not f:
            continue
        if "-" in f[0] and not f[0].endswith(":"):
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            cur = {"lo": lo, "hi": hi, "perms": f[1], "path": f[5] if len(f) > 5 else ""}
            maps.append(cur)
        elif f[0].endswith(":") and len(f) >= 2 and f[1].isdigit():
            cur[f[0][:-1]] = int(f[1])
    return maps


def kind(m, prev, exe):
    path, perms = m["path"], m["perms"]
    if path == exe or (exe and os.path.basename(path) == os.path.basename(exe)
                       and path.startswith("/")):
        if "x" in perms:
            return "binary text"
        if "w" in perms:
            return "binary data+bss"
        if m.get("Anonymous", 0):
            return "binary relro"
        return "binary rodata"
    if path == "[heap]":
        return "heap"
    if path == "[stack]":
        return "main stack"
    if not path:
        if (prev is not None and prev["perms"].startswith("---") and not prev["path"]
                and prev["hi"] == m["lo"] and "w" in perms):
            return "thread stacks"
        return "anonymous"
    if path.startswith("/"):
        base = os.path.basename(path)
        if base.startswith("libc.so") or base.startswith("libc-"):
            return "libc"
        if base.startswith("ld-linux") or base.startswith("ld-"):
            return "loader"
        return "file " + base
    return path


def breakdown(maps, exe):
    rows, prev = {}, None
    for m in maps:
        k = kind(m, prev, exe)
        prev = m
        r = rows.setdefault(k, {"pss": 0, "rss": 0, "private_dirty": 0, "anon": 0,
                                "size": 0, "mappings": 0})
        r["pss"] += m.get("Pss", 0)
        r["rss"] += m.get("Rss", 0)
        r["private_dirty"] += m.get("Private_Dirty", 0)
        r["anon"] += m.get("Anonymous", 0)
        r["size"] += m.get("Size", 0)
        r["mappings"] += 1
    return rows


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    if not args:
        sys.exit(__doc__)
    src = args[0]
    if src.isdigit():
        exe = os.readlink("/proc/%s/exe" % src)
        lines = open("/proc/%s/smaps" % src).read().splitlines()
    else:
        exe = args[1] if len(args) > 1 else ""
        lines = open(src).read().splitlines()
    rows = breakdown(parse(lines), exe)
    if "--json" in sys.argv:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    total = sum(r["pss"] for r in rows.values())
    print("%-22s %9s %9s %9s %9s %9s" % ("mapping", "PSS KiB", "RSS KiB", "priv.dirty", "anon KiB", "size KiB"))
    for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["pss"]):
        if r["pss"] or r["rss"]:
            print("%-22s %9d %9d %9d %9d %9d" % (k, r["pss"], r["rss"], r["private_dirty"], r["anon"], r["size"]))
    print("%-22s %9d  (%.2f MiB)" % ("total", total, total / 1024))


if __name__ == "__main__":
    main()
