# SPDX-License-Identifier: MIT
"""Issue 13 in real QEMU boots: SWUpdate installs signed .swu files in the running guest, and
the layer's swupdate-postinst.sh, a `shellscript` in the .swu, applies the new image's
migrations during the install.

The updater is Debian 12's `swupdate` 2022.12, run as `swupdate -i` (its daemon, socket and
progress units are disabled: Debian's swupdate-progress reboots after an update). Debian builds it
for signed images only (CMS): it refuses to start without a public key file (`-k` or
`public-key-file`). Its handlers include raw, rawfile, shellscript, preinstall and postinstall;
its bootloader interfaces uboot (libubootenv, loaded at run time: libubootenv0.1), grub (a fixed
grubenv path) and none. The device keeps a U-Boot environment in a file on the shared /var disk,
which /etc/fw_env.config names, so SWUpdate's `bootenv` and its transaction marker
(`recovery_status`) and state (`ustate`) land where the harness reads them. The harness is the
bootloader: after the poweroff it reads that environment from the /var disk, boots the slot
`rootslot` names, and says so on the kernel command line (rootslot=A|B), as U-Boot's bootargs
would. The device has two root slots on virtio disks named by serial
(/dev/disk/by-id/virtio-slot-a, -slot-b) and the shared /var disk.

Each .swu is built on the host: sw-description (libconfig) with a software set `stable` and one
selection per target slot (`slot-a`, `slot-b`: the raw image streamed into that slot, the hook
with that slot's device as its `data`, `bootenv` rootslot), its CMS signature made with openssl
by a throwaway CA's signing certificate (extendedKeyUsage codeSigning) that the images trust,
the new image's root file system as a zstd-compressed ext4 image, and the new image's
/usr/share/migration/update-hooks/swupdate-postinst.sh; all in a cpio archive with CRCs
(`cpio -H crc`), sw-description first. They reach the guest on a read-only disk; the guest's
harness command runs `swupdate -i` on each, in order, selecting the slot it did not boot.
Three boots (a boot is 30-60 s under TCG, an install 10-40 s):

1. v1 (slot A, fresh) installs v9, whose upgrade floor 1.5 is above the device's release 1.0:
   the hook refuses, `swupdate -i` fails, the environment keeps rootslot=A with
   recovery_status=failed, the state and the data are byte-identical (b); then v2 (one new
   migration): the hook applies it in phase `update`, the install succeeds, rootslot=B (a);
2. v2 (slot B, as SWUpdate wrote it): migration.service starts no process (a); installs v3 into
   slot A: the hook applies v3's one-way migration (level 1) and warns about its other new
   migration, which cannot run at update time; the install succeeds (c);
3. v3 (slot A): its first boot retries that migration (c); installs v2's .swu again, a one-way
   downgrade (level 0 on data of level 1): the hook refuses, `swupdate -i` fails, the
   environment keeps rootslot=A, the state and the data are byte-identical (d).
"""

import hashlib
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict

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

#: The guest's extra packages: SWUpdate, the U-Boot environment library its uboot interface
#: loads at run time, and fw_printenv (the installer logs the environment with it). A base of
#: its own: the other tests' boots stay as they are.
PACKAGES = (*h.PACKAGES, "swupdate", "libubootenv0.1", "libubootenv-tool")
#: SWUpdate's units in Debian's package, all enabled: the test runs `swupdate -i` itself (a
#: second instance would hold the IPC sockets), and swupdate-progress -r would reboot the guest.
SWUPDATE_UNITS = ("swupdate.service", "swupdate.socket", "swupdate-progress.service")

HWREVISION = ("meta-migration-test", "1.0")
ENV_FILE = "/var/lib/boot-state/uboot.env"
HOOK_IN_IMAGE = "usr/share/migration/update-hooks/swupdate-postinst.sh"
SLOT_SIZE_MB = 400  # the harness's root image size: every slot holds a whole root image
SLOT_DEVICE = {"A": "/dev/disk/by-id/virtio-slot-a", "B": "/dev/disk/by-id/virtio-slot-b"}

INIT, MOVE, BOOT_ONLY = update_scripts("swu ")
ONEWAY = one_way("swu ")
# Only in v9, which is refused: must never run.
V9_NEW = h.Script("app", "v9.sh", recorder("swu v9"), priority="80", version="9.0-r0")


DATA = {
    "/lib/mig-test/data.conf": ("setting=1\n", 0o644),
    # The device as flashed: U-Boot's environment boots slot A.
    ENV_FILE[4:]: (uboot_env({"rootslot": "A"}), 0o644),
}

SWUPDATE_CFG = """globals :
{
	verbose = true;
	public-key-file = "/etc/swupdate/ca.cert.pem";
	cert-purpose = "codeSigning";
	bootloader = "uboot";
};
"""

