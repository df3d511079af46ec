# SPDX-License-Identifier: MIT
"""Issue 13 in real QEMU boots: the Mender client installs signed Artifacts in the running guest
(standalone mode, `mender install`), and the layer's state script
ArtifactInstall_Leave_50_migration, carried by the Artifact, applies the new image's migrations
during the install.

The updater is Debian 12's `mender-client` 3.4 (its daemon unit disabled: no server), which
keeps the dual-rootfs state in the U-Boot environment through libubootenv's fw_printenv and
fw_setenv (`libubootenv-tool`; Mender 3.4 tries grub-mender-grubenv-* and systemd-boot-* first,
which the guest does not have). The environment is a file on the shared /var disk that
/etc/fw_env.config names, as in the SWUpdate test. The device has one system disk with an MBR
(partition 1 a placeholder for the boot partition, 2 and 3 the root slots A and B, what
/etc/mender/mender.conf calls RootfsPartA=/dev/vda2 and RootfsPartB=/dev/vda3) and the /var
disk, which also holds Mender's datastore (/var/lib/mender: Debian's package links it to
/data/mender, which here would be on the root slot; the installer makes it a directory). The
harness is the bootloader: after the poweroff it reads the environment from the /var disk and
boots the partition `mender_boot_part` names (root=/dev/vda2|3 on the kernel command line).

Each Artifact is built on the host with `mender-artifact write rootfs-image`: the new image's
root file system (ext4 image), its device type, and the new image's
/usr/share/migration/update-hooks/ArtifactInstall_Leave_50_migration as a state script (`-s`),
signed with a throwaway EC key (openssl) whose public half the images trust
(ArtifactVerifyKey). They reach the guest on a read-only disk; the guest's harness command
commits an update its first boot runs (`mender commit`, what the daemon does after a
successful boot), then runs `mender install` on each Artifact, in order. Three boots (a boot is
30-60 s under TCG, an install 20-60 s):

1. v1 (slot A, fresh) installs v9, whose upgrade floor 1.5 is above the device's release 1.0:
   the state script refuses, Mender rolls back (mender_boot_part=2, upgrade_available=0) and
   `mender install` fails; the state and the data are byte-identical (b); then v2 (one new
   migration): the state script applies it in phase `update`, the install succeeds,
   mender_boot_part=3 and upgrade_available=1 (a);
2. v2 (slot B, as Mender switched it): migration.service starts no process (a); `mender commit`
   succeeds; installs v3 into slot A: the state script applies v3's one-way migration (level 1)
   and warns about its other new migration, which cannot run at update time; the install
   succeeds (c);
3. v3 (slot A): its first boot retries that migration (c); `mender commit` succeeds; installs
   v2's Artifact again, a one-way downgrade (level 0 on data of level 1): the state script
   refuses, Mender rolls back (mender_boot_part=2, upgrade_available=0) and `mender install`
   fails; the state and the data are byte-identical (d).
"""

import json
import os
import re
import shutil
import struct
from dataclasses import replace
from pathlib import Path
from typing import Dict, Tuple

import bootharness as h
import pytest
from bootharness import lines
from ubootenv import fw_env_config, uboot_env
from updatescripts import (
    MARK,
    V3_UPDATE_ORDER,
    assert_first_boot_retries_the_failed_one,
    assert_first_boot_runs_nothing,
    assert_one_way_downgrade_left_everything,
    bootloader_env,
    one_way,
    record,
    recorder,
    update_scripts,
)

pytestmark = pytest.mark.boot

#: The guest's extra packages: the Mender client and libubootenv's fw_printenv/fw_setenv, which
#: it uses for the bootloader environment. A base of its own: the other tests' boots stay as
#: they are.
PACKAGES = (*h.PACKAGES, "mender-client", "libubootenv-tool")
#: Debian enables the daemon on install; standalone mode needs no daemon (it would look for a
#: server and, after a reboot into an update, commit it or roll it back on its own).
MENDER_UNITS = ("mender-client.service",)

