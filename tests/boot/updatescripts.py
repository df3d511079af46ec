# SPDX-License-Identifier: MIT
"""The migrations the update tests ship (test_boot_update, test_boot_rauc, test_boot_swupdate,
test_boot_mender): each logs its name, phase and attempt to MARK/order on the data disk, so a
test reads what ran, when and how often."""

import hashlib
import json
import re
from pathlib import Path
from typing import NamedTuple

import bootharness as h

MARK = "/var/lib/mig-test"


def recorder(tag: str, extra: str = "") -> str:
    """A migration that logs its name, phase and attempt (and does `extra`); `tag` makes the
    content, so the identity, unique."""
    return (
        f"#!/bin/sh\n# {tag}\n"
        f"mkdir -p {MARK}\n"
        f'echo "$MIGRATION_NAME $MIGRATION_PHASE $MIGRATION_ATTEMPT" >>{MARK}/order\n'
        'echo "applying $MIGRATION_NAME ($MIGRATION_PHASE)"\n' + extra
    )


class UpdateScripts(NamedTuple):
    init: h.Script
    """In every image (priority 10)."""
    move: h.Script
    """v2 keeps its data elsewhere: moved by a migration that can run at update time."""
    boot_only: h.Script
    """Needs the new system running: fails at update time, succeeds at boot (v3)."""


def update_scripts(prefix: str = "") -> UpdateScripts:
    """The migrations of an update chain; `prefix` keeps one test's contents apart from
    another's."""
    return UpdateScripts(
        h.Script("base", "init.sh", recorder(f"{prefix}init"), priority="10"),
        h.Script("app", "move.sh", recorder(
            f"{prefix}move",
            f"if [ -f {MARK}/data.conf ]; then mkdir -p {MARK}/v2; "
            f"mv {MARK}/data.conf {MARK}/v2/; fi\n",
        ), priority="50", version="2.0-r0"),
        h.Script("app", "needs-system.sh", recorder(
            f"{prefix}needs-system",
            '[ "$MIGRATION_PHASE" = boot ] || { echo "needs the new system running" >&2; '
            "exit 1; }\n",
        ), priority="70", version="3.0-r0"),
    )


def one_way(prefix: str = "") -> h.Script:
    """v3's one-way migration (level 1): it writes the data in a format older images cannot
    read, so the device's state reaches level 1 and an image of level 0 must refuse it. Priority
    60: applied at update time, before the script that fails there."""
    return h.Script("app", "convert.sh", recorder(
        f"{prefix}convert", f"echo format=3 >{MARK}/v2/format\n",
    ), priority="60", version="3.0-r0", oneway=1)  # fmt: skip


#: The update-phase lines of the update to v3: the one-way conversion, then the failed one.
V3_UPDATE_ORDER = ["60-app-convert.sh update 1", "70-app-needs-system.sh update 1"]


def assert_first_boot_runs_nothing(report: h.Report, var: Path, slot_arg: str) -> None:
    """The first boot of the slot an updater wrote, after its hook applied every migration: the
    done stamp holds, migration.service starts no process, nothing runs again."""
    mig = h.unit(report, "migration.service")
    assert (mig["ConditionResult"], mig["ExecMainPID"]) == ("no", "0")
    assert int(mig.get("ExecMainStartTimestampMonotonic") or 0) == 0
    assert report.journal_lines(r"migration\.service.*skipped because of an unmet condition")
    assert not report.journal_lines(r" migration\[\d+\]: .*applying")
    assert report.journal_lines(rf"Command line: .* {slot_arg}")
    assert {e["state"] for e in report.status} == {"applied"}
    assert [e["name"] for e in report.status] == ["10-base-init.sh", "50-app-move.sh"]
    assert h.read_file(var, f"{MARK[4:]}/v2/data.conf") == "setting=1\n"
    assert report.state == "running"


def assert_first_boot_retries_the_failed_one(chain: dict, report: h.Report) -> None:
    """The first boot of v3, whose migration failed at update time: it retries that one
    (attempt 2) and only it."""
    mig = h.unit(report, "migration.service")
    assert (mig["Result"], mig["ExecMainStatus"]) == ("success", "0")
    assert int(mig["ExecMainPID"]) > 0
    assert chain["order"][2] == [*chain["order"][1], "70-app-needs-system.sh boot 2"]
    status = report.status_by_name()
    assert status["70-app-needs-system.sh"]["state"] == "applied"
    assert report.state == "running"


def assert_one_way_downgrade_left_everything(
    chain: dict, report: h.Report, name: str, downgrade_said: str
) -> None:
    """The running v3 (level 1) refused to install v2 (level 0), update `name`: the runner said
    why (`downgrade_said`: where the updater keeps the hook's output), the state and the data
    are byte-identical around the install, nothing ran, the one-way conversion stays."""
    assert re.search(
        r"incompatible downgrade: the data on this device went through a one-way migration of "
        r"compatibility level 1, but this image \(2\.0\) only understands level 0",
        downgrade_said,
    ), downgrade_said
    before = report.files[f"{name}.before.sha256"]
    assert report.files[f"{name}.after.sha256"] == before
    # sha256sum lines: the snapshot covers the converted data and the state that says so.
    paths = {ln.split(maxsplit=1)[1] for ln in before.splitlines()}
    assert {f"{MARK}/v2/format", "/var/lib/migration/state.json"} <= paths
    assert chain["order"][2][-1] == "70-app-needs-system.sh boot 2"
    assert h.read_file(chain["var"], f"{MARK[4:]}/v2/format") == "format=3\n"
    state = json.loads(h.read_file(chain["var"], "/lib/migration/state.json") or "{}")
    assert state["compat_level"] == 1


def sha(script: h.Script) -> str:
    """The sha256 a script is recorded by."""
    return hashlib.sha256(script.text.encode()).hexdigest()


def record(var_img: Path, script: h.Script) -> dict:
    """The applied record of `script` on the /var disk."""
    text = h.read_file(var_img, f"/lib/migration/applied/{sha(script)}")
    assert text, f"no applied record of {script.installed_name}"
    return json.loads(text)


def bootloader_env(var_img: Path, env_file: str, tmp: Path) -> "dict[str, str]":
    """The U-Boot environment file `env_file` (a path under /var) on the /var disk, as the
    bootloader reads it."""
    from ubootenv import parse_uboot_env

    dest = tmp / "uboot.env"
    if dest.exists():
        dest.unlink()
    h.debugfs(var_img, f"dump {env_file[4:]} {dest}")
    return parse_uboot_env(dest.read_bytes())
