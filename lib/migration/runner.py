# SPDX-License-Identifier: MIT
"""The plan and the policy: which scripts are applied, pending, failed, interrupted or refused,
in which order they run, and what a failure does to the rest.

`plan()` and the refusal checks are pure functions of what was found on disk, so the tests can
cover the decisions exhaustively; `run()` and `inspect()` do the I/O around them.

States (also the `state` of `migration status --json`):
- applied: a record for the script's sha256 exists; it never runs again, whatever its name now.
- refused: not run and reported. As root: the script is a symlink, not owned by root, writable by
  group or others, or the scripts dir is writable by group/others or not owned by root. With a
  manifest: the content differs from it (tampered), the manifest does not list the script, or the
  manifest lists a script that is missing from the scripts dir.
- interrupted: it started (durable note) but no outcome was recorded: power cut or kill. Runs again.
- failed: its last attempt failed; it is retried on the next run.
- pending: never tried.
"""

import contextlib
import os
import stat
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from migration import manifest as manifest_mod
from migration.errors import MigrationError
from migration.scripts import Script, discover, interpreter
from migration.state import Snapshot, State, now_iso, read_os_release

POLICIES = ("continue", "stop")
DEFAULT_LOCK_WAIT = 60.0

APPLIED, PENDING, FAILED, REFUSED, INTERRUPTED = (
    "applied",
    "pending",
    "failed",
    "refused",
    "interrupted",
)


class Options(NamedTuple):
    scripts_dir: str
    state_dir: str
    root: str = "/"
    manifest_path: Optional[str] = None
    policy: str = "continue"
    timeout: Optional[float] = None
    lock_wait: float = DEFAULT_LOCK_WAIT
    kill_grace: float = 5.0


class Item(NamedTuple):
    name: str
    sha256: str
    state: str
    reason: str = ""
    script: Optional[Script] = None
    record: Optional[Dict[str, Any]] = None  # applied, failed or started record
    package: str = ""
    version: str = ""


def dir_refusal(scripts_dir: str, euid: int) -> Optional[str]:
    """Why every script of `scripts_dir` is refused when running as root, or None."""
    if euid != 0:
        return None  # an unprivileged runner can only do what its user can anyway
    st = os.stat(scripts_dir)
    if st.st_uid != 0:
        return f"scripts dir {scripts_dir} is owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return f"scripts dir {scripts_dir} is writable by group or others (mode {_mode(st)})"
    return None


def _mode(st: "os.stat_result") -> str:
    return oct(stat.S_IMODE(st.st_mode))[2:].rjust(4, "0")


def script_refusal(script: Script, euid: int) -> Optional[str]:
    """Why root must not run `script`, or None. Not checked for other users (by design)."""
    if euid != 0:
        return None
    if script.symlink:
        return "is a symlink"
    if script.uid != 0:
        return f"is owned by uid {script.uid}, not root"
    if script.mode & 0o022:
        return f"is writable by group or others (mode {oct(script.mode)[2:].rjust(4, '0')})"
    return None


def manifest_refusal(script: Script, manifest: Optional[manifest_mod.Manifest]) -> Optional[str]:
    if manifest is None:
        return None
    entry = manifest.entries.get(script.name)
    if entry is None:
        return f"not listed in the image manifest {manifest.path}"
    if entry.sha256 != script.sha256:
        return (
            f"content differs from the image manifest (sha256 {script.sha256}, "
            f"expected {entry.sha256} from package {entry.package}): tampered or edited"
        )
    return None


def plan(
    scripts: List[Script],
    snap: Snapshot,
    manifest: Optional[manifest_mod.Manifest],
    euid: int,
    dir_reason: Optional[str],
    scripts_dir: str = "",
) -> List[Item]:
    """The state of every script (and of manifest entries missing from the dir), by name."""
    items: List[Item] = []
    for s in scripts:
        entry = manifest.entries.get(s.name) if manifest else None
        pkg = (entry.package, entry.version) if entry else ("", "")
        if s.sha256 in snap.applied:
            items.append(Item(s.name, s.sha256, APPLIED, "", s, snap.applied[s.sha256], *pkg))
            continue
        reason = dir_reason or script_refusal(s, euid) or manifest_refusal(s, manifest)
        if reason:
            items.append(Item(s.name, s.sha256, REFUSED, reason, s, None, *pkg))
        elif s.sha256 in snap.started:
            reason = "started but never finished (power cut or kill): runs again"
            record = snap.started[s.sha256]
            items.append(Item(s.name, s.sha256, INTERRUPTED, reason, s, record, *pkg))
        elif s.sha256 in snap.failed:
            record = snap.failed[s.sha256]
            reason = str(record.get("reason", ""))
            items.append(Item(s.name, s.sha256, FAILED, reason, s, record, *pkg))
        else:
            items.append(Item(s.name, s.sha256, PENDING, "", s, None, *pkg))
    if manifest is not None:
        present = {s.name for s in scripts}
        for e in manifest.entries.values():
            if e.name in present:
                continue
            if e.sha256 in snap.applied:
                items.append(Item(e.name, e.sha256, APPLIED, "", None, snap.applied[e.sha256],
                                  e.package, e.version))
            else:
                reason = (f"listed in the image manifest (package {e.package}) "
                          f"but missing from {scripts_dir or 'the scripts dir'}")
                items.append(Item(e.name, e.sha256, REFUSED, reason, None, None,
                                  e.package, e.version))
        items.sort(key=lambda i: os.fsencode(i.name))
    return items


