# SPDX-License-Identifier: MIT
"""lib/oeqa/runtime/cases/migration.py imported with OE-core's own oeqa decorators."""

import importlib.util
import os
import sys
import unittest
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_oeqa_runtime import CASES, case_methods


@pytest.mark.oe
def test_cases_import_with_oe_core_oeqa() -> None:
    oecore, bitbake = os.environ.get("MIGRATION_OECORE_DIR"), os.environ.get(
        "MIGRATION_BITBAKE_DIR"
    )
    if not (oecore and bitbake):
        pytest.skip("needs MIGRATION_OECORE_DIR and MIGRATION_BITBAKE_DIR")
    sys.path[:0] = [str(Path(oecore) / "meta" / "lib"), str(Path(bitbake) / "lib")]
    try:
        spec = importlib.util.spec_from_file_location("migration_oeqa_cases", CASES)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names = unittest.TestLoader().getTestCaseNames(module.MigrationBootTest)
        assert sorted(names) == sorted(case_methods())
        ssh = Path(oecore) / "meta" / "lib" / "oeqa" / "runtime" / "cases" / "ssh.py"
        assert "def test_ssh" in ssh.read_text()
    finally:
        del sys.path[:2]
