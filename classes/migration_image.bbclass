# SPDX-License-Identifier: MIT
#
# migration_image.bbclass: the image manifest of the migrations an image really contains.
#
# Usage: IMAGE_CLASSES += "migration_image" (local.conf or distro), or `inherit migration_image`
# in an image recipe.
#
# At rootfs time (ROOTFS_POSTPROCESS_COMMAND, after every package and postinst) it runs
# migration.manifest.generate() on IMAGE_ROOTFS: from the package fragments in
# ${datadir}/migration/packages/ and the files really in ${sysconfdir}/migration.d it writes
# ${datadir}/migration/manifest.json (name, sha256, package and package version of every script,
# and a digest of the whole set) and the symlink ${datadir}/migration/done that lets the boot
# unit skip a fully applied image without starting a process. The runner refuses scripts whose
# content differs from the manifest.
#
# An inconsistent set, such as two packages shipping one installed name, fails the image with
# the QA issue migration-manifest (in ERROR_QA), naming both packages.
#
# Images without migrations (neither directory present) are left as they are, and nothing here
# adds the runner to an image: packages of recipes that inherit migration depend on it.

ERROR_QA:append = " migration-manifest"

python migration_image_manifest() {
    migration.bitbake.image_manifest(d)
}
migration_image_manifest[doc] = "Writes the image's migration manifest from the installed fragments and scripts."

ROOTFS_POSTPROCESS_COMMAND += "migration_image_manifest"
