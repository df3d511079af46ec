# SPDX-License-Identifier: MIT
"""Issue 13 in real QEMU boots: RAUC installs signed bundles in the running guest, and the
bundle's hook, the layer's rauc-hook.sh, applies the new image's migrations during the install.

The updater is Debian 12's `rauc` 1.8 with `rauc-service` (the D-Bus service that `rauc install`
talks to), in the guest and on the host. The device has two root slots on virtio disks, named by
serial (/dev/disk/by-id/virtio-slot-a, -slot-b) so that they keep their names whichever of them
boots as /dev/vda, and the shared /var disk. RAUC's system.conf uses the `custom` bootloader
backend: a script that keeps the primary slot and each slot's state in /var/lib/boot-state.
The harness is the bootloader: after the poweroff it reads that state from the /var disk, boots
the primary slot's disk if it is marked good (else the slot that ran) and names it on the kernel
command line (rauc.slot=A|B), as a bootloader tells RAUC.

Bundles are built on the host with `rauc bundle` (verity format) and signed with a throwaway CA
made with openssl, which the images' keyring trusts; each carries the new image's root file
system as an ext4 image and, as the bundle's hook, the new image's
/usr/share/migration/update-hooks/rauc-hook.sh with `hooks=post-install` on the rootfs image, as
README says. They reach the guest on a read-only disk; the guest's harness command runs `rauc
install` on each, in order. Three boots (a boot is 30-60 s under TCG, an install 10-30 s):

1. v1 (slot A, fresh) installs v9, whose upgrade floor 1.5 is above the device's release 1.0:
   the hook refuses, `rauc install` fails, slot B stays marked bad and A primary, the state and
   the data are byte-identical (b); then v2 (one new migration): the hook applies it in phase
   `update`, `rauc install` succeeds, B becomes primary (a);
2. v2 (slot B, as RAUC wrote it): migration.service starts no process (a); installs v3 into slot
   A: the hook applies v3's one-way migration (level 1) and warns about its other new migration,
   which cannot run at update time; the install succeeds (c);
3. v3 (slot A): its first boot retries that migration (c); installs v2's bundle again, a
   one-way downgrade (level 0 on data of level 1): the hook refuses, `rauc install` fails, slot
   B stays marked bad and A primary, the state and the data are byte-identical (d).
"""

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import bootharness as h
import pytest
from bootharness import lines
from updatescripts import (
    MARK,
    V3_UPDATE_ORDER,
    assert_first_boot_retries_the_failed_one,
    assert_first_boot_runs_nothing,
    assert_one_way_downgrade_left_everything,
    one_way,
    record,
    recorder,
    update_scripts,
)

pytestmark = pytest.mark.boot

#: The guest's extra packages: rauc's client and its D-Bus service (systemd unit, D-Bus policy
#: and activation file), which Debian splits in two. A base of its own: dbus would change the
#: boot of every other test.
PACKAGES = (*h.PACKAGES, "rauc", "rauc-service")
#: What RAUC needs from the kernel: loop devices and squashfs for the bundle, dm-verity for a
#: verity bundle (in module dependency order: the test initrd loads them with busybox insmod).
MODULES = ("loop", "squashfs", "dm-mod", "dm-bufio", "reed_solomon", "dm-verity")

COMPATIBLE = "meta-migration-test"
BOOT_STATE = "/var/lib/boot-state"
HOOK_IN_IMAGE = "usr/share/migration/update-hooks/rauc-hook.sh"
SLOT_SIZE_MB = 400  # the harness's root image size: every slot holds a whole root image

INIT, MOVE, BOOT_ONLY = update_scripts()
ONEWAY = one_way()
# Only in v9, which is refused: must never run.
V9_NEW = h.Script("app", "v9.sh", recorder("v9"), priority="80", version="9.0-r0")
DATA = {
    "/lib/mig-test/data.conf": ("setting=1\n", 0o644),
    "/lib/boot-state/primary": ("A\n", 0o644),
}

