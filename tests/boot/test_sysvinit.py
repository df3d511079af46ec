# SPDX-License-Identifier: MIT
"""The sysvinit script (/etc/init.d/migration), run in a chroot of the Debian test system with
the runner installed by migration-install.sh (MIGRATION_INIT=sysvinit)."""

import json
import os
import subprocess
from pathlib import Path
from typing import List

import bootharness as h
import pytest

pytestmark = pytest.mark.boot


def sysv_tree(
    base: h.Base,
    dest: Path,
    scripts: List[h.Script],
    policy: str = "continue",
    volatile_state: str = "warn",
) -> Path:
    tree = dest / "root"
    subprocess.run(["cp", "-al", str(base.tree), str(tree)], check=True)
    subprocess.run(["rm", "-rf", str(tree / "var")], check=True)
    subprocess.run(["cp", "-al", str(base.var), str(tree / "var")], check=True)
    h.install_runner(tree, policy=policy, init="sysvinit", volatile_state=volatile_state)
    assert not (tree / "lib/systemd/system/migration.service").exists()
    if scripts:
        h.add_scripts(tree, scripts)
    return tree


def in_chroot(tree: Path, *cmd: str) -> List[str]:
    """`cmd` chrooted into `tree` with /proc mounted, as the rcS scripts mount it long before
    S30 on a real boot (the runner runs scripts as /proc/self/fd/N); in a mount namespace of its
    own, so nothing is left mounted."""
    mount_then_chroot = 'mount -t proc proc "$1/proc" && exec chroot "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_then_chroot,
            "sh", str(tree), *cmd]


def chroot(tree: Path, *cmd: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(in_chroot(tree, *cmd), capture_output=True, text=True, check=False)


def ok(tag: str) -> str:
    return f"#!/bin/sh\n# {tag}\nmkdir -p /var/lib/t\necho \"$MIGRATION_NAME\" >>/var/lib/t/order\n"


def test_sysvinit_script_applies_then_is_a_no_op(base: h.Base, tmp_path: Path) -> None:
    scripts = [h.Script("a", "one.sh", ok("one"), "10"), h.Script("b", "two.sh", ok("two"), "20")]
    tree = sysv_tree(base, tmp_path, scripts)
    res = chroot(tree, "/etc/init.d/migration", "start")
    assert res.returncode == 0, res.stdout + res.stderr
    order = (tree / "var/lib/t/order").read_text().split()
    assert order == [s.installed_name for s in scripts]
    # The stamp the done symlink points at (an absolute path inside the tree).
    link = tree / "usr/share/migration/done"
    assert (tree / os.readlink(link).lstrip("/")).is_file()
    # Second boot: the stamp check ends the script before the runner (Python) is started.
    res = chroot(tree, "/bin/sh", "-x", "/etc/init.d/migration", "start")
    assert res.returncode == 0
    assert "+ [ -e /usr/share/migration/done ]" in res.stderr
    assert "/usr/sbin/migration" not in res.stderr.replace("migration=/usr/sbin/migration", "")
    assert (tree / "var/lib/t/order").read_text().split() == order


def test_sysvinit_script_without_scripts_starts_nothing(base: h.Base, tmp_path: Path) -> None:
    tree = sysv_tree(base, tmp_path, [])
    res = chroot(tree, "/bin/sh", "-x", "/etc/init.d/migration", "start")
    assert res.returncode == 0
    assert "/usr/sbin/migration run" not in res.stderr
    assert not (tree / "var/lib/migration").exists()


def test_sysvinit_script_failure_under_continue(base: h.Base, tmp_path: Path) -> None:
    scripts = [
        h.Script("a", "one.sh", ok("one"), "10"),
        h.Script("bad", "fails.sh", "#!/bin/sh\nfalse\necho never\n", "20"),
        h.Script("c", "three.sh", ok("three"), "30"),
    ]
    tree = sysv_tree(base, tmp_path, scripts)
    res = chroot(tree, "/etc/init.d/migration", "start")
    assert res.returncode == 1
    assert 'migration run failed (exit 1); run "migration status"' in res.stdout
    assert "policy: continue" in res.stdout
    status = json.loads(chroot(tree, "/usr/sbin/migration", "status", "--json").stdout)
    assert [e["state"] for e in status] == ["applied", "failed", "applied"]
    assert list((tree / "var/lib/migration/done").iterdir()) == []


def with_stand_ins(tree: Path) -> Path:
    """A chroot cannot halt the machine or own a console: `halt` and `sulogin` are replaced by
    stand-ins in /usr/local/sbin (first in PATH) that record their call; `halt` then kills the
    init script as the real machine would stop it. /dev/console becomes a plain file."""
    log = "/var/lib/t/stand-ins"
    sbin = tree / "usr/local/sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    for name, tail in (("halt", 'kill -KILL "$PPID"\n'), ("sulogin", "")):
        stub = sbin / name
        stub.write_text(
            f'#!/bin/sh\nmkdir -p /var/lib/t\necho "{name} $*" >>{log}\n{tail}'
        )
        stub.chmod(0o755)
    console = tree / "dev/console"
    if console.exists() or console.is_symlink():
        console.unlink()
    console.parent.mkdir(exist_ok=True)
    console.write_text("")
    return tree / log.lstrip("/")


def chroot_env(tree: Path, *cmd: str) -> "subprocess.CompletedProcess[str]":
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(
        in_chroot(tree, *cmd), capture_output=True, text=True, check=False, env=env
    )


FAILING = [
    h.Script("a", "one.sh", ok("one"), "10"),
    h.Script("bad", "fails.sh", "#!/bin/sh\nfalse\necho never\n", "20"),
    h.Script("c", "three.sh", ok("three"), "30"),
]


def test_sysvinit_script_failure_under_halt_stops_and_halts(base: h.Base, tmp_path: Path) -> None:
    tree = sysv_tree(base, tmp_path, FAILING, policy="halt")
    calls = with_stand_ins(tree)
    res = chroot_env(tree, "/etc/init.d/migration", "start")
    # halt -f was called and the script never went on to exit by itself.
    assert calls.read_text().split("\n")[0] == "halt -f"
    assert res.returncode == -9, res.stdout + res.stderr
    assert "halting the system" in res.stdout
    # --policy stop: the script after the failed one was not run.
    status = json.loads(chroot(tree, "/usr/sbin/migration", "status", "--json").stdout)
    assert [e["state"] for e in status] == ["applied", "failed", "pending"]


def test_sysvinit_script_failure_under_rescue_opens_a_shell(base: h.Base, tmp_path: Path) -> None:
    tree = sysv_tree(base, tmp_path, FAILING, policy="rescue")
    calls = with_stand_ins(tree)
    res = chroot_env(tree, "/etc/init.d/migration", "start")
    assert calls.read_text() == "sulogin \n"
    assert res.returncode == 1, res.stdout + res.stderr
    assert "starting a rescue shell" in res.stdout
    # rescue applies what it can, like continue.
    status = json.loads(chroot(tree, "/usr/sbin/migration", "status", "--json").stdout)
    assert [e["state"] for e in status] == ["applied", "failed", "applied"]
