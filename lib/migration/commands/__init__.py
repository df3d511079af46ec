# SPDX-License-Identifier: MIT
"""Subcommands of `migration`, one module each (kas-style plugins).

A command module has `name`, `helpmsg`, `setup_parser(parser)` and `run(args) -> int`; its
docstring is its user documentation (shown by `migration COMMAND --help`). To add one, create
lib/migration/commands/<name>.py and add its module name to NAMES. Keep command modules light at
import time (import heavy things inside run()): every invocation imports all of them.
"""

import importlib
from types import ModuleType
from typing import Any, List, Optional

NAMES = ["run", "update", "status", "forget", "check", "manifest", "lint"]


def load(names: Optional[List[str]] = None) -> List[ModuleType]:
    """The command modules (all of them, or just `names`), in NAMES order."""
    wanted = NAMES if names is None else [n for n in NAMES if n in names]
    return [importlib.import_module(f"{__name__}.{name}") for name in wanted]


def options(args: Any, **extra: Any) -> Any:
    """runner.Options from the parsed global arguments (and command-specific extras)."""
    from migration.runner import Options

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
