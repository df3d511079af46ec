# SPDX-License-Identifier: MIT
SUMMARY = "Migrations in bash and python: their interpreters become RDEPENDS (tests/oe)"
DESCRIPTION = "Migrations in bash and in python, shipped in the subpackage migration-interp-migration with priority 20: bash and python3 must be in its RDEPENDS."
SECTION = "tests"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://rename.bash file://convert.py"
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch migration

MIGRATION_PACKAGE = "${PN}-migration"
MIGRATION_PRIORITY = "20"
MIGRATION_SCRIPTS = "rename.bash convert.py"
