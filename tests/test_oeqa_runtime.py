# SPDX-License-Identifier: MIT
"""lib/oeqa/runtime/cases/migration.py: the testimage cases for boot scenarios 1-3, the
update hooks and the re-run check.

They run only under `bitbake -c testimage` on a built image; here they are parse-checked, their
dependency names are checked against the real test names, and, with OE-core available
(MIGRATION_OECORE_DIR, MIGRATION_BITBAKE_DIR), imported with OE's own oeqa decorators.
"""

import ast
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "lib" / "oeqa" / "runtime" / "cases" / "migration.py"


def case_methods() -> Dict[str, List[str]]:
    """test_* method name -> the names given to its OETestDepends decorator."""
    tree = ast.parse(CASES.read_text(), filename=str(CASES))
    out: Dict[str, List[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            deps: List[str] = []
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "id", "") == "OETestDepends":
                    deps += [elt.value for elt in dec.args[0].elts]  # type: ignore[attr-defined]
            out[node.name] = deps
    return out


def test_no_init_py_under_lib_oeqa() -> None:
    """OE finds layer test modules by path; an __init__.py would shadow OE-core's oeqa."""
    assert not list((REPO / "lib" / "oeqa").rglob("__init__.py"))


def test_cases_cover_scenarios_1_to_3_and_depend_on_real_tests() -> None:
    methods = case_methods()
    assert sorted(methods) == [
        "test_migration_failure_is_visible",
        "test_migration_first_boot_applied",
        "test_migration_noop_starts_no_process",
        "test_migration_rerun_changes_nothing",
        "test_migration_update_hooks_run_on_the_target",
    ]
    for name, deps in methods.items():
        assert deps, f"{name} declares no OETestDepends"
        for dep in deps:
            module, cls, method = dep.split(".")
            if module == "migration":
                assert cls == "MigrationBootTest" and method in methods, dep
            else:
                assert dep == "ssh.SSHTest.test_ssh", dep


def test_the_rerun_case_sends_the_checked_program() -> None:
    """The re-run case runs lib/oeqa/runtime/files/migration-rerun-check.py on the target (the
    program tests/test_rerun_check.py and the QEMU suite run): the path it builds exists."""
    tree = ast.parse(CASES.read_text(), filename=str(CASES))
    (node,) = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "RERUN_CHECK"
    ]
    parts = [e.value for e in node.value.args[1:]]  # type: ignore[attr-defined]
    assert (CASES.parent.joinpath(*parts)).resolve() == (
        REPO / "lib" / "oeqa" / "runtime" / "files" / "migration-rerun-check.py"
    )
    assert (CASES.parent.joinpath(*parts)).is_file()
