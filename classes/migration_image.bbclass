# SPDX-License-Identifier: MIT
#
# migration_image.bbclass: the image manifest of the migrations an image really contains, with
# the image's own settings.
#
# Optional: every image that installs a migration package gets its manifest from the packages'
# rootfs-time postinst (migration.bbclass, migration_rootfs_manifest), with the distro's settings
# that the runner package carries. This class is for settings per image (an image recipe's
# MIGRATION_UPGRADE_FLOOR, or :pn-<image>) and the build-time check of a floor against the
# image's VERSION_ID: it writes the manifest once more after all postinsts.
#
# Usage: `inherit migration_image` in an image recipe, or IMAGE_CLASSES += "migration_image"
# (local.conf or distro).
#
# At rootfs time (ROOTFS_POSTPROCESS_COMMAND, after every package and postinst) it runs
# migration.manifest.generate() on IMAGE_ROOTFS: from the package fragments in
# ${datadir}/migration/packages/ and the files really in ${sysconfdir}/migration.d it writes
# ${datadir}/migration/manifest.json (name, sha256, package and package version of every script,
# its one-way level, the image's compatibility level, upgrade floor and data markers, and a digest
# of the whole set) and the symlink ${datadir}/migration/done that lets the boot
# unit skip a fully applied image without starting a process. The runner refuses scripts whose
# content differs from the manifest.
#
# An inconsistent set, such as two packages shipping one installed name, fails the image with
# the QA issue migration-manifest (in ERROR_QA), naming both packages.
#
# Images without migrations (neither directory present) are left as they are, and nothing here
# adds the runner to an image: packages of recipes that inherit migration depend on it.
#
# Variables (image recipe, distro or local.conf); the manifest carries them to the runner, which
# checks them against the device's state before it runs anything:
#
#   MIGRATION_COMPAT_LEVEL   The image's compatibility level is the highest of this and of the
#                            one-way levels of its migrations (MIGRATION_ONEWAY). A device whose
#                            state holds a higher level (it ran a one-way migration of a newer
#                            release) refuses to run this image's migrations: an incompatible
#                            downgrade. A whole number >= 0. Default: 0.
#                            Example: MIGRATION_COMPAT_LEVEL = "2"
#   MIGRATION_UPGRADE_FLOOR  The oldest release (os-release VERSION_ID, compared like dpkg
#                            versions) this image can upgrade from, when it no longer ships the
#                            migrations older releases need. A device whose state says it last
#                            ran an older release is refused (an intermediate release or a data
#                            wipe is needed). The image's own VERSION_ID (IMAGE_ROOTFS
#                            /etc/os-release or /usr/lib/os-release) must exist and be at least
#                            the floor. Default: empty (no floor).
#                            Example: MIGRATION_UPGRADE_FLOOR = "3.0"
#   MIGRATION_DATA_MARKERS   Absolute paths whose existence on a device shows that it holds
#                            data although it has no migration state yet (it was written by a
#                            release older than meta-migration). With a floor set, such a device
#                            is refused; without any marker present, it is a fresh device and
#                            every migration runs. Default: empty.
#                            Example: MIGRATION_DATA_MARKERS = "/var/lib/foo /etc/foo.conf"
#
# QA issue migration-manifest (ERROR_QA) also covers an invalid MIGRATION_COMPAT_LEVEL, floor or
# marker, and a floor newer than the image's VERSION_ID or an image without VERSION_ID.

ERROR_QA:append = " migration-manifest"

MIGRATION_COMPAT_LEVEL ??= "0"
MIGRATION_COMPAT_LEVEL[doc] = "Compatibility level of the distro (whole number): the default level of MIGRATION_ONEWAY entries and the image's minimum level; raise it when a release's data is unreadable for older ones."

MIGRATION_UPGRADE_FLOOR ??= ""
MIGRATION_UPGRADE_FLOOR[doc] = "Oldest release (os-release VERSION_ID) the image can upgrade from; devices whose state records an older one are refused. Empty: no floor."

MIGRATION_DATA_MARKERS ??= ""
MIGRATION_DATA_MARKERS[doc] = "Absolute paths that show a device holds data written before meta-migration (no migration state yet); with MIGRATION_UPGRADE_FLOOR set, such a device is refused."

python migration_image_manifest() {
    migration.bitbake.image_manifest(d)
}
migration_image_manifest[doc] = "Writes the image's migration manifest from the installed fragments and scripts."
migration_image_manifest[vardeps] += "MIGRATION_COMPAT_LEVEL MIGRATION_UPGRADE_FLOOR MIGRATION_DATA_MARKERS"

ROOTFS_POSTPROCESS_COMMAND += "migration_image_manifest"
# The manifest code (lib/migration/manifest.py and what it imports) is in no signature otherwise.
do_rootfs[file-checksums] += "${@migration.tasksources.file_checksums('image_manifest')}"
