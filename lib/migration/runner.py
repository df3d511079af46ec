# SPDX-License-Identifier: MIT
"""The plan and the policy: which scripts are applied, pending, failed, interrupted or refused,
in which order they run, and what a failure does to the rest.

`plan()` and the refusal checks are pure functions of what was found on disk, so the tests can
cover the decisions exhaustively; `run()` and `inspect()` do the I/O around them.

States (also the `state` of `migration status --json`):
- applied: a record for the script's sha256 exists; it never runs again, whatever its name now.
- refused: not run and reported. As root: the script is a symlink (even to applied content: the
  entry is refused, not the content), not owned by root, writable by group or others, or the
  scripts dir is writable by group/others or not owned by root. With a
  manifest: the content differs from it (tampered), the manifest does not list the script, or the
  manifest lists a script that is missing from the scripts dir.
- interrupted: it started (durable note) but no outcome was recorded: power cut or kill. Runs again.
- failed: its last attempt failed; it is retried on the next run.
- pending: never tried.

Before any of that and before writing anything, `run` asks migration.compat whether this image
may use the device's data at all (upgrade floor, one-way levels): once before taking the lock
(a busy lock must not hide a refusal) and again under it; a refusal writes nothing, runs the
hooks of the incompatible.d dir in the boot phase, and exits 3 (errors.Incompatible).

Phases: `boot` (`migration run`: the image's own scripts, root /), `update` (`migration
update NEWROOT`: the new image's scripts and manifest, run by an updater while the old system
runs, on the live state dir and data) and `package` (`migration postinst`: a package manager
installed a migration package on the running system; the services gated on pending migrations
are stopped, the others run; refusal hooks are for the boot only). Scripts see
MIGRATION_PHASE, MIGRATION_ROOT (the data root) and MIGRATION_IMAGE_ROOT (the root of the image
whose scripts run).
"""

import contextlib
import os
import stat
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from migration import compat, files, journal, leftovers, overlay, volatile
from migration import manifest as manifest_mod
from migration.errors import Incompatible, Interrupted, MigrationError
from migration.scripts import (
    Script,
    ScriptsDirError,
    discover,
    interpreter,
    is_ignored,
    list_dir,
    owner_refusal,
)
from migration.state import Snapshot, State, now_iso, read_os_release

POLICIES = ("continue", "stop")
DEFAULT_LOCK_WAIT = 60.0
PHASES = ("boot", "update", "package")
#: Refusal hooks, relative to the root (boot phase only).
HOOKS_DIR = "etc/migration/incompatible.d"
#: Where each script's private TMPDIR is made: a tmpfs from the first instant of the boot, when
#: the runner may write there (else the state dir's tmp/).
RUN_DIR = "/run"
#: Not a state of the records: a one-way script (or one after it) that `update --defer-oneway`
#: leaves pending for the first boot.
DEFERRED = "deferred"

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
    phase: str = "boot"
    image_root: Optional[str] = None  # root of the image whose scripts run (None: `root`)
    hooks_dir: Optional[str] = None  # refusal hooks (boot phase; None: ROOT/HOOKS_DIR)
    defer_oneway: bool = False  # update phase: leave one-way scripts to the first boot
    volatile_state: str = volatile.DEFAULT_POLICY  # a state dir on tmpfs: warn or refuse
    journal: Optional[str] = None  # structured entries go to this socket (migration.journal)


class Item(NamedTuple):
    name: str
    sha256: str
    state: str
    reason: str = ""
    script: Optional[Script] = None
    record: Optional[Dict[str, Any]] = None  # applied, failed or started record
    package: str = ""
    version: str = ""
    oneway: int = 0  # compatibility level of a one-way script (from the manifest); 0: not


def dir_refusal(scripts_dir: str, euid: int) -> Optional[str]:
    """Why every script of `scripts_dir` is refused when running as root, or None."""
    if euid != 0:
        return None  # an unprivileged runner can only do what its user can anyway
    st = os.stat(scripts_dir)
    reason = owner_refusal(st.st_uid, st.st_mode, euid)
    return f"scripts dir {scripts_dir} {reason}" if reason else None


def script_refusal(script: Script, euid: int) -> Optional[str]:
    """Why root must not run `script`, or None. Not checked for other users (by design), except
    what discover() refused unread (Script.refusal: too big for anyone)."""
    if script.refusal:
        return script.refusal
    if euid == 0 and script.symlink:
        return "is a symlink"
    return owner_refusal(script.uid, script.mode, euid)


