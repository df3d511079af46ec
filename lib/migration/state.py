# SPDX-License-Identifier: MIT
"""The state dir, and nothing else: records, atomic writes, the lock, damaged records, stamps.

Layout (the project's most durable contract; every JSON file carries a "format" number):

    <state>/state.json        {"format": 1, "runner_version", "image": {"version_id", "build_id"},
                               "updated_at", "compat_level": N, "applied_image": {...}}: which
                               image and runner last ran (written before the first script of a
                               run starts, and at its end), the compatibility level (the highest
                               level of a one-way script ever started: raised durably before it
                               starts; absent = 0) and the image whose manifest a run last left
                               completely applied (written right before the done stamp; null
                               until then, the key is always there: a state.json without it is
                               runner 0.1.0's, see compat.state_facts), and "last_run": the
                               last run that ran a script or left one not applied
                               ({"started_at", "finished_at", "finished_unix", "duration_s",
                               "phase", "result": "success" or "failure"}; what monitoring
                               reports, migration.monitoring). Readers ignore unknown keys;
                               runner 0.1.0 keeps them.
    <state>/lock              flock(2) target; one runner at a time (0600: flock needs only a
                              read fd, so a file others can read is a lock others can hold)
    <state>/applied/<sha256>  a script with this content succeeded (never runs again)
    <state>/failed/<sha256>   its last attempt failed; "attempts" counts every start so far;
                              pruned, with started notes and logs, by a run that finds no script
                              with that content any more (prune(); applied records stay forever)
    <state>/started/<sha256>  written durably before a script starts (one directory fsync; its
                              content may be lost to a power cut, its existence not), removed
                              after the outcome is durable (at the end of the run); found
                              without an outcome = the run was interrupted
    <state>/logs/<sha256>.log bounded output of the last attempt (head and tail kept)
    <state>/done/<digest>     the no-op stamp: every entry of manifest <digest> is applied
    <state>/damaged/          unreadable records moved aside (never deleted)
    <state>/tmp/              the scripts' private TMPDIRs when /run is not writable (0700;
                              what a killed runner left there is removed by prepare())
    <state>/noop-key          cache of the no-op fast path (migration/noop.py); may be removed

A record is {"format": 1, "kind", "name", "sha256", "started_at", "finished_at", "duration_s",
"exit_code", "attempts", "runner_version", "image": {...}} (started records: "attempt" and "pid"
instead of the outcome fields; failed ones also "reason"; all three kinds also "oneway": LEVEL
for a one-way script). A record with a higher format than
this runner knows is kept and trusted for its kind; one that is not a JSON object with the fields
above is moved to damaged/. Only a runner holding the lock writes; `status` only reads.

Trust (issue 10; SECURITY.md): as root, the state dir and its subdirs must be directories owned
by root and not writable by group or others, and the lock a regular file owned by root with mode
0600; anything else is refused (StateError, exit 2), by readers too, because a user who can write
there can forge an applied record (a migration silently skipped) or take the lock. Nothing inside
is opened through a symlink or blocked on: records are read by migration.files.read_bytes
(O_NOFOLLOW, O_NONBLOCK, regular files only, size-capped), files are created with O_NOFOLLOW,
and a subdir that is not a real directory (a symlink, a file) is read as absent and moved to
damaged/ by prepare(). The state dir's own path (a symlink at it included) is configuration,
trusted like the command line. What the runner creates gets modes it chooses, whatever the
caller's umask.

Durability, and what it costs (issue 2: "before a script starts, the runner durably notes that it
started"; records "written atomically (write, fsync, rename, fsync the directory) so a power cut
at any instant leaves either no record or a whole one"). The rules assumed are POSIX's, with no
file-system favours: a file's content is durable after fsync of the file; a name created,
renamed or removed in a directory is durable only after fsync of *that* directory (an fsync of
started/ says nothing about applied/); rename within one file system is atomic. Per script:

1. started note: write `.<sha>.tmp.<pid>` in started/, rename it to started/<sha>, fsync
   started/. No fsync of the note's own content: its existence is the fact that matters
   (found without an outcome = interrupted); after a power cut it may be empty, which
   snapshot() reads as "started, attempt unknown" (never as damaged). An fsync of the fresh
   file would buy only the attempt number and start time of a run that was cut anyway.
2. the script runs.
3. outcome record: write a temporary file in applied/ (or failed/), sync(2), rename it into
   place: whole or absent, whatever happens next, and never durable before the script's own
   writes (the one sync covers the script's data on every file system and the record's
   content; see record_outcome). The rename is made durable without a directory fsync of its
   own (record_outcome(batch=True)): by the next record's sync(2), which comes before that
   record's rename, or by settle() at the end of the run (before the done stamp is written,
   also when the run is interrupted). So records become durable in their order, and every
   outcome before anything that depends on it (a later record, the stamp). A power cut while
   the next script runs may lose the rename: the script's note is still there, so it reads as
   interrupted and runs again, which a script must allow anyway (idempotence); it never reads
   as applied without its data.
4. the started note (and, after a success, an older failed record) is removed by settle() at
   the end of the run, after its outcome is durable, never before; until then applied+started
   reads as applied and failed+started of the same attempt as failed (snapshot()), so a cut in
   between reports what really happened, and a run killed before settle() leaves notes that
   the next run's prepare()/settle() drop.

That is one sync(2) and one directory fsync (the note's) per script, the least these guarantees
allow under POSIX: the script's writes must be durable before its record is, and nothing short
of a sync reaches every file system it may have written; the note must be durable before the
script starts. On ext4 (and XFS, whose log behaves alike) the fsync of started/ commits the
running journal transaction, which holds every pending metadata change, the previous record's
rename included, so there the record is durable before the next script starts as well. Going
lower would need a started note that is not durable before the script starts, a guarantee of
issue 2; the benchmarks print "script + sync" to show that floor (issue 9 asks for 2x of it).
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from typing import Any, Callable, Collection, Dict, Iterator, List, NamedTuple, Optional, Tuple

from migration import __version__, compat, files
from migration.errors import MigrationError

# re-exported: it lives with the no-op fast path, which needs it without this module's imports
from migration.noop import read_os_release as read_os_release

# Never follow a symlink planted where a record, temp file or log is created.
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW

#: Format of the records and of state.json written by this runner.
FORMAT = 1
#: Highest state.json format this runner can work with; a newer one stops the runner (exit 2).
STATE_FORMAT = 1

KINDS = ("applied", "failed", "started")
_SUBDIRS = ("applied", "failed", "started", "logs", "done")
DAMAGED = "damaged"
SCRATCH = "tmp"
_TMP_MARK = ".tmp."


class StateError(MigrationError):
    """The state dir cannot be used: unwritable, full, not a directory, from a newer runner."""


class LockBusy(MigrationError):
    """Another runner holds the state lock and did not release it within the wait."""

    exit_code = 75


def now_iso(t: Optional[float] = None) -> str:
    """ISO 8601 UTC timestamp; without datetime, which OE-core ships outside python3-core."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


_SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")


def is_sha256(text: str) -> bool:
    """64 lower-case hex digits (the name of a record)."""
    return _SHA256_RE.match(text) is not None


@contextlib.contextmanager
def _umask(mask: int = 0o022) -> Iterator[None]:
    """Create with the modes asked for, not wider: a caller's umask 000 must not make the state
    dir (or its missing parents) writable by everyone."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _unlink_durably(directory: str, names: List[str]) -> None:
    """Remove `names` from `directory`, then fsync it once (nothing to do for no names)."""
    for name in names:
        os.unlink(os.path.join(directory, name))
    if names:
        _fsync_dir(directory)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644, sync_dir: bool = True,
                 sync_all: bool = False) -> None:
    """Replace `path` with `data` so that a power cut leaves the old file or the new one, whole:
    write a temporary file in the same directory, fsync it, rename it over `path`, fsync the
    directory. The temporary name is hidden (`.<name>.tmp.<pid>`) so readers never take it for
    a record; a runner removes leftovers of a killed predecessor. With `sync_all`, sync(2)
    replaces the file's fsync: every file system's pending writes, this file's among them, are
    durable before the rename (outcome records: see State.record_outcome)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}{_TMP_MARK}{os.getpid()}")
    fd = os.open(tmp, _WRITE_FLAGS, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if not sync_all:
                os.fsync(fd)
        finally:
            os.close(fd)
        if sync_all:
            os.sync()
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:  # else the caller fsyncs the directory before anything depends on the rename
        _fsync_dir(directory or ".")


def dump_json(obj: Any, indent: Optional[int] = None) -> bytes:
    """One line of JSON (records, state.json): without indent, json uses its C encoder, two to
    three times faster than the pure-Python one that indenting needs (two records per script)."""
    return (json.dumps(obj, sort_keys=True, indent=indent) + "\n").encode()


#: Largest count or level a record may carry: anything above is damage, not history.
_COUNT_MAX = 10**9
_EXIT_RANGE = (-(2**31), 2**31)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _is_image(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _is_seconds(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 <= value < 1e12)  # also false for NaN and infinity


#: Optional fields of a record: the check of their type and range, when present.
_FIELDS = {
    "kind": lambda v: v in KINDS,
    "name": lambda v: isinstance(v, str) and 0 < len(v) <= 4096,
    "attempt": lambda v: _is_int(v, 0, _COUNT_MAX),
    "attempts": lambda v: _is_int(v, 0, _COUNT_MAX),
    "exit_code": lambda v: _is_int(v, *_EXIT_RANGE),
    "pid": lambda v: _is_int(v, 0, 2**31),
    "oneway": lambda v: _is_int(v, 1, _COUNT_MAX),
    "duration_s": _is_seconds,
    "started_at": lambda v: isinstance(v, str) and len(v) <= 64,
    "finished_at": lambda v: isinstance(v, str) and len(v) <= 64,
    "runner_version": lambda v: isinstance(v, str) and len(v) <= 64,
    "phase": lambda v: isinstance(v, str) and len(v) <= 64,
    "reason": lambda v: isinstance(v, str) and len(v) <= 65536,
    "image": _is_image,
}


def validate_record(kind: str, sha: str, obj: Any) -> Optional[str]:
    """Why `obj` is not a usable record of `kind` stored under `sha`, or None when it is.

    Every field this runner knows is checked for type and range when present (a newer
    format's record too: it is trusted for its kind, and its known fields are still used), so
    no later code meets a string where a count should be, or an infinity."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    fmt = obj.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        return "no valid format number"
    if obj.get("sha256") != sha:
        return "sha256 field does not match the file name"
    if "kind" in obj and obj["kind"] != kind:
        return f"kind field is not {kind}"
    for key, valid in _FIELDS.items():
        if key in obj and not valid(obj[key]):
            return f"no valid {key}"
    if fmt > FORMAT:
        return None  # written by a newer runner: trusted for its kind, other fields left alone
    needed: Tuple[str, ...] = ("name", "attempt") if kind == "started" else (
        "name", "attempts", "exit_code")
    for key in needed:
        if key not in obj:
            return f"no valid {key}"
    return None


def _held_by_users_only(st: os.stat_result, none_is_fine: bool = False) -> bool:
    """Do only other users' processes (uid != 0) hold flock(2) locks on the file of `st`?
    (/proc/locks; without it, or when a holder's owner cannot be told: no.) An older runner's
    0644 lock held this way is a local user blocking the runners, not a runner: lock() replaces
    it. With `none_is_fine`, no holder at all counts as yes."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = []
    try:
        with open("/proc/locks", "rb") as f:
            lines = f.read(1 << 20).decode("ascii", "replace").splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK" or fields[5] != dev:
            continue  # a waiter, another kind of lock, another file
        holders.append(fields[4])
    if not holders:
        return none_is_fine
    for pid in holders:
        try:
            if os.stat(f"/proc/{pid}").st_uid == 0:
                return False
        except (OSError, ValueError):
            return False  # gone: its fd may live on in a child, whose owner is unknown
    return os.geteuid() == 0


def _is_last_run(value: Any) -> bool:
    return isinstance(value, dict) and all(
        key in value and check(value[key]) for key, check in (
            ("started_at", _FIELDS["started_at"]), ("finished_at", _FIELDS["finished_at"]),
            ("finished_unix", _is_seconds), ("duration_s", _is_seconds),
            ("phase", _FIELDS["phase"]), ("result", lambda v: v in ("success", "failure"))))


def validate_meta(obj: Any) -> Optional[str]:
    """Why `obj` is not a usable state.json, or None when it is (unknown keys are kept)."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    fmt = obj.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        return "no valid format number"
    # applied_image is null until a run of this image completes (see update_meta)
    checks = {"image": _is_image, "applied_image": lambda v: v is None or _is_image(v),
              "compat_level": lambda v: _is_int(v, 0, _COUNT_MAX),
              "runner_version": _FIELDS["runner_version"], "updated_at": _FIELDS["started_at"],
              "last_run": _is_last_run}
    for key, valid in checks.items():
        if key in obj and not valid(obj[key]):
            return f"no valid {key}"
    return None


def _superseded(note: Optional[Dict[str, Any]], failed: Optional[Dict[str, Any]]) -> bool:
    """A started note whose attempt has a recorded failure (an unreadable note, attempt 0, is
    never superseded: it may be a later attempt that a power cut emptied)."""
    if note is None or failed is None:
        return False
    attempt, attempts = note.get("attempt"), failed.get("attempts")
    return isinstance(attempt, int) and isinstance(attempts, int) and 1 <= attempt <= attempts


class Damaged(NamedTuple):
    path: str
    reason: str


class Pruned(NamedTuple):
    """A record State.prune() removed."""

    kind: str  # "failed" or "started" (an interrupted script)
    sha256: str
    name: str  # the script's name in the record ("" for a note a power cut emptied)
    moved_to: str = ""  # a damaged note: moved to damaged/ (this path), not removed


class Snapshot(NamedTuple):
    """What the state says about a set of script hashes."""

    applied: Dict[str, Dict[str, Any]]
    failed: Dict[str, Dict[str, Any]]
    started: Dict[str, Dict[str, Any]]
    damaged: List[Damaged]


class State:
    """A state dir. Reading needs nothing; writing needs `lock()` (a runner, forget)."""

    def __init__(self, path: str, say: Optional[Callable[[str], None]] = None) -> None:
        self.path = path
        self.say = say or (lambda _msg: None)  # notes of a runner (logs dropped for room)
        self._trusted: set = set()  # "" (the state dir) and subdirs found real and root's
        self._lock_fd: Optional[int] = None
        self._dir_fds: Dict[str, int] = {}  # subdirs kept open for their fsyncs during a run
        self._unsynced: List[str] = []  # subdirs holding a batched rename not yet made durable
        self._settled: List[Tuple[str, str]] = []  # (kind, sha) to drop once outcomes are durable

    # -- trust -----------------------------------------------------------------------------
    def _refusal(self, where: str, problem: str) -> StateError:
        return StateError(
            f"refusing state dir {self.path}: {where} {problem} (the state dir, its subdirs and "
            "files must be root's and writable by root only: a user who can write there could "
            "forge records or hold the lock)"
        )

    def _top(self) -> bool:
        """Is the state dir there (False: not yet)? StateError when root must not trust it."""
        if "" in self._trusted:
            return True
        try:
            st = os.stat(self.path)  # its own path may be a symlink: configuration
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                raise StateError(f"state dir {self.path}: a parent is not a directory") from None
            raise self._error("read the state dir", e) from None
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"state dir {self.path} is not a directory")
        problem = files.owner_problem(st, os.geteuid())
        if problem:
            raise self._refusal(self.path, problem)
        self._trusted.add("")
        return True

    def _subdir(self, sub: str) -> bool:
        """Is <state>/<sub> a real directory root may trust? False when it is missing or not a
        directory (a symlink, a file: read as absent, moved aside by prepare()); StateError when
        it is a directory someone else could write."""
        if sub in self._trusted:
            return True
        if not self._top():
            return False
        path = os.path.join(self.path, sub)
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        problem = files.owner_problem(st, os.geteuid())
        if problem:
            raise self._refusal(path, problem)
        self._trusted.add(sub)
        return True

    def verify(self) -> None:
        """Check the state dir and every subdir that is a directory (StateError when root must
        not trust one); writes nothing. Run by lock() and snapshot(), so run, status and forget
        refuse the same state dir."""
        if self._top():
            for sub in (*_SUBDIRS, DAMAGED):
                self._subdir(sub)

    # -- reading ---------------------------------------------------------------------------
    def _file(self, kind: str, sha: str) -> str:
        return os.path.join(self.path, kind, sha)

    def _read_record(self, kind: str, sha: str) -> Tuple[Optional[Dict[str, Any]],
                                                          Optional[str], bool]:
        """read_record, and whether a damaged one is a regular file (False: a symlink, a FIFO,
        a directory, too big: never a record a runner wrote)."""
        if not self._subdir(kind):
            return None, None, True
        try:
            data = files.read_bytes(self._file(kind, sha), files.RECORD_MAX)
        except FileNotFoundError:
            return None, None, True
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                return None, None, True
            return None, files.why_unreadable(e), False
        try:
            obj = files.load_json(data)
        except ValueError:
            return None, "truncated or not JSON" if data else "empty file", True
        reason = validate_record(kind, sha, obj)
        return (None, reason, True) if reason else (obj, None, True)  # type: ignore[return-value]

    def read_record(self, kind: str, sha: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """(record, None), (None, None) when absent, (None, reason) when damaged."""
        record, reason, _regular = self._read_record(kind, sha)
        return record, reason

    def snapshot(self, shas: List[str], repair: bool = False) -> Snapshot:
        """Records of `shas`. With `repair` (lock held), damaged ones are moved to damaged/."""
        self.verify()
        found: Dict[str, Dict[str, Dict[str, Any]]] = {k: {} for k in KINDS}
        damaged: List[Damaged] = []
        for sha in dict.fromkeys(shas):
            for kind in KINDS:
                record, reason, regular = self._read_record(kind, sha)
                if reason is not None and kind == "started" and regular:
                    # a note whose content a power cut lost (see mark_started): still a start
                    found[kind][sha] = {"sha256": sha, "attempt": 0, "unreadable": reason}
                elif reason is not None:
                    path = self._file(kind, sha)
                    if repair:
                        path = self.move_aside(kind, sha)
                    damaged.append(Damaged(path, reason))
                elif record is not None:
                    found[kind][sha] = record
                    if kind == "applied":
                        break  # applied wins: failed/started of it are stale and not needed
            if _superseded(found["started"].get(sha), found["failed"].get(sha)):
                # the failure of that attempt was recorded; the note awaits settle() (batched)
                del found["started"][sha]
        return Snapshot(found["applied"], found["failed"], found["started"], damaged)

    def all_records(self, kind: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """Every valid record of `kind` (for forget by name); damaged ones are skipped."""
        if not self._subdir(kind):
            return
        try:
            names = sorted(os.listdir(os.path.join(self.path, kind)))
        except OSError:
            return
        for sha in names:
            if is_sha256(sha):
                record, _ = self.read_record(kind, sha)
                if record is not None:
                    yield sha, record

    def read_meta(self) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """(state.json content, None), (None, None) when absent, (None, reason) when damaged."""
        if not self._top():
            return None, None
        try:
            obj = files.load_json(files.read_bytes(os.path.join(self.path, "state.json"),
                                                   files.RECORD_MAX))
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, files.why_unreadable(e)
        except ValueError:
            return None, "truncated or not JSON"
        reason = validate_meta(obj)
        return (None, reason) if reason else (obj, None)  # type: ignore[return-value]

    def log_path(self, sha: str) -> str:
        return os.path.join(self.path, "logs", sha + ".log")

    def done_stamps(self) -> List[str]:
        if not self._subdir("done"):
            return []
        try:
            return sorted(n for n in os.listdir(os.path.join(self.path, "done")) if n[0] != ".")
        except OSError:
            return []

    def has_done(self, digest: str) -> bool:
        if not self._subdir("done"):
            return False
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self.path, "done", digest)).st_mode)
        except OSError:
            return False

    def lock_held_elsewhere(self) -> bool:
        """True when a runner holds the lock now. Never blocks and never writes (for status)."""
        try:
            fd = os.open(os.path.join(self.path, "lock"), files.READ_FLAGS)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False  # not a lock any runner could hold (run refuses it)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock at once
        return False

    # -- writing (lock held) ---------------------------------------------------------------
    def _error(self, what: str, e: OSError) -> StateError:
        hint = ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = (" (the state dir's file system is full, even without the runner's logs: "
                    "free space on it; the next run goes on where this one stopped)")
        elif e.errno == errno.EFBIG:
            hint = " (file system full?)"
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            hint = " (state dir not writable)"
        where = e.filename or self.path
        return StateError(f"cannot {what} in state dir {self.path}: {where}: {e.strerror}{hint}")

    def lock(self, wait: float) -> None:
        """Take the exclusive runner lock, waiting up to `wait` seconds (LockBusy after that).
        Creates the state dir if needed. The lock lives as long as this process (or `unlock`).

        As root the lock must be a regular file of root's with mode 0600 (StateError otherwise):
        flock(2) needs only a read fd, so a lock others can open is a lock they can hold. A
        0644 lock of an older runner is replaced by a fresh 0600 one once it is held, or at once
        when only other users' processes hold it (a local user blocking the runners; see
        _held_by_users_only); whoever then gets the old file's lock sees that the name no longer
        leads to it and tries again, so two runners never hold different files."""
        try:
            with _umask():
                os.makedirs(self.path, 0o755, exist_ok=True)
        except OSError as e:
            raise self._error("create the state dir", e) from None
        self.verify()
        lock = os.path.join(self.path, "lock")
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            fd, legacy = self._open_lock(lock)
            delay = 0.01
            held = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if legacy and _held_by_users_only(os.fstat(fd)):
                        break  # a user's hold on an older runner's lock: replaced below
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise LockBusy(
                            f"another migration runner holds {lock} (waited {wait:g} s)"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.2)
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(lock))
            except FileNotFoundError:
                same = False
            if not same:  # replaced while we waited: the lock is the file at the name now
                os.close(fd)
                continue
            if not legacy:
                self._lock_fd = fd
                return
            old = os.fstat(fd)
            new = self._replace_lock(fd, lock)
            if new == fd and not held:  # could not be replaced (read-only state dir)
                os.close(fd)
                raise LockBusy(f"a local user holds {lock}, an older runner's lock, and it "
                               "cannot be replaced (state dir read-only?)")
            if new != fd and not held and not _held_by_users_only(old, none_is_fine=True):
                # a runner got the old file's lock in the meantime (a user let it go just
                # then): it goes first, and replaces the name itself
                os.close(new)
                continue
            self._lock_fd = new
            return

    def _open_lock(self, lock: str) -> Tuple[int, bool]:
        """(fd of the lock file, opened or created without following a symlink or blocking;
        whether it is an older runner's lock that others may open)."""
        while True:
            try:
                # O_RDONLY when it exists: flock works on it and a read-only state dir still
                # allows a no-op run.
                fd = os.open(lock, files.READ_FLAGS)
                break
            except FileNotFoundError:
                try:
                    fd = os.open(lock, files.READ_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
                    break
                except FileExistsError:
                    continue  # another runner created it just now
                except OSError as e:
                    raise self._error("create the lock file", e) from None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise self._refusal(lock, "is a symlink") from None
                raise self._error("open the lock file", e) from None
        st = os.fstat(fd)
        euid = os.geteuid()
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = f"is {files.kind_of(st.st_mode)}, not a regular file"
        elif euid == 0 and st.st_uid != 0:
            problem = files.owner_problem(st, euid)
        if problem:
            os.close(fd)
            raise self._refusal(lock, problem)
        return fd, files.owner_problem(st, euid, private=True) is not None

    def _replace_lock(self, old: int, lock: str) -> int:
        """Put a fresh 0600 lock in place of the held `old` one (see lock()); returns its fd,
        locked. On a read-only state dir the old one stays: nothing can be written anyway."""
        tmp = os.path.join(self.path, f".lock{_TMP_MARK}{os.getpid()}")
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = os.open(tmp, files.READ_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return old
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can have it open
            os.rename(tmp, lock)
            _fsync_dir(self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return old
        os.close(old)
        return fd

    @property
    def lock_fd(self) -> Optional[int]:
        """The descriptor holding the runner lock (None when not locked)."""
        return self._lock_fd

    def unlock(self) -> None:
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_meta(self) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """(state.json, None) if readable, (None, reason) when damaged, (None, None) when absent.
        A newer state format stops this runner (StateError): a downgraded runner must not act on
        state it does not understand. Writes nothing: a damaged state.json is moved aside by
        `repair_meta`, after the compatibility check (which must precede every write)."""
        meta, reason = self.read_meta()
        if meta is not None and meta["format"] > STATE_FORMAT:
            raise StateError(
                f"{self.path}/state.json has format {meta['format']}, written by a newer runner "
                f"(this runner {__version__} understands format {STATE_FORMAT}); not touching it"
            )
        return meta, reason

    def repair_meta(self) -> None:
        """Move a damaged state.json aside (lock held)."""
        self.move_aside("", "state.json")

    def has_started(self) -> bool:
        """A started note exists: a run was interrupted (or is running now)."""
        if not self._subdir("started"):
            return False
        try:
            with os.scandir(os.path.join(self.path, "started")) as it:
                return any(is_sha256(e.name) for e in it)
        except OSError:
            return False

    def has_state(self) -> bool:
        """state.json (even damaged) or any record (even damaged) exists: the device's data has
        been through a runner before. Logs, stamps and empty dirs do not count."""
        if not self._top():
            return False
        if os.path.lexists(os.path.join(self.path, "state.json")):
            return True
        for kind in KINDS:
            if not self._subdir(kind):
                continue
            try:
                with os.scandir(os.path.join(self.path, kind)) as it:
                    if any(is_sha256(e.name) for e in it):
                        return True
            except OSError:
                continue
        return False

    def every_record(self) -> Iterator[Dict[str, Any]]:
        """Every valid record of every kind (for the state's level and version when state.json
        cannot tell them; see compat.state_facts)."""
        for kind in KINDS:
            for _sha, record in self.all_records(kind):
                yield record

    def compat_facts(self, meta: Optional[Dict[str, Any]]) -> "compat.StateFacts":
        """The state's compatibility level and recorded version (`meta`: state.json or None)."""
        return compat.state_facts(meta, self.every_record())

    def prepare(self) -> None:
        """Create the subdirs (durably; a symlink, file or anything else in the place of one is
        moved to damaged/ first, never followed) and remove temporary files left by a killed
        runner."""
        created = False
        try:
            if os.path.lexists(os.path.join(self.path, DAMAGED)):
                self._damaged_dir()
            self._clean_tmp("")
            if self._subdir(SCRATCH):
                self._clean_scratch()
            for sub in _SUBDIRS:
                path = os.path.join(self.path, sub)
                if not self._subdir(sub):
                    if os.path.lexists(path):
                        self.move_aside("", sub)
                    os.mkdir(path, 0o755)
                    self._trusted.add(sub)
                    created = True
                if sub != "logs":
                    self._clean_tmp(sub)
        except OSError as e:
            raise self._error("prepare the subdirectories", e) from None
        if created:
            try:
                for sub in _SUBDIRS:
                    _fsync_dir(os.path.join(self.path, sub))
                _fsync_dir(self.path)
            except OSError as e:
                raise self._error("sync", e) from None

    def _clean_scratch(self) -> None:
        """Remove the private TMPDIRs a killed runner's scripts left in <state>/tmp/ (the
        lock is held and leftover processes were stopped: nobody uses them)."""
        import shutil

        path = os.path.join(self.path, SCRATCH)
        for name in os.listdir(path):
            entry = os.path.join(path, name)
            if stat.S_ISDIR(os.lstat(entry).st_mode):
                shutil.rmtree(entry)  # never follows a symlink inside
            else:
                os.unlink(entry)

    def scratch_dir(self) -> str:
        """<state>/tmp/ (mode 0700), created when missing; a symlink or file in its place is
        moved to damaged/ first. For the scripts' TMPDIRs when /run cannot take them."""
        path = os.path.join(self.path, SCRATCH)
        try:
            if not self._subdir(SCRATCH):
                if os.path.lexists(path):
                    self.move_aside("", SCRATCH)
                os.mkdir(path, 0o700)
                os.chmod(path, 0o700)
                self._trusted.add(SCRATCH)
        except OSError as e:
            raise self._error("create the scripts' temporary dir", e) from None
        return path

    def _clean_tmp(self, sub: str) -> None:
        """Remove what a killed runner left in <state>/<sub>: its temporary files and, in
        started/ and failed/, the notes and older failures of scripts whose success it recorded
        (applied wins; a failed record left there would outlive it and, once the content is no
        longer shipped, be pruned). The applied/ dir is fsynced first: those records' renames
        are durable before anything that depends on them is removed."""
        path = os.path.join(self.path, sub)
        stale = []
        for name in os.listdir(path):
            if name.startswith(".") and _TMP_MARK in name:
                os.unlink(os.path.join(path, name))
            elif sub in ("started", "failed") and self._is_file("applied", name):
                stale.append(name)
        if stale:
            _fsync_dir(os.path.join(self.path, "applied"))
            _unlink_durably(path, stale)

    def _is_file(self, kind: str, name: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self._file(kind, name)).st_mode)
        except OSError:
            return False

    def _damaged_dir(self) -> str:
        """<state>/damaged/, created when missing; whatever else has its name (a file, a
        symlink) is moved into the new directory, never followed or deleted."""
        path = os.path.join(self.path, DAMAGED)
        if self._subdir(DAMAGED):
            return path
        if os.path.lexists(path):
            tmp = os.path.join(self.path, f"{DAMAGED}.{time.time_ns()}")
            os.rename(path, tmp)
            with _umask():
                os.mkdir(path, 0o755)
            os.rename(tmp, os.path.join(path, os.path.basename(tmp)))
        else:
            with _umask():
                os.mkdir(path, 0o755)
        self._trusted.add(DAMAGED)
        _fsync_dir(self.path)
        return path

    def move_aside(self, kind: str, name: str) -> str:
        """Move an unreadable file to <state>/damaged/ (never delete it); returns its new path."""
        src = os.path.join(self.path, kind, name)
        try:
            dst_dir = self._damaged_dir()
            dst = os.path.join(dst_dir, f"{kind + '-' if kind else ''}{name}.{time.time_ns()}")
            os.rename(src, dst)
            _fsync_dir(dst_dir)
            _fsync_dir(os.path.dirname(src))
        except OSError as e:
            raise self._error("move a damaged record aside", e) from None
        return dst

    def _with_room(self, what: str, write: Callable[[], None]) -> None:
        """write(); when the state fs is full, drop the runner's logs and try once more:
        records win over logs (a log only helps to read a record; a lost record re-runs a
        script or loses a success). StateError when it still fails."""
        try:
            write()
            return
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._drop_logs():
                raise self._error(what, e) from None
        try:
            write()
        except OSError as e:
            raise self._error(what, e) from None

    def _drop_logs(self) -> int:
        """Remove every log in logs/ (regular files only); returns how many went."""
        if not self._subdir("logs"):
            return 0
        directory = os.path.join(self.path, "logs")
        dropped = 0
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
                    dropped += 1
        if dropped:
            self.say(f"state dir {self.path}: file system full: removed {dropped} script "
                     "log(s) from logs/ so that the records can be written")
        return dropped

    def _write(self, kind: str, sha: str, record: Dict[str, Any], sync_dir: bool = True,
               sync_all: bool = False) -> None:
        self._with_room(
            f"write the {kind} record of {record.get('name')}",
            lambda: atomic_write(self._file(kind, sha), dump_json(record), sync_dir=sync_dir,
                                 sync_all=sync_all))

    def _remove(self, kind: str, sha: str) -> bool:
        try:
            os.unlink(self._file(kind, sha))
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._error(f"remove {kind}/{sha}", e) from None

    def _sync_dir(self, sub: str) -> None:
        fd = self._dir_fds.get(sub)
        if fd is None:
            fd = os.open(os.path.join(self.path, sub), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._dir_fds[sub] = fd
        os.fsync(fd)

    def _sync_batched(self) -> None:
        """Make the batched outcome renames durable (fsync their directories)."""
        while self._unsynced:
            self._sync_dir(self._unsynced[0])
            del self._unsynced[0]

    def mark_started(self, name: str, sha: str, attempt: int, image: Dict[str, str],
                     oneway: int = 0) -> float:
        """Durably note that `sha` starts now (before it starts); returns the start time.

        The note's existence is what matters (found later without an outcome = interrupted), so
        it costs no fsync of its own, only one of the started/ directory; its content (attempt,
        time) is renamed into place: whole if only the runner dies, possibly empty after a power
        cut, which snapshot() accepts for started notes. (The previous outcome's rename is made
        durable by the next record's sync(2) or by settle(); see the module docstring.)"""
        started = time.time()
        record = {
            "format": FORMAT,
            "kind": "started",
            "name": name,
            "sha256": sha,
            "attempt": attempt,
            "started_at": now_iso(started),
            "pid": os.getpid(),
            "runner_version": __version__,
            "image": image,
        }
        if oneway:
            record["oneway"] = oneway
        path = self._file("started", sha)
        tmp = os.path.join(os.path.dirname(path), f".{sha}{_TMP_MARK}{os.getpid()}")
        data = dump_json(record)

        def note() -> None:
            try:
                fd = os.open(tmp, _WRITE_FLAGS, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                os.rename(tmp, path)  # whole or absent if only the runner dies
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # no empty temp file left behind on a full fs
                raise

        self._with_room(f"write the started record of {name}", note)
        try:
            self._sync_dir("started")
        except OSError as e:
            raise self._error(f"write the started record of {name}", e) from None
        return started

    def record_outcome(
        self, kind: str, outcome: Dict[str, Any], batch: bool = False
    ) -> Dict[str, Any]:
        """Record an outcome ("applied" or "failed") atomically and durably, then drop the
        started note (and, for applied, an older failed record). A power cut between the two
        leaves applied+started (reads as applied) or failed+started of the same attempt (reads
        as failed).

        Everything the script wrote is durable before its record can be: one sync(2) between
        writing the record's temporary file and renaming it into place covers both the script's
        writes, on whatever file systems it wrote (the data root's, an /etc overlay, a data
        partition), and the record's content. An fsync of the record alone would not: ext4's
        delayed allocation, UBIFS, JFFS2, F2FS, XFS and btrfs order nothing between files, and
        a power cut could keep the record and lose the data it vouches for (issue 9). On Linux
        sync(2) waits for the writes to complete ("the same guarantees as fsync() called on
        every file in the system", sync(2)). A narrower syncfs(2) of the data root would miss
        the other file systems a script may write.

        With `batch` (a runner going on to its next script), the record's rename is made
        durable by the next record's sync(2) or by settle(), and the notes are dropped by
        settle(): the record is whole before it is renamed into place in any case, and durable
        before anything that depends on it happens (a later record, the done stamp)."""
        record = {**outcome, "format": FORMAT, "kind": kind, "runner_version": __version__}
        sha = record["sha256"]
        self._write(kind, sha, record, sync_dir=not batch, sync_all=True)
        self._unsynced.clear()  # the sync(2) before this rename made the earlier renames durable
        stale = [("failed", sha)] if kind == "applied" else []
        stale.append(("started", sha))
        if batch:
            if kind not in self._unsynced:
                self._unsynced.append(kind)
            self._settled += stale
        else:
            for k, s in stale:
                self._remove(k, s)
        return record

    def settle(self) -> None:
        """After batched outcomes: make them durable, then drop the notes they made stale."""
        try:
            self._sync_batched()
            dropped = False
            while self._settled:
                dropped = self._remove(*self._settled.pop(0)) or dropped
            if dropped:
                self._sync_dir("started")
        except OSError as e:
            raise self._error("sync the records", e) from None

    def drop_stale_started(self, sha: str) -> None:
        self._remove("started", sha)

    def prune(self, shipped: Collection[str]) -> List[Pruned]:
        """Remove the failed records and started notes (interrupted scripts) of content that no
        script has any more: `shipped` holds the sha256 of every script (and manifest entry) the
        run sees. Applied records stay forever (they are the proof), with their logs, so a
        failed record or note next to one is not this path's (prepare() drops those); so does a
        record carrying a one-way level (without state.json, the records are the only memory of
        the level: compat.state_facts), and a damaged failed record (snapshot() moves it aside
        when its content is shipped again). A started note that does not validate is removed
        only when a power cut emptied it (empty, or zeros: see mark_started); any other is moved
        to damaged/ (`Pruned.moved_to`), never deleted. The logs of removed records go too,
        before them.

        Only under the lock this State holds (RuntimeError otherwise). Nothing is followed: only
        regular files of the trusted subdirs are removed (unlink never follows a symlink), a
        record is read with O_NOFOLLOW. Crash-safe: each removal is of a whole file, the logs
        are removed durably before their records, and the records' directories are fsynced at
        the end; a power cut in between leaves records that are whole, read as before, and are
        pruned by the next run."""
        if self._lock_fd is None:
            raise RuntimeError("State.prune() needs the runner lock held by this State")
        found: List[Pruned] = []
        damaged: List[Pruned] = []
        for kind in ("failed", "started"):
            if not self._subdir(kind):
                continue
            try:
                names = sorted(os.listdir(os.path.join(self.path, kind)))
            except OSError as e:
                raise self._error(f"list {kind}/", e) from None
            for sha in names:
                if (not is_sha256(sha) or sha in shipped or not self._is_file(kind, sha)
                        or self._is_file("applied", sha)):
                    continue
                record, reason = self.read_record(kind, sha)
                if record is None and (reason is None or kind != "started"):
                    continue  # gone meanwhile, or damaged: not this path's to judge
                if record is None and not self._emptied(kind, sha):
                    damaged.append(Pruned(kind, sha, "", self.move_aside(kind, sha)))
                    continue
                if record is not None and "oneway" in record:
                    continue
                name = str(record.get("name", "")) if record is not None else ""
                found.append(Pruned(kind, sha, name))
        if not found:
            return damaged
        try:
            shas = dict.fromkeys(p.sha256 for p in found)  # a failed record and a note: one log
            logs = [f"{sha}.log" for sha in shas if self._is_file("logs", f"{sha}.log")]
            _unlink_durably(os.path.join(self.path, "logs"), logs)
            for kind in ("failed", "started"):
                _unlink_durably(os.path.join(self.path, kind),
                                [p.sha256 for p in found if p.kind == kind])
        except OSError as e:
            raise self._error("prune the records of scripts no longer shipped", e) from None
        return damaged + found

    def _emptied(self, kind: str, sha: str) -> bool:
        """Is <kind>/<sha> a file whose content a power cut lost: empty, or only zeros (what XFS
        shows of blocks never written)? Anything else that does not validate is damage."""
        try:
            data = files.read_bytes(self._file(kind, sha), files.RECORD_MAX)
        except OSError:
            return False
        return not data.strip(b"\0")

    def forget(self, sha: str) -> List[str]:
        """Make `sha` pending again: remove its records (logs stay). Returns the kinds removed."""
        removed = [kind for kind in KINDS if self._remove(kind, sha)]
        if removed:
            for kind in removed:
                _fsync_dir(os.path.join(self.path, kind))
        return removed

    def write_done(self, digest: str) -> None:
        """Make `done/<digest>` the only stamp (durably)."""
        directory = os.path.join(self.path, "done")
        others = [n for n in self.done_stamps() if n != digest]
        if not self.has_done(digest):
            self._with_room("write the done stamp",
                            lambda: atomic_write(os.path.join(directory, digest), b""))
        try:
            _unlink_durably(directory, others)
        except OSError as e:
            raise self._error("write the done stamp", e) from None

    def clear_done(self) -> List[str]:
        """Remove every no-op stamp (durably); returns the removed digests."""
        stamps = self.done_stamps()
        try:
            _unlink_durably(os.path.join(self.path, "done"), stamps)
        except OSError as e:
            raise self._error("remove the done stamps", e) from None
        return stamps

    def write_noop_key(self, manifest_sha: str, image: Dict[str, str], digest: str,
                       entries: List[Tuple[str, str]]) -> None:
        """Leave the no-op fast path its key (see migration.noop) after a run that ended with
        every entry of this manifest applied and state.json up to date. Best effort: it is a
        cache, and a no-op run on a read-only state dir must still succeed."""
        from migration import noop

        path = os.path.join(self.path, noop.KEY_NAME)
        try:
            state_sha = noop.file_sha256(os.path.join(self.path, "state.json"))
            if state_sha is None:
                return
            data = noop.key_text(manifest_sha, state_sha, image, digest, entries)
            with contextlib.suppress(OSError):
                if files.read_bytes(path, files.KEY_MAX) == data:
                    return
            atomic_write(path, data)
        except OSError:
            pass

    def update_meta(
        self,
        image: Dict[str, str],
        old: Optional[Dict[str, Any]],
        compat_level: Optional[int] = None,
        applied: bool = False,
        last_run: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Note which image and runner used the state last (durably); with `compat_level`, the
        state's level; with `applied`, also that `image` is the image whose manifest is now
        completely applied (applied_image); with `last_run`, that run's summary. Rewritten only
        when that changed, so a no-op run writes nothing. Unknown keys of `old` (later formats'
        data) are kept. Returns the content now on disk."""
        meta = dict(old or {})
        want: Dict[str, Any] = {"format": STATE_FORMAT, "image": image,
                                "runner_version": __version__}
        if compat_level is not None:
            want["compat_level"] = compat_level
        if last_run is not None:
            want["last_run"] = last_run
        if applied:
            want["applied_image"] = image
        elif "applied_image" not in meta:
            # Always present in this runner's state.json (null until a run completes), so an
            # unfinished run's `image` is never mistaken for a legacy runner's last release;
            # that release, when the state is a legacy runner's, is kept as what it meant.
            want["applied_image"] = compat.legacy_applied_image(meta)
        if all(k in meta and meta[k] == v for k, v in want.items()):
            return meta
        meta.update(want, updated_at=now_iso())
        data = dump_json(meta)
        self._with_room("write state.json",
                        lambda: atomic_write(os.path.join(self.path, "state.json"), data))
        return meta