def _shas(scripts: List[Script], manifest: Optional[manifest_mod.Manifest]) -> List[str]:
    shas = [s.sha256 for s in scripts]
    if manifest is not None:
        shas += [e.sha256 for e in manifest.entries.values()]
    return shas


def inspect(opts: Options, state: State, repair: bool = False) -> Tuple[List[Item], List[str]]:
    """Every script's state and the warnings found on the way. Without `repair` it writes
    nothing (status, dry-run); with it (lock held) damaged records are moved aside."""
    manifest = manifest_mod.load(opts.manifest_path) if opts.manifest_path else None
    scripts, warnings = discover(opts.scripts_dir)
    snap = state.snapshot(_shas(scripts, manifest), repair=repair)
    for d in snap.damaged:
        verb = "moved aside to" if repair else "found"
        warnings.append(f"damaged state record {verb} {d.path}: {d.reason}")
    euid = os.geteuid()
    items = plan(scripts, snap, manifest, euid, dir_refusal(opts.scripts_dir, euid),
                 opts.scripts_dir)
    return items, warnings


def _stderr(msg: str) -> None:
    """Report on stderr (the journal under systemd). A lost console (EPIPE after a journald
    restart) must not abort a run between a script and its record."""
    with contextlib.suppress(OSError, ValueError):
        print(f"migration: {msg}", file=sys.stderr, flush=True)


def _nothing_to_do(
    state: State, scripts: List[Script], manifest: Optional[manifest_mod.Manifest]
) -> bool:
    """The cheap path: the stamp of this manifest exists and the dir holds exactly its scripts."""
    if manifest is None or not state.has_done(manifest.digest):
        return False
    if len(scripts) != len(manifest.entries):
        return False
    entries = manifest.entries
    return all(s.name in entries and entries[s.name].sha256 == s.sha256 for s in scripts)


def _leave_noop_key(state: State, manifest: Optional[manifest_mod.Manifest],
                    image: Dict[str, str]) -> None:
    if manifest is not None and manifest.file_sha256:
        entries = [(e.name, e.sha256) for e in manifest.entries.values()]
        state.write_noop_key(manifest.file_sha256, image, manifest.digest, entries)


def run(opts: Options, say: Callable[[str], None] = _stderr) -> int:
    """Run every pending script once, in order, under the lock; returns the exit code
    (0: everything applied; 1: something failed, was refused or is still pending)."""
    state = State(opts.state_dir)
    manifest = manifest_mod.load(opts.manifest_path) if opts.manifest_path else None
    # A missing scripts dir fails here, before the state dir is touched.
    scripts, warnings = discover(opts.scripts_dir)
    state.lock(opts.lock_wait)
    try:
        return _run_locked(opts, state, scripts, warnings, manifest, say)
    except BaseException:
        # Interrupted or failing: the outcomes recorded so far still become durable (the first
        # error is the one reported).
        with contextlib.suppress(MigrationError):
            state.settle()
        raise
    finally:
        state.unlock()


