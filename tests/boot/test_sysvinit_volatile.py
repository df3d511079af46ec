# SPDX-License-Identifier: MIT
"""The SysV script at S30 on OE's volatile layout (issue 14), in a chroot of the Debian test
system set up the way an OE sysvinit image is at that point (OE-core wrynose, reproduced here):

- /var/log and /var/tmp are links to volatile/log and volatile/tmp (base-files with
  files/fs-perms-volatile-log.txt and fs-perms-volatile-tmp.txt) that dangle until
  populate-volatile.sh (S37) creates the dirs of initscripts-1.0/volatiles; /tmp is a link to
  /var/tmp (volatiles' `l ... /tmp /var/tmp`: populate-volatile.sh replaces the dir by the link,
  at rootfs time on a read-only-rootfs image, at the first boot's S37 otherwise);
- /run and /var/volatile are empty tmpfs (base-files/fstab, mounted by mountall.sh at S03): no
  /run/lock either;
- with read-only-rootfs (rootfs-postcommands.bbclass: `ro` root), read-only-rootfs-hook.sh (S29)
  mounts an overlay on /var/lib whose upper dir is /var/volatile/lib when /var/lib is on a
  read-only file system (else it copies /var/lib there and binds it over /var/lib).

The mounts are made inside the chroot, so /proc/self/mountinfo shows them as on the device.
"""

import json
import subprocess
from pathlib import Path
from typing import List, Optional

import bootharness as h
import pytest
from test_sysvinit import chroot, sysv_tree

pytestmark = pytest.mark.boot

WARNING = "WARNING: state dir /var/lib/migration is on a volatile file system"

# mountall.sh's fstab mounts that matter here, then read-only-rootfs-hook.sh (its test of /var/lib,
# its overlay and its copy fallback) when the root is read-only.
EARLY_MOUNTS = """set -e
mount -t proc proc /proc
mount -t tmpfs -o mode=0755,nodev,nosuid tmpfs /run
mount -t tmpfs tmpfs /var/volatile
"""
READ_ONLY_ROOTFS_HOOK = """options=$(findmnt -n -o OPTIONS --target /var/lib)
if echo ",$options," | grep -q ,ro,; then
    mkdir -p /var/volatile/lib /var/volatile/.lib-work
    if ! mount -t overlay overlay \\
        -olowerdir=/var/lib,upperdir=/var/volatile/lib,workdir=/var/volatile/.lib-work /var/lib
    then
        cp -a /var/lib/* /var/volatile/lib
        mount --bind /var/volatile/lib /var/lib
    fi
fi
"""


def oe_tree(
    base: h.Base, dest: Path, scripts: List[h.Script], volatile_state: str = "warn"
) -> Path:
    """The sysvinit test system with OE's volatile links and mount points."""
    tree = sysv_tree(base, dest, scripts, volatile_state=volatile_state)
    for link, target in (
        ("var/log", "volatile/log"),
        ("var/tmp", "volatile/tmp"),
        ("tmp", "/var/tmp"),
    ):
        h.run(["rm", "-rf", str(tree / link)])
        (tree / link).symlink_to(target)
    # Mount points: a read-only root cannot create them.
    for rel in ("var/volatile", "var/lib/migration", "data"):
        (tree / rel).mkdir(mode=0o755, exist_ok=True)
    (dest / "data").mkdir()
    return tree


def start_at_s30(
    tree: Path, read_only: bool = False, home: Optional[str] = None, sh_x: bool = False
) -> "subprocess.CompletedProcess[str]":
    """`/etc/init.d/migration start` as rcS runs it at S30, in a mount namespace of its own: the
    tree as the root (read-only with `read_only`), the host dir ../data at /data (persistent),
    and with `home` the host dir ../home (persistent) mounted there before the hook runs, as
    fstab's mounts are (mountall.sh, S03)."""
    data = tree.parent / "data"
    outer = 'mount --bind "$1" "$1"\n'
    if read_only:
        outer += 'mount -o remount,bind,ro "$1"\n'
    outer += f'mount --bind {data} "$1/data"\n'
    if home:
        outer += f'mount --bind {tree.parent / "home"} "$1{home}"\n'
    outer += 'exec chroot "$1" /bin/sh -c "$2"\n'
    inner = EARLY_MOUNTS + (READ_ONLY_ROOTFS_HOOK if read_only else "")
    inner += f"exec /bin/sh {'-x ' if sh_x else ''}/etc/init.d/migration start\n"
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", outer, "sh", str(tree)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run([*cmd, inner], capture_output=True, text=True, check=False, env=env)