def manifest_refusal(script: Script, manifest: Optional[manifest_mod.Manifest]) -> Optional[str]:
    """Why a script the image manifest does not list is refused, or None."""
    if manifest is None or script.name in manifest.entries:
        return None
    return f"not listed in the image manifest {manifest.path}"


def changed_refusal(
    script: Script, entry: manifest_mod.Entry, copy: Optional[overlay.UpperEntry]
) -> str:
    """Why other bytes than the manifest's under a listed name are refused; `copy`: what an
    overlay's upper dir holds under that name (migration.overlay), if anything."""
    head = (f"content differs from the image manifest (sha256 {script.sha256}, expected "
            f"{entry.sha256} from package {entry.package})")
    if copy is not None and not copy.whiteout:
        return (f"{head}: {copy.path}, a copy that the overlay's upper dir keeps (the file was "
                f"changed on the device), hides the image's file; remove {copy.path} to run "
                "the image's version from the next boot")
    return (f"{head}: tampered, edited, or a stale copy that an overlay's upper dir keeps over "
            "the image's file (remove it there to get the image's version)")


def missing_reason(entry: manifest_mod.Entry, applied: bool, scripts_dir: str,
                   hidden: Optional[overlay.UpperEntry]) -> str:
    """Why a manifest entry missing from the scripts dir is reported; `hidden`: what an
    overlay's upper dir holds under its name (a whiteout: deleted on the device)."""
    where = scripts_dir or "the scripts dir"
    if applied:
        head = f"applied, but missing from {where}"
    else:
        head = f"listed in the image manifest (package {entry.package}) but missing from {where}"
    if hidden is not None and hidden.opaque:
        return (f"{head}: {hidden.path}, the overlay's upper dir of {where}, is opaque (the "
                "directory was removed and re-created on the device) and hides every file of "
                f"the image's in it; remove {hidden.path} to show them again from the next boot")
    if hidden is not None and hidden.whiteout:
        return (f"{head}: {hidden.path}, a whiteout in the overlay's upper dir (the script was "
                f"deleted on the device), hides the image's file; remove {hidden.path} to show "
                "it again from the next boot")
    if applied:
        return f"{head} (deleted on the device? an overlay whiteout hides the image's file)"
    return head


def _no_upper(name: str) -> Optional[overlay.UpperEntry]:
    return None


def plan(
    scripts: List[Script],
    snap: Snapshot,
    manifest: Optional[manifest_mod.Manifest],
    euid: int,
    dir_reason: Optional[str],
    scripts_dir: str = "",
    upper: Callable[[str], Optional[overlay.UpperEntry]] = _no_upper,
) -> List[Item]:
    """The state of every script (and of manifest entries missing from the dir), by name.
    `upper`: what an overlay's upper dir holds under a name (migration.overlay.finder), asked
    only for a changed or missing entry, to name it in the reason."""
    items: List[Item] = []
    for s in scripts:
        entry = manifest.entries.get(s.name) if manifest else None
        pkg = (entry.package, entry.version, entry.oneway) if entry else ("", "", 0)
        if entry is not None and entry.sha256 != s.sha256:
            # Judged per manifest entry, never by what the dir happens to hold: other bytes
            # under a listed name are refused even if they ran once (a copy of an old version in
            # an /etc overlay's upper dir would otherwise hide the image's changed migration for
            # good, as "applied").
            reason = (dir_reason or script_refusal(s, euid)
                      or changed_refusal(s, entry, upper(s.name)))
            items.append(Item(s.name, s.sha256, REFUSED, reason, s, None, *pkg))
            continue
        # A symlink is refused whatever it points to: identity is content, but the entry, not
        # the content, is what is refused (a link may lead to other bytes tomorrow), so status,
        # run and dry-run say the same of it whether its content ran once or never.
        if s.sha256 in snap.applied and not (euid == 0 and s.symlink):
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
            applied = e.sha256 in snap.applied
            reason = missing_reason(e, applied, scripts_dir, upper(e.name))
            if applied:
                items.append(Item(e.name, e.sha256, APPLIED, reason, None,
                                  snap.applied[e.sha256], e.package, e.version, e.oneway))
            else:
                items.append(Item(e.name, e.sha256, REFUSED, reason, None, None,
                                  e.package, e.version, e.oneway))
        items.sort(key=lambda i: os.fsencode(i.name))
    return items


