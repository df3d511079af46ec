# SPDX-License-Identifier: MIT
SUMMARY = "meta-migration's Mender state script, for the Artifact"
DESCRIPTION = "ArtifactInstall_Leave_50_migration in the Artifact: after Mender wrote the new \
               root file system and before the reboot into it, the script applies the new \
               image's pending migrations to the live data; a refusal (exit 1) makes Mender \
               roll the update back."
SECTION = "examples"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

# The script the runner recipe installs in /usr/share/migration/update-hooks/, taken from the
# layer (the same file). Mender knows a state script by its name: keep it.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${MIGRATION_LAYERDIR}/recipes-core/migration/files/update-hooks:"
SRC_URI = "file://ArtifactInstall_Leave_50_migration"
# Styhead and later unpack into UNPACKDIR; scarthgap has no UNPACKDIR and unpacks into WORKDIR.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

# mender-state-scripts deploys the Artifact* scripts of MENDER_STATE_SCRIPTS_DIR to
# ${DEPLOY_DIR_IMAGE}/mender-state-scripts, which the image's .mender Artifact takes in; none of
# them goes into the root file system.
inherit mender-state-scripts

do_compile() {
    install -m 0755 ${S}/ArtifactInstall_Leave_50_migration ${MENDER_STATE_SCRIPTS_DIR}/
}
