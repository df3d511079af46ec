# SPDX-License-Identifier: MIT
SUMMARY = "RAUC bundle of migration-demo-image whose hook applies its migrations at install"
DESCRIPTION = "The root file system of migration-demo-image in a verity bundle, with \
               meta-migration's rauc-hook.sh as the bundle's hook file and the slot \
               post-install hook enabled: rauc install runs the new image's pending \
               migrations on the live data before the new slot is marked to boot."
SECTION = "examples"
LICENSE = "MIT"

inherit bundle

RAUC_BUNDLE_FORMAT = "verity"
# Must match [system] compatible= of the devices' system.conf (rauc-conf.bbappend here).
RAUC_BUNDLE_COMPATIBLE = "meta-migration demo"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"

RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "migration-demo-image"
RAUC_SLOT_rootfs[fstype] = "ext4"
# RAUC runs the bundle's hook file with "slot-post-install" once it wrote and mounted the slot.
RAUC_SLOT_rootfs[hooks] = "post-install"

# The hook the runner recipe installs in /usr/share/migration/update-hooks/, taken from the
# layer (the same file; a product may copy it into its own layer instead).
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${MIGRATION_LAYERDIR}/recipes-core/migration/files/update-hooks:"
SRC_URI += "file://rauc-hook.sh"
RAUC_BUNDLE_HOOKS[file] = "rauc-hook.sh"

# Signing: this repository ships no key. MIGRATION_RAUC_KEYS (meta-migration-example's
# layer.conf: ${TOPDIR}/openssl-ca/dev) is where meta-rauc's scripts/openssl-ca.sh leaves a
# development key and certificate, examples for tests only; a product sets RAUC_KEY_FILE and
# RAUC_CERT_FILE to its own (local.conf or a bbappend). Parsing does not read them; do_bundle
# stops when they are missing.
RAUC_KEY_FILE ?= "${MIGRATION_RAUC_KEYS}/private/development-1.key.pem"
RAUC_CERT_FILE ?= "${MIGRATION_RAUC_KEYS}/development-1.cert.pem"