def _shas(scripts: List[Script], manifest: Optional[manifest_mod.Manifest]) -> List[str]:
    shas = [s.sha256 for s in scripts if s.sha256]  # "": refused unread
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
                 opts.scripts_dir, overlay.finder(opts.scripts_dir))
    return items, warnings


def unapplied(opts: Options, state: State, manifest: manifest_mod.Manifest,
              package: Optional[str] = None) -> Dict[str, List[Item]]:
    """Package -> the items of its manifest entries that are not applied, as `run` and
    `status` judge them: no applied record, or refused (a symlink, a file root must not run,
    other bytes than the manifest's, missing and never run). Packages with everything applied
    are left out; `package`: that one only (the gate: only its scripts are read). Needs no lock
    and writes nothing; with the done stamp of the manifest's digest no record is read (the
    stamp vouches for every entry's content, which the scripts in the dir must still be)."""
    names = None
    if package is not None:
        names = {e.name for e in manifest.entries.values() if e.package == package}
    try:
        scripts, _warnings = discover(opts.scripts_dir, only=names)
    except ScriptsDirError:
        scripts = []  # every entry is then missing: refused unless it ran
    if state.has_done(manifest.digest):
        snap = Snapshot({e.sha256: {} for e in manifest.entries.values()}, {}, {}, [])
    else:
        snap = state.snapshot(_shas(scripts, manifest))
    euid = os.geteuid()
    try:
        dir_reason = dir_refusal(opts.scripts_dir, euid)
    except OSError:
        dir_reason = None  # no scripts dir: nothing in it to refuse
    out: Dict[str, List[Item]] = {}
    for item in plan(scripts, snap, manifest, euid, dir_reason, opts.scripts_dir,
                     overlay.finder(opts.scripts_dir)):
        if item.package and item.state != APPLIED and package in (None, item.package):
            out.setdefault(item.package, []).append(item)
    return out


def _stderr(msg: str) -> None:
    """Report on stderr (the journal under systemd) through migration.console: never waits
    for it (a stopped console must not stop the boot) and never raises (a lost console must
    not abort a run between a script and its record)."""
    from migration import console  # its thread is started only when there is something to say

    console.say(f"migration: {files.shown(msg)}")


def _event(opts: Options, say: Callable[[str], None], message_id: str, priority: int,
           line: Optional[str], message: str = "", **fields: Any) -> None:
    """Say `line` (None: no console line) and, with a journal, send its structured entry
    (migration.journal): MESSAGE is the console's text of `line`, or `message` without one."""
    if line is not None:
        say(line)
        message = f"migration: {files.shown(line)}"
    if opts.journal is None:
        return
    fields = {f"MIGRATION_{key.upper()}": value for key, value in fields.items()
              if value not in (None, "")}
    fields.setdefault("MIGRATION_PHASE", opts.phase)
    journal.send(opts.journal, message_id, priority, message, fields)


def _item_fields(item: Item) -> Dict[str, Any]:
    """The journal fields of one script (migration.journal)."""
    return {"name": item.name, "sha256": item.sha256, "package": item.package,
            "version": item.version}


def _nothing_to_do(
    state: State, scripts: List[Script], manifest: Optional[manifest_mod.Manifest]
) -> bool:
    """The cheap path: the stamp of this manifest exists and the dir holds exactly its scripts,
    none of them a symlink (which root refuses: plan() decides)."""
    if manifest is None or not state.has_done(manifest.digest):
        return False
    if any(s.symlink or s.refusal for s in scripts):
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


def volatile_check(opts: Options, say: Callable[[str], None]) -> bool:
    """Is the state dir on a volatile file system (migration.volatile)? Says so; under
    --volatile-state refuse, a MigrationError (exit 2) instead, before anything is written."""
    why = volatile.check(opts.state_dir)
    if why is None:
        return False
    if opts.volatile_state == "refuse":
        raise MigrationError(f"refusing to run (--volatile-state refuse): {why}")
    say(f"WARNING: {why}")
    return True


