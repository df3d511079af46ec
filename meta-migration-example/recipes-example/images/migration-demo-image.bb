# SPDX-License-Identifier: MIT
SUMMARY = "core-image-minimal with the migration runner and the exampled example"
DESCRIPTION = "A small image to try meta-migration in QEMU: exampled's migration runs \
               once at the first boot, before exampled.service; the image manifest is \
               written at rootfs time by the migration packages themselves (no class here: \
               inherit migration_image only for settings of this image's own)."
SECTION = "images"
LICENSE = "MIT"

# From OE-core (BBPATH), which oelint-adv does not see.
# nooelint: oelint.file.requirenotfound
require recipes-core/images/core-image-minimal.bb

# exampled depends on the runner (package migration) through migration.bbclass.
IMAGE_INSTALL:append = " exampled"