SYSTEM_CONF = f"""[system]
compatible={COMPATIBLE}
bootloader=custom
data-directory=/var/lib/rauc

[keyring]
path=/etc/rauc/ca.cert.pem

[handlers]
bootloader-custom-backend=/usr/local/sbin/rauc-boot-state

[slot.rootfs.0]
device=/dev/disk/by-id/virtio-slot-a
type=ext4
bootname=A

[slot.rootfs.1]
device=/dev/disk/by-id/virtio-slot-b
type=ext4
bootname=B
"""

# RAUC's `custom` bootloader backend (RAUC docs, integration.rst "Custom"; src/bootchooser.c):
# what a bootloader keeps in its environment, here on the /var disk, where the harness reads it.
# RAUC marks a slot active with set-primary alone, which therefore makes it bootable too, as
# RAUC's own backends do (grub: ORDER and <slot>_OK=1; barebox: priority and attempts).
BOOT_STATE_SH = f"""#!/bin/sh
dir={BOOT_STATE}
mkdir -p "$dir"
echo "$*" >>"$dir/calls"
case "${{1:-}}" in
get-primary) cat "$dir/primary" ;;
set-primary)
    echo good >"$dir/state.$2.tmp" && mv "$dir/state.$2.tmp" "$dir/state.$2" &&
        echo "$2" >"$dir/primary.tmp" && mv "$dir/primary.tmp" "$dir/primary"
    ;;
get-state) if [ -f "$dir/state.$2" ]; then cat "$dir/state.$2"; else echo good; fi ;;
set-state) echo "$3" >"$dir/state.$2.tmp" && mv "$dir/state.$2.tmp" "$dir/state.$2" ;;
*) exit 1 ;;
esac
status=$?
sync
exit $status
"""

# The updater's side on the booted system: every bundle the bundle disk lists, in order, with
# the real client; checksums of the state and the test data around each install.
INSTALL_SH = r"""#!/bin/sh
out=/var/lib/harness
disk=/dev/disk/by-id/virtio-bundles
udevadm settle
[ -e "$disk" ] || { echo "no bundle disk: nothing to install"; exit 0; }
mkdir -p /mnt/bundles
mount -o ro "$disk" /mnt/bundles || { echo "cannot mount $disk"; exit 99; }
snap() {
    find /var/lib/migration /var/lib/mig-test -type f ! -name lock -print0 2>/dev/null |
        sort -z | xargs -0 sha256sum
}
rc=0
while read -r name; do
    snap >"$out/$name.before.sha256"
    echo "# rauc install $name" >>/var/lib/boot-state/calls
    read -r start _ </proc/uptime
    rauc install "/mnt/bundles/$name.raucb" >"$out/$name.install.out" 2>&1
    echo $? >"$out/$name.install.rc"
    read -r end _ </proc/uptime
    echo "$start $end" >"$out/$name.install.uptime"
    snap >"$out/$name.after.sha256"
    echo "$name: rauc install exit $(cat "$out/$name.install.rc")"
done </mnt/bundles/order
echo "# rauc status" >>/var/lib/boot-state/calls
rauc status --detailed --output-format=json >"$out/rauc-status.json" 2>&1 || rc=1
umount /mnt/bundles
exit $rc
"""


# What every image carries for RAUC: its system.conf, the CA its keyring trusts, the backend, the
# installer run by the harness.
def rauc_files(ca_pem: str) -> Dict[str, tuple]:
    return {
        "/etc/rauc/system.conf": (SYSTEM_CONF, 0o644),
        "/etc/rauc/ca.cert.pem": (ca_pem, 0o644),
        "/usr/local/sbin/rauc-boot-state": (BOOT_STATE_SH, 0o755),
        "/usr/local/sbin/harness-command": (INSTALL_SH, 0o755),
    }


MANIFEST = f"""[update]
compatible={COMPATIBLE}
version={{version}}

[bundle]
format=verity

[hooks]
filename=rauc-hook.sh

[image.rootfs]
filename=rootfs.ext4
hooks=post-install
"""


