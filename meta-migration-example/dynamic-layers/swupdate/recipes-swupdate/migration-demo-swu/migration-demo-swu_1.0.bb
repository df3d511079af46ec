# SPDX-License-Identifier: MIT
SUMMARY = "SWUpdate image of migration-demo-image with the migration update hook"
DESCRIPTION = "migration-demo-image's root file system and meta-migration's \
               swupdate-postinst.sh in a .swu: sw-description writes the rootfs into the \
               inactive slot, then runs the script (a shellscript, called with postinst \
               after the images) on that slot's device, before bootenv switches the slot."
SECTION = "examples"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

# The hook the runner recipe installs in /usr/share/migration/update-hooks/, taken from the
# layer (the same file); meta-swupdate adds every SRC_URI file but sw-description to the .swu.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${MIGRATION_LAYERDIR}/recipes-core/migration/files/update-hooks:"
SRC_URI = "file://sw-description file://swupdate-postinst.sh"

inherit swupdate

# The rootfs, built first; the .swu carries migration-demo-image-${MACHINE}.rootfs.ext4.zst
# (the image's bbappend here adds ext4.zst to its IMAGE_FSTYPES).
IMAGE_DEPENDS = "migration-demo-image"
SWUPDATE_IMAGES = "migration-demo-image"
SWUPDATE_IMAGES_FSTYPES[migration-demo-image] = ".rootfs.ext4.zst"
