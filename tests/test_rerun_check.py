# SPDX-License-Identifier: MIT
"""lib/oeqa/runtime/files/migration-rerun-check.py, the re-run check of the testimage case and
the QEMU suite, on a host copy of a device (--root): it passes idempotent migrations and
catches one that appends a line."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "lib" / "oeqa" / "runtime" / "files" / "migration-rerun-check.py"

IDEMPOTENT = """#!/bin/sh
set -eu
mkdir -p "$MIGRATION_ROOT/var/lib/foo"
echo 'setting=2' >"$MIGRATION_ROOT/etc/foo.conf"
chmod 0640 "$MIGRATION_ROOT/etc/foo.conf"
ln -sfn /var/lib/foo "$MIGRATION_ROOT/etc/foo.d"
"""
APPENDS = """#!/bin/sh
set -eu
echo 'extra=1' >>"$MIGRATION_ROOT/var/lib/foo/extra.conf"
"""


def device(tmp_path: Path, scripts: Dict[str, str]) -> Path:
    """A device root with `scripts` in /etc/migration.d, applied once."""
    root = tmp_path / "root"
    (root / "etc" / "migration.d").mkdir(parents=True)
    (root / "var" / "lib").mkdir(parents=True)
    for name, text in scripts.items():
        path = root / "etc" / "migration.d" / name
        path.write_text(text)
        path.chmod(0o755)
    proc = subprocess.run(
        [sys.executable, "-m", "migration", "--root", str(root), "run"],
        env=dict(os.environ, PYTHONPATH=str(REPO / "lib")),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def rerun_check(root: Path) -> "tuple[int, dict]":
    proc = subprocess.run(
        [sys.executable, "-I", str(CHECK), "--root", str(root),
         "--migration", f"{sys.executable} -m migration"],
        env=dict(os.environ, PYTHONPATH=str(REPO / "lib")),
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert proc.stderr == ""
    return proc.returncode, json.loads(proc.stdout)


def test_idempotent_migrations_pass(tmp_path: Path) -> None:
    root = device(tmp_path, {"10-foo-setup.sh": IDEMPOTENT})
    rc, report = rerun_check(root)
    assert (rc, report["changed"]) == (0, [])
    assert report["forgotten"] == ["10-foo-setup.sh"]
    assert report["run"]["rc"] == 0 and "10-foo-setup.sh" in report["run"]["output"]


def test_an_appending_migration_is_caught(tmp_path: Path) -> None:
    root = device(tmp_path, {"10-foo-setup.sh": IDEMPOTENT, "20-foo-append.sh": APPENDS})
    rc, report = rerun_check(root)
    assert rc == 1
    (changed,) = report["changed"]
    assert changed["path"] == "/var/lib/foo/extra.conf"
    assert changed["before"] != changed["after"]
    assert (root / "var/lib/foo/extra.conf").read_text() == "extra=1\nextra=1\n"


def test_the_state_dir_is_left_out_and_the_check_needs_applied_migrations(tmp_path: Path) -> None:
    root = device(tmp_path, {"10-foo-setup.sh": IDEMPOTENT})
    (root / "etc" / "migration.d" / "20-new.sh").write_text("#!/bin/sh\ntrue\n")
    (root / "etc" / "migration.d" / "20-new.sh").chmod(0o755)
    rc, report = rerun_check(root)
    assert rc == 2
    assert "not every migration is applied" in report["error"]
    assert "/var/lib/migration" in report["excluded"]