def run(opts: Options, say: Callable[[str], None] = _stderr) -> int:
    """Run every pending script once, in order, under the lock; returns the exit code
    (0: everything applied; 1: something failed, was refused or is still pending)."""
    is_volatile = volatile_check(opts, say)
    state = State(opts.state_dir, say)
    manifest = manifest_mod.load(opts.manifest_path) if opts.manifest_path else None
    # A missing scripts dir fails here, before the state dir is touched. The scripts are read
    # under the lock (_run_locked): a runner that went first while this one waited may have
    # shipped, run and failed a script, whose record prune() must see as shipped.
    list_dir(opts.scripts_dir)
    # The verdict needs no lock (status and dry-run compute it too), so it comes before the
    # wait: a refused image is refused (exit 3) even when another runner holds the lock, which
    # an updater would otherwise take for "the boot retries" (75) and install the image. Under
    # the lock it is computed again: the state may change while we wait.
    verdict, _facts, _meta = verdict_of(opts, state, manifest)
    if verdict.refused:
        _refuse(opts, verdict, say)
    if state.has_started():
        # An interrupted run: what its scripts left running (the runner was SIGKILLed) is
        # stopped before anything runs again (migration.leftovers); a live runner's are not.
        stopped = leftovers.stop()
        if stopped:
            say(f"stopped {stopped} process(es) left running by the scripts of a killed runner")
    state.lock(opts.lock_wait)
    try:
        if opts.manifest_path:  # a postinst may have refreshed it while this runner waited
            manifest = manifest_mod.load(opts.manifest_path)
        scripts, warnings = discover(opts.scripts_dir)
        return _run_locked(opts, state, scripts, warnings, manifest, say, is_volatile)
    except BaseException:
        # Interrupted or failing: the outcomes recorded so far still become durable (the first
        # error is the one reported).
        with contextlib.suppress(MigrationError):
            state.settle()
        raise
    finally:
        state.unlock()


def image_root(opts: Options) -> str:
    return opts.image_root or opts.root


def hooks_dir(opts: Options) -> str:
    return opts.hooks_dir or os.path.join(opts.root, HOOKS_DIR)


def assess(
    opts: Options,
    state: State,
    manifest: Optional[manifest_mod.Manifest],
    image: Dict[str, str],
    meta: Optional[Dict[str, Any]],
) -> Tuple[compat.Verdict, compat.StateFacts]:
    """The compatibility verdict for this run and what the state says; reads, never writes.
    `meta` is state.json (None when missing or damaged)."""
    level = manifest.compat_level if manifest else 0
    floor = manifest.upgrade_floor if manifest else ""
    has_state = state.has_state()
    markers: List[str] = []
    if manifest is not None and not has_state and floor:
        markers = [m for m in manifest.data_markers
                   if os.path.lexists(os.path.join(opts.root, m.lstrip("/")))]
    facts = state.compat_facts(meta) if has_state else compat.StateFacts(0, "", "")
    last = meta.get("image") if meta is not None else None
    unfinished = last.get("version_id", "") if isinstance(last, dict) else ""
    verdict = compat.decide(image.get("version_id", ""), level, floor, markers, has_state,
                            facts.level, facts.version, facts.source, str(unfinished))
    if verdict.kind == compat.BELOW_FLOOR and unfinished:
        # Only a refusal reads the failed records: what the unfinished release lacks.
        failed = sorted({str(r.get("name")) for _, r in state.all_records("failed")})
        verdict = compat.decide(image.get("version_id", ""), level, floor, markers, has_state,
                                facts.level, facts.version, facts.source, str(unfinished),
                                failed)
    return verdict, facts


def run_hooks(opts: Options, verdict: compat.Verdict, say: Callable[[str], None]) -> int:
    """Run every executable of the hooks dir (byte order of names) after a refusal in the boot
    phase; returns how many failed. Each gets MIGRATION_VERDICT, MIGRATION_MESSAGE,
    MIGRATION_STATE_DIR, MIGRATION_PHASE=boot and MIGRATION_ROOT, stdin /dev/null, its output on
    stderr prefixed with its name, and --timeout as its limit. As root, the root-only safety
    checks of scripts apply (owner root, not writable by group or others, the dir too)."""
    directory = hooks_dir(opts)
    try:
        names = sorted(os.listdir(directory), key=os.fsencode)
    except FileNotFoundError:
        return 0
    except OSError as e:
        say(f"cannot read hooks dir {directory}: {e.strerror}")
        return 1
    euid = os.geteuid()
    try:
        dir_reason = dir_refusal(directory, euid)
    except OSError as e:
        dir_reason = f"cannot stat {directory}: {e.strerror}"
    from migration import execute

    failed = 0
    for name in names:
        if is_ignored(name):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)  # a symlink is followed: what it points to is checked
        except OSError as e:
            say(f"hook {path}: skipped: {e.strerror}")
            failed += 1
            continue
        if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
            continue  # not an executable file (a README, a disabled hook): skipped
        reason = dir_reason or owner_refusal(st.st_uid, st.st_mode, euid)
        if reason:
            say(f"hook {path}: refused: {reason}")
            failed += 1
            continue
        env = dict(os.environ)
        env.update(
            MIGRATION_VERDICT=verdict.kind,
            MIGRATION_MESSAGE=verdict.message,
            MIGRATION_STATE_DIR=opts.state_dir,
            MIGRATION_PHASE="boot",
            MIGRATION_ROOT=opts.root,
        )
        argv = interpreter(path).argv(path)
        say(f"hook {name}: running: {' '.join(argv)}")
        result = execute.run_script(argv, f"hook {files.shown(name)}", env, cwd=opts.root,
                                    log_path=None,
                                    timeout=opts.timeout, kill_grace=opts.kill_grace)
        if result.ok:
            say(f"hook {name}: done")
        else:
            say(f"hook {name}: FAILED: {result.reason}")
            failed += 1
    return failed


