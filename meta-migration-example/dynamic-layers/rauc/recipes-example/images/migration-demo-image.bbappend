# SPDX-License-Identifier: MIT
#
# RAUC on the device: the old system runs rauc-hook.sh during `rauc install` (meta-rauc's
# README: without packagegroup-base, add the rauc package to the image).
IMAGE_INSTALL:append = " rauc"
