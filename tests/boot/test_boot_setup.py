# SPDX-License-Identifier: MIT
"""The boot tests' own contract with CI: missing tools fail loudly, skipping needs an opt-out."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sysvinit_test_count() -> int:
    """How many tests test_sysvinit.py holds: every one must fail (or, opted out, skip)."""
    text = (HERE / "test_sysvinit.py").read_text()
    return sum(line.startswith("def test_") for line in text.splitlines())


def run_boot_tests(tmp_path: Path, **env: str) -> "subprocess.CompletedProcess[str]":
    """pytest on the sysvinit boot tests with a PATH that holds only python3."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    full = {"PATH": str(bindir), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HERE / "test_sysvinit.py")],
        cwd=HERE.parents[1], env=full, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_missing_tools_fail_with_the_packages_to_install(tmp_path: Path) -> None:
    res = run_boot_tests(tmp_path)
    assert res.returncode == 1, res.stdout
    assert "QEMU boot tests need: mmdebstrap (apt-get install mmdebstrap)" in res.stdout
    assert "qemu-system-x86_64 (apt-get install qemu-system-x86)" in res.stdout
    assert "MIGRATION_SKIP_BOOT=1" in res.stdout
    assert f"{sysvinit_test_count()} errors in" in res.stdout


def test_explicit_opt_out_skips(tmp_path: Path) -> None:
    res = run_boot_tests(tmp_path, MIGRATION_SKIP_BOOT="1")
    assert res.returncode == 0, res.stdout
    assert f"{sysvinit_test_count()} skipped in" in res.stdout
    assert not os.path.exists(tmp_path / ".cache")
