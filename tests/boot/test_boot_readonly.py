# SPDX-License-Identifier: MIT
"""A read-only root with OE's systemd volatile layout (issue 14), booted under QEMU.

The test system is built like an OE image with IMAGE_FEATURES += "read-only-rootfs" under
systemd (files of OE-core wrynose, reproduced here, not copied):

- the root is mounted read-only (rootfs-postcommands.bbclass, read_only_rootfs_hook: `ro` in
  fstab) and /var is on it; /var/volatile is a tmpfs (base-files/fstab);
- /var/log and /var/tmp are links to volatile/log and volatile/tmp that dangle until
  systemd-tmpfiles-setup runs 00-create-volatile.conf (base-files, files/fs-perms-volatile-log.txt
  and fs-perms-volatile-tmp.txt; systemd's 00-create-volatile.conf);
- var-volatile-lib.service puts /var/volatile/lib over /var/lib the way volatile-binds does it
  (volatile-binds.service.in for VOLATILE_BINDS' first line, with the recipe's
  systemd-random-seed tweak; mount-copybind: an overlay with /var/volatile/lib as its upper dir,
  or with MOUNT_COPYBIND_AVOID_OVERLAYFS=1 a copy bound over /var/lib).

A second disk, mounted at /data, is the device's persistent data partition: it receives the
harness report and the scripts' effects, and in the last test the state dir's persistent home.
"""

import subprocess
from pathlib import Path
from typing import Dict, List

import bootharness as h
import pytest

pytestmark = pytest.mark.boot

STATE_WARNING = "WARNING: state dir /var/lib/migration is on a volatile file system"

FSTAB = """/dev/vda / ext4 ro 0 0
tmpfs /var/volatile tmpfs defaults 0 0
/dev/vdb /data ext4 rw 0 0
"""
# What README recommends for a read-only root: a persistent home for the state dir, here a
# directory of the data partition bound at /var/lib/migration.
PERSISTENT_HOME = "/data/migration /var/lib/migration none bind 0 0\n"

# Mirrors OE-core meta/recipes-core/volatile-binds/files/mount-copybind for a directory.
COPYBIND = """#!/bin/sh
set -e
spec=$1
mountpoint=$2
mkdir -p "${spec%/*}"
fresh=no
if [ ! -d "$spec" ]; then
    mkdir "$spec"
    fresh=yes
fi
work="${spec%/*}/.${spec##*/}-work"
if [ "$MOUNT_COPYBIND_AVOID_OVERLAYFS" != 1 ] && mkdir -p "$work" &&
    mount -t overlay overlay -o "lowerdir=$mountpoint,upperdir=$spec,workdir=$work" "$mountpoint"
then
    exit 0
fi
rm -rf "$work"
[ "$fresh" = no ] || cp -aPR "$mountpoint"/. "$spec/"
mount -o bind "$spec" "$mountpoint"
"""

# volatile-binds.service.in with @what@ /var/volatile/lib, @where@ /var/lib, and the recipe's
# do_compile tweak for /var/lib (before systemd-random-seed.service).
VOLATILE_LIB_UNIT = """[Unit]
Description=Bind mount volatile /var/lib
DefaultDependencies=no
Before=local-fs.target systemd-random-seed.service
RequiresMountsFor=/var/volatile /var
ConditionPathIsReadWrite=|/var/volatile
ConditionPathExists=|!/var/volatile
ConditionPathExists=/var/lib
ConditionPathIsReadWrite=!/var/lib

[Service]
Type=oneshot
RemainAfterExit=Yes
Environment=MOUNT_COPYBIND_AVOID_OVERLAYFS={avoid}
ExecStart=/usr/local/sbin/copybind /var/volatile/lib /var/lib
ExecStop=/bin/umount /var/lib

[Install]
WantedBy=local-fs.target systemd-random-seed.service
"""

# A volatile-binds as slow as it gets: it mounts only after the persistent home has landed (or
# 8 s later), the order nothing prevents when the two are not ordered, e.g. behind a slow copy
# (MOUNT_COPYBIND_AVOID_OVERLAYFS=1 copies all of /var/lib first) or a slow module load.
SLOW_BINDS = """[Service]
ExecStartPre=/bin/sh -c 'i=0; while [ $$i -lt 40 ] && ! mountpoint -q /var/lib/migration; \
do i=$$((i + 1)); sleep 0.2; done'
"""

# systemd's 00-create-volatile.conf as OE installs it with fs-perms-volatile-log.txt.
CREATE_VOLATILE = """d /run/lock 1777 - - -
d /var/volatile/log - - - -
d /var/volatile/tmp 1777 - -
L /var/tmp - - - - /var/volatile/tmp
L /var/log - - - - /var/volatile/log
"""