DEVICE_TYPE = "meta-migration-test"
ENV_FILE = "/var/lib/boot-state/uboot.env"
SCRIPT_NAME = "ArtifactInstall_Leave_50_migration"
HOOK_IN_IMAGE = f"usr/share/migration/update-hooks/{SCRIPT_NAME}"
#: The system disk's partitions, in MiB: a placeholder for the boot partition, then the slots,
#: each holding a whole root image (the harness's root image size).
SLOT_SIZE_MB = 400
PARTITIONS = {1: (1, 1), 2: (2, SLOT_SIZE_MB), 3: (2 + SLOT_SIZE_MB, SLOT_SIZE_MB)}
SLOT_PART = {"A": 2, "B": 3}

INIT, MOVE, BOOT_ONLY = update_scripts("mender ")
ONEWAY = one_way("mender ")
# Only in v9, which is refused: must never run.
V9_NEW = h.Script("app", "v9.sh", recorder("mender v9"), priority="80", version="9.0-r0")

#: The bootloader environment as flashed: slot A, no update in progress.
FLASHED_ENV = {"mender_boot_part": "2", "mender_boot_part_hex": "2", "upgrade_available": "0"}
DATA = {
    "/lib/mig-test/data.conf": ("setting=1\n", 0o644),
    ENV_FILE[4:]: (uboot_env(FLASHED_ENV), 0o644),
}

MENDER_CONF = json.dumps(
    {
        "RootfsPartA": "/dev/vda2",
        "RootfsPartB": "/dev/vda3",
        "ArtifactVerifyKey": "/etc/mender/artifact-verify-key.pem",
        "DeviceTypeFile": "/etc/mender/device_type",
    },
    indent=2,
)

# The updater's side on the booted system: commit the update this boot is the first of, then
# every Artifact the update disk lists, in order, with the real client; checksums of the state
# and the test data, and the bootloader environment, around each install.
INSTALL_SH = r"""#!/bin/sh
out=/var/lib/harness
disk=/dev/disk/by-id/virtio-updates
udevadm settle
if [ -L /var/lib/mender ]; then
    rm /var/lib/mender && mkdir -m 0700 /var/lib/mender || exit 99
fi
snap() {
    find /var/lib/migration /var/lib/mig-test -type f ! -name lock -print0 2>/dev/null |
        sort -z | xargs -0 sha256sum
}
if [ "$(fw_printenv upgrade_available)" = upgrade_available=1 ]; then
    mender commit >"$out/commit.out" 2>&1
    echo $? >"$out/commit.rc"
    fw_printenv >"$out/commit.env" 2>&1
    echo "mender commit: exit $(cat "$out/commit.rc")"
fi
if [ -e "$disk" ]; then
    mkdir -p /mnt/updates
    mount -o ro "$disk" /mnt/updates || { echo "cannot mount $disk"; exit 99; }
    while read -r name; do
        snap >"$out/$name.before.sha256"
        read -r start _ </proc/uptime
        mender install "/mnt/updates/$name.mender" >"$out/$name.install.out" 2>&1
        echo $? >"$out/$name.install.rc"
        read -r end _ </proc/uptime
        echo "$start $end" >"$out/$name.install.uptime"
        snap >"$out/$name.after.sha256"
        fw_printenv >"$out/$name.env" 2>&1
        echo "$name: mender install exit $(cat "$out/$name.install.rc")"
    done </mnt/updates/order
    umount /mnt/updates
fi
mender show-artifact >"$out/show-artifact" 2>/dev/null
"""


def mender_files(version: str, verify_key: str) -> Dict[str, tuple]:
    """What every image carries for Mender: its configuration (the slots, the key it trusts,
    where its device type is), its Artifact name, where the bootloader environment is, the
    installer run by the harness."""
    return {
        "/etc/mender/mender.conf": (MENDER_CONF, 0o644),
        "/etc/mender/artifact-verify-key.pem": (verify_key, 0o644),
        "/etc/mender/device_type": (f"device_type={DEVICE_TYPE}\n", 0o644),
        "/etc/mender/artifact_info": (f"artifact_name=release-{version}\n", 0o644),
        "/etc/fw_env.config": (fw_env_config(ENV_FILE), 0o644),
        "/usr/local/sbin/harness-command": (INSTALL_SH, 0o755),
    }