def _refuse(opts: Options, verdict: compat.Verdict, say: Callable[[str], None]) -> None:
    """Refusal: hooks in the boot phase, then Incompatible (exit 3; cli prints the message)."""
    if opts.phase == "boot":
        say(f"this image cannot use the device's data ({verdict.kind}); nothing was written; "
            f"running the hooks in {hooks_dir(opts)}")
        failed = run_hooks(opts, verdict, say)
        if failed:
            say(f"{failed} hook(s) failed")
    error = Incompatible(verdict)
    if opts.journal is not None:
        # the line cli.py prints for it (exit 3)
        _event(opts, say, journal.IMAGE_REFUSED, journal.ERR, None,
               f"migration: refused: {files.shown(str(error))}", result=REFUSED,
               verdict=verdict.kind)
    raise error


def _deferrals(items: List[Item], opts: Options) -> Dict[str, str]:
    """With --defer-oneway: name -> why, for every not-applied, not-refused one-way script and
    every such script after the first of them (a later script may rely on what the one-way one
    converts: the order of names stays the order of execution)."""
    if not opts.defer_oneway:
        return {}
    out: Dict[str, str] = {}
    first = ""
    for item in items:
        if item.state in (APPLIED, REFUSED):
            continue
        if item.oneway or first:
            first = first or item.name
            out[item.name] = (f"one-way (level {item.oneway})" if item.oneway
                              else f"ordered after the one-way {first}")
    return out