# What a script sees early at boot, and an effect on the data partition per run.
PROBE = """#!/bin/sh
set -eu
f=$(mktemp)
echo probe >"$f"
mkdir -p /data/effects
{
    if [ -e /var/tmp ]; then echo "var-tmp exists"; else echo "var-tmp dangles"; fi
    if [ -e /var/log ]; then echo "var-log exists"; else echo "var-log dangles"; fi
    echo "tmpdir ${TMPDIR%/*}"
    echo "mktemp $f"
} >/data/effects/env
echo ran >>/data/effects/runs
"""
SCRIPTS = [h.Script("probe", "probe.sh", PROBE, "10")]


def harness_files() -> Dict[str, str]:
    """The harness's report script and unit, writing to the data partition (/var/lib is a tmpfs
    here) and dumping the volatile-binds unit and the persistent home's mount too."""
    script = h.HARNESS_REPORT_SH.replace("out=/var/lib/harness", "out=/data/harness")
    script = script.replace(
        "|systemd-tmpfiles-setup\\.service)",
        "|systemd-tmpfiles-setup\\.service|var-volatile-lib\\.service|var-lib-migration\\.mount)",
    )
    unit = h.HARNESS_REPORT_UNIT.replace("RequiresMountsFor=/var/lib", "RequiresMountsFor=/data")
    assert "out=/data/harness" in script and "var-volatile-lib" in script
    assert "RequiresMountsFor=/data" in unit
    return {
        "usr/local/sbin/harness-report": script,
        "etc/systemd/system/harness-report.service": unit,
    }


def add_overlay_module(tree: Path) -> None:
    """The base tree has no kernel modules; mount-copybind's overlay needs overlay.ko (loaded
    on demand by the kernel through modprobe). Taken from the cached Debian tarball."""
    h.run(
        [
            "tar",
            "-C",
            str(tree),
            "-xf",
            str(h.rootfs_tarball()),
            "--wildcards",
            "./usr/lib/modules/*/kernel/fs/overlayfs/overlay.ko",
            "./usr/lib/modules/*/modules.*",
        ]
    )


def readonly_system(
    base: h.Base,
    workdir: Path,
    volatile_state: str,
    avoid_overlayfs: bool,
    persistent_home: bool = False,
) -> h.System:
    """The runner and SCRIPTS on a read-only root with OE's volatile layout (module docstring);
    `persistent_home`: /var/lib/migration bound from the data partition, as README says."""
    workdir.mkdir(parents=True, exist_ok=True)
    tree = workdir / "root"
    h.run(["rm", "-rf", str(tree)])
    h.run(["cp", "-al", str(base.tree), str(tree)])
    (tree / "var").rmdir()
    h.run(["cp", "-al", str(base.var), str(tree / "var")])
    h.install_runner(tree, volatile_state=volatile_state)
    h.add_scripts(tree, SCRIPTS)
    for rel in ("var/log", "var/tmp"):
        h.run(["rm", "-rf", str(tree / rel)])
        (tree / rel).symlink_to(f"volatile/{Path(rel).name}")
    # The mount points: a read-only root cannot create them at boot.
    for rel in ("var/volatile", "data", "var/lib/migration"):
        (tree / rel).mkdir(mode=0o755)
    files = {
        "etc/fstab": FSTAB + (PERSISTENT_HOME if persistent_home else ""),
        "etc/tmpfiles.d/00-create-volatile.conf": CREATE_VOLATILE,
        "etc/systemd/system/var-volatile-lib.service": VOLATILE_LIB_UNIT.format(
            avoid=int(avoid_overlayfs)
        ),
        "usr/local/sbin/harness-command": "#!/bin/sh\nexec /usr/sbin/migration status\n",
        **harness_files(),
    }
    if persistent_home:
        files["etc/systemd/system/var-volatile-lib.service.d/slow.conf"] = SLOW_BINDS
    for rel, text in files.items():
        h.write_new(tree / rel, text, 0o755 if "/sbin/" in rel else 0o644)
    h.write_new(tree / "usr/local/sbin/copybind", COPYBIND, 0o755)
    h.systemctl(tree, "enable", "var-volatile-lib.service")
    if not avoid_overlayfs:
        add_overlay_module(tree)
    root_img = workdir / "root.img"
    h.make_ext4(tree, root_img, 400, "root")
    data = workdir / "data"
    h.run(["rm", "-rf", str(data)])
    (data / "migration").mkdir(parents=True)
    (data / "migration").chmod(0o755)
    data_img = workdir / "data.img"
    h.make_ext4(data, data_img, 64, "data")
    # The data disk takes the /var disk's place: /dev/vdb, written back.
    return h.System(workdir, tree, root_img, data_img, base)


def report(system: h.System) -> h.Report:
    names = h.list_dir(system.var_img, "/harness")
    if not names:
        raise h.HarnessError(
            "no report on the data disk; console:\n"
            + system.consoles[-1].read_text(errors="replace")[-6000:]
        )
    return h.Report({n: h.read_file(system.var_img, f"/harness/{n}") or "" for n in names})


