# SPDX-License-Identifier: MIT
"""migration test SCRIPT... --root OLDROOT [--json] [--cut | --cut-at MS,...] [--timeout S]
               [--work-dir DIR]

For recipe authors, on the build host: proves migration scripts idempotent before they ship.
OLDROOT is a tree of the old release's data: an unpacked rootfs, or IMAGE_ROOTFS of the previous
image. Nothing is written to it, and no root privileges are needed.

The scripts run in the runner's order (byte-wise order of their names), each as the runner runs
it (errexit for shells, stdin /dev/null, its own process group, MIGRATION_NAME, MIGRATION_ROOT=/
and the rest of the runner's environment, working directory /, a new TMPDIR), chrooted into a
private copy-on-write view of OLDROOT (an overlayfs in user, mount, pid and network namespaces):
/etc/passwd is OLDROOT's, and so are /bin/sh and every other program a script runs, as on the
device. An OLDROOT without the script's interpreter (or one of another architecture without
qemu-user binfmt) is a plain error, exit 2. The view has a new /proc, a /dev with null, zero,
full, random and urandom, and a tmpfs on /run; those three are not compared. No /sys, and no
network (at boot, migrations run before it).

Then all of them run a second time on the result. The report lists what each script changed in
the first run (files added, removed, changed: content, type, mode, owner; timestamps are not
compared), a failure of either run with the script's output, and the verdict:
  not idempotent: SCRIPT changed PATH again   something changed in the second run (exit 1)
  idempotent                                  nothing did (exit 0)

--cut: for each script, a few runs in which the script is killed (SIGKILL of its process group)
25, 50 and 75 % of its first run's duration after it started (--cut-at MS,...: at these ms),
each from a fresh copy of OLDROOT, then run again to completion with the scripts after it, as the
runner does after a power cut. A result other than the uninterrupted run's is reported as
"not power-cut safe: SCRIPT killed after N ms: ..." (exit 1). A kill is not a power cut: what
the script wrote before it is kept whole (no page cache is lost).

Owners: inside, your uid and gid are root (0). As root, every id maps to itself. With newuidmap
and newgidmap (Debian's uidmap) and an /etc/subuid and /etc/subgid entry, ids 1-65535 map to
your subordinate ids, so a script may chown to other users; without them, a chown to another
user fails and files of OLDROOT owned by others show as 65534 (a script that changes them fails
with "Value too large for defined data type": unpack OLDROOT as yourself). Owners in the report
are the namespace's ids.

Needs Linux >= 5.11 (overlayfs in a user namespace), unprivileged user namespaces allowed (the
default on Debian 12), util-linux (unshare, mount) and coreutils (chroot). Where they are missing
the command exits 2 with the reason. Work files go to --work-dir (default $TMPDIR or /tmp): the
copies of what the scripts change, on a file system with user extended attributes (ext4, xfs,
btrfs, tmpfs since Linux 6.6).

Exit status: 0 idempotent (and power-cut safe with --cut), 1 a script failed, is not idempotent
or not power-cut safe, 2 usage error or no sandbox on this host.
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from migration.errors import MigrationError

name = "test"
helpmsg = "prove migration scripts idempotent on a copy of an old release's tree"


def _cut_points(text: str) -> List[int]:
    try:
        points = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}") from None
    if not points or any(p <= 0 for p in points):
        raise argparse.ArgumentTypeError(f"expected milliseconds > 0: {text!r}")
    return points


def setup_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``migration test``."""
    from migration.commands import seconds

    parser.add_argument("scripts", nargs="+", metavar="SCRIPT", help="migration script to test")
    parser.add_argument(
        "--root",
        dest="oldroot",
        metavar="OLDROOT",
        help="tree of the old release (unpacked rootfs); never written to",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--cut",
        action="store_true",
        help="also kill each script at 25, 50 and 75 %% of its run time, then "
        "run to completion, and compare",
    )
    parser.add_argument(
        "--cut-at",
        type=_cut_points,
        metavar="MS,...",
        help="like --cut, killing each script at these milliseconds",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="kill a script's process group after this long (default no limit)",
    )
    parser.add_argument(
        "--work-dir",
        metavar="DIR",
        help="where the copies of what scripts change go (default $TMPDIR or /tmp)",
    )


