# SPDX-License-Identifier: MIT
"""The working minimum a script gets at early boot (issue 14): its own TMPDIR.

On a stock OE image the unit runs before systemd-tmpfiles-setup (the SysV script before
populate-volatile): /var/tmp and /var/log are still links to missing dirs under /var/volatile
and /run/lock does not exist, so `mktemp` with the boot's TMPDIR (or none: /tmp) can fail. The
runner gives each script a new private dir (0700, under /run when it may write there, else under
the state dir), sets TMPDIR to it whatever its own environment says, and removes it afterwards.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from migration import runner
from test_cli import LIB, Root, no_traceback
from test_runner import Env

PROBE = """#!/bin/sh
set -eu
f=$(mktemp)
echo data >"$f"
mkdir "$TMPDIR/sub"
echo more >"$TMPDIR/sub/file"
printf '%s %s\\n' "$TMPDIR" "$(stat -c %a "$TMPDIR")" >>"$MIGRATION_ROOT/seen"
"""


def seen(root: Path) -> "list[tuple[str, str]]":
    return [tuple(line.split()) for line in (root / "seen").read_text().splitlines()]


def test_mktemp_works_though_the_boot_tmpdir_dangles(tmp_path: Path) -> None:
    """TMPDIR in the runner's environment names OE's /var/tmp before populate-volatile: a link
    to a dir that does not exist yet. Each script gets its own dir, removed after it."""
    root = Root(tmp_path / "root")
    dangling = tmp_path / "var-tmp"
    dangling.symlink_to("volatile/tmp")
    root.add("10-a.sh", PROBE)
    root.add("20-b.sh", PROBE + "false\n")  # a failed script's dir is removed too
    env = dict(os.environ, PYTHONPATH=LIB, TMPDIR=str(dangling))
    proc = subprocess.run([sys.executable, "-m", "migration", "--root", str(root.path), "run"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stderr  # 20-b.sh fails on purpose, after its mktemp
    assert "mktemp:" not in proc.stderr
    dirs = seen(root.path)
    assert len(dirs) == 2 and dirs[0][0] != dirs[1][0]
    for path, mode in dirs:
        assert Path(path).parent == Path(runner.RUN_DIR)  # root may write /run here
        assert mode == "700"
        assert not os.path.lexists(path)
    assert not dangling.resolve().exists()  # the runner created nothing there either


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_state_dir_takes_the_tmpdirs_when_run_is_not_writable(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "RUN_DIR", str(env.root / "no-run"))
    env.add("10-a.sh", PROBE.replace("$MIGRATION_ROOT", str(env.root)))
    assert env.run() == 0, env.messages
    [(path, mode)] = seen(env.root)
    assert Path(path).parent == env.state / "tmp"
    assert mode == "700"
    assert os.listdir(env.state / "tmp") == []
    assert (env.state / "tmp").stat().st_mode & 0o777 == 0o700
    # What a killed runner's script left behind is removed before anything runs again.
    leftover = env.state / "tmp" / "migration-tmp.0123456789abcdef"
    (leftover / "deep").mkdir(parents=True)
    (leftover / "deep" / "file").write_text("x")
    env.add("20-b.sh", PROBE.replace("$MIGRATION_ROOT", str(env.root)))
    assert env.run() == 0, env.messages
    assert len(seen(env.root)) == 2
    assert os.listdir(env.state / "tmp") == []