PROBE = """#!/bin/sh
set -eu
f=$(mktemp)
echo probe >"$f"
for d in /tmp /var/tmp /var/log; do test -e "$d" || echo "probe: $d dangles"; done
echo "probe: tmpdir ${TMPDIR%/*}"
echo ran >>/data/runs
"""
LOGS_TO_VAR_LOG = "#!/bin/sh\necho 'one line' >>/var/log/probe.log\n"


def test_early_boot_scripts_get_a_tmpdir_and_log_to_stdout(base: h.Base, tmp_path: Path) -> None:
    """What README promises a script at S30 before populate-volatile: mktemp works (a private
    TMPDIR under /run), stdout is kept in the state dir's log and shown; /var/log is not there
    yet, so a script writing to it fails, as README says."""
    probe = h.Script("probe", "probe.sh", PROBE, "10")
    var_log = h.Script("logger", "var-log.sh", LOGS_TO_VAR_LOG, "20")
    tree = oe_tree(base, tmp_path, [probe, var_log])
    res = start_at_s30(tree)
    assert res.returncode == 1, res.stdout + res.stderr
    shown = [ln.partition("probe: ")[2] for ln in res.stderr.splitlines() if "probe: " in ln]
    assert shown == ["/tmp dangles", "/var/tmp dangles", "/var/log dangles", "tmpdir /run"]
    assert (tmp_path / "data/runs").read_text() == "ran\n"
    status = json.loads(chroot(tree, "/usr/sbin/migration", "status", "--json").stdout)
    status = {e["name"]: e for e in status}
    assert status[probe.installed_name]["state"] == "applied"
    log = (tree / status[probe.installed_name]["log"].lstrip("/")).read_text()
    assert "probe: /var/log dangles" in log
    assert status[var_log.installed_name]["state"] == "failed"
    log = (tree / status[var_log.installed_name]["log"].lstrip("/")).read_text()
    assert "/var/log/probe.log: Directory nonexistent" in log
    # The runner leaves OE's volatile dirs to populate-volatile.sh.
    assert list((tree / "var/volatile").iterdir()) == []


ONE = [h.Script("probe", "probe.sh", PROBE, "10")]


def test_read_only_root_warns(base: h.Base, tmp_path: Path) -> None:
    tree = oe_tree(base, tmp_path, ONE)
    res = start_at_s30(tree, read_only=True)
    assert res.returncode == 0, res.stdout + res.stderr
    where = "/var/lib (overlay, upperdir /var/volatile/lib) on /var/volatile (tmpfs)"
    assert f"migration: {WARNING}: {where}" in res.stderr
    assert (tmp_path / "data/runs").read_text() == "ran\n"


def test_read_only_root_refuses_under_refuse(base: h.Base, tmp_path: Path) -> None:
    tree = oe_tree(base, tmp_path, ONE, volatile_state="refuse")
    res = start_at_s30(tree, read_only=True)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "refusing to run (--volatile-state refuse)" in res.stderr
    assert 'migration run failed (exit 2); run "migration status"' in res.stdout
    assert not (tmp_path / "data/runs").exists()


def test_persistent_var_lib_survives_the_hook(base: h.Base, tmp_path: Path) -> None:
    """README's home under sysvinit: a persistent file system on /var/lib. The hook then leaves
    /var/lib alone (it is writable), the records persist, and the next boot's S30 ends at the
    done stamp, before any Python starts."""
    tree = oe_tree(base, tmp_path, ONE, volatile_state="refuse")
    (tmp_path / "home").mkdir()
    res = start_at_s30(tree, read_only=True, home="/var/lib")
    assert res.returncode == 0, res.stdout + res.stderr
    assert WARNING not in res.stderr
    assert len(list((tmp_path / "home/migration/applied").iterdir())) == 1
    res = start_at_s30(tree, read_only=True, home="/var/lib", sh_x=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "+ [ -e /usr/share/migration/done ]" in res.stderr
    assert "/usr/sbin/migration run" not in res.stderr
    assert (tmp_path / "data/runs").read_text() == "ran\n"


def test_home_at_the_state_dir_is_hidden_by_the_hook(base: h.Base, tmp_path: Path) -> None:
    """Why README says /var/lib and not /var/lib/migration under sysvinit: fstab's mounts come
    at S03, the hook's overlay on the read-only /var/lib at S29 hides a mount below it. The
    runner notices (refuse: nothing runs) instead of losing its records at the next boot."""
    tree = oe_tree(base, tmp_path, ONE, volatile_state="refuse")
    (tmp_path / "home").mkdir(mode=0o755)
    res = start_at_s30(tree, read_only=True, home="/var/lib/migration")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "refusing to run" in res.stderr and "/var/volatile (tmpfs)" in res.stderr
    assert list((tmp_path / "home").iterdir()) == []
