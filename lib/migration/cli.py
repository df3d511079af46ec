# SPDX-License-Identifier: MIT
"""The `migration` command: argparse, the subcommands of migration.commands, and the one place
where errors become exit codes and messages.

Exit codes (a contract: tests outside this repository rely on them):
  0   nothing failed and nothing is pending
  1   at least one script failed, was refused, or is still pending
  2   bad usage or configuration: a clear one-line message on stderr (errors.MigrationError)
  3   this image cannot use the device's data (errors.Incompatible, migration.compat): an
      incompatible downgrade, an upgrade from below the image's floor, or data that predates
      the framework; nothing was written (run, update; status and dry-run report it the same)
  70  internal error (errors.INTERNAL_ERROR, sysexits' EX_SOFTWARE): a bug, shown with a
      traceback, or a python3 that cannot run the runner (older than 3.8, or lacking a module of
      python3-core, python3-crypt or python3-json: the message names it); nothing was checked
  75  another runner holds the lock and did not release it within the wait (state.LockBusy); the
      verdict came first, so the image is not refused
  130 interrupted by a signal that would end it (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1...;
      the running script's process group is stopped first, its run reads as interrupted)
"""

from __future__ import annotations

import os
import sys

from migration import __version__
from migration.errors import INTERNAL_ERROR, Interrupted, MigrationError

# argparse, typing, signal (enum), contextlib and the command modules are imported where they
# are used: a no-op boot run (migration.noop) needs none of them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

#: Defaults, relative to --root (default /).
SCRIPTS_DIR = "etc/migration.d"
STATE_DIR = "var/lib/migration"
MANIFEST = "usr/share/migration/manifest.json"


