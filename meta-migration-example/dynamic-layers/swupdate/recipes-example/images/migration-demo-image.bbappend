# SPDX-License-Identifier: MIT
#
# SWUpdate on the device (the old system runs swupdate-postinst.sh during the install), and the
# compressed rootfs that migration-demo-swu puts in the .swu.
IMAGE_INSTALL:append = " swupdate"
IMAGE_FSTYPES:append = " ext4.zst"