# The updater's side on the booted system: every .swu the update disk lists, in order, with
# the real client, into the slot not booted; checksums of the state and the test data and the
# bootloader environment around each install.
INSTALL_SH = r"""#!/bin/sh
out=/var/lib/harness
disk=/dev/disk/by-id/virtio-updates
udevadm settle
[ -e "$disk" ] || { echo "no update disk: nothing to install"; exit 0; }
case " $(cat /proc/cmdline) " in
*" rootslot=A "*) target=slot-b ;;
*" rootslot=B "*) target=slot-a ;;
*) echo "the bootloader named no slot"; exit 99 ;;
esac
mkdir -p /mnt/updates
mount -o ro "$disk" /mnt/updates || { echo "cannot mount $disk"; exit 99; }
snap() {
    find /var/lib/migration /var/lib/mig-test -type f ! -name lock -print0 2>/dev/null |
        sort -z | xargs -0 sha256sum
}
while read -r name; do
    snap >"$out/$name.before.sha256"
    read -r start _ </proc/uptime
    swupdate -f /etc/swupdate/swupdate.cfg -e "stable,$target" -i "/mnt/updates/$name.swu" \
        >"$out/$name.install.out" 2>&1
    echo $? >"$out/$name.install.rc"
    read -r end _ </proc/uptime
    echo "$start $end" >"$out/$name.install.uptime"
    snap >"$out/$name.after.sha256"
    fw_printenv >"$out/$name.env" 2>&1
    echo "$name: swupdate -i exit $(cat "$out/$name.install.rc")"
done </mnt/updates/order
umount /mnt/updates
"""


# What every image carries for SWUpdate: its configuration, the CA it trusts, the board's
# hardware revision, where the bootloader environment is, the installer run by the harness.
def swupdate_files(ca_pem: str) -> Dict[str, tuple]:
    return {
        "/etc/swupdate/swupdate.cfg": (SWUPDATE_CFG, 0o644),
        "/etc/swupdate/ca.cert.pem": (ca_pem, 0o644),
        "/etc/hwrevision": (" ".join(HWREVISION) + "\n", 0o644),
        "/etc/fw_env.config": (fw_env_config(ENV_FILE), 0o644),
        "/usr/local/sbin/harness-command": (INSTALL_SH, 0o755),
    }


def selection(slot: str, image_sha: str, hook_sha: str) -> str:
    """sw-description's selection that writes `slot`: the image, the hook told that slot's
    device, and the bootloader variable that boots it."""
    device = SLOT_DEVICE[slot]
    return f"""		slot-{slot.lower()}: {{
			images: ( {{
				filename = "rootfs.ext4.zst";
				type = "raw";
				device = "{device}";
				compressed = "zstd";
				installed-directly = true;
				sha256 = "{image_sha}";
			}} );
			scripts: ( {{
				filename = "swupdate-postinst.sh";
				type = "shellscript";
				data = "{device}";
				sha256 = "{hook_sha}";
			}} );
			bootenv: ( {{ name = "rootslot"; value = "{slot}"; }} );
		}};
"""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_swu(pki: h.Pki, system: h.System, version: str, dest: Path) -> Path:
    """The .swu of the image's root file system and, as a `shellscript`, the hook the image
    ships (README: "copy them into your bundle ... from there"), signed, in a cpio archive."""
    content = dest.with_suffix(".content")
    if content.exists():
        shutil.rmtree(content)
    content.mkdir(parents=True)
    h.run(["zstd", "-q", "-T0", str(system.root_img), "-o", str(content / "rootfs.ext4.zst")])
    shutil.copy2(system.tree / HOOK_IN_IMAGE, content / "swupdate-postinst.sh")
    image_sha = sha256_file(content / "rootfs.ext4.zst")
    hook_sha = sha256_file(content / "swupdate-postinst.sh")
    (content / "sw-description").write_text(
        "software =\n{\n"
        f'\tversion = "{version}";\n'
        f'\thardware-compatibility: [ "{HWREVISION[1]}" ];\n'
        "\tstable = {\n"
        + selection("A", image_sha, hook_sha) + selection("B", image_sha, hook_sha)
        + "\t};\n}\n"
    )  # fmt: skip
    h.run(["openssl", "cms", "-sign", "-in", str(content / "sw-description"),
           "-out", str(content / "sw-description.sig"), "-signer", str(pki.cert),
           "-inkey", str(pki.key), "-outform", "DER", "-nosmimecap", "-binary"])  # fmt: skip
    names = ["sw-description", "sw-description.sig", "swupdate-postinst.sh", "rootfs.ext4.zst"]
    with open(dest, "wb") as out:
        h.run(["cpio", "-o", "-H", "crc", "--quiet"], cwd=content, input="\n".join(names) + "\n",
              stdout=out, capture_output=False)  # fmt: skip
    shutil.rmtree(content)
    return dest