def _run_locked(
    opts: Options,
    state: State,
    scripts: List[Script],
    warnings: List[str],
    manifest: Optional[manifest_mod.Manifest],
    say: Callable[[str], None],
    is_volatile: bool = False,
) -> int:
    # On a volatile state dir no key of the no-op fast path is written: that path stays
    # silent, and every run must take the full path, which warns.
    noop_key = not is_volatile
    meta, meta_reason = state.check_meta()
    image = read_os_release(image_root(opts))
    # The verdict comes before any write (no prepare, no stamp, no state.json, no record).
    verdict, facts = assess(opts, state, manifest, image, meta)
    if verdict.refused:
        _refuse(opts, verdict, say)
    level = facts.level
    for w in warnings:
        say(w)
    if manifest is None and scripts:
        say(f"no image manifest at {opts.manifest_path or manifest_mod.DEFAULT_PATH}: scripts are "
            "not checked against the image and every boot starts the runner; install the scripts "
            "with packages of recipes that inherit migration (their postinst writes it) or write "
            "it with `migration manifest --root IMAGE_ROOT`")
    if meta_reason is not None:
        state.repair_meta()
        say(f"damaged state.json ({meta_reason}) moved aside to {state.path}/damaged/")
    if _nothing_to_do(state, scripts, manifest):
        state.update_meta(image, meta, compat_level=level, applied=True)
        if noop_key:
            _leave_noop_key(state, manifest, image)
        return 0
    run_started = time.time()
    state.prepare()
    if opts.phase != "update":
        _prune(opts, state, _shas(scripts, manifest), say)
    snap = state.snapshot(_shas(scripts, manifest), repair=True)
    for d in snap.damaged:
        say(f"damaged state record moved aside to {d.path}: {d.reason}")
    euid = os.geteuid()
    items = plan(scripts, snap, manifest, euid, dir_refusal(opts.scripts_dir, euid),
                 opts.scripts_dir, overlay.finder(opts.scripts_dir))
    deferred = _deferrals(items, opts)
    if verdict.kind == compat.FRESH and any(i.state != APPLIED for i in items):
        say(verdict.message)
    if opts.journal is not None and any(i.state != APPLIED for i in items):
        waiting = sum(i.state != APPLIED for i in items)
        _event(opts, say, journal.RUN_STARTED, journal.INFO, None,
               f"migration: run started ({opts.phase}): {waiting} of {len(items)} "
               "script(s) not applied", result="started", scripts=len(items))
    outcome: Dict[str, str] = {}  # sha -> state reached in this run (same content runs once)
    stopped_by = ""
    final: List[str] = []
    started_any = False
    for item in items:
        st = item.state
        if st == APPLIED:
            if item.reason:
                say(f"{item.name}: {item.reason}")
            final.append(APPLIED)
            continue
        if st == REFUSED:
            _event(opts, say, journal.SCRIPT_REFUSED, journal.ERR,
                   f"{item.name}: refused: {item.reason}", result=REFUSED,
                   reason=item.reason, **_item_fields(item))
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
        if item.name in deferred:
            say(f"{item.name}: deferred to the first boot: {deferred[item.name]}")
            final.append(DEFERRED)
            continue
        assert item.script is not None
        from migration import execute  # imported only when there is work (cheap no-op runs)

        if not started_any:
            # A stamp must never outlive a change of the data it vouches for (an update run
            # changes the data under the running old image, whose stamp exists); and the image
            # is noted before its first script, so a run cut short still says who ran.
            state.clear_done()
            meta = state.update_meta(image, meta, compat_level=level)
            started_any = True
        if item.oneway > level:
            # Durably before the one-way script starts: half-converted data is converted data.
            level = item.oneway
            meta = state.update_meta(image, meta, compat_level=level)
            say(f"{item.name}: one-way: compatibility level of the state raised to {level}")
        reached = _run_one(opts, state, item, image, execute, say)
        outcome[item.sha256] = reached
        final.append(reached)
        if reached != APPLIED and opts.policy == "stop":
            stopped_by = item.name
    everything = all(s == APPLIED for s in final)
    code = 0 if all(s in (APPLIED, DEFERRED) for s in final) else 1
    ran = len(outcome)
    state.settle()  # every outcome durable before the stamp says so
    if not everything:
        state.clear_done()
    last_run = None
    if ran or not everything:  # what monitoring reports; a no-op run writes nothing
        finished = time.time()
        last_run = {"started_at": now_iso(run_started), "finished_at": now_iso(finished),
                    "finished_unix": round(finished, 3),
                    "duration_s": round(max(0.0, finished - run_started), 3),
                    "phase": opts.phase, "result": "failure" if code else "success"}
    # applied_image before the stamp: a cut in between leaves no stamp, so the next boot runs,
    # finds nothing to do and writes the stamp; the other order could leave a stamp (no boot
    # run ever again) beside an applied_image that lags behind (a false below-floor refusal).
    state.update_meta(image, meta, compat_level=level, applied=everything, last_run=last_run)
    if manifest is not None and everything:
        state.write_done(manifest.digest)
        if noop_key:
            _leave_noop_key(state, manifest, image)
    counts = {s: final.count(s) for s in (APPLIED, FAILED, REFUSED, PENDING, DEFERRED)}
    if ran or not everything:
        _event(opts, say, journal.RUN_FINISHED, journal.ERR if code else journal.NOTICE,
               f"{ran} run, {counts[APPLIED]} applied, {counts[FAILED]} failed, "
               f"{counts[REFUSED]} refused, {counts[PENDING]} pending"
               + (f", {counts[DEFERRED]} deferred to the first boot" if counts[DEFERRED] else ""),
               result="failure" if code else "success", ran=ran,
               **{key: counts[key] for key in counts})
    return code


def _prune(opts: Options, state: State, shipped: List[str],
           say: Callable[[str], None]) -> None:
    """Drop the failed records and interrupted notes of content no script has any more
    (State.prune). Not at update time: the scripts dir is then the new image's while the old
    image runs, and the updater may still fall back to it, whose failures must stay."""
    for p in state.prune(set(shipped)):
        what = "failed record" if p.kind == FAILED else "interrupted note"
        if p.moved_to:
            say(f"moved the unreadable {what} (sha256 {p.sha256}) of content no script in "
                f"{opts.scripts_dir} has any more aside to {p.moved_to}")
            continue
        name = f" of {p.name}" if p.name else ""
        say(f"pruned the {what}{name} (sha256 {p.sha256}): no script in {opts.scripts_dir} "
            "has that content any more")


