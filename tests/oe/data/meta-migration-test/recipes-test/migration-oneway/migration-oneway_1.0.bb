# SPDX-License-Identifier: MIT
SUMMARY = "A recipe whose MIGRATION_ONEWAY is wrong three ways (tests/oe)"
DESCRIPTION = "A one-way script without a level while MIGRATION_COMPAT_LEVEL is 0, a one-way name that is not in MIGRATION_SCRIPTS and a level that is not a number: do_migration_lint must fail with the migration-oneway QA issue for each."
SECTION = "tests"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://convert.sh file://tidy.sh"
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch migration

MIGRATION_SCRIPTS = "convert.sh tidy.sh"
MIGRATION_ONEWAY = "convert.sh not-listed.sh:1 tidy.sh:first"
