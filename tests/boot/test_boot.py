# SPDX-License-Identifier: MIT
"""Scenarios 1-7 of the boot issue, in real QEMU boots of a Debian 12 systemd guest.

Each chain of boots is a module fixture (booting is the expensive part: about 25 s under TCG);
the tests assert on what the guest dumped (journal, unit properties, `migration status --json`)
and on the disks themselves, read with debugfs.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import bootharness as h
import pytest
from bootharness import lines, unit

from migration import units

pytestmark = pytest.mark.boot

MARK = "/var/lib/mig-test"


def recorder(tag: str, extra: str = "") -> str:
    """A migration that appends its name to an order file (and does `extra`).

    `tag` makes the content unique: a script's identity is the hash of its content.
    """
    return (
        f"#!/bin/sh\n# {tag}\n"
        f"mkdir -p {MARK}\n"
        f'echo "$MIGRATION_NAME" >>{MARK}/order\n'
        'echo "applying $MIGRATION_NAME"\n' + extra
    )


FAILING = "#!/bin/sh\necho 'about to fail'\nfalse\necho 'errexit did not stop me' >/dev/console\n"

ADD_USER = recorder(
    "add-user",
    # The OpenBMC case: the daemon moves from root to its own user; the image's useradd does not
    # reach a device whose /etc/passwd predates the user, so the migration creates it.
    "if ! getent passwd food >/dev/null; then\n"
    "    useradd --system --home-dir /var/lib/food --no-create-home"
    " --shell /usr/sbin/nologin food\n"
    "fi\n"
    "chown -R food:food /var/lib/food\n"
)

# A regular service (default dependencies) that records what it finds when it starts.
PROBE_UNIT = f"""[Unit]
Description=Regular service that looks at the migrations' results

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'cat {MARK}/order > {MARK}/probe-saw 2>&1 || true'

[Install]
WantedBy=multi-user.target
"""


def gated_unit(name: str) -> str:
    return f"""[Unit]
Description=Service gated on its package's migrations ({name})

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mkdir -p {MARK}; echo started > {MARK}/{name}'

[Install]
WantedBy=multi-user.target
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def mono(props: Dict[str, str], key: str) -> int:
    return int(props.get(key) or 0)


