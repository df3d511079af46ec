# SPDX-License-Identifier: MIT
"""Issue 14, OpenBMC's layout, in real QEMU boots across an image update.

The layout of meta-phosphor's static-norootfs: the image's root is read-only and is replaced by an
update; its init (phosphor-static-norootfs-init, installed as /sbin/init) mounts a tmpfs on /run,
the persistent "rwfs" at /run/mnt-persist, and /var and /etc as overlays with lowerdir on the
root and upperdir/workdir on the rwfs (`lowerdir=/etc,upperdir=/run/mnt-persist/etc-data`), then
execs systemd. So the state dir lives in the /var overlay's upper dir, and the /etc upper keeps
what the device changed in /etc/migration.d across image updates. Here the rwfs is an ext4 disk
(/dev/vdb; OpenBMC's is UBIFS on flash, which this kernel lacks: overlayfs treats both as a
plain upper file system), and the initrd loads overlay.ko (the guest's tree has no modules).

One chain of four boots on one rwfs disk:

1. v1 (scripts A, B, D) applies all three; then the device touches B (a copy-up: v1's bytes in
   etc-data/migration.d) and deletes D (a whiteout in etc-data/migration.d);
2. v2 ships B' (changed, same installed name) and D unchanged: B' is refused, visibly, with the
   upper path and the fix, and no done stamp; D shows as applied with the whiteout named; then
   the device applies the fix (removes the stale copy from the upper dir);
3. v2 again: B' runs (the image's bytes), everything applied, done stamp;
4. v2 again: the boot starts no migration process.
"""

import hashlib
import json
import subprocess
from pathlib import Path
from typing import List, Optional

import bootharness as h
import pytest
from bootharness import unit

pytestmark = pytest.mark.boot

PERSIST = "/run/mnt-persist"
MARK = "/var/lib/mig-test"

# phosphor-static-norootfs-init's steps (early mounts, rwfs, overlays), with the rwfs on a disk.
OBMC_INIT = f"""#!/bin/sh
# OpenBMC static-norootfs-like init: mounts, then systemd.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=755,nodev tmpfs /run
n=0
while [ ! -b /dev/vdb ] && [ "$n" -lt 500 ]; do
    n=$((n + 1))
    sleep 0.01
done
mkdir -p {PERSIST}
mount -t ext4 /dev/vdb {PERSIST} || echo "obmc-init: cannot mount the rwfs"
for m in var etc; do
    mkdir -p "{PERSIST}/$m-data" "{PERSIST}/$m-work"
    mount overlay "/$m" -t overlay \\
        -o "lowerdir=/$m,upperdir={PERSIST}/$m-data,workdir={PERSIST}/$m-work" ||
        echo "obmc-init: cannot mount the /$m overlay"
done
exec /lib/systemd/systemd
"""

FSTAB = """/dev/vda / ext4 ro 0 0
tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0
"""


def recorder(tag: str) -> str:
    """A migration that appends its name and tag to an order file; `tag` makes the content,
    so the identity, unique."""
    return (
        f"#!/bin/sh\n# {tag}\n"
        f"mkdir -p {MARK}\n"
        f'echo "$MIGRATION_NAME {tag}" >>{MARK}/order\n'
        f'echo "applying $MIGRATION_NAME {tag}"\n'
    )


A = h.Script("obmc", "a.sh", recorder("a"), priority="10")
B = h.Script("obmc", "b.sh", recorder("b-v1"), priority="20")
B2 = h.Script("obmc", "b.sh", recorder("b-v2"), priority="20", version="2.0-r0")
D = h.Script("obmc", "d.sh", recorder("d"), priority="40")
ETC_B = f"/etc/migration.d/{B.installed_name}"
UPPER_B = f"{PERSIST}/etc-data/migration.d/{B.installed_name}"
UPPER_D = f"{PERSIST}/etc-data/migration.d/{D.installed_name}"

