# SPDX-License-Identifier: MIT
"""README's "## Variables" against what the layer's BitBake code really defines and reads.

An integrator looks a variable up there: one the classes or the runner recipe take but README
leaves out can only be found by reading the code, and one README lists but nothing reads is set
in vain. The names come from the code: MIGRATION_* variables assigned in classes/, the runner
recipe and conf/layer.conf, and those lib/migration/bitbake.py reads with d.getVar or
d.getVarFlag. Variables the layer sets for itself (MIGRATION_POSTINST_PACKAGE, set per package
with setVar while the postinst is built) are not settings and are neither assigned nor read
that way.
"""

import re
from pathlib import Path
from typing import Set

REPO = Path(__file__).resolve().parent.parent

#: NAME, NAME[flag] or NAME:override at the start of a line, then an assignment operator.
ASSIGNED = re.compile(
    r"^(MIGRATION_[A-Z0-9_]+)(?:\[[\w-]+\])?(?::[\w${}-]+)*\s*(?:\?\?=|\?=|:=|\+=|=)", re.M
)
READ = re.compile(r"""\bd\.getVar(?:Flag)?\(\s*["'](MIGRATION_[A-Z0-9_]+)""")
ENTRY = re.compile(r"^\*\*(MIGRATION_[A-Z0-9_]+)(?:\[[^\]]*\])?\*\*$", re.M)


def _code_variables() -> Set[str]:
    names: Set[str] = set()
    files = [
        *sorted((REPO / "classes").glob("*.bbclass")),
        *sorted((REPO / "recipes-core" / "migration").glob("*.bb")),
        REPO / "conf" / "layer.conf",
    ]
    for path in files:
        names |= set(ASSIGNED.findall(path.read_text()))
    names |= set(READ.findall((REPO / "lib" / "migration" / "bitbake.py").read_text()))
    return names


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("\n## Variables\n", 1)[1].split("\n## ", 1)[0]


def test_the_code_reads_the_variables_this_test_expects() -> None:
    """The patterns find what they should (an empty set would pass the test below vacuously)."""
    names = _code_variables()
    for name in ("MIGRATION_SCRIPTS", "MIGRATION_RUNNER", "MIGRATION_UPGRADE_FLOOR",
                 "MIGRATION_BOOT_POLICY", "MIGRATION_INIT", "MIGRATION_LAYERDIR",
                 "MIGRATION_INTERPRETER_RDEPENDS"):  # fmt: skip
        assert name in names
    assert "MIGRATION_POSTINST_PACKAGE" not in names


def test_readme_variables_section_has_an_entry_for_every_variable_and_no_other() -> None:
    documented = set(ENTRY.findall(_readme_section()))
    code = _code_variables()
    assert sorted(code - documented) == [], "variables of the code without a README entry"
    assert sorted(documented - code) == [], "README entries that nothing assigns or reads"