_GLOBAL_WITH_VALUE = ("--root", "--scripts-dir", "--state-dir", "--manifest")


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named on the command line, if it is a known one (else None)."""
    from migration import commands

    tokens = iter(argv)
    for token in tokens:
        if token in _GLOBAL_WITH_VALUE:
            next(tokens, None)
        elif not token.startswith("-"):
            return token if token in commands.NAMES else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that subcommand is set up (every invocation pays
    for the parsers it builds, and a no-op boot run should cost little more than the
    interpreter's start)."""
    import argparse

    from migration import commands

    parser = argparse.ArgumentParser(
        prog="migration",
        description="Run one-shot migration scripts exactly once, in order, safely.",
        epilog="Exit codes: 0 ok, 1 something failed/refused/pending, 2 usage or configuration "
        "error, 3 this image cannot use the device's data (incompatible downgrade, below the "
        "upgrade floor, data older than the framework; nothing written), 70 internal error "
        "(a bug, or a python3 lacking a module the runner needs), 75 lock busy (the image is "
        "not refused), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--root", metavar="DIR", help="resolve the default paths under DIR (default /)"
    )
    parser.add_argument(
        "--scripts-dir", metavar="DIR", help=f"migration scripts (default ROOT/{SCRIPTS_DIR})"
    )
    parser.add_argument(
        "--state-dir", metavar="DIR", help=f"records, logs and lock (default ROOT/{STATE_DIR})"
    )
    parser.add_argument(
        "--manifest", metavar="FILE", help=f"image manifest (default ROOT/{MANIFEST})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in commands.load([only] if only else None):
        sp = sub.add_parser(
            mod.name,
            help=mod.helpmsg,
            description=mod.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.setup_parser(sp)
        sp.set_defaults(func=mod.run)
    return parser


class _Args:
    """An argparse.Namespace look-alike for the plain `run` command lines."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _plain_run_args(paths: dict[str, str], opts: dict[str, object]) -> Any:
    from migration.commands import run

    return _Args(
        root=paths.get("--root"), scripts_dir=paths.get("--scripts-dir"),
        state_dir=paths.get("--state-dir"), manifest=paths.get("--manifest"), command="run",
        dry_run=False, policy=opts.get("--policy", "continue"), timeout=opts.get("--timeout"),
        kill_grace=opts.get("--kill-grace", 5.0), lock_wait=opts.get("--lock-wait", 60.0),
        volatile_state=opts.get("--volatile-state", "warn"), hooks_dir=None,
        prometheus_textfile=None, func=run.run,
    )


def resolve_paths(args: Any) -> None:
    """Fill in the defaults under --root; explicit paths are taken as given (made absolute).
    A relative path needs the working directory: a removed one is a MigrationError."""
    try:
        _resolve_paths(args)
    except OSError as e:
        raise MigrationError(
            f"cannot resolve a relative path: the current working directory is gone "
            f"({e.strerror}); give absolute paths or run from an existing directory"
        ) from None


def _resolve_paths(args: Any) -> None:
    # which were given (update refuses --scripts-dir/--manifest: it takes NEWROOT's)
    args.explicit_paths = [opt for opt, key in (("--scripts-dir", "scripts_dir"),
                                                ("--manifest", "manifest"))
                           if getattr(args, key, None)]
    args.root = os.path.abspath(args.root) if args.root else "/"
    # Absolute: scripts run with the root as working directory.
    args.scripts_dir = os.path.abspath(args.scripts_dir or os.path.join(args.root, SCRIPTS_DIR))
    args.state_dir = os.path.abspath(args.state_dir or os.path.join(args.root, STATE_DIR))
    args.manifest = os.path.abspath(args.manifest or os.path.join(args.root, MANIFEST))


def install_signal_handlers() -> None:
    """Every signal that would end the runner stops the running script and exits 130
    (migration.interrupts)."""
    from migration import interrupts

    interrupts.install()


def _say_error(msg: str, what: str = "error") -> None:
    # Through migration.console: a stopped console must not keep the runner from exiting, and
    # with no console left to tell (EPIPE) the exit code still says it.
    from migration import console
    from migration.files import shown

    console.say(f"migration: {what}: {shown(msg)}")


#: OE-core packages of the modules the runner imports outside python3-core, for the message
#: of an interpreter that lacks one (tests/test_imports.py keeps the runner within these).
_PACKAGE_OF = {"json": "python3-json", "hashlib": "python3-crypt", "_hashlib": "python3-crypt",
               "_sha2": "python3-crypt", "_sha256": "python3-crypt", "fcntl": "python3-fcntl"}


def main(argv: list[str] | None = None) -> int:
    """The command; every exception ends as a message and an exit code, never as Python's 1
    (which would read as "a script failed" to an updater's hook)."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except ImportError as e:
        # The old system's python3 at update time may be split finer than the runner needs.
        module = e.name or "?"
        package = _PACKAGE_OF.get(module.partition(".")[0], "python3-core")
        _say_error(f"this python3 ({sys.executable}) cannot run the runner: it lacks module "
                   f"{module} (OE-core package {package}; the runner needs python3-core, "
                   f"python3-crypt and python3-json): {e}")
        return INTERNAL_ERROR
    except Exception:
        import traceback  # only for bugs: it costs milliseconds at every start

        from migration import console

        console.stderr().write(traceback.format_exc().encode("utf-8", "backslashreplace"))
        _say_error("internal error (a bug: please report it with the traceback above)")
        return INTERNAL_ERROR


def _main(argv: list[str]) -> int:
    from migration import noop

    try:
        if noop.fast_run(argv) == 0:
            return 0  # a `run` with nothing to do, proven without the full path's imports
    except KeyboardInterrupt:
        _say_error("interrupted (SIGINT)")
        return Interrupted.exit_code
    plain = noop.parse_run_argv(argv)
    if plain is not None:
        args = _plain_run_args(*plain)  # what argparse would make of it, without importing it
    else:
        # usage errors: argparse exits 2 with a message
        args = build_parser(_command_in(argv)).parse_args(argv)
    try:
        resolve_paths(args)
        return int(args.func(args))
    except MigrationError as e:
        if e.exit_code == 3:  # errors.Incompatible: a verdict, not an error of the user's
            _say_error(str(e), "refused")
        else:
            _say_error(str(e))
        return e.exit_code
    except (Interrupted, KeyboardInterrupt) as e:
        # str(): a bare KeyboardInterrupt is truthy but says nothing
        _say_error(f"interrupted ({str(e) or 'SIGINT'}); the running script, if any, was stopped")
        return Interrupted.exit_code
    except OSError as e:
        # Anything the state or scripts code did not turn into a MigrationError: still a clear
        # message (a full disk, an I/O error), not a traceback.
        where = f": {e.filename}" if e.filename else ""
        _say_error(f"{e.strerror or e}{where}")
        return 2
