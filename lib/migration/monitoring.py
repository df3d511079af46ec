# SPDX-License-Identifier: MIT
"""What a fleet's monitoring reads: `status --format prometheus` (node_exporter's textfile
collector), `status --format mender-inventory` (a Mender inventory script's key=value lines) and
`run --prometheus-textfile FILE` (the Prometheus text written after each run).

Both formats come from one Report, read like `status` reads (no lock, nothing written): the
number of scripts in each state (a script a runner executes right now counts as pending, as in
`status --json`), the state's compatibility level, this image's, whether this image would be
refused, and the last run that ran a script or left one not applied (state.json's "last_run",
written by the runner at the end of such a run).
"""

import contextlib
import errno
import os
import stat
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from migration import files, runner
from migration.files import shown

STATES = (runner.APPLIED, runner.PENDING, runner.FAILED, runner.REFUSED, runner.INTERRUPTED)
#: The states whose scripts the inventory names: each needs someone to look at it.
NAMED = (runner.FAILED, runner.REFUSED, runner.INTERRUPTED)


class Report(NamedTuple):
    counts: Dict[str, int]  # every state of STATES
    names: Dict[str, List[str]]  # script names of the NAMED states, in run order
    state_level: Optional[int]  # None: a newer runner's state.json
    image_level: int
    refused: bool
    verdict: str  # the refusal's kind, or ""
    last_run: Optional[Dict[str, Any]]


def collect(opts: "runner.Options") -> Report:
    """The report of the state dir and scripts of `opts` (raises like `status`)."""
    from migration import manifest as manifest_mod
    from migration.state import State, StateError

    state = State(opts.state_dir)
    manifest = manifest_mod.load(opts.manifest_path) if opts.manifest_path else None
    try:
        verdict, facts, meta = runner.verdict_of(opts, state, manifest)
        state_level: Optional[int] = facts.level
        refused, kind = verdict.refused, verdict.kind if verdict.refused else ""
    except StateError:  # state.json of a newer runner: not this runner's to read
        state_level, refused, kind, meta = None, False, "", None
    items, _warnings = runner.inspect(opts, state)
    running = state.lock_held_elsewhere()
    counts = dict.fromkeys(STATES, 0)
    names: Dict[str, List[str]] = {s: [] for s in NAMED}
    for item in items:
        st = runner.PENDING if item.state == runner.INTERRUPTED and running else item.state
        counts[st] += 1
        if st in names:
            names[st].append(item.name)
    last = meta.get("last_run") if meta is not None else None
    return Report(
        counts,
        names,
        state_level,
        manifest.compat_level if manifest else 0,
        refused,
        kind,
        last if isinstance(last, dict) else None,
    )


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def prometheus(report: Report) -> str:
    """The Prometheus text exposition format (0.0.4), one gauge family after another."""
    lines: List[str] = []

    def family(name: str, helptext: str, samples: List[str]) -> None:
        lines.extend([f"# HELP {name} {helptext}", f"# TYPE {name} gauge", *samples])

    family(
        "migration_scripts",
        "Migration scripts of this image and the state, by state.",
        [f'migration_scripts{{state="{s}"}} {report.counts[s]}' for s in STATES],
    )
    if report.state_level is not None:
        family(
            "migration_state_compat_level",
            "Compatibility level of the device's data (the highest one-way level ever started).",
            [f"migration_state_compat_level {report.state_level}"],
        )
    family(
        "migration_image_compat_level",
        "Compatibility level of this image.",
        [f"migration_image_compat_level {report.image_level}"],
    )
    family(
        "migration_image_refused",
        "1 when this image cannot use the device's data "
        "(downgrade, below the upgrade floor, data older than the framework), else 0.",
        [f"migration_image_refused {int(report.refused)}"],
    )
    last = report.last_run
    if last is not None:
        family(
            "migration_last_run_finish_time_seconds",
            "When the last run that ran a "
            "migration (or left one not applied) finished, in seconds since the epoch.",
            [f"migration_last_run_finish_time_seconds {_number(last['finished_unix'])}"],
        )
        family(
            "migration_last_run_duration_seconds",
            "How long that run took.",
            [f"migration_last_run_duration_seconds {_number(last['duration_s'])}"],
        )
        family(
            "migration_last_run_success",
            "1 when that run left nothing failed, refused or pending, else 0.",
            [f"migration_last_run_success {int(last['result'] == 'success')}"],
        )
    return "\n".join(lines) + "\n"


def _value(text: str) -> str:
    """A value on one line: escaped (migration.files.shown) and without a newline."""
    return shown(text).replace("\n", "\\n")


def mender_inventory(report: Report) -> str:
    """A Mender inventory script's output: key=value lines; a key given more than once is a
    list (the names of the scripts in each state that needs attention)."""
    lines = [f"migration_{s}={report.counts[s]}" for s in STATES]
    if report.state_level is not None:
        lines.append(f"migration_compat_level={report.state_level}")
    lines.append(f"migration_image_compat_level={report.image_level}")
    lines.append(f"migration_image_refused={report.verdict or 'no'}")
    for st in NAMED:
        lines += [f"migration_{st}_name={_value(name)}" for name in report.names[st]]
    return "\n".join(lines) + "\n"


#: Random temporary names tried before giving up (a user may fill the dir with names).
_TRIES = 100


def dir_problem(st: os.stat_result) -> Optional[str]:
    """Why a textfile dir with this stat must not get the runner's metrics, or None: whoever
    can write a dir without the sticky bit can replace any file in it, so metrics written there
    would vouch for nothing. Its owner is not judged: node_exporter's textfile dir is often its
    user's, and that user is the one who serves the metrics anyway."""
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return (
            f"its directory is writable by group or others without the sticky bit (mode "
            f"{files.mode_text(st.st_mode)}): any of them could replace the file"
        )
    return None


def replace(path: str, data: bytes) -> None:
    """Replace `path` with `data`, mode 0644 whatever the umask, in a directory someone else
    may own: the temporary file has a random hidden name (node_exporter reads only *.prom
    names, so it never reads half a file) and is created anew (O_EXCL, O_NOFOLLOW), so nothing
    planted there (a file, a symlink, a hard link to a root file) is ever written through;
    every step goes through one fd of the directory, which a rename of it cannot redirect;
    then fsync, rename over `path`, fsync the directory."""
    from migration.errors import MigrationError

    directory, name = os.path.split(os.path.abspath(path))
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        problem = dir_problem(os.fstat(dfd))
        if problem:
            raise MigrationError(problem)
        fd, tmp = _create(dfd, name)
        try:
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _create(dfd: int, name: str) -> Tuple[int, str]:
    """(fd, name) of a new empty file `.<name>.<random>` in the directory `dfd`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TRIES):
        tmp = f".{name}.{os.urandom(8).hex()}"  # secrets, tempfile: not python3-core
        try:
            return os.open(tmp, flags, 0o600, dir_fd=dfd), tmp
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free temporary name in its directory")


def write_textfile(path: str, opts: "runner.Options") -> Optional[str]:
    """Write the Prometheus text of `opts` to `path` (replace); None, or why it could not (the
    command's outcome stands either way)."""
    from migration.errors import MigrationError

    try:
        replace(path, prometheus(collect(opts)).encode())
    except (MigrationError, OSError) as e:
        return f"cannot write the Prometheus textfile {path}: {getattr(e, 'strerror', None) or e}"
    return None
