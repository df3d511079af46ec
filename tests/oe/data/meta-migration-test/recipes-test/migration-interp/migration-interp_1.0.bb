# SPDX-License-Identifier: MIT
SUMMARY = "Migrations in bash and python: their interpreters become RDEPENDS (tests/oe)"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://rename.bash file://convert.py"
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch migration

MIGRATION_PACKAGE = "${PN}-migration"
MIGRATION_PRIORITY = "20"
MIGRATION_SCRIPTS = "rename.bash convert.py"