def clear_report(system: h.System) -> None:
    for name in h.list_dir(system.var_img, "/harness"):
        subprocess.run(["debugfs", "-w", "-R", f"rm /harness/{name}", str(system.var_img)],
                       capture_output=True, check=False)  # fmt: skip


def data_lines(system: h.System, path: str) -> List[str]:
    return h.lines(system.var_img, path)


def started_before_tmpfiles(system: h.System) -> None:
    """The probe ran before systemd-tmpfiles-setup (/var/tmp, /var/log still dangling) and its
    mktemp worked in the private TMPDIR under /run."""
    env = data_lines(system, "/effects/env")
    assert env[:3] == ["var-tmp dangles", "var-log dangles", "tmpdir /run"], env
    assert env[3].startswith("mktemp /run/migration-tmp."), env


def test_read_only_root_warns_at_boot_and_in_status(base: h.Base, boot_root: Path) -> None:
    """Default policy (warn), mount-copybind's overlay: the migration runs, the boot says loudly
    that it will run again at every boot, and so does `migration status`."""
    system = readonly_system(base, boot_root / "ro-warn", "warn", avoid_overlayfs=False)
    boot = h.boot(system)
    rep = report(system)
    where = "/var/lib (overlay, upperdir /var/volatile/lib) on /var/volatile (tmpfs)"
    assert f"{STATE_WARNING}: {where}" in boot.console
    assert [ln for ln in rep.journal_lines(STATE_WARNING) if "migration[" in ln], rep.journal
    # status wraps its lines at 80 columns (a serial console): compare the words
    assert f"{STATE_WARNING}: {where}" in " ".join(rep.files["command.out"].split())
    assert h.unit(rep, "migration.service")["Result"] == "success"
    assert rep.status_by_name()["10-probe-probe.sh"]["state"] == "applied"
    assert data_lines(system, "/effects/runs") == ["ran"]
    started_before_tmpfiles(system)
    # The runner saw the volatile /var/lib: it started after volatile-binds had mounted it.
    binds, runner = h.unit(rep, "var-volatile-lib.service"), h.unit(rep, "migration.service")
    assert binds["Result"] == "success"
    assert (int(binds["ActiveEnterTimestampMonotonic"])
            <= int(runner["ExecMainStartTimestampMonotonic"]))  # fmt: skip


def test_read_only_root_refuses_under_refuse(base: h.Base, boot_root: Path) -> None:
    """MIGRATION_VOLATILE_STATE=refuse, mount-copybind's copy bound over /var/lib: nothing runs,
    the unit fails (exit 2), and the boot follows the policy (continue: degraded, it goes on)."""
    system = readonly_system(base, boot_root / "ro-refuse", "refuse", avoid_overlayfs=True)
    boot = h.boot(system)
    rep = report(system)
    why = "/var/lib (tmpfs)"
    assert (
        f"refusing to run (--volatile-state refuse): state dir /var/lib/migration is on a "
        f"volatile file system: {why}" in boot.console
    )
    runner = h.unit(rep, "migration.service")
    assert (runner["Result"], runner["ExecMainStatus"]) == ("exit-code", "2")
    assert rep.state == "degraded"
    assert data_lines(system, "/effects/runs") == []
    assert rep.status_by_name()["10-probe-probe.sh"]["state"] == "pending"
    assert f"{STATE_WARNING}: {why}" in " ".join(rep.files["command.out"].split())


def test_persistent_home_survives_a_slow_volatile_binds(base: h.Base, boot_root: Path) -> None:
    """README's persistent home (a bind of the data partition at /var/lib/migration, with
    MIGRATION_VOLATILE_STATE=refuse) under a volatile-binds that mounts /var/lib as late as it
    can: the home must stay on top of the volatile /var/lib, so the first boot runs the probe
    with no warning and records it on the data partition; the second runs nothing."""
    system = readonly_system(
        base, boot_root / "ro-home", "refuse", avoid_overlayfs=False, persistent_home=True
    )
    boot = h.boot(system)
    rep = report(system)
    assert STATE_WARNING not in boot.console
    assert STATE_WARNING not in rep.files["command.out"]
    assert h.unit(rep, "migration.service")["Result"] == "success", boot.console[-3000:]
    assert data_lines(system, "/effects/runs") == ["ran"]
    assert len(h.list_dir(system.var_img, "/migration/applied")) == 1
    assert len(h.list_dir(system.var_img, "/migration/done")) == 1
    binds, home = h.unit(rep, "var-volatile-lib.service"), h.unit(rep, "var-lib-migration.mount")
    assert int(binds["ActiveEnterTimestampMonotonic"]) <= int(home["ActiveEnterTimestampMonotonic"])

    clear_report(system)
    h.boot(system)
    rep = report(system)
    runner = h.unit(rep, "migration.service")
    assert (runner["ConditionResult"], runner["ExecMainPID"]) == ("no", "0")
    assert data_lines(system, "/effects/runs") == ["ran"]
    assert rep.status_by_name()["10-probe-probe.sh"]["state"] == "applied"