def _jobs(paths: List[str]) -> List[Dict[str, str]]:
    """The scripts in the runner's order, each checked as the runner would see it installed."""
    from migration.scripts import invalid_name_reason, is_ignored

    items: Dict[str, Dict[str, str]] = {}
    for path in paths:
        script = os.path.basename(path)
        reason = invalid_name_reason(script)
        if reason is None and is_ignored(script):
            reason = "the runner skips such names (hidden or a backup)"
        if reason:
            raise MigrationError(f"{path}: the runner would not run it: {reason}")
        if script in items:
            raise MigrationError(f"{path}: two scripts named {script}")
        if not os.path.isfile(path):
            raise MigrationError(f"{path}: not a regular file")
        try:
            with open(path, "rb"):
                pass  # checked here: in the sandbox, a failure would say less
        except OSError as e:
            raise MigrationError(f"cannot read {path}: {e.strerror}") from None
        items[script] = {"name": script, "path": os.path.abspath(path)}
    return [items[n] for n in sorted(items, key=os.fsencode)]


def _foreign_owners(oldroot: str, ids: Any) -> Tuple[int, str]:
    """How many entries of OLDROOT belong to ids the namespace cannot map, and one of them."""
    count, example = 0, ""
    for dirpath, dirnames, filenames in os.walk(oldroot):
        for entry_name in dirnames + filenames:
            path = os.path.join(dirpath, entry_name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not ids.outside(st.st_uid, st.st_gid):
                count += 1
                example = example or f"/{os.path.relpath(path, oldroot)} ({st.st_uid}:{st.st_gid})"
    return count, example


def _workdir(base: Optional[str]) -> str:
    base = os.path.abspath(base or os.environ.get("TMPDIR") or "/tmp")
    while True:
        path = os.path.join(base, f"migration-test.{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise MigrationError(f"cannot create a work dir in {base}: {e.strerror}") from None


def run(args: argparse.Namespace) -> int:
    """Run the scripts twice (and cut) in a sandbox; report; 0 only when all is well."""
    import json

    oldroot = args.oldroot or (args.root if args.root != "/" else None)
    if not oldroot:
        raise MigrationError("give the old release's tree with --root OLDROOT")
    report = check(
        oldroot,
        args.scripts,
        timeout=args.timeout,
        cut=args.cut,
        cut_at=args.cut_at,
        work_dir=args.work_dir,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report_text(report))
    return int(report["exit_code"])


def check(
    oldroot: str,
    paths: List[str],
    *,
    timeout: Optional[float] = None,
    cut: bool = False,
    cut_at: Optional[List[int]] = None,
    work_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """The report of `migration test` on the scripts at `paths` (their file names are their
    installed names) and `oldroot`: what --json prints. MigrationError (SandboxError among them)
    for what the command exits 2 on. Also the API of the BitBake task (migration.bitbake)."""
    # Imported here: every `migration` invocation (the boot run too) imports all command modules.
    import json
    import shutil

    from migration import leftovers, sandbox

    oldroot = os.path.abspath(oldroot)
    if not os.path.isdir(oldroot):
        raise MigrationError(f"OLDROOT {oldroot} is not a directory")
    jobs = _jobs(paths)
    ids = sandbox.plan_ids()
    warnings = []
    if ids.kind != "identity":
        count, example = _foreign_owners(oldroot, ids)
        if count:
            warnings.append(
                f"{count} entries of OLDROOT belong to ids without a map in the "
                f"namespace, e.g. {example}: they show as 65534, and a script that "
                "changes them fails (Value too large for defined data type); unpack "
                "OLDROOT as yourself"
            )
    work = _workdir(work_dir)
    try:
        job = {
            # The identity of this live process (pid as the host sees it): a runner on this host
            # that looks for a dead runner's leftovers (migration.leftovers) leaves them alone.
            "runner": leftovers.identity(),
            "oldroot": oldroot,
            "scripts": jobs,
            "timeout": timeout or None,
            "cut": bool(cut or cut_at),
            "cut_at": cut_at,
        }
        with open(os.path.join(work, "job.json"), "w", encoding="utf-8") as f:
            json.dump(job, f)
        code = sandbox.launch(work, ids, sys.executable)
        result = _result(work, code)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = _verdict(result)
    report.update(
        oldroot=oldroot, scripts=[j["name"] for j in jobs], ids=ids.kind, warnings=warnings
    )
    return report


def _result(work: str, code: int) -> Dict[str, Any]:
    import json

    from migration.sandbox import NEEDS, SandboxError, log_tail

    try:
        with open(os.path.join(work, "result.json"), encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        raise SandboxError(
            f"the sandbox ended with exit {code} and no result: "
            f"{log_tail(os.path.join(work, 'stderr.log')) or 'no message'} "
            f"(migration test needs {NEEDS})"
        ) from None
    if "error" in result:
        raise SandboxError(result["error"])
    return dict(result)


def _verdict(result: Dict[str, Any]) -> Dict[str, Any]:
    problems: List[str] = []
    for run_name, steps in (("first", result["first_run"]), ("second", result["second_run"])):
        for step in steps:
            if not step["ok"]:
                problems.append(
                    f"failed: {step['name']} failed in the {run_name} run: {step['reason']}"
                )
    for step in result["second_run"]:
        for change in step["changes"]:
            problems.append(f"not idempotent: {step['name']} changed {change['path']} again")
    for cut in result["cuts"]:
        where = f"{cut['name']} killed after {cut['at_ms']} ms"
        if "failed" in cut:
            failed = cut["failed"]
            problems.append(
                f"not power-cut safe: {where}: {failed['name']} then failed: {failed['reason']}"
            )
        for change in cut.get("differences", []):
            problems.append(
                f"not power-cut safe: {where}: {change['path']} differs from the uninterrupted run"
            )
    if not problems:
        verdict = "idempotent" + (" and power-cut safe" if result["cuts"] else "")
    else:
        verdict = problems[0].partition(":")[0]
    return dict(result, verdict=verdict, problems=problems, exit_code=1 if problems else 0)


def report_text(report: Dict[str, Any]) -> str:
    """The report of :func:`check` as the command prints it (without --json)."""
    from migration.files import shown
    from migration.sandbox import IdMap
    from migration.treediff import Change, Entry

    def change_line(c: Dict[str, Any]) -> str:
        def entry(d: Optional[Dict[str, Any]]) -> Optional[Entry]:
            if d is None:
                return None
            data = d.get("sha256", d.get("target", d.get("device", "")))
            return Entry(d["type"], int(d["mode"], 8), d["uid"], d["gid"], data)

        return shown(
            Change(
                c["path"],
                c["change"],
                tuple(c.get("what", ())),
                entry(c.get("before")),
                entry(c.get("after")),
            ).describe()
        )

    lines: List[str] = []
    out = lines.append
    ids = IdMap(report["ids"], [], []).describe()
    out(
        f"migration test: {len(report['scripts'])} script(s) on a private view of "
        f"{shown(report['oldroot'])} (not written to); ids: {ids}"
    )
    for warning in report["warnings"]:
        out(f"WARNING: {shown(warning)}")
    for title, key in (
        ("first run", "first_run"),
        ("second run (on the first run's result)", "second_run"),
    ):
        if not report[key]:
            continue
        out(f"{title}:")
        for step in report[key]:
            status = "ok" if step["ok"] else f"FAILED: {step['reason']}"
            out(
                f"  {shown(step['name'])}: {status} in {step['duration_s']:.2f} s"
                + ("" if step["changes"] else ", no changes")
            )
            for c in step["changes"]:
                out(f"    {change_line(c)}")
            if "output" in step:
                out("    output:")
                for line in step["output"].rstrip("\n").split("\n"):
                    out(f"      | {shown(line)}")
    if report["cuts"]:
        out("cuts (killed, then run to completion):")
        for cut in report["cuts"]:
            where = f"  {shown(cut['name'])} killed after {cut['at_ms']} ms: "
            if not cut.get("cut") and "failed" not in cut:
                out(where + "finished before the cut")
            elif "failed" in cut:
                failed = cut["failed"]
                out(where + f"then {shown(failed['name'])} FAILED: {failed['reason']}")
                for line in failed.get("output", "").rstrip("\n").split("\n"):
                    out(f"      | {shown(line)}")
            elif cut["differences"]:
                out(where + "the result differs from the uninterrupted run:")
                for c in cut["differences"]:
                    out(f"    {change_line(c)}")
            else:
                out(where + "same result as the uninterrupted run")
    for problem in report["problems"]:
        out(shown(problem))
    out(f"verdict: {report['verdict']}")
    return "\n".join(lines)