def _run_one(opts: Options, state: State, item: Item, image: Dict[str, str], execute: Any,
             say: Callable[[str], None]) -> str:
    """Run one script; returns the state it reached (APPLIED, FAILED, or PENDING when it was
    not run because its bytes are no longer the ones that were checked)."""
    script = item.script
    assert script is not None
    path = os.path.abspath(script.path)
    # Read once, hash what was read, run exactly that: the sha256 in the record is the sha256 of
    # the bytes the interpreter reads, checked against the manifest (plan()).
    try:
        sealed = execute.seal(path, item.name, follow=script.symlink)
    except OSError as e:
        say(f"{item.name}: not run: cannot read {path}: {e.strerror}")
        return PENDING
    try:
        if sealed.sha256 != item.sha256:
            say(f"{item.name}: not run: its content changed after it was checked (sha256 now "
                f"{sealed.sha256}); the next run looks at it again")
            return PENDING
        # The script's processes hold the lock too: if the runner dies by SIGKILL (no handler
        # runs), the next runner stops them (migration.leftovers), and one that hid from that
        # but kept its fds makes the next runner wait instead of starting the script beside it.
        lock = execute.high_fd(state.lock_fd) if state.lock_fd is not None else None
        try:
            tmpdir = private_tmpdir(state)
            try:
                return _execute(opts, state, item, image, execute, say, path, sealed, lock,
                                tmpdir)
            finally:
                _remove_tmpdir(item.name, tmpdir, say)
        finally:
            if lock is not None:
                os.close(lock)
    finally:
        os.close(sealed.fd)


def private_tmpdir(state: State) -> str:
    """A new empty directory (mode 0700) for one script's TMPDIR: under RUN_DIR when the runner
    may write there, else under the state dir. At boot the usual places may not exist yet: on
    OE, /var/tmp and /var/log are links into /var/volatile, whose dirs systemd-tmpfiles or
    populate-volatile create after the runner has run."""
    base = RUN_DIR if os.access(RUN_DIR, os.W_OK) else state.scratch_dir()
    while True:
        path = os.path.join(base, f"migration-tmp.{os.urandom(8).hex()}")
        try:
            os.mkdir(path, 0o700)  # never follows a planted symlink: EEXIST
            os.chmod(path, 0o700)  # whatever the umask
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise MigrationError(f"cannot create a temporary dir for the scripts in {base}: "
                                 f"{e.strerror}") from None


def _remove_tmpdir(name: str, tmpdir: str, say: Callable[[str], None]) -> None:
    import shutil

    try:
        shutil.rmtree(tmpdir)
    except OSError as e:
        say(f"{name}: cannot remove its TMPDIR {tmpdir}: {e.strerror}")


