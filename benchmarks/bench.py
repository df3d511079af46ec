#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Benchmark of the runner against its baselines over the same scripts, side by side (not a test).

For N = 0, 10, 100, 1000 trivial scripts (`#!/bin/sh`, a distinct comment, `true`) it measures,
interleaved in the same run (so a machine busy with other work slows every column alike):

- `python3 -I -c pass`: the floor of any Python runner;
- no-op `migration run` (every script applied, image manifest and done stamp present: the boot
  case) through the `migration` command as the runner recipe installs it
  (recipes-core/migration/files/migration.wrapper), and without a manifest (every record read);
- the naive design from the discussion: a POSIX-sh loop running `sha256sum` per script and
  keeping a stamp file per hash (no fsync), no-op and apply;
- apply: `migration run` applying all N, each durably recorded after its effects (a sync(2)
  and two directory fsyncs per script, see lib/migration/state.py);
- Debian's `run-parts` (apply only: it has no memory of what ran, and syncs nothing);
- the durability floor: a sh loop that runs each script and then `sync` (coreutils, no
  argument: sync(2)), what any runner pays that makes every script's effects durable before it
  records them and goes on (issue 9); `script + sync` is the fair baseline for a durable runner;
- peak RSS of the runner (GNU time's %M, measured in separate runs).

Everything (scripts and state) lives on the file system under test: a directory on disk
(--disk-dir, default $TMPDIR or /tmp) and tmpfs (--tmpfs-dir, default /dev/shm). Times are
medians of --repeat runs (apply at N=1000: --repeat-big). The verdicts compare against the
targets of issue 2: no-op at N=1000 within 2x of `python3 -c pass` and at least 10x faster than
the sh loop; applying 100 within 2x of run-parts (issue 2) and of script + sync (issue 9); peak
RSS under 16 MiB.

Usage: python3 benchmarks/bench.py [--python /usr/bin/python3] [--sizes 0,10,100,1000]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
WRAPPER = os.path.join(os.path.dirname(LIB), "recipes-core/migration/files/migration.wrapper")


def installed_wrapper() -> str:
    """The `migration` command as migration-install.sh installs it, pointing at this lib/."""
    with open(WRAPPER) as f:
        text = f.read()
    line = "sys.path.insert(0, _package_dir())"
    if line not in text:
        raise SystemExit(f"{WRAPPER}: no line {line!r} to point at {LIB}")
    # the wrapper finds the package relative to itself; here it is this checkout's lib/
    text = text.replace(line, f"sys.path.insert(0, {LIB!r})")
    return text.replace("@SBINDIR@", "/usr/sbin").replace("@LIBDIR@", "/usr/lib")


NAIVE = """set -e
for f in "$1"/*; do
    [ -e "$f" ] || continue  # N = 0: the pattern itself
    h=$(sha256sum "$f" | cut -d' ' -f1)
    [ -e "$2/$h" ] && continue
    sh -e "$f"
    touch "$2/$h"
done
"""
# The floor of a durable runner: each script, then sync(2) ($2: the sync program).
SCRIPT_SYNC = """set -e
for f in "$1"/*; do
    [ -e "$f" ] || continue
    "$f"
    "$2"
done
"""
GNU_TIME = "/usr/bin/time"


def run(argv):
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(argv)}")
    return elapsed


