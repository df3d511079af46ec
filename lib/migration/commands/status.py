# SPDX-License-Identifier: MIT
"""Show every migration script with its state; needs no lock and never blocks or writes.

States: applied, pending, failed, refused (not run: unsafe, tampered or missing; see "reason"),
interrupted (started, never finished: runs again). A script that a runner is executing right now
shows as pending with "running": true. With --json (--format json): one JSON array of objects
with schema_version, name, sha256, state, attempts, and for applied or failed ones finished_at
(ISO 8601 UTC), duration_s, exit_code; plus reason, package, version, oneway, started_at, log
when known (docs/status.schema.json is the contract; schema_version changes only when a field
is removed or changes its meaning).

--format prometheus prints the counts by state, the state's and this image's compatibility
levels, whether this image would be refused and the last run's finish time, duration and
success in node_exporter's textfile format; --format mender-inventory prints the same as a
Mender inventory script's key=value lines, with the names of the failed, refused and
interrupted scripts (migration.monitoring). The exit codes are the same in every format.

The text output starts with what the state records (compatibility level, the image that last ran,
the image whose migrations were last all applied) and what this image is (version, level, upgrade
floor), and says so when this image would be refused (migration.compat). Exit 0 when everything
is applied, 1 otherwise, 3 when this image would be refused (with --json the reason goes to
stderr; the array is unchanged). A state dir on a volatile file system (tmpfs, an overlay with a
tmpfs upper dir: migration.volatile), whose records every reboot loses, is reported the same
way: a "WARNING: state dir ... volatile" line in the text, on stderr with --json. So are the
services a package postinst stopped and has not started again (/run/migration/stopped: see
`migration postinst`), each with the packages whose migrations it waits for.

The text form fits an 80-column serial console: longer lines wrap onto indented ones. A script
that did not apply gets its log on a line of its own, as a shell glob of the first 12 hex digits
of its sha256 that matches only that file (the full path is in --json); a failed one also gets
the last non-empty line of its output, from the log, with control characters and invalid UTF-8
escaped and cut to fit (a line in the form of the runner's own notes with its "[" escaped: the
runner's are the log's first and last lines only). Logs are read only in a logs/ that is a real
directory: a symlinked one reads as absent, as every subdir of the state dir does.
"""

import json
from typing import Any, Dict

from migration.commands import options

name = "status"
helpmsg = "show every script and its state"


#: `--format` values; `--json` is `--format json`.
FORMATS = ("text", "json", "prometheus", "mender-inventory")
#: Version of the `--json` objects (docs/status.schema.json): raised when a field is removed or
#: changes its meaning or type; new fields keep it.
SCHEMA_VERSION = 1


def setup_parser(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON array "
                        "(--format json)")
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="text (default), json (docs/status.schema.json), prometheus "
                        "(node_exporter's textfile collector) or mender-inventory (key=value "
                        "lines of a Mender inventory script)")


def describe(item: Any, log: str, running: bool) -> Dict[str, Any]:
    """The JSON object of one item (the `status --json` contract)."""
    from migration import runner

    state = item.state
    rec = item.record or {}
    out: Dict[str, Any] = {"schema_version": SCHEMA_VERSION, "name": item.name,
                           "sha256": item.sha256, "state": state}
    if state == runner.INTERRUPTED and running:
        out["state"] = runner.PENDING
        out["running"] = True
    if state in (runner.APPLIED, runner.FAILED):
        for key in ("started_at", "finished_at", "duration_s", "exit_code"):
            out[key] = rec.get(key)
        out["attempts"] = rec.get("attempts", 1)
    elif state == runner.INTERRUPTED:
        out["started_at"] = rec.get("started_at")
        out["attempts"] = rec.get("attempt", 1)
    else:
        out["attempts"] = 0
    if item.reason and out["state"] != runner.PENDING:
        out["reason"] = item.reason
    if item.package:
        out["package"] = item.package
        out["version"] = item.version
    if item.oneway:
        out["oneway"] = item.oneway
    if log:
        out["log"] = log
    return out


