# SPDX-License-Identifier: MIT
SUMMARY = "An idempotent migration that do_migration_test passes (tests/oe)"
DESCRIPTION = "MIGRATION_TEST_ROOTS names the old tree the test makes in the build dir: do_migration_test runs move-conf.sh twice on it and passes."
SECTION = "tests"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://move-conf.sh"
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch migration

MIGRATION_SCRIPTS = "move-conf.sh"
MIGRATION_TEST_ROOTS = "${TOPDIR}/migration-trial-oldroot"