def peak_rss_kib(argv):
    """ru_maxrss of the command itself, from GNU time (a child forked from this big Python
    process would count pages it inherited until exec)."""
    if not os.path.exists(GNU_TIME):
        return float("nan")
    fd, out = tempfile.mkstemp()
    os.close(fd)
    try:
        subprocess.run([GNU_TIME, "-f", "%M", "-o", out, *argv], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        with open(out) as f:
            return int(f.read().split()[-1])
    finally:
        os.unlink(out)


def make_root(base, n):
    """An image root with n scripts, their package fragment and the image manifest."""
    sys.path.insert(0, LIB)
    from migration import manifest
    from migration import scripts as scr

    root = os.path.join(base, f"root{n}")
    scripts = os.path.join(root, "etc", "migration.d")
    frags = os.path.join(root, "usr", "share", "migration", "packages")
    os.makedirs(scripts)
    os.makedirs(frags)
    entries = []
    for i in range(n):
        name = f"{i:04d}-bench-step"  # no dot: run-parts skips names with dots
        path = os.path.join(scripts, name)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\n# step {i}\ntrue\n")
        os.chmod(path, 0o755)
        entries.append((name, scr.sha256_file(path)))
    with open(os.path.join(frags, "bench.json"), "w") as f:
        json.dump(manifest.fragment("bench", "1.0-r0", entries), f)
    manifest.generate(root)
    return root, scripts


def fs_type(path):
    """Type and options of the mount holding `path` (from /proc/mounts)."""
    best = ("", "?", "")
    with open("/proc/mounts") as f:
        for line in f:
            _dev, mnt, kind, opts = line.split()[:4]
            if (path + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[0]):
                best = (mnt, kind, opts)
    return f"{best[1]} {best[2]}"


def median(values):
    return statistics.median(values) if values else float("nan")


def measure(base, n, args, files):
    """Every column for one N on the file system of `base`, interleaved repetition by
    repetition."""
    py = [args.python, "-I"]
    root, scripts = make_root(base, n)
    direct_w = [*py, files["wrapper"]]
    none = os.path.join(base, "no-manifest.json")
    counter = iter(range(10**6))

    def fresh(prefix):
        path = os.path.join(base, f"{prefix}{n}-{next(counter)}")
        os.mkdir(path)
        return path

    def plain(state):
        return [*direct_w, "--scripts-dir", scripts, "--state-dir", state, "--manifest", none,
                "run"]

    # states for the no-op runs: all applied (with manifest: the stamp and the key too)
    noop_state = fresh("noop-state")
    run(plain(noop_state))
    run([*direct_w, "--root", root, "run"])
    naive_stamps = fresh("naive-noop")
    run(["sh", files["naive"], scripts, naive_stamps])

    t = {k: [] for k in ("pass", "noop_direct", "noop_plain", "naive_noop",
                         "apply", "run_parts", "naive_apply", "script_sync")}
    reps = args.repeat
    apply_reps = reps if n <= 100 else args.repeat_big
    for r in range(reps):
        t["pass"].append(run([*py, "-c", "pass"]))
        t["noop_direct"].append(run([*direct_w, "--root", root, "run"]))
        t["noop_plain"].append(run(plain(noop_state)))
        t["naive_noop"].append(run(["sh", files["naive"], scripts, naive_stamps]))
        if r >= apply_reps:
            continue
        t["apply"].append(run(plain(fresh("apply-state"))))
        if args.run_parts:
            t["run_parts"].append(run([args.run_parts, "--exit-on-error", scripts]))
        t["naive_apply"].append(run(["sh", files["naive"], scripts, fresh("naive-apply")]))
        t["script_sync"].append(run(["sh", files["script_sync"], scripts, args.sync]))
    row = {k: median(v) for k, v in t.items()}
    row["n"] = n
    row["rss_apply"] = peak_rss_kib(plain(fresh("rss-state")))
    row["rss_noop"] = peak_rss_kib([*direct_w, "--root", root, "run"])
    shutil.rmtree(root)
    return row


def ms(s):
    return f"{s * 1000:.0f} ms" if s == s else "n/a"


def ratio(a, b):
    return a / b if b > 0 else float("inf")


def verdict(ok):
    return "PASS" if ok else "MISS"


def report(title, rows, run_parts):
    print(f"### {title}")
    print()
    print("| N | python -c pass | no-op | no-op, no manifest "
          "| sh loop no-op | apply N | run-parts | script + sync | sh loop apply | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rss = max(r["rss_apply"], r["rss_noop"]) / 1024
        print(f"| {r['n']} | {ms(r['pass'])} | {ms(r['noop_direct'])} "
              f"| {ms(r['noop_plain'])} | {ms(r['naive_noop'])} | {ms(r['apply'])} "
              f"| {ms(r['run_parts'])} | {ms(r['script_sync'])} "
              f"| {ms(r['naive_apply'])} | {rss:.1f} MiB |")
    print()
    by_n = {r["n"]: r for r in rows}
    big, hundred = by_n.get(1000), by_n.get(100)
    if big:
        x = ratio(big["noop_direct"], big["pass"])
        print(f"- no-op N=1000 / python -c pass: {x:.2f}x (target <= 2x): {verdict(x <= 2)}")
        x = ratio(big["naive_noop"], big["noop_direct"])
        print(f"- sh loop no-op / no-op N=1000: {x:.1f}x faster (target >= 10x): "
              f"{verdict(x >= 10)}")
    if hundred and run_parts:
        x = ratio(hundred["apply"], hundred["run_parts"])
        print(f"- apply 100 / run-parts: {x:.2f}x (target <= 2x): {verdict(x <= 2)}")
        x = ratio(hundred["apply"], hundred["script_sync"])
        print(f"- apply 100 / (script + sync): {x:.2f}x (target <= 2x, issue 9): "
              f"{verdict(x <= 2)}")
    rss = max(max(r["rss_apply"], r["rss_noop"]) for r in rows) / 1024
    print(f"- peak RSS: {rss:.1f} MiB (target < 16 MiB): {verdict(rss < 16)}")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3")
                    else sys.executable)
    ap.add_argument("--sizes", default="0,10,100,1000")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--repeat-big", type=int, default=3, help="apply repetitions at N > 100")
    ap.add_argument("--disk-dir", default=tempfile.gettempdir())
    ap.add_argument("--tmpfs-dir", default="/dev/shm", help="'' to skip the tmpfs table")
    args = ap.parse_args()
    args.run_parts = shutil.which("run-parts")
    args.sync = shutil.which("sync")
    sizes = [int(x) for x in args.sizes.split(",")]
    targets = [("state on disk", args.disk_dir)]
    if args.tmpfs_dir:
        targets.append(("state on tmpfs", args.tmpfs_dir))
    results = []
    for label, where in targets:
        base = tempfile.mkdtemp(prefix="migration-bench-", dir=where)
        try:
            files = {}
            for key, text in (("wrapper", installed_wrapper()),
                              ("naive", NAIVE), ("script_sync", SCRIPT_SYNC)):
                files[key] = os.path.join(base, key)
                with open(files[key], "w") as f:
                    f.write(text)
            fstype = fs_type(base)
            rows = [measure(base, n, args, files) for n in sizes]
            results.append((f"{label} ({where}, {fstype})", rows))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    print(f"python: {args.python} -I; repetitions: {args.repeat} (apply at N>100: "
          f"{args.repeat_big}); medians; load average {load[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    for title, rows in results:
        report(title, rows, args.run_parts)


if __name__ == "__main__":
    main()