def _image(image: Any) -> str:
    if not isinstance(image, dict):
        return "unknown"
    version = image.get("version_id") or "no VERSION_ID"
    build = f" (build {image['build_id']})" if image.get("build_id") else ""
    return f"{version}{build}"


def describe_compat(opts: Any, state: Any, manifest: Any) -> "tuple[Any, list[str]]":
    """(verdict, text lines) about the state and this image (see the module docstring)."""
    from migration import runner
    from migration.state import StateError, read_os_release

    try:
        verdict, facts, meta = runner.verdict_of(opts, state, manifest)
    except StateError as e:  # state.json of a newer runner: the scripts are still listed
        return None, [f"state: {e}"]
    lines = []
    if meta is not None:
        parts = [f"compatibility level {facts.level}", f"last image {_image(meta.get('image'))}"]
        if meta.get("applied_image"):
            # Said of a past image: pending migrations of this one may be listed below.
            parts.append(f"last image with every migration applied {_image(meta['applied_image'])}")
        lines.append("state: " + ", ".join(parts))
    elif state.has_state():
        newest = facts.version or "unknown"
        lines.append(f"state: state.json missing or damaged; from the records: compatibility "
                     f"level {facts.level}, newest image {newest}")
    else:
        lines.append("state: none (a fresh device)")
    image = read_os_release(runner.image_root(opts))
    parts = [f"image: {_image(image)}",
             f"compatibility level {manifest.compat_level if manifest else 0}"]
    if manifest is not None and manifest.upgrade_floor:
        parts.append(f"upgrades from {manifest.upgrade_floor} or newer")
    lines.append(", ".join(parts))
    if verdict.refused:
        lines.append(f"REFUSED ({verdict.kind}): {verdict.message}")
    return verdict, lines


def stopped_lines(root: str, items: Any) -> "list[str]":
    """What package postinsts stopped and will start again (migration.services.Stopped)."""
    from migration import runner, services
    from migration.errors import MigrationError

    notes: list[str] = []
    try:
        remembered = services.Stopped(root, notes.append).load()
    except (MigrationError, OSError) as e:  # OSError: not root (the directory is 0700)
        return [f"stopped services: {e}"] if isinstance(e, MigrationError) else []
    pending = {i.package for i in items if i.state != runner.APPLIED and i.package}
    lines = []
    for unit, packages in sorted(remembered.items()):
        waiting = [p for p in packages if p in pending]
        if waiting:
            lines.append(f"stopped by a package postinst: {unit}, until the migrations of "
                         f"{'package' if len(waiting) == 1 else 'packages'} "
                         f"{', '.join(waiting)} are applied")  # fmt: skip
        else:
            lines.append(f"stopped by a package postinst: {unit}, to be started by the next "
                         f"package postinst (or: systemctl start {unit})")  # fmt: skip
    return notes + lines


def run(args: Any) -> int:
    import os
    import sys

    from migration import logs, runner, volatile
    from migration import manifest as manifest_mod
    from migration.errors import MigrationError
    from migration.state import State

    if args.json:
        if args.format not in ("text", "json"):
            raise MigrationError(f"--json and --format {args.format}: give one of them")
        args.format = "json"
    opts = options(args)
    if args.format in ("prometheus", "mender-inventory"):
        return _monitoring(args, opts)
    state = State(args.state_dir)
    manifest = manifest_mod.load(opts.manifest_path) if opts.manifest_path else None
    verdict, compat_lines = describe_compat(opts, state, manifest)
    why = volatile.check(args.state_dir)
    volatile_line = f"WARNING: {why}" if why else ""
    items, warnings = runner.inspect(opts, state)
    notes = [volatile_line] if volatile_line else []
    notes += stopped_lines(args.root, items)
    running = state.lock_held_elsewhere()
    rows = []
    for item in items:
        # "": refused unread; a log only through a logs/ that is a real dir
        log = state.log_path(item.sha256) if item.sha256 else ""
        rows.append(describe(item, log if log and logs.present(log) else "", running))
    log_names = logs.listing(os.path.join(args.state_dir, "logs"))
    if verdict is not None and verdict.refused:
        code = 3
    elif verdict is None:
        code = 1  # a newer runner's state: not this runner's to vouch for
    else:
        code = 0 if all(i.state == runner.APPLIED for i in items) else 1
    try:
        _report(args, rows, warnings, verdict, compat_lines, running, notes, log_names)
    except BrokenPipeError:
        # `status | head`: the reader has what it wanted; the answer is still the exit code
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # also for the flush at exit
        os.close(devnull)
    return code


