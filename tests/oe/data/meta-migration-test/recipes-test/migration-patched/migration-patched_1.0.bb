# SPDX-License-Identifier: MIT
SUMMARY = "A migration that a patch fixes (tests/oe)"
DESCRIPTION = "move.sh lacks errexit until 0001-move-errexit.patch adds it: the lint must run after do_patch."
SECTION = "tests"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://move.sh \
           file://0001-move-errexit.patch \
           "
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch migration

MIGRATION_SCRIPTS = "move.sh"
