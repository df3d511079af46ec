# SPDX-License-Identifier: MIT
"""migration lint [--package PKG] [--priority NN] [--no-shellcheck] [--strict] FILE...

Checks migration scripts on any host, before a build, with the rules of the build-time lint of
migration.bbclass (lib/migration/lint.py): empty file, no shebang, shell script without errexit,
`sh -n`/`bash -n` syntax errors, ShellCheck findings (when shellcheck is in PATH), Python scripts
that do not compile (with this Python), CRLF line endings, names the runner would skip or refuse,
and two files with one name; and, as warnings, shell patterns that are not safe to run twice
(lib/migration/idempotence.py).

With --package the runner's naming rules apply to the installed name
<priority>-<package>-<file name> that the class would give the file; without it, to the file name
itself. Prints one line per finding (FILE[:LINE]: [warning: ]message [migration-<check>]).

Exit status: 0 no findings but warnings, 1 findings (warnings too with --strict), 2 usage error
(such as a file that cannot be read).
"""

import argparse
import os
import sys
from typing import List, Tuple

from migration.errors import MigrationError

name = "lint"
helpmsg = "check migration scripts before building (the build-time lint of migration.bbclass)"


def setup_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``migration lint``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="migration script to check")
    parser.add_argument(
        "--package",
        metavar="PKG",
        help="check the installed name <priority>-PKG-<file name> instead of the file name",
    )
    parser.add_argument(
        "--priority",
        default="50",
        metavar="NN",
        help="MIGRATION_PRIORITY for --package (two digits, default %(default)s)",
    )
    parser.add_argument(
        "--no-shellcheck",
        action="store_true",
        help="skip ShellCheck even when it is installed",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 on warnings too (migration-idempotence: a warning in the build as well)",
    )


def run(args: argparse.Namespace) -> int:
    """Lint every FILE; 1 when anything but a warning was found (warnings too with --strict)."""
    # Imported here: every `migration` invocation (the boot run too) imports all command modules.
    from migration import lint

    if not lint.PRIORITY_RE.match(args.priority):
        raise MigrationError(f"--priority {args.priority!r}: expected two digits, 00 to 99")
    shellcheck = None if args.no_shellcheck else lint.find_shellcheck()
    findings: List[lint.Finding] = []
    installed: List[Tuple[str, str]] = []
    for path in args.files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MigrationError(f"cannot read {path}: {e.strerror}") from e
        inst = None
        if args.package:
            inst = lint.installed_name(args.priority, args.package, os.path.basename(path))
        findings += lint.lint_script(path, data, inst, shellcheck)
        installed.append((inst or os.path.basename(path), path))
    findings += lint.check_duplicates(installed)
    for finding in findings:
        print(finding)
    if shellcheck is None and not args.no_shellcheck:
        print("migration lint: shellcheck not in PATH: ShellCheck checks skipped", file=sys.stderr)
    failing = [f for f in findings if args.strict or not f.is_warning]
    return 1 if failing else 0