def signing_key(d: Path) -> Tuple[Path, Path]:
    """A throwaway EC P-256 key (SEC1 PEM: mender-artifact 3.9 reads no PKCS#8) and its public
    half, PEM."""
    d.mkdir(parents=True, exist_ok=True)
    key, pub = d / "artifact-signing.key.pem", d / "artifact-verify-key.pem"
    h.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key)])
    h.run(["openssl", "ec", "-in", str(key), "-pubout", "-out", str(pub)])
    return key, pub


def make_artifact(key: Path, system: h.System, version: str, dest: Path) -> Path:
    """`mender-artifact write rootfs-image` of the image's root file system, with the state
    script the image ships (README: "copy them into your bundle or artifact recipe ... from
    there"), signed."""
    scripts = dest.with_suffix(".scripts")
    if scripts.exists():
        shutil.rmtree(scripts)
    scripts.mkdir(parents=True)
    shutil.copy2(system.tree / HOOK_IN_IMAGE, scripts / SCRIPT_NAME)
    if dest.exists():
        dest.unlink()
    h.run(["mender-artifact", "write", "rootfs-image", "-t", DEVICE_TYPE,
           "-n", f"release-{version}", "-f", str(system.root_img), "-k", str(key),
           "-s", str(scripts / SCRIPT_NAME), "-o", str(dest)])  # fmt: skip
    shutil.rmtree(scripts)
    return dest


