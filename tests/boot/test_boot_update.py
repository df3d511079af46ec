# SPDX-License-Identifier: MIT
"""Issue 5 in real QEMU boots: migrations run at update time, too-old sources, downgrades.

An update, as an A/B updater does it: the running guest gets the new image's root disk as
/dev/vdc (read-only), mounts it at /mnt/new and runs the new image's RAUC slot hook
(/mnt/new/usr/share/migration/update-hooks/rauc-hook.sh slot-post-install, with RAUC's
environment), which runs the new image's runner against the live /var. The next boot is the new
root disk over the same /var disk. One chain of five boots (a boot is 25-45 s under TCG):

1. v1 (fresh) boots; its updater installs v2f, whose new script cannot run at update time:
   the hook warns and lets the update go on (b);
2. v2f boots and retries that script (b); its updater refuses v3, whose upgrade floor 2.5 is
   above the device's 2.0: the hook aborts, the journal says why, nothing changed (e);
3. v1 boots again: a downgrade within the compatibility level, nothing runs (d); its updater
   installs v2 (2.1: v2f plus a one-way migration): everything applied at update time (a);
4. v2 boots: migration.service starts no process (a); its updater refuses v1 (c, update phase);
5. v1 with migration-wipe-request boots anyway: refused, unit failed, wipe requested, data
   byte-identical (c).
"""

from pathlib import Path
from typing import Dict

import bootharness as h
import pytest
from bootharness import lines, unit
from updatescripts import MARK, recorder, update_scripts

pytestmark = pytest.mark.boot

INIT, MOVE, BOOT_ONLY = update_scripts()
# One-way (level 1): v2 rewrites the data in a format v1 cannot read.
ONEWAY = h.Script("app", "new-format.sh", recorder(
    "new-format", f"echo format=2 >{MARK}/v2/format\n",
), priority="60", version="2.0-r0", oneway=1)  # fmt: skip
# Needs the new system running: fails at update time, succeeds at boot.
BOOT_ONLY = h.Script("app", "needs-system.sh", recorder(
    "needs-system",
    '[ "$MIGRATION_PHASE" = boot ] || { echo "needs the new system running" >&2; exit 1; }\n',
), priority="70", version="2.0-r0")  # fmt: skip
V3_NEW = h.Script("app", "v3.sh", recorder("v3"), priority="80", version="3.0-r0")
DATA = {"/lib/mig-test/data.conf": ("setting=1\n", 0o644)}

# What an A/B updater does on the running system once the new slot is written: its slot mounted,
# RAUC's post-install hook from the bundle (here: the new image's copy) run with RAUC's
# environment. Checksums of the state and the data before and after, for the host to compare.
UPDATE_COMMAND = r"""#!/bin/sh
snap() {
    find /var/lib/migration /var/lib/mig-test -type f ! -name lock -print0 2>/dev/null |
        sort -z | xargs -0 sha256sum
}
mkdir -p /mnt/new
mount -o ro /dev/vdc /mnt/new || { echo "cannot mount /dev/vdc"; exit 99; }
snap >/var/lib/harness/before.sha256
env RAUC_SYSTEM_COMPATIBLE=meta-migration-test RAUC_SLOT_NAME=rootfs.1 \
    RAUC_SLOT_STATE=inactive RAUC_SLOT_CLASS=rootfs RAUC_SLOT_TYPE=ext4 \
    RAUC_SLOT_DEVICE=/dev/vdc RAUC_SLOT_BOOTNAME=B RAUC_SLOT_MOUNT_POINT=/mnt/new \
    RAUC_IMAGE_NAME=rootfs.ext4 RAUC_IMAGE_CLASS=rootfs RAUC_MOUNT_PREFIX=/run/mount/rauc \
    /mnt/new/usr/share/migration/update-hooks/rauc-hook.sh slot-post-install
rc=$?
snap >/var/lib/harness/after.sha256
umount /mnt/new
exit $rc
"""
UPDATER = {"/usr/local/sbin/harness-command": (UPDATE_COMMAND, 0o755)}