def make_bundle(pki: h.Pki, system: h.System, version: str, dest: Path) -> Path:
    """`rauc bundle` of the image's root file system and, as the bundle's hook, the hook the
    image ships (README: "copy them into your bundle ... from there")."""
    content = dest.with_suffix(".content")
    if content.exists():
        shutil.rmtree(content)
    content.mkdir(parents=True)
    os.link(system.root_img, content / "rootfs.ext4")
    shutil.copy2(system.tree / HOOK_IN_IMAGE, content / "rauc-hook.sh")
    (content / "manifest.raucm").write_text(MANIFEST.format(version=version))
    if dest.exists():
        dest.unlink()
    h.run(["rauc", "bundle", f"--cert={pki.cert}", f"--key={pki.key}", f"--keyring={pki.ca}",
           str(content), str(dest)])  # fmt: skip
    shutil.rmtree(content)
    return dest


def boot_state(var_img: Path) -> Dict[str, str]:
    """The custom backend's files on the /var disk (primary, state.A, state.B, calls)."""
    out = {}
    for name in h.list_dir(var_img, "/lib/boot-state"):
        out[name] = h.read_file(var_img, f"/lib/boot-state/{name}") or ""
    return out


def backend_calls(boot_state_: Dict[str, str]) -> Dict[str, List[str]]:
    """The custom backend's calls during each install, by bundle name (and `rauc status`'s
    after them, as "status")."""
    out: Dict[str, List[str]] = {}
    current: List[str] = []
    for line in boot_state_.get("calls", "").splitlines():
        if line.startswith("# rauc "):
            current = out.setdefault(line.split()[-1], [])
        else:
            current.append(line)
    return out


def bootloader_choice(var_img: Path, booted: str) -> str:
    """What the bootloader boots next: the primary slot if it is marked good, else `booted`."""
    state = boot_state(var_img)
    primary = state.get("primary", "").strip()
    if primary and state.get(f"state.{primary}", "good\n").strip() == "good":
        return primary
    return booted


@pytest.fixture(scope="module")
def rauc_base(tmp_path_factory: pytest.TempPathFactory) -> h.Base:
    """The Debian 12 test system with rauc, and an initrd that loads what RAUC needs."""
    base = h.prepare_base(tmp_path_factory.mktemp("rauc-base"), PACKAGES)
    return h.initrd_with_modules(base, MODULES)


