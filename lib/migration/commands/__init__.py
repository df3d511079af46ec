# SPDX-License-Identifier: MIT
"""Subcommands of `migration`, one module each (kas-style plugins).

A command module has `name`, `helpmsg`, `setup_parser(parser)` and `run(args) -> int`; its
docstring is its user documentation (shown by `migration COMMAND --help`). To add one, create
lib/migration/commands/<name>.py and add its module name to NAMES. Keep command modules light at
import time (import heavy things inside run()): every invocation imports all of them.
"""

import importlib
from types import ModuleType
from typing import Any, Dict, List, Optional

NAMES = ["run", "update", "status", "forget", "check", "manifest", "postinst", "lint", "test"]


def load(names: Optional[List[str]] = None) -> List[ModuleType]:
    """The command modules (all of them, or just `names`), in NAMES order."""
    wanted = NAMES if names is None else [n for n in NAMES if n in names]
    return [importlib.import_module(f"{__name__}.{name}") for name in wanted]


def options(args: Any, **extra: Any) -> Any:
    """runner.Options from the parsed global arguments (and command-specific extras); runs on
    this system's root send structured journal entries (migration.journal)."""
    from migration import journal
    from migration.runner import Options

    extra.setdefault("journal", journal.socket_for(args.root))
    return Options(
        scripts_dir=args.scripts_dir,
        state_dir=args.state_dir,
        root=args.root,
        manifest_path=args.manifest,
        **extra,
    )


def seconds(text: str) -> float:
    """argparse type: a non-negative number of seconds."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def add_run_options(parser: Any) -> None:
    """The options `run` and `update` share: --dry-run, --policy, --timeout, --kill-grace,
    --lock-wait and --volatile-state (read back with run_settings)."""
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
    add_lock_wait(parser)
    parser.add_argument(
        "--volatile-state",
        choices=("warn", "refuse"),
        default="warn",
        help="when the state dir is on a volatile file system (tmpfs, an overlay with a tmpfs "
        "upper dir), where every migration would run again at every boot: run with a warning "
        "(warn, default) or exit 2 before anything runs or is written (refuse)",
    )


def run_settings(args: Any) -> Dict[str, Any]:
    """The runner.Options fields of add_run_options' options."""
    return {
        "policy": args.policy,
        "timeout": args.timeout or None,
        "lock_wait": args.lock_wait,
        "kill_grace": args.kill_grace,
        "volatile_state": args.volatile_state,
    }


def add_lock_wait(parser: Any) -> None:
    """--lock-wait, for every command that takes the runner's lock."""
    parser.add_argument(
        "--lock-wait",
        type=seconds,  # finite and >= 0: "nan" would wait forever
        default=60.0,
        metavar="SECONDS",
        help="wait this long for another runner's lock, then exit 75 (default 60)",
    )


def add_prometheus_textfile(parser: Any) -> None:
    """--prometheus-textfile, for every command that runs migrations (run, update, postinst)."""
    parser.add_argument(
        "--prometheus-textfile",
        metavar="FILE",
        help="at the end, whatever the outcome, write `status --format prometheus` to FILE "
        "(for node_exporter's textfile collector: a *.prom file in its directory); a FILE that "
        "cannot be written is a warning",
    )


def write_prometheus_textfile(args: Any, opts: Any) -> None:
    """Write --prometheus-textfile's FILE, if given, from `opts`' scripts, manifest and state
    (migration.monitoring); a failure is a warning on the console, never a change of the
    command's exit code."""
    path = getattr(args, "prometheus_textfile", None)
    if not path:
        return
    from migration import console, monitoring
    from migration.files import shown

    problem = monitoring.write_textfile(path, opts)
    if problem:
        console.say(f"migration: {shown(problem)}")