def dump(system: h.System, dest: Path) -> Dict[str, bytes]:
    """Every file of the state dir and the test data on the /var disk (journal replayed)."""
    img = h.replayed_copy(system.var_img)
    out: Dict[str, bytes] = {}
    for top in ("/lib/migration", "/lib/mig-test"):
        root = h.rdump(img, top, dest)
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[f"{top}/{p.relative_to(root)}"] = p.read_bytes()
    img.unlink()
    return out


@pytest.fixture(scope="module")
def chain(base: h.Base, boot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Five boots on one /var disk; each boot but the last runs an update in the guest."""
    v1 = h.new_system(base, boot_root / "up-v1", [INIT], version="1.0", extra=UPDATER,
                      var_extra=DATA)  # fmt: skip
    v2f = h.new_system(base, boot_root / "up-v2f", [INIT, MOVE, BOOT_ONLY], version="2.0",
                       extra=UPDATER, var_img=v1.var_img)  # fmt: skip
    v3 = h.new_system(base, boot_root / "up-v3", [INIT, MOVE, BOOT_ONLY, V3_NEW],
                      version="3.0", manifest_args=["--upgrade-floor", "2.5"],
                      var_img=v1.var_img)  # fmt: skip
    v2 = h.new_system(base, boot_root / "up-v2", [INIT, MOVE, BOOT_ONLY, ONEWAY],
                      version="2.1", extra=UPDATER, var_img=v1.var_img)  # fmt: skip
    v1w = h.new_system(base, boot_root / "up-v1w", [INIT], version="1.0", wipe_request=True,
                       var_img=v1.var_img)  # fmt: skip
    # (system booted, new root disk its updater installs) per boot, in order.
    steps = [(v1, v2f), (v2f, v3), (v1, v2), (v2, v1w), (v1w, None)]
    out: dict = {"reports": [], "order": [], "var": v1.var_img}
    tmp = tmp_path_factory.mktemp("chain")
    for i, (system, new) in enumerate(steps):
        system.disks = [new.root_img] if new else []
        if new is None:
            out["before"] = dump(system, tmp / "before")
        h.clear_report(system)
        h.boot(system)
        out["reports"].append(h.read_report(system))
        out["order"].append(lines(v1.var_img, f"{MARK[4:]}/order"))
        h.log(f"step {i + 1}: {out['order'][-1]}")
    out["after"] = dump(v1w, tmp / "after")
    return out


def test_failed_update_time_migration_is_retried_at_boot(chain: dict) -> None:
    """(b) v1 -> v2f: the hook reports the failed script and lets the update go on; the first
    boot of v2f retries it."""
    first, second = chain["reports"][:2]
    assert first.files["command.rc"].strip() == "0", first.files["command.out"]
    out = first.files["command.out"]
    assert "needs the new system running" in out
    assert "WARNING: not every migration of the new image could be applied now" in out
    assert chain["order"][0] == [
        "10-base-init.sh boot 1", "50-app-move.sh update 1", "70-app-needs-system.sh update 1",
    ]  # fmt: skip
    mig = unit(second, "migration.service")
    assert (mig["Result"], mig["ExecMainStatus"]) == ("success", "0")
    assert int(mig["ExecMainPID"]) > 0
    assert chain["order"][1] == [*chain["order"][0], "70-app-needs-system.sh boot 2"]
    status = second.status_by_name()
    assert status["70-app-needs-system.sh"]["state"] == "applied"
    assert status["50-app-move.sh"]["attempts"] == 1
    assert second.state == "running"


def test_upgrade_from_below_the_floor_is_refused_in_plain_words(chain: dict) -> None:
    """(e) The running v2f (2.0) is below v3's upgrade floor (2.5): the hook aborts the update,
    the journal says why and what to do, nothing was touched."""
    second = chain["reports"][1]
    assert second.files["command.rc"].strip() == "1", second.files["command.out"]
    said = second.journal_lines(
        r"harness-command.*upgrade from a too old release: the data was last fully migrated by "
        r"release 2\.0.*but this image \(3\.0\) upgrades only from 2\.5 or newer"
    )
    assert said, second.files["command.out"]
    assert second.journal_lines(r"harness-command.*Install release 2\.5")
    assert "REFUSED: the new image cannot use this device's data" in second.files["command.out"]
    assert second.files["before.sha256"] == second.files["after.sha256"]
    assert second.files["before.sha256"].count("\n") >= 4
    assert not any("80-app-v3.sh" in line for order in chain["order"] for line in order)


def test_downgrade_within_the_compatibility_level_boots_normally(chain: dict) -> None:
    """(d) v2f -> v1 (no one-way migration in between): a normal boot, nothing runs again."""
    third = chain["reports"][2]
    mig = unit(third, "migration.service")
    assert (mig["Result"], mig["ExecMainStatus"]) == ("success", "0")
    assert third.state == "running"
    assert not third.journal_lines(r" migration\[\d+\]: .*applying")
    # Only the update to v2 that this boot's updater ran afterwards added a line.
    assert chain["order"][2] == [*chain["order"][1], "60-app-new-format.sh update 1"]
    assert [(e["name"], e["state"]) for e in third.status] == [("10-base-init.sh", "applied")]


def test_update_time_run_then_the_new_image_boots_without_a_migration_process(
    chain: dict,
) -> None:
    """(a) v1 -> v2, applied by the RAUC hook in the running v1; v2's boot starts no process."""
    third, fourth = chain["reports"][2:4]
    assert third.files["command.rc"].strip() == "0", third.files["command.out"]
    assert "the new image's migrations are applied" in third.files["command.out"]
    # The one new script ran once, in the update phase, from the mounted new root.
    assert chain["order"][2][-1] == "60-app-new-format.sh update 1"
    assert third.journal_lines(
        r"harness-command.*60-app-new-format\.sh: applying 60-app-new-format\.sh \(update\)"
    )
    # The first boot of v2: the condition on the done stamp fails, no process, nothing ran.
    mig = unit(fourth, "migration.service")
    assert (mig["ConditionResult"], mig["ExecMainPID"]) == ("no", "0")
    assert int(mig.get("ExecMainStartTimestampMonotonic") or 0) == 0
    assert fourth.journal_lines(r"migration\.service.*skipped because of an unmet condition")
    assert not fourth.journal_lines(r": applying ")
    assert chain["order"][3] == chain["order"][2]
    assert fourth.state == "running"
    assert {e["state"] for e in fourth.status} == {"applied"}
    assert len(fourth.status) == 4
    assert h.read_file(chain["var"], f"{MARK[4:]}/v2/data.conf") == "setting=1\n"


def test_one_way_downgrade_is_refused_at_update_time_and_at_boot(chain: dict) -> None:
    """(c) v2 -> v1 across the one-way migration: the hook aborts the update; booting v1 anyway
    fails the unit (exit 3), requests a wipe and leaves the data byte-identical."""
    fourth, fifth = chain["reports"][3:]
    # Update phase (in the running v2): refused, the updater aborts; nothing changed.
    assert fourth.files["command.rc"].strip() == "1", fourth.files["command.out"]
    assert "REFUSED: the new image cannot use this device's data" in fourth.files["command.out"]
    assert fourth.journal_lines(r"harness-command.*incompatible downgrade")
    assert fourth.files["before.sha256"] == fourth.files["after.sha256"]
    # Boot phase: v1 with migration-wipe-request.
    mig = unit(fifth, "migration.service")
    assert (mig["ActiveState"], mig["Result"], mig["ExecMainStatus"]) == (
        "failed", "exit-code", "3")  # fmt: skip
    assert fifth.state == "degraded"
    assert fifth.journal_lines(
        r"incompatible downgrade: the data on this device went through a one-way migration of "
        r"compatibility level 1, but this image \(1\.0\) only understands level 0"
    )
    assert fifth.journal_lines(r"hook 50-request-wipe")
    after = dict(chain["after"])
    flag = after.pop("/lib/migration/wipe-requested").decode()
    assert flag.startswith("verdict=downgrade\nversion_id=1.0\n")
    assert "incompatible downgrade" in flag
    assert after == chain["before"]
    assert chain["order"][4] == chain["order"][3]
    # `migration status` says it too (exit 3, the refusal on stderr).
    assert fifth.files["status.rc"].strip() == "3"
    assert "refused (downgrade)" in fifth.files["status.err"]