#: The text form fits a serial console: lines longer than this wrap onto indented ones.
WIDTH = 80
#: Where the details of a script's row start (after "STATE        ").
INDENT = " " * 13


def _wrapped(text: str, indent: str) -> "list[str]":
    """`text` in lines of at most WIDTH columns (words are not split: a longer word, such as a
    long path, keeps its own line)."""
    import textwrap

    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [""]


def row_lines(row: Dict[str, Any], log_names: "list[str]") -> "list[str]":
    """A script's lines in the text form: state, name and details on one line when they fit,
    else the details below; for a script that did not apply, the last line of its output
    (failed) and its log (shortened: migration.logs)."""
    from migration import logs, runner
    from migration.files import shown

    details = []
    if row.get("reason"):
        details.append(shown(row["reason"]))
    if row.get("running"):
        details.append("running now")
    if (row.get("attempts") or 0) > 1:
        details.append(f"attempts {row['attempts']}")
    if row.get("finished_at"):
        details.append(f"{row['finished_at']} ({row['duration_s']} s)")
    head = f"{row['state']:<12} {shown(row['name'])}"
    line = f"{head}  {', '.join(details)}".rstrip()
    if len(line) <= WIDTH:
        lines = [line]
    else:
        lines = [head]
        for detail in details:
            joined = f"{lines[-1]}, {detail}" if len(lines) > 1 else ""
            if joined and len(joined) <= WIDTH:
                lines[-1] = joined
            else:
                lines += _wrapped(INDENT + detail, INDENT)
    log = row.get("log")
    if log and row["state"] != runner.APPLIED:
        if row["state"] == runner.FAILED:
            label = f"{INDENT}last output: "
            last = logs.last_line(log, WIDTH - len(label))
            if last:
                lines.append(label + last)
        lines.append(f"{INDENT}log: {shown(logs.short_path(log, log_names))}")
    return lines


def _report(args: Any, rows: "list[Dict[str, Any]]", warnings: "list[str]", verdict: Any,
            compat_lines: "list[str]", running: bool, notes: "list[str]",
            log_names: "list[str]") -> None:
    import sys

    from migration.files import shown

    for w in warnings:
        print(f"migration: {shown(w)}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        for note in notes:
            print(f"migration: {shown(note)}", file=sys.stderr)
        if verdict is not None and verdict.refused:
            print(f"migration: refused ({verdict.kind}): {shown(verdict.message)}",
                  file=sys.stderr)
        return
    out = []
    for line in [*compat_lines, *notes]:
        out += _wrapped(shown(line), "  ")
    if running:
        out.append("(a runner is working now)")
    for row in rows:
        out += row_lines(row, log_names)
    if not rows:
        out += _wrapped(shown(f"no migration scripts in {args.scripts_dir}"), "  ")
    if out:
        print("\n".join(out))


def _monitoring(args: Any, opts: Any) -> int:
    """--format prometheus or mender-inventory (migration.monitoring); exit codes as in text."""
    from migration import monitoring

    report = monitoring.collect(opts)
    if args.format == "prometheus":
        print(monitoring.prometheus(report), end="")
    else:
        print(monitoring.mender_inventory(report), end="")
    if report.refused:
        return 3
    if report.state_level is None:
        return 1
    return 0 if report.counts["applied"] == sum(report.counts.values()) else 1