# The device's own changes, after v1's migrations ran: touch B (copy-up), delete D (whiteout).
DEVICE_CHANGES = f"""#!/bin/sh
cat /proc/mounts
touch {ETC_B}
rm /etc/migration.d/{D.installed_name}
"""
# What the refusal tells the user to do: remove the stale copy from the upper dir. `status` is
# saved first: the overlay's view of a file whose upper copy is removed while it is mounted is
# undefined until the next mount.
FIX = f"""#!/bin/sh
/usr/sbin/migration status --json >/var/lib/harness/status-before-fix.json
rm {UPPER_B}
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def obmc_base(base: h.Base, dest: Path) -> h.Base:
    """The session's base made an OpenBMC-like image: /var's content on the (read-only) root as
    the overlay's lower dir, the init above as /sbin/init, a read-only root in fstab, and an
    initrd that loads overlay.ko."""
    h.run(["cp", "-al", str(base.tree), str(dest)])
    (dest / "var").rmdir()
    h.run(["cp", "-al", str(base.var), str(dest / "var")])
    h.write_new(dest / "usr/sbin/init", OBMC_INIT, 0o755)
    h.write_new(dest / "etc/fstab", FSTAB)
    obmc = h.initrd_with_modules(base, ["overlay"])
    return h.Base(tree=dest, var=base.var, kernel=base.kernel, initrd=obmc.initrd,
                  moddir=base.moddir)  # fmt: skip


def rwfs_report(system: h.System) -> h.Report:
    """The harness's dump, from the /var overlay's upper dir on the rwfs disk."""
    files = {name: h.read_file(system.var_img, f"/var-data/lib/harness/{name}") or ""
             for name in h.list_dir(system.var_img, "/var-data/lib/harness")}  # fmt: skip
    if not files:
        raise h.HarnessError(
            "no report on the rwfs; console:\n"
            + system.consoles[-1].read_text(errors="replace")[-6000:]
        )
    return h.Report(files)


def clear_rwfs_report(img: Path) -> None:
    for name in h.list_dir(img, "/var-data/lib/harness"):
        h.run(["debugfs", "-w", "-R", f"rm /var-data/lib/harness/{name}", str(img)])


def rwfs_lines(img: Path, path: str) -> List[str]:
    return h.lines(img, f"/var-data{path[len('/var') :]}")


def upper_entry(img: Path, path: str) -> Optional[str]:
    """debugfs's stat of `path` (under /run/mnt-persist) on the rwfs disk, None if absent."""
    res = subprocess.run(["debugfs", "-R", f"stat {path[len(PERSIST):]}", str(img)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    return None if "File not found" in res.stderr or not res.stdout.strip() else res.stdout


@pytest.fixture(scope="module")
def chain(base: h.Base, boot_root: Path) -> dict:
    obase = obmc_base(base, boot_root / "obmc-base")
    rwfs = boot_root / "obmc-rwfs.img"
    empty = boot_root / "obmc-empty"
    empty.mkdir()
    h.make_ext4(empty, rwfs, 128, "rwfs")
    command = "/usr/local/sbin/harness-command"
    v1 = h.new_system(obase, boot_root / "obmc-v1", [A, B, D], version="1.0", var_img=rwfs,
                      extra={command: (DEVICE_CHANGES, 0o755)})  # fmt: skip
    v2fix = h.new_system(obase, boot_root / "obmc-v2-fix", [A, B2, D], version="2.0",
                         var_img=rwfs, extra={command: (FIX, 0o755)})  # fmt: skip
    v2 = h.new_system(obase, boot_root / "obmc-v2", [A, B2, D], version="2.0", var_img=rwfs)
    out: dict = {"v1": v1, "v2": v2, "rwfs": rwfs, "reports": [], "order": [], "done": [],
                 "seconds": []}  # fmt: skip
    for i, system in enumerate([v1, v2fix, v2, v2]):
        clear_rwfs_report(rwfs)
        out["seconds"].append(h.boot(system).seconds)
        out["reports"].append(rwfs_report(system))
        out["order"].append(rwfs_lines(rwfs, f"{MARK}/order"))
        out["done"].append(h.list_dir(rwfs, "/var-data/lib/migration/done"))
        out.setdefault("applied", []).append(h.list_dir(rwfs, "/var-data/lib/migration/applied"))
        if i == 0:
            out["upper_b"] = h.read_file(rwfs, UPPER_B[len(PERSIST) :])
            out["upper_d"] = upper_entry(rwfs, UPPER_D)
        if i == 1:
            out["upper_b_after_fix"] = upper_entry(rwfs, UPPER_B)
        h.log(f"obmc boot {i + 1}: {out['order'][-1]}")
    return out


def digest(system: h.System) -> str:
    return json.loads((system.tree / "usr/share/migration/manifest.json").read_text())["digest"]


def test_v1_applies_on_the_overlays_and_the_state_persists_on_the_rwfs(chain: dict) -> None:
    """The runner works through the overlays: records in the /var upper on the rwfs, no
    volatile warning (the upper is persistent); the device's changes are in the /etc upper."""
    first = chain["reports"][0]
    assert first.state == "running", first.files.get("failed.txt")
    assert chain["order"][0] == [f"{A.installed_name} a", f"{B.installed_name} b-v1",
                                 f"{D.installed_name} d"]  # fmt: skip
    assert chain["applied"][0] == sorted([sha(A.text), sha(B.text), sha(D.text)])
    assert chain["done"][0] == [digest(chain["v1"])]
    assert "volatile" not in first.files["status.err"]
    assert first.files["command.rc"].strip() == "0", first.files["command.out"]
    mounts = first.files["command.out"].splitlines()
    assert "/dev/vda / ext4 ro" in "\n".join(mounts)
    for m in ("var", "etc"):
        opts = f"lowerdir=/{m},upperdir={PERSIST}/{m}-data,workdir={PERSIST}/{m}-work"
        assert any(ln.startswith(f"overlay /{m} overlay rw,") and opts in ln for ln in mounts)
    assert chain["upper_b"] == B.text  # the copy-up: v1's bytes in etc-data
    assert chain["upper_d"] is not None and "Type: character special" in chain["upper_d"]


def test_a_stale_etc_copy_refuses_the_images_changed_script_visibly(chain: dict) -> None:
    """v2's B' is hidden by v1's copy in the /etc upper: not applied, no done stamp, a reason
    naming the upper path and the fix, in the journal and in status."""
    second = chain["reports"][1]
    assert chain["order"][1] == chain["order"][0]  # neither B' nor v1's B ran
    assert chain["done"][1] == []  # v1's stamp gone (new digest), v2's not written
    mig = unit(second, "migration.service")
    assert (mig["Result"], mig["ExecMainStatus"]) == ("exit-code", "1")
    assert second.state == "degraded"
    status = json.loads(second.files["status-before-fix.json"])
    b = {e["name"]: e for e in status}[B.installed_name]
    assert (b["state"], b["sha256"]) == ("refused", sha(B.text))
    assert UPPER_B in b["reason"] and f"remove {UPPER_B}" in b["reason"], b["reason"]
    said = second.journal_lines(rf"{B.installed_name}: refused: .*{UPPER_B}")
    assert said and f"remove {UPPER_B}" in said[0], second.journal_lines(B.installed_name)


def test_a_whiteout_of_an_applied_script_is_reported_across_the_update(chain: dict) -> None:
    """D was deleted on the device (a whiteout in the /etc upper) after it ran; v2 ships it
    unchanged: applied (it ran), with a reason naming the whiteout, never plain applied."""
    for report in chain["reports"][1:]:
        status = report.status_by_name()
        d = status[D.installed_name]
        assert (d["state"], d["sha256"]) == ("applied", sha(D.text))
        assert UPPER_D in d.get("reason", ""), d


def test_the_fix_runs_the_images_bytes_then_nothing_runs(chain: dict) -> None:
    """With the stale copy removed from the upper dir, the next boot runs B' (the image's
    bytes) and writes the stamp; the boot after that starts no migration process."""
    assert chain["upper_b_after_fix"] is None
    third, fourth = chain["reports"][2:]
    assert chain["order"][2] == [*chain["order"][1], f"{B2.installed_name} b-v2"]
    status = third.status_by_name()
    assert {n: e["state"] for n, e in status.items()} == {
        A.installed_name: "applied",
        B2.installed_name: "applied",
        D.installed_name: "applied",
    }
    assert status[B2.installed_name]["sha256"] == sha(B2.text)
    assert chain["done"][2] == [digest(chain["v2"])]
    assert third.state == "running"
    # Fully applied: the unit's condition on the done stamp (through the /var overlay) skips it.
    mig = unit(fourth, "migration.service")
    assert (mig["ConditionResult"], mig["ExecMainPID"]) == ("no", "0")
    assert int(mig.get("ExecMainStartTimestampMonotonic") or 0) == 0
    assert fourth.journal_lines(
        r"migration\.service.*skipped because of an unmet condition check "
        r"\(ConditionPathExists=!/usr/share/migration/done\)"
    )
    assert not fourth.journal_lines(r": applying ")
    assert chain["order"][3] == chain["order"][2]
    assert fourth.state == "running"
    h.log(f"obmc boots (s): {[round(s, 1) for s in chain['seconds']]}")