@pytest.fixture(scope="module")
def swupdate_base(tmp_path_factory: pytest.TempPathFactory) -> h.Base:
    """The Debian 12 test system with SWUpdate."""
    return h.prepare_base(tmp_path_factory.mktemp("swupdate-base"), PACKAGES)


@pytest.fixture(scope="module")
def chain(swupdate_base: h.Base, boot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three boots, A -> B -> A, each running `swupdate -i` of the .swu files it is given."""
    tmp = tmp_path_factory.mktemp("swupdate")
    pki = h.make_pki(tmp / "pki", extended_key_usage="codeSigning")
    files = swupdate_files(pki.ca.read_text())
    root = boot_root / "swupdate"
    common = {"extra": files, "disable": SWUPDATE_UNITS}
    v1 = h.new_system(swupdate_base, root / "v1", [INIT], version="1.0", var_extra=DATA,
                      **common)  # fmt: skip
    v9 = h.new_system(swupdate_base, root / "v9", [INIT, MOVE, V9_NEW], version="9.0",
                      manifest_args=["--upgrade-floor", "1.5"], var_img=v1.var_img,
                      **common)  # fmt: skip
    v2 = h.new_system(swupdate_base, root / "v2", [INIT, MOVE], version="2.0",
                      var_img=v1.var_img, **common)  # fmt: skip
    v3 = h.new_system(swupdate_base, root / "v3", [INIT, MOVE, ONEWAY, BOOT_ONLY],
                      version="3.0", var_img=v1.var_img, **common)  # fmt: skip
    updates = {name: make_swu(pki, s, version, tmp / f"{name}.swu")
               for name, s, version in (("v9", v9, "9.0"), ("v2", v2, "2.0"),
                                        ("v3", v3, "3.0"))}  # fmt: skip
    # The downgrade: v2's very .swu, under a name of its own in the guest's reports.
    updates["v2-again"] = tmp / "v2-again.swu"
    os.link(updates["v2"], updates["v2-again"])
    # Slot A holds v1 (the image the device was flashed with); slot B is blank.
    slots = {"A": v1.root_img, "B": root / "slot-b.img"}
    with open(slots["B"], "wb") as f:
        f.truncate(SLOT_SIZE_MB * 2**20)
    serials = {slots["A"]: "slot-a", slots["B"]: "slot-b"}
    # (the image expected in the slot that boots, updates it installs) per boot.
    steps = [(v1, ["v9", "v2"]), (v2, ["v3"]), (v3, ["v2-again"])]
    out: dict = {"reports": [], "order": [], "booted": [], "env": [], "var": v1.var_img}
    booted = "A"
    for i, (image, names) in enumerate(steps):
        other = "B" if booted == "A" else "A"
        disks = []
        if names:
            disk = h.media_disk([updates[n] for n in names], tmp / f"updates-{i + 1}.img",
                                "updates")  # fmt: skip
            disks.append(disk)
            serials[disk] = "updates"
        system = replace(image, root_img=slots[booted], rw_disks=[slots[other]], disks=disks,
                         serials=dict(serials), cmdline=f"rootslot={booted}",
                         consoles=[])  # fmt: skip
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
            h.log(f"  swupdate -i {name}: exit {report.get(f'{name}.install.rc', '?').strip()} "
                  f"in {float(span[1]) - float(span[0]):.1f} s")  # fmt: skip
        # The bootloader: the slot the environment names.
        booted = env.get("rootslot", "A")
    out["next"] = booted  # what the bootloader would boot after the last boot
    return out


def install(report: h.Report, name: str) -> tuple:
    """(exit status, output) of the guest's `swupdate -i` of update `name`."""
    assert f"{name}.install.rc" in report.files, report.files.get("command.out")
    return int(report.files[f"{name}.install.rc"]), report.files[f"{name}.install.out"]


def env_after(report: h.Report, name: str) -> Dict[str, str]:
    """The bootloader environment as fw_printenv showed it right after installing `name`."""
    return dict(ln.split("=", 1) for ln in report.files[f"{name}.env"].splitlines() if "=" in ln)


def test_refused_update_fails_the_install_and_leaves_everything_as_it_was(chain: dict) -> None:
    """(b) v1 (1.0) -> v9 (floor 1.5): the hook refuses, `swupdate -i` reports the failure, the
    bootloader keeps slot A, the state and the data are byte-identical, v9's migration never
    ran."""
    first = chain["reports"][0]
    rc, out = install(first, "v9")
    assert rc == 1, out
    # Because of the hook: its exit status, as SWUpdate reports it.
    assert re.search(r"/tmp/scripts/swupdate-postinst\.sh postinst /dev/disk/by-id/virtio-slot-b "
                     r"command returned 1", out), out  # fmt: skip
    assert "execute postinstall scripts failed" in out, out
    assert "SWUpdate *failed* !" in out, out
    # The hook ran under SWUpdate (its stderr is logged as errors) and said why.
    assert "upgrade from a too old release" in out, out
    assert re.search(r"migration-update \(swupdate\): REFUSED: the new image cannot use this "
                     r"device's data", out), out  # fmt: skip
    assert first.files["v9.before.sha256"] == first.files["v9.after.sha256"]
    assert first.files["v9.before.sha256"].count("\n") >= 3
    # SWUpdate left its transaction marker and state and did not apply v9's bootenv.
    assert env_after(first, "v9") == {"rootslot": "A", "recovery_status": "failed",
                                      "ustate": "3"}  # fmt: skip
    assert not any("80-app-v9.sh" in line for order in chain["order"] for line in order)


def test_update_applied_by_the_hook_during_the_install(chain: dict) -> None:
    """(a) v1 -> v2: the hook applies v2's new migration in phase `update` while v1 runs;
    `swupdate -i` succeeds and only then sets rootslot=B."""
    first = chain["reports"][0]
    rc, out = install(first, "v2")
    assert rc == 0, out
    assert "SWUPDATE successful !" in out, out
    assert re.search(r"postinst /dev/disk/by-id/virtio-slot-b command returned 0", out), out
    assert "migration-update (swupdate): the new image's migrations are applied" in out, out
    assert re.search(r"50-app-move\.sh: applying 50-app-move\.sh \(update\)", out), out
    assert chain["order"][0] == ["10-base-init.sh boot 1", "50-app-move.sh update 1"]
    rec = record(chain["var"], MOVE)
    assert (rec["phase"], rec["exit_code"], rec["attempts"]) == ("update", 0, 1)
    # The success cleared the transaction marker (the failed one of v9 too) and set the state.
    assert env_after(first, "v2") == {"rootslot": "B", "ustate": "1"}
    assert chain["booted"][:2] == ["A", "B"]


def test_the_new_slot_boots_without_a_migration_process(chain: dict) -> None:
    """(a) The first boot of slot B (what SWUpdate wrote): the done stamp the hook wrote holds,
    migration.service starts no process, nothing runs again."""
    second = chain["reports"][1]
    assert_first_boot_runs_nothing(second, chain["var"], r"rootslot=B")


def test_failed_update_time_migration_lets_the_install_go_on_and_is_retried_at_boot(
    chain: dict,
) -> None:
    """(c) v2 (slot B) -> v3 into slot A: v3's new migration fails at update time; the hook
    warns, `swupdate -i` succeeds, rootslot=A; the first boot of v3 retries it."""
    second, third = chain["reports"][1:]
    rc, out = install(second, "v3")
    assert rc == 0, out
    assert re.search(r"postinst /dev/disk/by-id/virtio-slot-a command returned 0", out), out
    assert "needs the new system running" in out, out
    assert re.search(r"migration-update \(swupdate\): WARNING: not every migration of the new "
                     r"image could be applied now", out), out  # fmt: skip
    assert chain["order"][1] == [*chain["order"][0], *V3_UPDATE_ORDER]
    assert env_after(second, "v3") == {"rootslot": "A", "ustate": "1"}
    assert chain["booted"] == ["A", "B", "A"]
    assert_first_boot_retries_the_failed_one(chain, third)


def test_one_way_downgrade_fails_the_install_and_leaves_everything_as_it_was(
    chain: dict,
) -> None:
    """(d) v3 (slot A, data at level 1) -> v2's .swu (level 0) into slot B: the hook refuses
    the incompatible downgrade, `swupdate -i` fails, the bootloader keeps slot A, the state and
    the data are byte-identical."""
    third = chain["reports"][2]
    rc, out = install(third, "v2-again")
    assert rc == 1, out
    assert re.search(r"/tmp/scripts/swupdate-postinst\.sh postinst /dev/disk/by-id/virtio-slot-b "
                     r"command returned 1", out), out  # fmt: skip
    assert "execute postinstall scripts failed" in out, out
    assert "SWUpdate *failed* !" in out, out
    assert re.search(r"migration-update \(swupdate\): REFUSED: the new image cannot use this "
                     r"device's data", out), out  # fmt: skip
    assert_one_way_downgrade_left_everything(chain, third, "v2-again", out)
    assert env_after(third, "v2-again") == {"rootslot": "A", "recovery_status": "failed",
                                            "ustate": "3"}  # fmt: skip
    assert chain["next"] == "A"
