# SPDX-License-Identifier: MIT
"""oe-selftest cases of meta-migration: `oe-selftest -r migration` in a build dir with the layer.

Parse-level cases: they need no network and no native tools, so they run on any build host.
"""

import os

from oeqa.selftest.case import OESelftestTestCase
from oeqa.utils.commands import bitbake, get_bb_vars, runCmd


def getvar(recipe, var, flag=None):
    """A variable with an override in its name (FILES:pkg) or a flag, which get_bb_var cannot
    read."""
    option = f" -f {flag}" if flag else ""
    return runCmd(f"bitbake-getvar -r {recipe} --value{option} {var}").output.strip()


class MigrationClassTests(OESelftestTestCase):
    """migration.bbclass on the example recipe exampled."""

    def test_example_files_rdepends_install(self):
        """
        Summary:  exampled's script is installed under its ordered name and packaged
        Expected: FILES:exampled holds /etc/migration.d/50-exampled-run-as-exampled-user.sh, the
                  fragment and the gating drop-in; RDEPENDS:exampled holds the runner;
                  do_install runs migration_install; do_migration_lint is a task
        """
        v = get_bb_vars(["sysconfdir", "datadir", "systemd_system_unitdir"], "exampled")
        files = getvar("exampled", "FILES:exampled").split()
        self.assertIn(v["sysconfdir"] + "/migration.d/50-exampled-run-as-exampled-user.sh", files)
        self.assertIn(v["datadir"] + "/migration/packages/exampled.json", files)
        self.assertIn(
            v["systemd_system_unitdir"] + "/exampled.service.d/50-migration-exampled.conf", files
        )
        self.assertIn("migration", getvar("exampled", "RDEPENDS:exampled").split())
        self.assertIn("migration_install", getvar("exampled", "do_install", "postfuncs").split())
        result = bitbake("exampled -c listtasks")
        self.assertIn("do_migration_lint", result.output)

    def test_lint_task_passes_on_example(self):
        """
        Summary:  the build-time lint accepts the example's script
        Expected: bitbake exampled -c migration_lint succeeds offline (file:// sources only)
        """
        bitbake("exampled -c migration_lint")

    def test_missing_script_fails_lint(self):
        """
        Summary:  a script listed in MIGRATION_SCRIPTS but not in SRC_URI fails the lint task
        Expected: do_migration_lint fails with the migration-missing QA issue naming recipe and
                  script
        """
        self.write_config('MIGRATION_SCRIPTS:append:pn-exampled = " not-there.sh"\n')
        result = bitbake("exampled -c migration_lint", ignore_status=True)
        self.assertNotEqual(result.status, 0, msg=result.output)
        self.assertIn(
            "QA Issue: exampled: not-there.sh: listed in MIGRATION_SCRIPTS but not in ",
            result.output,
        )
        self.assertIn(": add file://not-there.sh to SRC_URI [migration-missing]", result.output)

    def test_oneway_without_level_fails_lint(self):
        """
        Summary:  a one-way script needs a level: pinned (NAME:LEVEL) or the distro's
                  MIGRATION_COMPAT_LEVEL, which defaults to 0 (no valid level)
        Expected: do_migration_lint fails with the migration-oneway QA issue naming recipe and
                  script, and says how to fix it
        """
        self.write_config('MIGRATION_ONEWAY:pn-exampled = "run-as-exampled-user.sh"\n')
        result = bitbake("exampled -c migration_lint", ignore_status=True)
        self.assertNotEqual(result.status, 0, msg=result.output)
        self.assertIn(
            "QA Issue: exampled: run-as-exampled-user.sh: one-way (MIGRATION_ONEWAY) without a "
            "level of its own, and MIGRATION_COMPAT_LEVEL = '0' is not a whole number >= 1: set "
            "MIGRATION_COMPAT_LEVEL in the distro or pin run-as-exampled-user.sh:LEVEL "
            "[migration-oneway]",
            result.output,
        )

    def test_bad_priority_is_fatal_at_parse_time(self):
        """
        Summary:  a MIGRATION_PRIORITY that is not two digits stops parsing
        Expected: the error names the recipe file, the variable and the allowed values
        """
        self.write_config('MIGRATION_PRIORITY:pn-exampled = "5"\n')
        result = bitbake("exampled -c listtasks", ignore_status=True)
        self.assertNotEqual(result.status, 0, msg=result.output)
        self.assertIn(
            "exampled_2.0.bb: MIGRATION_PRIORITY = '5' for package exampled is not two "
            "digits: use 00 (first) to 99 (last), the default is 50",
            result.output,
        )


class MigrationRunnerRecipeTests(OESelftestTestCase):
    """The runner recipe."""

    def test_runner_rdepends_and_sources(self):
        """
        Summary:  the runner depends on exactly the python3 packages its modules need, and its
                  sources are the layer's lib/migration
        Expected: RDEPENDS:migration = python3-core python3-crypt python3-json (+ python3-fcntl
                  on scarthgap); do_unpack of
                  file:// sources works offline and yields the package (no bytecode, no build-only
                  module) and the install script
        """
        v = get_bb_vars(["S", "LAYERSERIES_CORENAMES"], "migration")
        expected = ["python3-core", "python3-crypt", "python3-json"]
        if "scarthgap" in v["LAYERSERIES_CORENAMES"].split():
            expected.append("python3-fcntl")  # Python 3.12: fcntl is not in python3-core yet
        self.assertEqual(getvar("migration", "RDEPENDS:migration").split(), expected)
        bitbake("migration -c unpack")
        self.assertTrue(os.path.isfile(os.path.join(v["S"], "migration", "__init__.py")))
        self.assertTrue(os.path.isfile(os.path.join(v["S"], "migration-install.sh")))
        self.assertFalse(
            os.path.exists(os.path.join(v["S"], "migration", "tests")),
            "only the package, no tests",
        )
        # Every file listed, no directory: no host bytecode, no build-only module.
        self.assertFalse(os.path.exists(os.path.join(v["S"], "migration", "__pycache__")))
        self.assertFalse(os.path.exists(os.path.join(v["S"], "migration", "bitbake.py")))
