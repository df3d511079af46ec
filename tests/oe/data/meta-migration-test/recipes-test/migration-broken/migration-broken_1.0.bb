# SPDX-License-Identifier: MIT
SUMMARY = "A recipe whose migrations fail the build-time lint (tests/oe)"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://no-errexit.sh"
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch migration

MIGRATION_SCRIPTS = "no-errexit.sh not-in-src-uri.sh"