def _run_locked(
    opts: Options,
    state: State,
    scripts: List[Script],
    warnings: List[str],
    manifest: Optional[manifest_mod.Manifest],
    say: Callable[[str], None],
) -> int:
    meta = state.check_meta()
    image = read_os_release(opts.root)
    for w in warnings:
        say(w)
    if _nothing_to_do(state, scripts, manifest):
        state.update_meta(image, meta)
        _leave_noop_key(state, manifest, image)
        return 0
    state.prepare()
    snap = state.snapshot(_shas(scripts, manifest), repair=True)
    for d in snap.damaged:
        say(f"damaged state record moved aside to {d.path}: {d.reason}")
    euid = os.geteuid()
    items = plan(scripts, snap, manifest, euid, dir_refusal(opts.scripts_dir, euid),
                 opts.scripts_dir)
    outcome: Dict[str, str] = {}  # sha -> state reached in this run (same content runs once)
    stopped_by = ""
    final: List[str] = []
    for item in items:
        st = item.state
        if st == APPLIED:
            final.append(APPLIED)
            continue
        if st == REFUSED:
            say(f"{item.name}: refused: {item.reason}")
            final.append(REFUSED)
            if opts.policy == "stop" and not stopped_by:
                stopped_by = item.name
            continue
        if item.sha256 in outcome:
            final.append(outcome[item.sha256])
            continue
        if stopped_by:
            say(f"{item.name}: not run: --policy stop after {stopped_by}")
            final.append(PENDING)
            continue
        assert item.script is not None
        from migration import execute  # imported only when there is work (cheap no-op runs)

        ok = _run_one(opts, state, item, image, execute, say)
        outcome[item.sha256] = APPLIED if ok else FAILED
        final.append(outcome[item.sha256])
        if not ok and opts.policy == "stop":
            stopped_by = item.name
    everything = all(s == APPLIED for s in final)
    state.settle()  # every outcome durable before the stamp says so
    if manifest is not None and everything:
        state.write_done(manifest.digest)
    elif not everything:
        state.clear_done()
    state.update_meta(image, meta)
    if manifest is not None and everything:
        _leave_noop_key(state, manifest, image)
    counts = {s: final.count(s) for s in (APPLIED, FAILED, REFUSED, PENDING)}
    ran = len(outcome)
    if ran or not everything:
        say(
            f"{ran} run, {counts[APPLIED]} applied, {counts[FAILED]} failed, "
            f"{counts[REFUSED]} refused, {counts[PENDING]} pending"
        )
    return 0 if everything else 1


def _run_one(opts: Options, state: State, item: Item, image: Dict[str, str], execute: Any,
             say: Callable[[str], None]) -> bool:
    script = item.script
    assert script is not None
    prev = item.record or {}
    attempt = max(int(prev.get("attempts", 0) or 0), int(prev.get("attempt", 0) or 0)) + 1
    path = os.path.abspath(script.path)  # the script's working directory is the root
    argv = interpreter(path).argv(path)
    env = dict(os.environ)
    env.update(
        MIGRATION_NAME=item.name,
        MIGRATION_SHA256=item.sha256,
        MIGRATION_ROOT=opts.root,
        MIGRATION_ATTEMPT=str(attempt),
    )
    again = f" (attempt {attempt})" if attempt > 1 else ""
    say(f"{item.name}: running{again}: {' '.join(argv)}")
    started = state.mark_started(item.name, item.sha256, attempt, image)
    log = state.log_path(item.sha256)
    result = execute.run_script(
        argv, item.name, env, cwd=opts.root, log_path=log, timeout=opts.timeout,
        kill_grace=opts.kill_grace,
        header=f"{item.name} sha256 {item.sha256} attempt {attempt} started {now_iso(started)}: "
        + " ".join(argv),
    )
    record = {
        "name": item.name,
        "sha256": item.sha256,
        "started_at": now_iso(started),
        "finished_at": now_iso(),
        "duration_s": round(result.duration_s, 3),
        "exit_code": result.exit_code,
        "attempts": attempt,
        "image": image,
    }
    if result.log_error:
        say(f"{item.name}: {result.log_error}")
    if result.ok:
        state.record_outcome("applied", record, batch=True)
        say(f"{item.name}: done in {result.duration_s:.2f} s")
        return True
    record["reason"] = result.reason
    state.record_outcome("failed", record, batch=True)
    say(f"{item.name}: FAILED: {result.reason} (attempt {attempt}); log: {log}")
    return False


def dry_run(opts: Options, out: Callable[[str], None]) -> int:
    """Print what `run` would do; changes nothing (no lock, no directories, no repairs)."""
    items, warnings = inspect(opts, State(opts.state_dir))
    for w in warnings:
        _stderr(w)
    stop = False
    for item in items:
        if item.state == APPLIED:
            continue
        if item.state == REFUSED:
            out(f"would refuse {item.name}: {item.reason}")
            stop = stop or opts.policy == "stop"
        elif stop:
            out(f"would not run {item.name} (--policy stop)")
        else:
            what = {PENDING: "", FAILED: " (failed before)", INTERRUPTED: " (interrupted before)"}
            out(f"would run {item.name}{what[item.state]}")
    if all(i.state == APPLIED for i in items):
        out("nothing to do")
        return 0
    return 1

