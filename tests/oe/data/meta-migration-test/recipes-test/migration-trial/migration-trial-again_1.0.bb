# SPDX-License-Identifier: MIT
SUMMARY = "A migration that is not idempotent: do_migration_test fails (tests/oe)"
DESCRIPTION = "append-log.sh appends a line on every run: do_migration_test must fail, naming the recipe, the script and /var/lib/app/log."
SECTION = "tests"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://move-conf.sh file://append-log.sh"
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch migration

MIGRATION_SCRIPTS = "move-conf.sh append-log.sh"
MIGRATION_TEST_ROOTS = "${TOPDIR}/migration-trial-oldroot"