def _execute(opts: Options, state: State, item: Item, image: Dict[str, str], execute: Any,
             say: Callable[[str], None], path: str, sealed: Any, lock: Optional[int],
             tmpdir: str) -> str:
    prev = item.record or {}
    attempt = max(int(prev.get("attempts", 0) or 0), int(prev.get("attempt", 0) or 0)) + 1
    argv = interpreter(sealed.head).argv(sealed.path)
    env = dict(os.environ)
    env.update(
        MIGRATION_NAME=item.name,
        MIGRATION_SCRIPT=path,
        MIGRATION_SHA256=item.sha256,
        MIGRATION_ROOT=opts.root,
        MIGRATION_IMAGE_ROOT=image_root(opts),
        MIGRATION_PHASE=opts.phase,
        MIGRATION_ATTEMPT=str(attempt),
        MIGRATION_RUNNER=leftovers.identity(),
        TMPDIR=tmpdir,  # whatever the boot's environment says: it may not exist yet
    )
    started = state.mark_started(item.name, item.sha256, attempt, image, item.oneway)
    shown = files.shown(" ".join([*argv[:-1], path]))
    again = f" (attempt {attempt})" if attempt > 1 else ""
    # The interpreter, not the script's path (scripts dir + name: it would not fit an 80-column
    # console line); the log's header has both.
    say(f"{item.name}: running{again}: {files.shown(' '.join(argv[:-1]))}")  # after the note
    log = state.log_path(item.sha256)
    try:
        result = execute.run_script(
            argv, item.name, env, cwd=opts.root, log_path=log, timeout=opts.timeout,
            kill_grace=opts.kill_grace,
            # escaped: a shebang's bytes need not be UTF-8, and the log is written as UTF-8
            header=f"{item.name} sha256 {item.sha256} attempt {attempt} started "
            f"{now_iso(started)}: " + shown,
            keep_fds=[sealed.fd] + ([lock] if lock is not None else []),
        )
    except Interrupted as e:
        # cli.py says the run was interrupted; this entry names the script and its log
        _event(opts, say, journal.SCRIPT_INTERRUPTED, journal.WARNING, None,
               f"migration: {files.shown(item.name)}: interrupted ({e}); it runs again at the "
               "next run", result=INTERRUPTED, attempt=attempt, log=log, **_item_fields(item))
        raise
    record: Dict[str, Any] = {
        "name": item.name,
        "sha256": item.sha256,
        "started_at": now_iso(started),
        "finished_at": now_iso(),
        "duration_s": round(result.duration_s, 3),
        "exit_code": result.exit_code,
        "attempts": attempt,
        "image": image,
    }
    if item.oneway:
        record["oneway"] = item.oneway
    if opts.phase != "boot":
        record["phase"] = opts.phase
    if result.log_error:
        say(f"{item.name}: {result.log_error}")
    outcome = {"attempt": attempt, "exit_code": result.exit_code,
               "duration_s": record["duration_s"], **_item_fields(item)}
    if result.ok:
        state.record_outcome("applied", record, batch=True)
        _event(opts, say, journal.SCRIPT_APPLIED, journal.INFO,
               f"{item.name}: done in {result.duration_s:.2f} s", result=APPLIED, **outcome)
        return APPLIED
    record["reason"] = result.reason
    state.record_outcome("failed", record, batch=True)
    _event(opts, say, journal.SCRIPT_FAILED, journal.ERR,
           f"{item.name}: FAILED: {result.reason} (attempt {attempt})",
           result=FAILED, reason=result.reason, log=log, **outcome)
    if os.path.exists(log):  # not when it could not be written or was removed (a full disk)
        from migration import logs

        say(f"log: {logs.short_path(log, logs.listing(os.path.dirname(log)))}")
    return FAILED


def verdict_of(opts: Options, state: State,
               manifest: Optional[manifest_mod.Manifest] = None) -> Tuple[
                   compat.Verdict, compat.StateFacts, Optional[Dict[str, Any]]]:
    """(verdict, state facts, state.json or None) without the lock and without writing
    (status, check, dry-run)."""
    if manifest is None and opts.manifest_path:
        manifest = manifest_mod.load(opts.manifest_path)
    meta, _reason = state.check_meta()
    image = read_os_release(image_root(opts))
    verdict, facts = assess(opts, state, manifest, image, meta)
    return verdict, facts, meta


def dry_run(opts: Options, out: Callable[[str], None]) -> int:
    """Print what `run` (or `update`) would do; changes nothing (no lock, no directories, no
    repairs). Exit 3 when the image would be refused."""
    print_out = out

    def out(line: str) -> None:
        print_out(files.shown(line))

    volatile_check(opts, _stderr)
    state = State(opts.state_dir)
    verdict, _facts, _meta = verdict_of(opts, state)
    if verdict.refused:
        out(f"would refuse ({verdict.kind}): {verdict.message}")
        if opts.phase == "boot":
            out(f"would run the hooks in {hooks_dir(opts)}")
        return 3
    items, warnings = inspect(opts, state)
    for w in warnings:
        _stderr(w)
    if verdict.kind == compat.FRESH and any(i.state != APPLIED for i in items):
        out(verdict.message)
    deferred = _deferrals(items, opts)
    stop = False
    for item in items:
        if item.state == APPLIED:
            continue
        if item.state == REFUSED:
            out(f"would refuse {item.name}: {item.reason}")
            stop = stop or opts.policy == "stop"
        elif stop:
            out(f"would not run {item.name} (--policy stop)")
        elif item.name in deferred:
            out(f"would defer {item.name} to the first boot: {deferred[item.name]}")
        else:
            what = {PENDING: "", FAILED: " (failed before)", INTERRUPTED: " (interrupted before)"}
            oneway = f" (one-way, level {item.oneway})" if item.oneway else ""
            out(f"would run {item.name}{what[item.state]}{oneway}")
    if all(i.state == APPLIED for i in items):
        out("nothing to do")
        return 0
    if all(i.state == APPLIED or i.name in deferred for i in items):
        return 0
    return 1