def system_disk(root_img: Path, dest: Path) -> Path:
    """The device's disk as flashed: an MBR with PARTITIONS (type Linux), slot A holding
    `root_img`, slot B blank."""
    mib = 2**20
    end = max(start + size for start, size in PARTITIONS.values())
    with open(dest, "wb") as f:
        f.truncate(end * mib)
        mbr = bytearray(512)
        for number, (start, size) in PARTITIONS.items():
            # status, CHS first (unused: LBA), type 0x83, CHS last, LBA first, sectors.
            entry = struct.pack("<B3sB3sII", 0, b"\xff\xff\xfe", 0x83, b"\xff\xff\xfe",
                                start * mib // 512, size * mib // 512)  # fmt: skip
            mbr[446 + 16 * (number - 1) : 446 + 16 * number] = entry
        mbr[510:512] = b"\x55\xaa"
        f.write(mbr)
    h.run(["dd", f"if={root_img}", f"of={dest}", "bs=1M", f"seek={PARTITIONS[2][0]}",
           "conv=notrunc,sparse", "status=none"])  # fmt: skip
    return dest


@pytest.fixture(scope="module")
def mender_base(tmp_path_factory: pytest.TempPathFactory) -> h.Base:
    """The Debian 12 test system with the Mender client."""
    return h.prepare_base(tmp_path_factory.mktemp("mender-base"), PACKAGES)


@pytest.fixture(scope="module")
def chain(mender_base: h.Base, boot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three boots, A -> B -> A, each committing the update it is the first boot of and running
    `mender install` of the Artifacts it is given."""
    tmp = tmp_path_factory.mktemp("mender")
    key, pub = signing_key(tmp / "keys")
    root = boot_root / "mender"

    def image(name: str, scripts: list, version: str, **kw: object) -> h.System:
        return h.new_system(mender_base, root / name, scripts, version=version,
                            extra=mender_files(version, pub.read_text()),
                            disable=MENDER_UNITS, **kw)  # fmt: skip

    v1 = image("v1", [INIT], "1.0", var_extra=DATA)
    v9 = image("v9", [INIT, MOVE, V9_NEW], "9.0", manifest_args=["--upgrade-floor", "1.5"],
               var_img=v1.var_img)  # fmt: skip
    v2 = image("v2", [INIT, MOVE], "2.0", var_img=v1.var_img)
    v3 = image("v3", [INIT, MOVE, ONEWAY, BOOT_ONLY], "3.0", var_img=v1.var_img)
    updates = {name: make_artifact(key, s, version, tmp / f"{name}.mender")
               for name, s, version in (("v9", v9, "9.0"), ("v2", v2, "2.0"),
                                        ("v3", v3, "3.0"))}  # fmt: skip
    # The downgrade: v2's very Artifact, under a name of its own in the guest's reports.
    updates["v2-again"] = tmp / "v2-again.mender"
    os.link(updates["v2"], updates["v2-again"])
    disk = system_disk(v1.root_img, root / "system-disk.img")
    serials: Dict[Path, str] = {}
    # (the image expected in the slot that boots, updates it installs) per boot.
    steps = [(v1, ["v9", "v2"]), (v2, ["v3"]), (v3, ["v2-again"])]
    out: dict = {"reports": [], "order": [], "booted": [], "env": [], "var": v1.var_img}
    booted = "A"
    for i, (expected, names) in enumerate(steps):
        disks = []
        if names:
            media = h.media_disk([updates[n] for n in names], tmp / f"updates-{i + 1}.img",
                                 "updates")  # fmt: skip
            disks.append(media)
            serials[media] = "updates"
        system = replace(expected, root_img=disk, disks=disks, serials=dict(serials),
                         cmdline=f"root=/dev/vda{SLOT_PART[booted]}", consoles=[])  # fmt: skip
        h.clear_report(system)
        h.boot(system)
        out["booted"].append(booted)
        out["reports"].append(h.read_report(system))
        out["order"].append(lines(v1.var_img, f"{MARK[4:]}/order"))
        env = bootloader_env(v1.var_img, ENV_FILE, tmp)
        out["env"].append(env)
        h.log(f"step {i + 1} (slot {booted}): {out['order'][-1]}; env {env}")
        for name in names:
            report = out["reports"][-1].files
            span = report.get(f"{name}.install.uptime", "0 0").split()
            h.log(f"  mender install {name}: exit "
                  f"{report.get(f'{name}.install.rc', '?').strip()} "
                  f"in {float(span[1]) - float(span[0]):.1f} s")  # fmt: skip
        # The bootloader: the partition mender_boot_part names.
        booted = {str(n): slot for slot, n in SLOT_PART.items()}[env["mender_boot_part"]]
    out["next"] = booted  # what the bootloader would boot after the last boot
    return out


def install(report: h.Report, name: str) -> tuple:
    """(exit status, output) of the guest's `mender install` of Artifact `name`."""
    assert f"{name}.install.rc" in report.files, report.files.get("command.out")
    return int(report.files[f"{name}.install.rc"]), report.files[f"{name}.install.out"]


def env_after(report: h.Report, name: str) -> Dict[str, str]:
    """The bootloader environment as fw_printenv showed it right after `name` (an install, or
    "commit")."""
    text = report.files[f"{name}.env"]
    return dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln)


def boot_vars(env: Dict[str, str]) -> Dict[str, str]:
    """What Mender's U-Boot integration boots by: the slot, and whether it is on trial."""
    return {k: env.get(k, "") for k in ("mender_boot_part", "upgrade_available")}


def test_refused_update_fails_the_install_and_leaves_everything_as_it_was(chain: dict) -> None:
    """(b) v1 (1.0) -> v9 (floor 1.5): the state script refuses, Mender rolls the bootloader
    environment back and `mender install` fails, the state and the data are byte-identical,
    v9's migration never ran."""
    first = chain["reports"][0]
    rc, out = install(first, "v9")
    assert rc == 1, out
    # Because of the state script: its exit status, as Mender reports it, and its stderr.
    assert re.search(rf"statescript: error executing '{SCRIPT_NAME}': 1", out), out
    assert "ArtifactInstall_Leave script failed" in out, out
    assert "upgrade from a too old release" in out, out
    assert re.search(r"migration-update \(mender\): REFUSED: the new image cannot use this "
                     r"device's data", out), out  # fmt: skip
    assert "Rolling back to the active partition: (2)" in out, out
    assert first.files["v9.before.sha256"] == first.files["v9.after.sha256"]
    assert first.files["v9.before.sha256"].count("\n") >= 3
    assert boot_vars(env_after(first, "v9")) == {"mender_boot_part": "2",
                                                 "upgrade_available": "0"}  # fmt: skip
    assert not any("80-app-v9.sh" in line for order in chain["order"] for line in order)


def test_update_applied_by_the_state_script_during_the_install(chain: dict) -> None:
    """(a) v1 -> v2: the state script applies v2's new migration in phase `update` while v1
    runs; `mender install` succeeds and makes slot B (partition 3) the one to try."""
    first = chain["reports"][0]
    rc, out = install(first, "v2")
    assert rc == 0, out
    assert "Use 'commit' to update" in out, out
    # Mender ran the Artifact's copy of the state script, from its datastore, after the write.
    assert re.search(rf"Wrote \d+/\d+ bytes to the inactive partition.*Executing script: "
                     rf"{SCRIPT_NAME}.*running script /var/lib/mender/scripts/{SCRIPT_NAME}",
                     out, re.S), out  # fmt: skip
    assert "migration-update (mender): the new image's migrations are applied" in out, out
    assert re.search(r"50-app-move\.sh: applying 50-app-move\.sh \(update\)", out), out
    assert chain["order"][0] == ["10-base-init.sh boot 1", "50-app-move.sh update 1"]
    rec = record(chain["var"], MOVE)
    assert (rec["phase"], rec["exit_code"], rec["attempts"]) == ("update", 0, 1)
    assert boot_vars(env_after(first, "v2")) == {"mender_boot_part": "3",
                                                 "upgrade_available": "1"}  # fmt: skip
    assert chain["booted"][:2] == ["A", "B"]


def test_the_new_slot_boots_without_a_migration_process(chain: dict) -> None:
    """(a) The first boot of slot B (what Mender switched to): the done stamp the state script
    wrote holds, migration.service starts no process, nothing runs again; `mender commit`
    makes the update permanent."""
    second = chain["reports"][1]
    assert_first_boot_runs_nothing(second, chain["var"], r"root=/dev/vda3")
    assert second.files["commit.rc"].strip() == "0", second.files["commit.out"]
    assert boot_vars(env_after(second, "commit")) == {"mender_boot_part": "3",
                                                      "upgrade_available": "0"}  # fmt: skip


def test_failed_update_time_migration_lets_the_install_go_on_and_is_retried_at_boot(
    chain: dict,
) -> None:
    """(c) v2 (slot B) -> v3 into slot A: v3's new migration fails at update time; the state
    script warns, `mender install` succeeds, slot A is tried next; the first boot of v3 retries
    it, and Mender commits v3."""
    second, third = chain["reports"][1:]
    rc, out = install(second, "v3")
    assert rc == 0, out
    assert "needs the new system running" in out, out
    assert re.search(r"migration-update \(mender\): WARNING: not every migration of the new "
                     r"image could be applied now", out), out  # fmt: skip
    assert chain["order"][1] == [*chain["order"][0], *V3_UPDATE_ORDER]
    assert boot_vars(env_after(second, "v3")) == {"mender_boot_part": "2",
                                                  "upgrade_available": "1"}  # fmt: skip
    assert chain["booted"] == ["A", "B", "A"]
    assert_first_boot_retries_the_failed_one(chain, third)
    assert third.files["commit.rc"].strip() == "0", third.files["commit.out"]
    assert third.files["show-artifact"].strip() == "release-3.0"


def test_one_way_downgrade_fails_the_install_and_leaves_everything_as_it_was(
    chain: dict,
) -> None:
    """(d) v3 (slot A, data at level 1) -> v2's Artifact (level 0) into slot B: the state script
    refuses the incompatible downgrade, Mender rolls back and `mender install` fails, slot A is
    booted next and v3 stays the installed Artifact, the state and the data are
    byte-identical."""
    third = chain["reports"][2]
    rc, out = install(third, "v2-again")
    assert rc == 1, out
    assert re.search(rf"statescript: error executing '{SCRIPT_NAME}': 1", out), out
    assert "ArtifactInstall_Leave script failed" in out, out
    assert re.search(r"migration-update \(mender\): REFUSED: the new image cannot use this "
                     r"device's data", out), out  # fmt: skip
    assert "Rolling back to the active partition: (2)" in out, out
    assert_one_way_downgrade_left_everything(chain, third, "v2-again", out)
    assert boot_vars(env_after(third, "v2-again")) == {"mender_boot_part": "2",
                                                       "upgrade_available": "0"}  # fmt: skip
    assert boot_vars(chain["env"][2]) == {"mender_boot_part": "2", "upgrade_available": "0"}
    assert chain["next"] == "A"
    assert third.files["show-artifact"].strip() == "release-3.0"
