# SPDX-License-Identifier: MIT
"""Run every pending migration script once, in byte-wise order of their names.

A script whose sha256 is recorded as applied never runs again. Shell scripts (no #! line, or sh,
bash, dash, ash...) run with errexit. Output goes to stderr with the script name as prefix and to
STATE/logs/<sha256>.log. With --policy continue (default) a failure does not stop the others;
with --policy stop the rest stay pending. Exit 0 when everything is applied, 1 otherwise, 70 on an
internal error, 75 when another runner holds the lock longer than --lock-wait.

Before anything is written, the image is checked against the device's state (migration.compat):
an incompatible downgrade (the state's compatibility level is above the image's), an upgrade from
a release older than the image's upgrade floor, or data without migration state on an image
with a floor and data markers is refused: nothing is written, every executable in --hooks-dir
(default ROOT/etc/migration/incompatible.d) runs with MIGRATION_VERDICT (downgrade, below-floor
or predates), MIGRATION_MESSAGE, MIGRATION_STATE_DIR, MIGRATION_PHASE=boot, and the exit code
is 3. Scripts see MIGRATION_PHASE=boot, MIGRATION_ROOT and MIGRATION_IMAGE_ROOT (both ROOT), and
TMPDIR: a new private dir (0700, under /run, else under STATE/tmp) removed when they end, since
at early boot /var/tmp and the like may not exist yet.

With --prometheus-textfile FILE, the run ends by writing what `status --format prometheus`
prints to FILE (a new temporary file with a random hidden name in its directory, renamed over
it, mode 0644: migration.monitoring.replace), whatever its outcome: refused (exit 3), failed or
interrupted too; a FILE that cannot be written, or whose directory group or others can write
without the sticky bit, is a warning, not a change of the exit code.

A state dir on a volatile file system (tmpfs, an overlay whose upper dir is on tmpfs: a
read-only root's volatile /var/lib) forgets every record at reboot, so every migration would run
again at every boot: --volatile-state warn (default) runs with a warning first, refuse exits 2
before anything runs or is written (update too).
"""

from typing import Any

from migration.commands import (
    add_prometheus_textfile,
    add_run_options,
    options,
    run_settings,
    write_prometheus_textfile,
)

name = "run"
helpmsg = "run every pending migration script once"


def setup_parser(parser: Any) -> None:
    add_run_options(parser)
    parser.add_argument(
        "--hooks-dir",
        metavar="DIR",
        help="run these executables when the image is refused "
        "(default ROOT/etc/migration/incompatible.d)",
    )
    add_prometheus_textfile(parser)


def run(args: Any) -> int:
    import os

    from migration import cli, runner

    opts = options(
        args,
        **run_settings(args),
        hooks_dir=os.path.abspath(args.hooks_dir) if getattr(args, "hooks_dir", None) else None,
    )
    if args.dry_run:
        return runner.dry_run(opts, print)
    cli.install_signal_handlers()
    try:
        return runner.run(opts)
    finally:  # a refusal (exit 3) and a failed run are what monitoring must see
        write_prometheus_textfile(args, opts)
