# SPDX-License-Identifier: MIT
SUMMARY = "An image with settings of its own through migration_image (tests/oe)"
DESCRIPTION = "core-image-minimal with exampled and inherit migration_image: its own MIGRATION_* image settings reach its manifest."
SECTION = "tests"
LICENSE = "MIT"

# nooelint: oelint.file.requirenotfound
require recipes-core/images/core-image-minimal.bb

inherit migration_image

IMAGE_INSTALL:append = " exampled"
