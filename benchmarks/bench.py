#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Benchmark of the runner against two baselines over the same scripts (not a test).

For N = 0, 10, 100, 1000 trivial scripts (`#!/bin/sh`, a distinct comment, `true`) it prints a
Markdown table with
- noop: a `migration run` with every script applied, (a) without a manifest (records are read)
  and (b) with the image manifest and its done stamp (the cheap path);
- apply: a `migration run` applying all N, each durably recorded;
- peak RSS of the runner (ru_maxrss of the process, from wait4);
- the same for Debian's `run-parts` (apply only: it has no memory of what ran) and for a POSIX-sh
  loop that hashes each script with sha256sum and keeps a stamp file per hash (the naive design
  from the discussion; no fsync), and `python3 -I -c pass` as the floor of any Python runner.

The runner starts like the installed wrapper: `python3 -I` running the migration package from a
path (recipes-core/migration/files/migration.wrapper). Times are medians of --repeat runs (apply:
of fresh state dirs). Usage: python3 benchmarks/bench.py [--python /usr/bin/python3] [--dir D]
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
WRAPPER = """import runpy, sys
sys.path.insert(0, {lib!r})
runpy.run_module("migration", run_name="__main__", alter_sys=False)
"""
WRAPPER_DIRECT = """import sys
sys.path.insert(0, {lib!r})
from migration.cli import main
sys.exit(main())
"""
NAIVE = """set -e
for f in "$1"/*; do
    h=$(sha256sum "$f" | cut -d' ' -f1)
    [ -e "$2/$h" ] && continue
    sh -e "$f"
    touch "$2/$h"
done
"""


GNU_TIME = "/usr/bin/time"


def timed(argv, env=None):
    """(seconds, peak RSS KiB, exit status) of one command. The RSS comes from GNU time when
    it is installed: ru_maxrss of a child forked from this (big) Python process would count
    the parent's pages it inherited until exec."""
    rss_file = None
    if os.path.exists(GNU_TIME):
        fd, rss_file = tempfile.mkstemp()
        os.close(fd)
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file, *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    elapsed = time.perf_counter() - t0
    rss = 0
    if rss_file:
        with open(rss_file) as f:
            rss = int(f.read().split()[-1])
        os.unlink(rss_file)
    return elapsed, rss, proc.returncode


def make_root(base, n):
    root = os.path.join(base, f"root{n}")
    scripts = os.path.join(root, "etc", "migration.d")
    frags = os.path.join(root, "usr", "share", "migration", "packages")
    os.makedirs(scripts)
    os.makedirs(frags)
    entries = []
    sys.path.insert(0, LIB)
    from migration import manifest
    from migration import scripts as scr

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


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3")
                    else sys.executable)
    ap.add_argument("--sizes", default="0,10,100,1000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", help="work directory (default: a new one under $TMPDIR)")
    ap.add_argument("--direct", action="store_true",
                    help="wrapper calls migration.cli.main() instead of runpy.run_module()")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="migration-bench-", dir=args.dir)
    wrapper = os.path.join(base, "migration")
    with open(wrapper, "w") as f:
        f.write((WRAPPER_DIRECT if args.direct else WRAPPER).format(lib=LIB))
    naive = os.path.join(base, "naive.sh")
    with open(naive, "w") as f:
        f.write(NAIVE)
    py = [args.python, "-I"]
    run_parts = shutil.which("run-parts")
    rows = []
    floor = median([timed([*py, "-c", "pass"])[0] for _ in range(args.repeat)])
    floor_rss = timed([*py, "-c", "pass"])[1]
    for n in (int(x) for x in args.sizes.split(",")):
        root, scripts = make_root(base, n)
        plain = [*py, wrapper, "--scripts-dir", scripts, "--manifest", os.path.join(base, "none")]
        stamped = [*py, wrapper, "--root", root]
        apply_t, apply_rss = [], []
        reps = args.repeat if n <= 100 else max(1, args.repeat // 2)
        for r in range(reps):
            state = os.path.join(base, f"state{n}-{r}")
            t, rss, rc = timed([*plain, "--state-dir", state, "run"])
            assert rc == 0, f"migration run failed for N={n}"
            apply_t.append(t)
            apply_rss.append(rss)
        state = os.path.join(base, f"state{n}-0")
        noop = [timed([*plain, "--state-dir", state, "run"]) for _ in range(args.repeat)]
        assert all(rc == 0 for _, _, rc in noop)
        # with the image manifest: first run applies and stamps, then the cheap path
        t, _, rc = timed([*stamped, "run"])
        assert rc == 0
        noop_m = [timed([*stamped, "run"]) for _ in range(args.repeat)]
        assert all(rc == 0 for _, _, rc in noop_m)
        rp = []
        if run_parts:
            rp = [timed([run_parts, "--exit-on-error", scripts])[0] for _ in range(reps)]
        nv_apply, nv_noop = [], []
        for r in range(reps):
            stamps = os.path.join(base, f"naive{n}-{r}")
            os.mkdir(stamps)
            nv_apply.append(timed(["sh", naive, scripts, stamps])[0])
        stamps = os.path.join(base, f"naive{n}-0")
        nv_noop = [timed(["sh", naive, scripts, stamps])[0] for _ in range(args.repeat)]
        rows.append({
            "n": n,
            "noop": median([x[0] for x in noop]),
            "noop_manifest": median([x[0] for x in noop_m]),
            "apply": median(apply_t),
            "rss_kib": max(apply_rss + [x[1] for x in noop]),
            "run_parts": median(rp),
            "naive_apply": median(nv_apply),
            "naive_noop": median(nv_noop),
        })
    shutil.rmtree(base)
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    how = "cli.main()" if args.direct else "runpy"
    print(f"python: {args.python} -I (wrapper: {how}); `python3 -I -c pass`: {ms(floor)}, "
          f"peak RSS {floor_rss / 1024:.1f} MiB; state dir on {os.path.dirname(base) or '.'}")
    print()
    print("| N | no-op run | no-op run, manifest+stamp | sh loop no-op | apply N | run-parts "
          "| sh loop apply | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {ms(r['noop'])} | {ms(r['noop_manifest'])} | {ms(r['naive_noop'])} "
              f"| {ms(r['apply'])} | {ms(r['run_parts'])} | {ms(r['naive_apply'])} "
              f"| {r['rss_kib'] / 1024:.1f} MiB |")


if __name__ == "__main__":
    main()
