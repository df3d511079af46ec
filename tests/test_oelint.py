# SPDX-License-Identifier: MIT
"""oelint-adv, with the layer's .oelint.cfg, finds nothing in the layer's recipes and classes.

Runs in CI (it needs no OE-core): pip install oelint-adv. Checked for each release the layer
supports, since oelint-adv's rules differ by release.
"""

import subprocess
from pathlib import Path

import pytest

from tools import tool

LAYER = Path(__file__).resolve().parent.parent


def metadata_files() -> list:
    files = sorted(
        str(p.relative_to(LAYER))
        for pattern in (
            "classes/*.bbclass",
            "recipes-*/*/*.bb",
            "recipes-*/*/*.bbappend",
            "meta-migration-example/recipes-*/*/*.bb",
            "meta-migration-example/dynamic-layers/*/recipes-*/*/*.bb",
            "meta-migration-example/dynamic-layers/*/recipes-*/*/*.bbappend",
            "tests/oe/data/*/recipes-*/*/*.bb",
        )
        for p in LAYER.glob(pattern)
    )
    assert "classes/migration.bbclass" in files
    assert "recipes-core/migration/migration_0.2.0.bb" in files
    assert "meta-migration-example/dynamic-layers/rauc/recipes-core/rauc/rauc-conf.bbappend" in (
        files
    )
    return files


@pytest.mark.parametrize("release", ["scarthgap", "whinlatter", "wrynose"])
def test_oelint_adv_reports_nothing(release: str) -> None:
    oelint = tool("oelint-adv", "pip install -r requirements-dev.txt")
    proc = subprocess.run(
        [oelint, "--quiet", f"--release={release}", *metadata_files()],
        cwd=LAYER,  # .oelint.cfg is read from the current directory
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
