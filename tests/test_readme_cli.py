# SPDX-License-Identifier: MIT
"""README's CLI synopsis against the real argparse parser, and `--help` as plain text.

A user reads the synopsis in "The runner on the device" to learn what the command takes: an
option missing there is one nobody finds, one listed there that the parser rejects is a usage
error. And `migration COMMAND --help` shows the command module's docstring as it is: reST markup
in it (double backquotes, :mod: roles) is noise on a terminal.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
LIB = str(REPO / "lib")
sys.path.insert(0, LIB)

from migration import cli, commands  # noqa: E402

#: Options every parser has; the synopsis need not list them.
IMPLICIT = {"-h", "--help"}
OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")


def _options(parser: argparse.ArgumentParser) -> Set[str]:
    return {s for a in parser._actions for s in a.option_strings} - IMPLICIT


def _parser_options() -> Tuple[Set[str], Dict[str, Set[str]]]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return _options(parser), {name: _options(p) for name, p in sub.choices.items()}


def _synopsis() -> List[str]:
    """The code block that follows the heading "## The runner on the device"."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## The runner on the device\n", 1)[1]
    block = re.search(r"^```\n(.*?)^```", section, re.M | re.S)
    assert block, "no code block in 'The runner on the device'"
    return block.group(1).splitlines()


def _readme_options() -> Tuple[Set[str], Dict[str, Set[str]]]:
    """(global options, {command: options}): lines starting with `migration` hold the global
    ones, a line indented by two spaces starts a command, deeper indented lines continue it."""
    global_opts: Set[str] = set()
    per_command: Dict[str, Set[str]] = {}
    current = None
    for line in _synopsis():
        if line.startswith("migration"):
            global_opts |= set(OPTION.findall(line))
            current = None
        elif re.match(r"  \S", line):
            current = line.split()[0]
            assert current not in per_command, f"{current} listed twice"
            per_command[current] = set(OPTION.findall(line))
        elif line.startswith("   ") and current is not None:
            per_command[current] |= set(OPTION.findall(line))
        else:
            assert not line.strip(), f"unexpected synopsis line: {line!r}"
    return global_opts, per_command


def test_readme_synopsis_lists_every_command_and_option_and_nothing_else() -> None:
    real_global, real = _parser_options()
    readme_global, readme = _readme_options()
    assert sorted(readme) == sorted(commands.NAMES) == sorted(real)
    assert readme_global == real_global
    for name in commands.NAMES:
        assert readme[name] == real[name], name


#: reST that a terminal shows raw: ``literal`` and :role:`target`.
REST = re.compile(r"``|:(mod|func|class|meth|attr|data|ref|exc|obj|envvar|option|file):`")


@pytest.mark.parametrize("command", [None, *commands.NAMES])
def test_help_is_plain_text(command: "str | None") -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    proc = subprocess.run(
        [sys.executable, "-m", "migration", *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=LIB),
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert not REST.search(proc.stdout), proc.stdout
