# SPDX-License-Identifier: MIT
SUMMARY = "A recipe whose migrations fail the build-time lint (tests/oe)"
DESCRIPTION = "A migration without errexit and one missing from SRC_URI: do_migration_lint must fail."
SECTION = "tests"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://no-errexit.sh"
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch migration

MIGRATION_SCRIPTS = "no-errexit.sh not-in-src-uri.sh"
