# SPDX-License-Identifier: MIT
"""`bitbake <recipe> -c migration_test` (MIGRATION_TEST_ROOTS) in a real build (issue 12): the
recipe's scripts run twice, with BitBake's Python, on a copy-on-write view of an old tree, in a
task run by the unprivileged BitBake user.

The old tree is the tiny rootfs of tests/test_migration_test.py (a static busybox as /bin/sh),
made in the build dir, where the test layer's migration-trial recipes point MIGRATION_TEST_ROOTS.
"""

import os
import pwd
import shutil
import sys
from pathlib import Path

import pytest
from oebuild import OEBuild

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_migration_test import make_oldroot, snapshot

pytestmark = pytest.mark.oe


@pytest.fixture(scope="module")
def builddir(oe: OEBuild) -> Path:
    return oe.extra_builddir("build-test-layer", [oe.test_layer])


@pytest.fixture(scope="module")
def oldroot(oe: OEBuild, builddir: Path) -> Path:
    """The recipes' MIGRATION_TEST_ROOTS, owned by the BitBake user (as its IMAGE_ROOTFS is)."""
    root = builddir / "migration-trial-oldroot"
    if root.exists():
        shutil.rmtree(root)
    make_oldroot(root)
    if oe.user is not None and os.getuid() == 0:
        pw = pwd.getpwnam(oe.user)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [".", *dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)
    return root


def task_log(builddir: Path, pn: str) -> str:
    (log,) = builddir.glob(f"tmp*/work/*/{pn}/*/temp/log.do_migration_test")
    return log.read_text()


def test_an_idempotent_migration_passes(oe: OEBuild, builddir: Path, oldroot: Path) -> None:
    before = snapshot(oldroot)
    proc = oe.run("bitbake migration-trial -c migration_test", builddir)
    assert proc.returncode == 0, proc.stdout
    log = task_log(builddir, "migration-trial")
    assert f"migration test of migration-trial on {oldroot}:" in log, log
    assert "50-migration-trial-move-conf.sh: ok" in log, log  # under its installed name
    assert "removed /etc/app.conf" in log and "added /var/lib/app/v2/app.conf" in log, log
    assert "verdict: idempotent" in log, log
    assert snapshot(oldroot) == before


def test_a_migration_that_is_not_idempotent_fails_the_task(
    oe: OEBuild, builddir: Path, oldroot: Path
) -> None:
    before = snapshot(oldroot)
    proc = oe.run("bitbake migration-trial-again -c migration_test", builddir)
    assert proc.returncode != 0, proc.stdout
    assert (
        f"migration-trial-again: migration test on {oldroot}: not idempotent: "
        "50-migration-trial-again-append-log.sh changed /var/lib/app/log again "
        "(50-migration-trial-again-append-log.sh is append-log.sh of package "
        "migration-trial-again)"
    ) in proc.stdout, proc.stdout
    log = task_log(builddir, "migration-trial-again")
    # The runner's order: append-log.sh before move-conf.sh (byte-wise), both run twice.
    first = log.index("50-migration-trial-again-append-log.sh: ok")
    assert first < log.index("50-migration-trial-again-move-conf.sh: ok"), log
    assert "added /var/lib/app/log" in log, log
    assert snapshot(oldroot) == before


def test_a_recipe_without_test_roots_has_no_test_task(oe: OEBuild, builddir: Path) -> None:
    proc = oe.run("bitbake exampled -c listtasks", builddir)
    assert proc.returncode == 0, proc.stdout
    assert "do_migration_lint" in proc.stdout, proc.stdout
    assert "do_migration_test" not in proc.stdout, proc.stdout
    proc = oe.run("bitbake migration-trial -c listtasks", builddir)
    assert "do_migration_test" in proc.stdout, proc.stdout
