# SPDX-License-Identifier: MIT
"""Re-run every applied migration of a device and report what the second run changed.

    python3 migration-rerun-check.py [--root DIR] [--migration CMD] [--exclude PATH]... [PATH...]

A migration must be idempotent: it runs again after a power cut, a kill or a failure. This
checks it on a booted system whose migrations are all applied: snapshot the data the migrations
touch, `migration forget` every applied migration, `migration run`, snapshot again, compare.

PATH (default /etc and /var/lib) are the trees snapshotted: where migrations change a device's
configuration and data (README: what a script may rely on at boot); /usr is the image's, and
/run, /tmp and /var/volatile do not outlive a boot. The state dir (/var/lib/migration: records,
logs, timestamps that a run must change) is left out, and so is every --exclude PATH. A snapshot
holds, per path, its type, permission bits, owner and group, and a file's sha256 or a symlink's
target; not timestamps, so a step that rewrites the same bytes or chowns again passes. A second
run that adds, removes or changes any of these is reported.

--root DIR takes PATH under DIR and passes --root DIR to the runner (a copy of a device on a
host); --migration is the runner's command line, split at blanks (default `migration`).

Prints one JSON object (forgotten names, the run's exit status and output, the changed paths
with their two snapshot entries) and exits 0 when nothing changed, 1 when something did, 2 when
the check cannot be made (a migration not applied before or after, forget or run failing).
Runs on the target: only python3-core, -crypt and -json modules.
"""

import argparse
import hashlib
import json
import os
import stat
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

STATE_DIR = "/var/lib/migration"
DEFAULT_PATHS = ("/etc", "/var/lib")


def entry(path: str) -> str:
    """What a snapshot holds of one path: type, mode, owner, and content or link target."""
    st = os.lstat(path)
    head = f"{stat.S_IMODE(st.st_mode):04o} {st.st_uid}:{st.st_gid}"
    if stat.S_ISLNK(st.st_mode):
        return f"link {head} -> {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"dir {head}"
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                digest.update(block)
        return f"file {head} sha256:{digest.hexdigest()}"
    return f"special {head} {stat.S_IFMT(st.st_mode):o}"


def snapshot(root: str, paths: Sequence[str], excluded: Sequence[str]) -> Dict[str, str]:
    """Every path under ``paths`` (device paths, under ``root``) but ``excluded``."""
    skip = {os.path.normpath(root + p) for p in excluded}
    out: Dict[str, str] = {}
    for top in paths:
        start = os.path.normpath(root + top)
        if not os.path.lexists(start) or start in skip:
            continue
        out[top] = entry(start)
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) not in skip)
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                if full not in skip:
                    out[full[len(root) :] if root else full] = entry(full)
    return out


def runner(
    command: List[str], *args: str, stderr: int = subprocess.STDOUT
) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [*command, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        check=False,
    )


def states(command: List[str]) -> Dict[str, str]:
    """Script name -> state, from `migration status --json` (exits non-zero with pending ones)."""
    # Its warnings (a volatile state dir, a refused image) go to stderr, the JSON to stdout.
    proc = runner(command, "status", "--json", stderr=subprocess.PIPE)
    try:
        return {e["name"]: e["state"] for e in json.loads(proc.stdout)}
    except ValueError:
        out = proc.stdout + proc.stderr
        raise SystemExit(f"migration status --json printed no JSON:\n{out}") from None


def fail(report: dict, why: str) -> int:
    report["error"] = why
    print(json.dumps(report, indent=1))
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", metavar="PATH", default=list(DEFAULT_PATHS))
    ap.add_argument("--root", default="", help="the device's root (default: /)")
    ap.add_argument("--migration", default="migration", help="the runner's command line")
    ap.add_argument("--exclude", action="append", default=[], metavar="PATH")
    args = ap.parse_args(argv)
    root = os.path.abspath(args.root) if args.root else ""
    command = args.migration.split() + (["--root", root] if root else [])
    excluded = [STATE_DIR, *args.exclude]
    report: dict = {"paths": args.paths, "excluded": excluded}
    before_states = states(command)
    report["forgotten"] = sorted(before_states)
    pending = {n: s for n, s in before_states.items() if s != "applied"}
    if not before_states or pending:
        return fail(report, f"not every migration is applied: {pending or 'none installed'}")
    before = snapshot(root, args.paths, excluded)
    for name in sorted(before_states):
        proc = runner(command, "forget", name)
        if proc.returncode != 0:
            return fail(report, f"migration forget {name} exited {proc.returncode}: {proc.stdout}")
    proc = runner(command, "run")
    report["run"] = {"rc": proc.returncode, "output": proc.stdout}
    after_states = states(command)
    if proc.returncode != 0 or set(after_states.values()) != {"applied"}:
        return fail(report, f"the second run did not apply every migration: {after_states}")
    after = snapshot(root, args.paths, excluded)
    report["changed"] = [
        {"path": p, "before": before.get(p), "after": after.get(p)}
        for p in sorted(set(before) | set(after))
        if before.get(p) != after.get(p)
    ]
    print(json.dumps(report, indent=1))
    return 1 if report["changed"] else 0


if __name__ == "__main__":
    sys.exit(main())
