# SPDX-License-Identifier: MIT
"""The re-run check in a real boot: the example's migration (exampled, run-as-exampled-user.sh)
and one deliberately non-idempotent migration that appends a line.

One boot applies both; then, on the booted system, lib/oeqa/runtime/files/migration-rerun-check.py
(what the testimage case runs) snapshots /etc and /var/lib, forgets every migration, runs them
again and compares: the append is the one change, so the example is idempotent and the check
can fail.
"""

import json
from pathlib import Path

import bootharness as h
import pytest

from migration import lint

pytestmark = pytest.mark.boot

EXAMPLE = h.REPO / "meta-migration-example" / "recipes-example" / "exampled" / "files"
CHECK = h.REPO / "lib" / "oeqa" / "runtime" / "files" / "migration-rerun-check.py"

EXAMPLED = h.Script(
    "exampled",
    "run-as-exampled-user.sh",
    (EXAMPLE / "run-as-exampled-user.sh").read_text(),
    version="2.0-r0",
    oneway=1,  # as the recipe's MIGRATION_ONEWAY = "run-as-exampled-user.sh:1"
)
APPENDED = "/var/lib/mig-test/appended"
APPENDS = h.Script(
    "appender",
    "append-line.sh",
    "#!/bin/sh\n# Deliberately not idempotent: a second run adds the line again.\nset -eu\n"
    f"mkdir -p {APPENDED.rsplit('/', 1)[0]}\necho 'extra=1' >>{APPENDED}\n",
    priority="60",
)
# Run by the harness once the boot is done; its report dir is written meanwhile.
COMMAND = (
    "#!/bin/sh\n"
    "exec /usr/bin/python3 -I /usr/local/lib/migration-rerun-check.py --exclude /var/lib/harness\n"
)


@pytest.fixture(scope="module")
def rerun(base: h.Base, boot_root: Path) -> dict:
    extra = {
        # exampled 1.x's configuration and data, which the migration moves and chowns.
        "/etc/exampled.conf": ((EXAMPLE / "exampled.conf").read_text(), 0o644),
        "/usr/local/lib/migration-rerun-check.py": (CHECK.read_text(), 0o644),
        "/usr/local/sbin/harness-command": (COMMAND, 0o755),
    }
    var = {"/lib/exampled/state": ("counter=7\n", 0o644)}
    system = h.new_system(base, boot_root / "rerun", [EXAMPLED, APPENDS], extra=extra,
                          var_extra=var)  # fmt: skip
    result = h.boot(system)
    report = h.read_report(system)
    return {
        "seconds": result.seconds,
        "report": report,
        "check": json.loads(report.files["command.out"]),
        "rc": report.files["command.rc"].strip(),
        "appended": h.read_file(system.var_img, APPENDED[len("/var") :]),  # the /var disk
        "passwd": h.read_file(system.root_img, "/etc/passwd") or "",
        "old_conf": h.read_file(system.root_img, "/etc/exampled.conf"),
        "new_conf": h.read_file(system.root_img, "/etc/exampled/exampled.conf"),
    }


def test_the_example_migration_changes_nothing_on_a_second_run(rerun: dict) -> None:
    # The first run (at boot) did change the device...
    assert rerun["old_conf"] is None
    assert rerun["new_conf"] == (EXAMPLE / "exampled.conf").read_text()
    assert any(line.startswith("exampled:") for line in rerun["passwd"].splitlines())
    # ...and the second, after `migration forget` of both, changed only what the appender did.
    check = rerun["check"]
    assert check["forgotten"] == [EXAMPLED.installed_name, APPENDS.installed_name]
    assert check["run"]["rc"] == 0
    for script in (EXAMPLED, APPENDS):
        assert f"{script.installed_name}: running" in check["run"]["output"]
    assert [c["path"] for c in check["changed"]] == [APPENDED]
    assert {e["state"] for e in rerun["report"].status} == {"applied"}


def test_the_check_fails_on_the_appending_migration(rerun: dict) -> None:
    assert rerun["rc"] == "1"
    (changed,) = rerun["check"]["changed"]
    assert changed["before"].startswith("file 0644 0:0 sha256:")
    assert changed["after"].startswith("file 0644 0:0 sha256:")
    assert changed["before"] != changed["after"]
    assert rerun["appended"] == "extra=1\nextra=1\n"
    # The lint warns about that line, and about nothing in the example.
    (finding,) = lint.lint_script(APPENDS.name, APPENDS.text.encode())
    assert (finding.check, finding.line) == ("idempotence", 5)
    assert lint.lint_script(EXAMPLED.name, EXAMPLED.text.encode()) == []