@pytest.fixture(scope="module")
def chain(rauc_base: h.Base, boot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three boots, A -> B -> A, each running `rauc install` of the bundles it is given."""
    tmp = tmp_path_factory.mktemp("rauc")
    pki = h.make_pki(tmp / "pki")
    files = rauc_files(pki.ca.read_text())
    root = boot_root / "rauc"
    v1 = h.new_system(rauc_base, root / "v1", [INIT], version="1.0", extra=files,
                      var_extra=DATA)  # fmt: skip
    v9 = h.new_system(rauc_base, root / "v9", [INIT, MOVE, V9_NEW], version="9.0", extra=files,
                      manifest_args=["--upgrade-floor", "1.5"], var_img=v1.var_img)  # fmt: skip
    v2 = h.new_system(rauc_base, root / "v2", [INIT, MOVE], version="2.0", extra=files,
                      var_img=v1.var_img)  # fmt: skip
    v3 = h.new_system(rauc_base, root / "v3", [INIT, MOVE, ONEWAY, BOOT_ONLY], version="3.0",
                      extra=files, var_img=v1.var_img)  # fmt: skip
    bundles = {name: make_bundle(pki, s, version, tmp / f"{name}.raucb")
               for name, s, version in (("v9", v9, "9.0"), ("v2", v2, "2.0"),
                                        ("v3", v3, "3.0"))}  # fmt: skip
    # The downgrade: v2's very bundle, under a name of its own in the guest's reports.
    bundles["v2-again"] = tmp / "v2-again.raucb"
    os.link(bundles["v2"], bundles["v2-again"])
    # Slot A holds v1 (the image the device was flashed with); slot B is blank.
    slots = {"A": v1.root_img, "B": root / "slot-b.img"}
    with open(slots["B"], "wb") as f:
        f.truncate(SLOT_SIZE_MB * 2**20)
    serials = {slots["A"]: "slot-a", slots["B"]: "slot-b"}
    # (the image expected in the slot that boots, bundles its updater installs) per boot.
    steps = [(v1, ["v9", "v2"]), (v2, ["v3"]), (v3, ["v2-again"])]
    out: dict = {"reports": [], "order": [], "booted": [], "boot_state": [], "var": v1.var_img,
                 "bundles": bundles}  # fmt: skip
    booted = "A"
    for i, (image, names) in enumerate(steps):
        other = "B" if booted == "A" else "A"
        disks = []
        if names:
            disk = h.media_disk(
                [bundles[n] for n in names], tmp / f"bundles-{i + 1}.img", "bundles"
            )
            disks.append(disk)
            serials[disk] = "bundles"
        system = replace(image, root_img=slots[booted], rw_disks=[slots[other]], disks=disks,
                         serials=dict(serials), cmdline=f"rauc.slot={booted}",
                         consoles=[])  # fmt: skip
        h.clear_report(system)
        h.boot(system)
        out["booted"].append(booted)
        out["reports"].append(h.read_report(system))
        out["order"].append(lines(v1.var_img, f"{MARK[4:]}/order"))
        out["boot_state"].append(boot_state(v1.var_img))
        h.log(f"step {i + 1} (slot {booted}): {out['order'][-1]}")
        for name in names:
            files = out["reports"][-1].files
            span = files.get(f"{name}.install.uptime", "0 0").split()
            said = files.get(f"{name}.install.out", "").strip().splitlines()[-1:]
            h.log(f"  rauc install {name}: exit {files.get(f'{name}.install.rc', '?').strip()} "
                  f"in {float(span[1]) - float(span[0]):.1f} s: {said}")  # fmt: skip
        booted = bootloader_choice(v1.var_img, booted)
    out["next"] = booted  # what the bootloader would boot after the last boot
    return out


def install(report: h.Report, name: str) -> tuple:
    """(exit status, output) of the guest's `rauc install` of bundle `name`."""
    assert f"{name}.install.rc" in report.files, report.files.get("command.out")
    return int(report.files[f"{name}.install.rc"]), report.files[f"{name}.install.out"]


def test_refused_update_fails_the_install_and_leaves_everything_as_it_was(chain: dict) -> None:
    """(b) v1 (1.0) -> v9 (floor 1.5): the hook refuses, `rauc install` reports the failure, the
    slot is not switched, the state and the data are byte-identical, v9's migration never ran."""
    first = chain["reports"][0]
    rc, out = install(first, "v9")
    assert rc == 1, out
    # Because of the hook: its exit status, as RAUC reports it to the client.
    assert re.search(r"Failed updating slot rootfs\.1: failed to run slot hook: Child process "
                     r"exited with code 1", out), out  # fmt: skip
    assert out.rstrip().endswith("Installing `/mnt/bundles/v9.raucb` failed"), out
    # The hook ran under RAUC, with RAUC's environment, and said why.
    assert first.journal_lines(r"rauc\[\d+\]: .*upgrade from a too old release"), out
    assert first.journal_lines(
        r"rauc\[\d+\]: migration-update \(rauc\): REFUSED: the new image cannot use this "
        r"device's data"
    )
    assert first.files["v9.before.sha256"] == first.files["v9.after.sha256"]
    assert first.files["v9.before.sha256"].count("\n") >= 3
    # RAUC marked the target slot bad before writing it, and never made it primary.
    assert backend_calls(chain["boot_state"][0])["v9"] == ["set-state B bad"]
    assert not any("80-app-v9.sh" in line for order in chain["order"] for line in order)


def test_update_applied_by_the_hook_during_the_install(chain: dict) -> None:
    """(a) v1 -> v2: the hook applies v2's new migration in phase `update` while v1 runs; `rauc
    install` succeeds and makes slot B primary."""
    first = chain["reports"][0]
    rc, out = install(first, "v2")
    assert rc == 0, out
    assert "succeeded" in out, out
    assert first.journal_lines(
        r"rauc\[\d+\]: migration-update \(rauc\): the new image's migrations are applied"
    )
    assert first.journal_lines(r"rauc\[\d+\]: .*50-app-move\.sh: applying 50-app-move\.sh "
                               r"\(update\)")  # fmt: skip
    assert chain["order"][0] == ["10-base-init.sh boot 1", "50-app-move.sh update 1"]
    rec = record(chain["var"], MOVE)
    assert (rec["phase"], rec["exit_code"], rec["attempts"]) == ("update", 0, 1)
    assert backend_calls(chain["boot_state"][0])["v2"] == ["set-state B bad", "set-primary B"]
    assert chain["boot_state"][0]["primary"] == "B\n"
    assert chain["booted"][:2] == ["A", "B"]
    # RAUC's own view after the install: B holds bundle 2.0 and is primary.
    status = json.loads(first.files["rauc-status.json"])
    assert status["boot_primary"] == "rootfs.1"
    slots = {name: slot for entry in status["slots"] for name, slot in entry.items()}
    assert slots["rootfs.1"]["slot_status"]["bundle"]["version"] == "2.0"


def test_the_new_slot_boots_without_a_migration_process(chain: dict) -> None:
    """(a) The first boot of slot B (what RAUC wrote): the done stamp the hook wrote holds,
    migration.service starts no process, nothing runs again."""
    second = chain["reports"][1]
    assert_first_boot_runs_nothing(second, chain["var"], r"rauc\.slot=B")


def test_failed_update_time_migration_lets_the_install_go_on_and_is_retried_at_boot(
    chain: dict,
) -> None:
    """(c) v2 (slot B) -> v3 into slot A: v3's new migration fails at update time; the hook
    warns, `rauc install` succeeds, A becomes primary; the first boot of v3 retries it."""
    second, third = chain["reports"][1:]
    rc, out = install(second, "v3")
    assert rc == 0, out
    assert second.journal_lines(r"rauc\[\d+\]: .*needs the new system running")
    assert second.journal_lines(
        r"rauc\[\d+\]: migration-update \(rauc\): WARNING: not every migration of the new image "
        r"could be applied now"
    )
    assert chain["order"][1] == [*chain["order"][0], *V3_UPDATE_ORDER]
    assert backend_calls(chain["boot_state"][1])["v3"] == ["set-state A bad", "set-primary A"]
    assert chain["booted"] == ["A", "B", "A"]
    assert_first_boot_retries_the_failed_one(chain, third)


def test_one_way_downgrade_fails_the_install_and_leaves_everything_as_it_was(
    chain: dict,
) -> None:
    """(d) v3 (slot A, data at level 1) -> v2's bundle (level 0) into slot B: the hook refuses
    the incompatible downgrade, `rauc install` fails, slot A stays primary and is booted next,
    the state and the data are byte-identical."""
    third = chain["reports"][2]
    rc, out = install(third, "v2-again")
    assert rc == 1, out
    assert re.search(r"Failed updating slot rootfs\.1: failed to run slot hook: Child process "
                     r"exited with code 1", out), out  # fmt: skip
    assert out.rstrip().endswith("Installing `/mnt/bundles/v2-again.raucb` failed"), out
    said = "\n".join(third.journal_lines(r"rauc\[\d+\]: "))
    assert re.search(r"migration-update \(rauc\): REFUSED: the new image cannot use this "
                     r"device's data", said), said  # fmt: skip
    assert_one_way_downgrade_left_everything(chain, third, "v2-again", said)
    assert backend_calls(chain["boot_state"][2])["v2-again"] == ["set-state B bad"]
    assert chain["boot_state"][2]["primary"] == "A\n"
    assert chain["next"] == "A"
    status = json.loads(third.files["rauc-status.json"])
    assert status["boot_primary"] == "rootfs.0"
