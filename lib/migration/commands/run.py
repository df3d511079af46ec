# SPDX-License-Identifier: MIT
"""Run every pending migration script once, in byte-wise order of their names.

A script whose sha256 is recorded as applied never runs again. Shell scripts (no #! line, or sh,
bash, dash, ash...) run with errexit. Output goes to stderr with the script name as prefix and to
STATE/logs/<sha256>.log. With --policy continue (default) a failure does not stop the others;
with --policy stop the rest stay pending. Exit 0 when everything is applied, 1 otherwise, 75 when
another runner holds the lock longer than --lock-wait.
"""

from typing import Any

from migration.commands import options, seconds

name = "run"
helpmsg = "run every pending migration script once"


def setup_parser(parser: Any) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would run; change nothing"
    )
    parser.add_argument(
        "--policy",
        choices=("continue", "stop"),
        default="continue",
        help="after a failure: run the rest (continue, default) or leave them pending (stop)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="kill a script's process group after this long (default and 0: no limit)",
    )
    parser.add_argument(
        "--kill-grace",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="after SIGTERM on timeout, wait this long before SIGKILL (default 5)",
    )
    parser.add_argument(
        "--lock-wait",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for another runner's lock, then exit 75 (default 60)",
    )


def run(args: Any) -> int:
    from migration import cli, runner

    opts = options(
        args,
        policy=args.policy,
        timeout=args.timeout or None,
        lock_wait=args.lock_wait,
        kill_grace=args.kill_grace,
    )
    if args.dry_run:
        return runner.dry_run(opts, print)
    cli.install_signal_handlers()
    return runner.run(opts)