def host_status(system: h.System, workdir: Path) -> List[dict]:
    """`migration status --json` run on the host over the disks' scripts, state and manifest
    (for boots that end without the guest's report, e.g. a halt)."""
    img = h.replayed_copy(system.var_img)
    state = h.rdump(img, "/lib/migration", workdir / "var")
    res = subprocess.run(
        [sys.executable, "-m", "migration", "--scripts-dir", str(system.tree / "etc/migration.d"),
         "--state-dir", str(state), "--manifest",
         str(system.tree / "usr/share/migration/manifest.json"), "status", "--json"],
        env=dict(os.environ, PYTHONPATH=str(h.LIB)), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.stdout, res.stderr
    return json.loads(res.stdout)


def gate_files(service: str, package: str) -> Dict[str, tuple]:
    """The drop-in the class installs for MIGRATION_BEFORE = "<service>" of <package>."""
    path = f"/lib/systemd/system/{service}.d/{units.gate_dropin_name(package)}"
    return {
        f"/etc/systemd/system/{service}": (gated_unit(service), 0o644),
        path: (units.gate_dropin(package), 0o644),
    }


# ------------------------------------------------------------------------------------------
# Scenarios 1, 2, 5, 7: first boot, no-op boot, image update, user creation


A_SCRIPTS = [
    h.Script("alpha", "first.sh", recorder("first"), priority="10"),
    h.Script("beta", "second.sh", recorder("second"), priority="50"),
    h.Script("food", "add-user.sh", ADD_USER, priority="60"),
    h.Script("alpha", "last.sh", recorder("last"), priority="90"),
]
A_NEW = h.Script("beta", "new-in-update.sh", recorder("new"), priority="55", version="2.0-r0")
A_EXTRA = {
    "/etc/systemd/system/mig-probe.service": (PROBE_UNIT, 0o644),
    **gate_files("gated-alpha.service", "alpha"),
    # tmpfiles runs after the migrations, so it can name the user a migration creates.
    "/usr/lib/tmpfiles.d/food.conf": ("d /var/lib/food/run 0750 food food -\n", 0o644),
}
A_ENABLE = ["mig-probe.service", "gated-alpha.service"]
A_VAR = {"/lib/food/data.conf": ("setting=1\n", 0o644)}


@pytest.fixture(scope="module")
def chain_a(base: h.Base, boot_root: Path) -> dict:
    sysa = h.new_system(base, boot_root / "a", A_SCRIPTS, extra=A_EXTRA,
                        enable=A_ENABLE, var_extra=A_VAR)  # fmt: skip
    passwd_before = (sysa.tree / "etc/passwd").read_text()
    out = {"system": sysa, "passwd_before": passwd_before, "boots": []}
    for _ in range(2):
        out["boots"].append(h.boot(sysa))
        out.setdefault("reports", []).append(h.read_report(sysa))
        out.setdefault("order", []).append(lines(sysa.var_img, "/lib/mig-test/order"))
        out.setdefault("applied", []).append(h.list_dir(sysa.var_img, "/lib/migration/applied"))
        out.setdefault("done", []).append(h.list_dir(sysa.var_img, "/lib/migration/done"))
        h.clear_report(sysa)
    # what the first boots left of the runner's bytecode on the root disk
    pycache = "/usr/lib/migration/migration/__pycache__"
    dumped = h.rdump(sysa.root_img, pycache, boot_root / "a-pycache")
    out["pycache_after"] = {p.name: p.read_bytes() for p in sorted(dumped.iterdir())}
    out["root_after"] = {
        "passwd": h.read_file(sysa.root_img, "/etc/passwd") or "",
        "food": h.inode_owner(sysa.var_img, "/lib/food"),
        "food_data": h.inode_owner(sysa.var_img, "/lib/food/data.conf"),
        "food_run": h.inode_owner(sysa.var_img, "/lib/food/run"),
    }
    # Image update: a new root disk with one more script, over the same /var disk.
    upd = h.new_system(base, boot_root / "a-update", [*A_SCRIPTS, A_NEW], extra=A_EXTRA,
                       enable=A_ENABLE, var_img=sysa.var_img)  # fmt: skip
    out["update"] = upd
    out["boots"].append(h.boot(upd))
    out["reports"].append(h.read_report(upd))
    out["order"].append(lines(upd.var_img, "/lib/mig-test/order"))
    return out


def test_first_boot_applies_all_scripts_in_order_before_sysinit(chain_a: dict) -> None:
    """Scenario 1."""
    report = chain_a["reports"][0]
    names = [s.installed_name for s in A_SCRIPTS]
    assert chain_a["order"][0] == sorted(names, key=os.fsencode)
    status = report.status_by_name()
    assert sorted(status) == sorted(names)
    for s in A_SCRIPTS:
        entry = status[s.installed_name]
        assert (entry["state"], entry["attempts"], entry["sha256"]) == ("applied", 1, sha(s.text))
    mig = unit(report, "migration.service")
    assert (mig["ActiveState"], mig["Result"], mig["ExecMainStatus"]) == ("active", "success", "0")
    finished = mono(mig, "ExecMainExitTimestampMonotonic")
    assert finished > 0
    assert mono(unit(report, "sysinit.target"), "ActiveEnterTimestampMonotonic") >= finished
    tmpfiles = unit(report, "systemd-tmpfiles-setup.service")
    assert mono(tmpfiles, "InactiveExitTimestampMonotonic") >= finished
    # A regular service sees every migration done when it starts.
    system = chain_a["system"]
    assert lines(system.var_img, "/lib/mig-test/probe-saw")[:4] == chain_a["order"][0]
    # The journal: the runner's output, prefixed with each script's name, before sysinit.
    for name in names:
        assert report.journal_lines(rf"{re.escape(name)}: applying {re.escape(name)}"), name
    assert report.state == "running"
    assert not report.journal_lines(r"[Oo]rdering cycle")
    # A service gated on alpha starts after migration.service finished. Its gate found the
    # image's stamp already written by then (everything applied), so it started no process.
    gate = unit(report, units.gate_unit("alpha"))
    assert (gate["Result"], gate["ConditionResult"], gate["ExecMainPID"]) == ("success", "no", "0")
    gated = unit(report, "gated-alpha.service")
    assert gated["ActiveState"] == "active"
    assert mono(gated, "InactiveExitTimestampMonotonic") >= finished
    # The state dir: one record per script, named by its sha256, and the no-op stamp.
    assert chain_a["applied"][0] == sorted(sha(s.text) for s in A_SCRIPTS)
    manifest = json.loads((system.tree / "usr/share/migration/manifest.json").read_text())
    assert chain_a["done"][0] == [manifest["digest"]]


def test_second_boot_starts_no_process(chain_a: dict) -> None:
    """Scenario 2: everything applied, the unit's condition skips it; nothing ran again."""
    report = chain_a["reports"][1]
    mig = unit(report, "migration.service")
    assert mig["ConditionResult"] == "no"
    assert mig["ExecMainPID"] == "0"
    assert mono(mig, "ExecMainStartTimestampMonotonic") == 0
    assert report.journal_lines(
        r"migration\.service.*skipped because of an unmet condition check "
        r"\(ConditionPathExists=!/usr/share/migration/done\)"
    )
    assert not report.journal_lines(r": applying ")
    assert chain_a["order"][1] == chain_a["order"][0]
    assert chain_a["applied"][1] == chain_a["applied"][0]
    assert {e["state"] for e in report.status} == {"applied"}
    assert {e["attempts"] for e in report.status} == {1}
    assert report.state == "running"
    # The gate of a gated service starts no process either, and the service starts.
    gate = unit(report, units.gate_unit("alpha"))
    assert (gate["ConditionResult"], gate["ExecMainPID"]) == ("no", "0")
    assert unit(report, "gated-alpha.service")["ActiveState"] == "active"


def test_the_runner_runs_from_the_bytecode_it_ships(chain_a: dict) -> None:
    """Issue 9: the package's bytecode (made by the guest's Python version, unchecked-hash) is
    what the first boot's runner loaded: a missing, stale or foreign-version pyc would have been
    rewritten (the root is writable) or joined by another version's file."""
    tree = chain_a["system"].tree / "usr/lib/migration/migration/__pycache__"
    shipped = {p.name: p.read_bytes() for p in sorted(tree.iterdir())}
    assert any(n.startswith("runner.cpython-") for n in shipped), shipped
    assert chain_a["pycache_after"] == shipped


def test_image_update_runs_only_the_new_script(chain_a: dict) -> None:
    """Scenario 5: a new root disk over the same /var: only the new script runs."""
    report = chain_a["reports"][2]
    assert chain_a["order"][2] == [*chain_a["order"][0], A_NEW.installed_name]
    ran = report.journal_lines(r": applying ")
    assert len(ran) == 1 and A_NEW.installed_name in ran[0]
    status = report.status_by_name()
    assert status[A_NEW.installed_name]["state"] == "applied"
    assert {e["state"] for e in report.status} == {"applied"}
    assert {e["attempts"] for e in report.status} == {1}
    assert unit(report, "migration.service")["Result"] == "success"
    manifest = json.loads(
        (chain_a["update"].tree / "usr/share/migration/manifest.json").read_text()
    )
    # The old image's stamp is replaced by the new one.
    assert h.list_dir(chain_a["update"].var_img, "/lib/migration/done") == [manifest["digest"]]


def test_migration_creates_user_and_chowns_data(chain_a: dict) -> None:
    """Scenario 7: the image's /etc/passwd predates the user; the migration adds it and chowns
    the data; tmpfiles (after the migrations) can then use the user."""
    assert "food:" not in chain_a["passwd_before"]
    passwd = chain_a["root_after"]["passwd"]
    entry = [ln for ln in passwd.splitlines() if ln.startswith("food:")]
    assert len(entry) == 1, passwd
    uid, gid = int(entry[0].split(":")[2]), int(entry[0].split(":")[3])
    assert uid != 0
    after = chain_a["root_after"]
    assert after["food"] == (uid, gid)
    assert after["food_data"] == (uid, gid)
    assert after["food_run"] == (uid, gid)
    report = chain_a["reports"][0]
    assert not report.journal_lines(r"Failed to resolve user 'food'")


# ------------------------------------------------------------------------------------------
# Scenarios 3 (continue) and 6: a failing script, per-service gating


B_SCRIPTS = [
    h.Script("good", "ok.sh", recorder("good"), priority="10"),
    h.Script("bad-pkg", "fails.sh", FAILING, priority="20"),
    h.Script("late", "after-failure.sh", recorder("late"), priority="30"),
]


@pytest.fixture(scope="module")
def chain_b(base: h.Base, boot_root: Path) -> dict:
    extra = {
        "/etc/systemd/system/mig-probe.service": (PROBE_UNIT, 0o644),
        **gate_files("gated-good.service", "good"),
        **gate_files("gated-bad.service", "bad-pkg"),
    }
    enable = ["mig-probe.service", "gated-good.service", "gated-bad.service"]
    sysb = h.new_system(base, boot_root / "b", B_SCRIPTS, extra=extra, enable=enable)
    out = {"system": sysb, "reports": [], "order": []}
    for _ in range(2):
        h.boot(sysb)
        out["reports"].append(h.read_report(sysb))
        out["order"].append(lines(sysb.var_img, "/lib/mig-test/order"))
        out.setdefault("gated", []).append(h.list_dir(sysb.var_img, "/lib/mig-test"))
        h.clear_report(sysb)
    return out


def test_failing_script_under_continue_boots_degraded(chain_b: dict) -> None:
    """Scenario 3, policy continue: unit failed, boot degraded, the others applied, retried."""
    good, bad, late = (s.installed_name for s in B_SCRIPTS)
    first, second = chain_b["reports"]
    mig = unit(first, "migration.service")
    assert (mig["ActiveState"], mig["Result"], mig["ExecMainStatus"]) == (
        "failed", "exit-code", "1")  # fmt: skip
    assert first.state == "degraded"
    assert "migration.service" in first.files["failed.txt"]
    status = first.status_by_name()
    assert (status[good]["state"], status[late]["state"]) == ("applied", "applied")
    assert (status[bad]["state"], status[bad]["attempts"]) == ("failed", 1)
    assert first.files["status.rc"].strip() == "1"
    # Why, in the journal: the script's own output with its name, then errexit stopped it.
    assert first.journal_lines(rf"{re.escape(bad)}: about to fail")
    assert not first.journal_lines("errexit did not stop me")
    assert chain_b["order"][0] == [good, late]
    # Next boot: only the failed script is tried again.
    assert chain_b["order"][1] == [good, late]
    status2 = second.status_by_name()
    assert (status2[bad]["state"], status2[bad]["attempts"]) == ("failed", 2)
    assert status2[good]["attempts"] == 1
    assert unit(second, "migration.service")["Result"] == "exit-code"
    assert second.state == "degraded"
    # Regular services still start.
    assert unit(first, "mig-probe.service")["Result"] == "success"


def test_structured_journal_entries_of_a_failing_boot(chain_b: dict) -> None:
    """Issue 12: `journalctl -o json` selects the runner's outcomes by MESSAGE_ID and fields,
    sent by the boot's runner itself (its unit), each with the words of its console line."""
    from migration import journal

    good, bad, late = (s.installed_name for s in B_SCRIPTS)
    first = chain_b["reports"][0]
    entries = first.journal_entries()

    def of(message_id: str) -> List[dict]:
        return [e for e in entries if e.get("MESSAGE_ID") == message_id]

    assert [e["MIGRATION_NAME"] for e in of(journal.SCRIPT_APPLIED)] == [good, late]
    (failed,) = of(journal.SCRIPT_FAILED)
    assert failed["MIGRATION_NAME"] == bad
    assert failed["MIGRATION_SHA256"] == first.status_by_name()[bad]["sha256"]
    assert (failed["MIGRATION_RESULT"], failed["MIGRATION_PHASE"], failed["PRIORITY"]) == (
        "failed", "boot", "3")  # fmt: skip
    assert failed["_SYSTEMD_UNIT"] == "migration.service"
    (finished,) = of(journal.RUN_FINISHED)
    assert (finished["MIGRATION_RESULT"], finished["MIGRATION_FAILED"]) == ("failure", "1")
    assert len(of(journal.RUN_STARTED)) == 1
    # The unit's own line and the structured entry: the same words, twice, never differing.
    assert len(first.journal_lines(re.escape(failed["MESSAGE"]) + "$")) == 2


def test_gated_service_waits_for_its_migrations_and_not_for_failed_ones(chain_b: dict) -> None:
    """Scenario 6."""
    report = chain_b["reports"][0]
    gate_good = unit(report, units.gate_unit("good"))
    gate_bad = unit(report, units.gate_unit("bad-pkg"))
    assert gate_good["Result"] == "success"
    assert gate_bad["Result"] == "exit-code"
    mig = unit(report, "migration.service")
    good = unit(report, "gated-good.service")
    assert good["ActiveState"] == "active"
    started = mono(good, "InactiveExitTimestampMonotonic")
    assert started >= mono(gate_good, "ActiveEnterTimestampMonotonic")
    assert started >= mono(mig, "ExecMainExitTimestampMonotonic")
    bad = unit(report, "gated-bad.service")
    assert bad["ActiveState"] != "active"
    assert mono(bad, "InactiveExitTimestampMonotonic") == 0
    assert report.journal_lines(r"Dependency failed for .*gated-bad\.service|gated-bad\.service: "
                                r"Job gated-bad\.service/start failed")  # fmt: skip
    for seen in chain_b["gated"]:
        assert "gated-good.service" in seen
        assert "gated-bad.service" not in seen


# ------------------------------------------------------------------------------------------
# Scenario 3 under the failure-state policies


C_SCRIPTS = [
    h.Script("good", "ok.sh", recorder("good"), priority="10"),
    h.Script("bad-pkg", "fails.sh", FAILING, priority="20"),
    h.Script("late", "after-failure.sh", recorder("late"), priority="30"),
]


def test_failing_script_under_rescue_stops_in_emergency_mode(base: h.Base, boot_root: Path) -> None:
    """Scenario 3, policy rescue: emergency.target is isolated once, no regular service starts,
    and the failed script ran exactly once (issue 14: isolating rescue.target pulled
    sysinit.target and so migration.service again, 5 runs in one boot)."""
    extra = {"/etc/systemd/system/mig-probe.service": (PROBE_UNIT, 0o644)}
    sysc = h.new_system(base, boot_root / "rescue", C_SCRIPTS, policy="rescue", extra=extra,
                        enable=["mig-probe.service"])  # fmt: skip
    h.boot(sysc)
    report = h.read_report(sysc)
    assert report.state == "maintenance"
    assert unit(report, "migration.service")["Result"] == "exit-code"
    assert unit(report, "emergency.target")["ActiveState"] == "active"
    assert unit(report, "rescue.target")["ActiveState"] == "inactive"
    assert unit(report, "multi-user.target")["ActiveState"] == "inactive"
    # emergency.target conflicts with sysinit.target: inactive, so migration.service's boot-only
    # condition (skip once sysinit.target is active) lets a retry from this shell run.
    assert unit(report, "sysinit.target")["ActiveState"] == "inactive"
    assert h.read_file(sysc.var_img, "/lib/mig-test/probe-saw") is None
    status = report.status_by_name()
    good, bad, late = (s.installed_name for s in C_SCRIPTS)
    assert [status[n]["state"] for n in (good, bad, late)] == ["applied", "failed", "applied"]
    assert status[bad]["attempts"] == 1
    assert len(report.journal_lines(r"migration\.service: Triggering OnFailure= dependencies")) == 1


def test_failing_script_under_halt_halts_before_anything_else(
    base: h.Base, boot_root: Path, tmp_path: Path
) -> None:
    """Scenario 3, policy halt: the runner stops at the failure, the system halts cleanly."""
    extra = {"/etc/systemd/system/mig-probe.service": (PROBE_UNIT, 0o644)}
    # No harness unit: stopped by the shutdown, it would power off instead of the halt.
    sysd = h.new_system(
        base, boot_root / "halt", C_SCRIPTS, policy="halt", extra=extra,
        enable=["mig-probe.service"], disable=["harness-report.service"],
    )  # fmt: skip
    result = h.boot(sysd, stop_when="reboot: System halted")
    assert "reboot: System halted" in result.console
    assert "Reached target multi-user.target" not in result.console
    assert h.read_file(sysd.var_img, "/lib/mig-test/probe-saw") is None
    status = {e["name"]: e for e in host_status(sysd, tmp_path)}
    good, bad, late = (s.installed_name for s in C_SCRIPTS)
    # --policy stop: the script after the failed one is left pending.
    assert [status[n]["state"] for n in (good, bad, late)] == ["applied", "failed", "pending"]
    # A clean halt: the /var file system was unmounted properly.
    ok, out = h.fsck_clean(sysd.var_img)
    assert ok, out


# ------------------------------------------------------------------------------------------
# Scenario 4: power cut in the middle of a slow migration


SLOW = f"""#!/bin/sh
# Moves a data directory; slow the first time (the test cuts the power then).
mkdir -p {MARK}
echo run >>{MARK}/slow-runs
sync
if [ "$(wc -l <{MARK}/slow-runs)" -eq 1 ]; then
    echo "MIGRATION-SLOW-STARTED" >/dev/console
    sleep 600
fi
if [ -d /var/lib/old-data ]; then
    mkdir -p /var/lib/new-data
    cp -a /var/lib/old-data/. /var/lib/new-data/
    sync
    rm -rf /var/lib/old-data
fi
echo moved
"""

E_SCRIPTS = [
    h.Script("pre", "ok.sh", recorder("pre"), priority="10"),
    h.Script("slow", "move-data.sh", SLOW, priority="50"),
    h.Script("post", "ok.sh", recorder("post"), priority="90"),
]


def test_power_cut_during_a_migration(base: h.Base, boot_root: Path) -> None:
    """Scenario 4: SIGKILL of QEMU while a migration runs; the next boot completes it."""
    var = {"/lib/old-data/payload": ("precious\n", 0o644)}
    syse = h.new_system(base, boot_root / "powercut", E_SCRIPTS, var_extra=var)
    pre, slow, post = E_SCRIPTS
    cut = h.boot(syse, kill_when="MIGRATION-SLOW-STARTED")
    assert cut.killed
    # Right after the cut (journal replayed on a copy): pre applied, slow noted as started.
    img = h.replayed_copy(syse.var_img)
    applied = h.list_dir(img, "/lib/migration/applied")
    assert applied == [sha(pre.text)]
    # A started note left next to an applied record is harmless (the record wins, and the runner
    # drops the note without an fsync); only the slow script is interrupted.
    started = set(h.list_dir(img, "/lib/migration/started"))
    assert started - set(applied) == {sha(slow.text)}
    assert h.read_file(img, "/lib/old-data/payload") == "precious\n"
    img.unlink()

    h.boot(syse)
    report = h.read_report(syse)
    status = report.status_by_name()
    assert {e["state"] for e in report.status} == {"applied"}
    assert status[slow.installed_name]["attempts"] in (1, 2)
    assert status[pre.installed_name]["attempts"] == 1
    ran = report.journal_lines(r": applying |: moved")
    assert [r.split(": ")[-1] for r in ran] == ["moved", f"applying {post.installed_name}"]
    # Nothing recorded twice, nothing lost: one record per script; the data moved once.
    assert h.list_dir(syse.var_img, "/lib/migration/applied") == sorted(
        sha(s.text) for s in E_SCRIPTS
    )
    assert h.list_dir(syse.var_img, "/lib/migration/started") == []
    assert lines(syse.var_img, "/lib/mig-test/order") == [pre.installed_name, post.installed_name]
    assert lines(syse.var_img, "/lib/mig-test/slow-runs") == ["run", "run"]
    assert h.read_file(syse.var_img, "/lib/new-data/payload") == "precious\n"
    assert h.read_file(syse.var_img, "/lib/old-data/payload") is None
    assert report.state == "running"
    ok, out = h.fsck_clean(syse.var_img)
    assert ok, out
    ok, out = h.fsck_clean(syse.root_img)
    assert ok, out
