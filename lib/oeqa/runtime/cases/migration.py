# SPDX-License-Identifier: MIT
"""testimage cases for meta-migration (boot scenarios 1-3, the update hooks and a re-run of every
migration on a real image).

Run on an image with the runner and at least one migration (the kas demo image):
    TEST_SUITES:append = " migration"
    bitbake -c testimage <image>
"""

import json
import os
import shlex

from oeqa.core.decorator.data import skipIfNotFeature
from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.runtime.decorator.package import OEHasPackage

RERUN_CHECK = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "files", "migration-rerun-check.py"
)
"""The re-run check (also run by tests/test_rerun_check.py and tests/boot on a QEMU system)."""


class MigrationBootTest(OERuntimeTestCase):
    """What the boot did with the image's migrations."""

    def run_ok(self, cmd):
        status, output = self.target.run(cmd)
        self.assertEqual(status, 0, msg=f"{cmd} failed ({status}):\n{output}")
        return output

    def show(self, unit, prop):
        return self.run_ok(f"systemctl show -p {prop} --value {unit}").strip()

    def status(self):
        status, output = self.target.run("migration status --json")
        try:
            return json.loads(output)
        except ValueError:
            self.fail(f"migration status --json (exit {status}) printed no JSON:\n{output}")

    @skipIfNotFeature("systemd", "Test requires systemd to be in DISTRO_FEATURES")
    @OEHasPackage(["migration"])
    @OETestDepends(["ssh.SSHTest.test_ssh"])
    def test_migration_first_boot_applied(self):
        """Scenario 1: every migration of the image is applied, before sysinit.target."""
        entries = self.status()
        self.assertTrue(entries, msg="the image has no migration to check")
        states = {e["name"]: e["state"] for e in entries}
        self.assertEqual(set(states.values()), {"applied"}, msg=str(states))
        if self.show("migration.service", "ConditionResult") == "yes":
            self.assertEqual(self.show("migration.service", "Result"), "success")
            finished = int(self.show("migration.service", "ExecMainExitTimestampMonotonic"))
            sysinit = int(self.show("sysinit.target", "ActiveEnterTimestampMonotonic"))
            self.assertLessEqual(finished, sysinit)
        self.run_ok("test -e /usr/share/migration/done")

    @skipIfNotFeature("systemd", "Test requires systemd to be in DISTRO_FEATURES")
    @OETestDepends(["migration.MigrationBootTest.test_migration_first_boot_applied"])
    def test_migration_noop_starts_no_process(self):
        """Scenario 2: with everything applied, the unit is skipped by its condition."""
        self.run_ok("systemctl restart migration.service")
        self.assertEqual(self.show("migration.service", "ConditionResult"), "no")
        self.assertEqual(self.show("migration.service", "ExecMainPID"), "0")

    @skipIfNotFeature("systemd", "Test requires systemd to be in DISTRO_FEATURES")
    @OETestDepends(["migration.MigrationBootTest.test_migration_noop_starts_no_process"])
    def test_migration_failure_is_visible(self):
        """Scenario 3 (continue): a failing script fails the unit; status and journal say why."""
        script = "/etc/migration.d/99-oeqa-fails.sh"
        # Cleanups run last-in first-out: remove the script, then a run restores the stamp.
        self.addCleanup(self.target.run, "systemctl restart migration.service")
        self.addCleanup(self.target.run, "systemctl reset-failed migration.service")
        self.addCleanup(self.target.run, f"rm -f {script}")
        self.run_ok(f"printf '#!/bin/sh\\necho oeqa-failing\\nfalse\\n' > {script}")
        self.run_ok(f"chmod 0755 {script}")
        # Without the no-op stamp the unit runs again; a script outside the image's manifest
        # fails or is refused, either way the unit fails.
        self.run_ok("rm -f /var/lib/migration/done/*")
        status, _ = self.target.run("systemctl restart migration.service")
        self.assertNotEqual(status, 0)
        self.assertEqual(self.show("migration.service", "Result"), "exit-code")
        states = {e["name"]: e["state"] for e in self.status()}
        self.assertIn(states.get("99-oeqa-fails.sh"), ("failed", "refused"), msg=str(states))
        journal = self.run_ok("journalctl -b -u migration.service --no-pager")
        self.assertIn("99-oeqa-fails.sh", journal)

    @OEHasPackage(["migration"])
    @OETestDepends(["migration.MigrationBootTest.test_migration_first_boot_applied"])
    def test_migration_update_hooks_run_on_the_target(self):
        """The update hooks the image ships run with the target's own sh and python3 (OE's
        python3-core): given the running image as the "new" root, each one calls `migration
        update /`, finds everything applied and exits 0; nothing runs, the stamp stays."""
        hooks = "/usr/share/migration/update-hooks"
        calls = (
            f"env RAUC_SLOT_CLASS=rootfs RAUC_SLOT_MOUNT_POINT=/ {hooks}/rauc-hook.sh "
            "slot-post-install",
            f"{hooks}/swupdate-postinst.sh postinst /",
            f"env MIGRATION_NEW_ROOT=/ {hooks}/ArtifactInstall_Leave_50_migration",
        )
        for call in calls:
            output = self.run_ok(f"{call} 2>&1")
            self.assertIn("the new image's migrations are applied", output, msg=call)
            ran = [ln for ln in output.splitlines()
                   if ": running" in ln and not ln.startswith("migration-update (")]
            self.assertEqual(ran, [], msg=call)
        self.run_ok("test -e /usr/share/migration/done")

    @OEHasPackage(["migration"])
    @OETestDepends(["migration.MigrationBootTest.test_migration_first_boot_applied"])
    def test_migration_rerun_changes_nothing(self):
        """Every migration of the image is idempotent here: forgotten and run again, they leave
        /etc and /var/lib (but the state dir) as their first run did: type, mode, owner and
        content of every path (files/migration-rerun-check.py says what and why)."""
        with open(RERUN_CHECK) as f:
            program = f.read()
        status, output = self.target.run(f"python3 -I -c {shlex.quote(program)}")
        try:
            report = json.loads(output)
        except ValueError:
            self.fail(f"the re-run check (exit {status}) printed no JSON:\n{output}")
        changed = "\n".join(
            f"{c['path']}: {c['before']} -> {c['after']}" for c in report.get("changed", [])
        )
        self.assertEqual(
            status, 0, msg=report.get("error") or f"changed by the second run:\n{changed}"
        )
        self.assertTrue(report["forgotten"], msg="the image has no migration to check")
        # The second run left the device as the boot did: everything applied, stamp written.
        self.run_ok("test -e /usr/share/migration/done")
