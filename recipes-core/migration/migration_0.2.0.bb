# SPDX-License-Identifier: MIT
SUMMARY = "Runs one-shot migration scripts once per device, early at boot"
SUMMARY:${PN}-wipe-request = "Requests a wipe of the writable data when the image cannot use it"
SUMMARY:${PN}-mender-inventory = "Reports the device's migrations to the Mender server as inventory attributes"
DESCRIPTION = "The migration runner: applies the scripts that packages ship in \
               /etc/migration.d exactly once per device (run-once by content hash, state in \
               /var/lib/migration), in order, before the regular services start; a systemd \
               unit, a gate template for per-service ordering and a sysvinit script."
SECTION = "base"
LICENSE = "MIT"
# The layer's own code and licence (lib/migration and this recipe's files/).
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${MIGRATION_LAYERDIR}/LICENSE;md5=03a3ba658311451a165ef10bf469a3b8"

# One source of truth: the Python package is the layer's lib/migration (the build-time lint
# runs the same code); files/ holds the units and the install script (migration-install.sh).
# Every file is listed, not the directories: a directory's checksum would take in the
# __pycache__ that BitBake's own import of lib/migration writes (host Python bytecode), and a
# bbappend can replace any one file (FILESEXTRAPATHS:prepend := "${THISDIR}/files:"). The
# build-only modules (bitbake.py, tasksources.py) are not shipped. tests/test_recipe.py keeps
# this list complete.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${MIGRATION_LAYERDIR}/lib:"
SRC_URI = "file://migration/__init__.py \
           file://migration/__main__.py \
           file://migration/cli.py \
           file://migration/commands/__init__.py \
           file://migration/commands/check.py \
           file://migration/commands/forget.py \
           file://migration/commands/lint.py \
           file://migration/commands/manifest.py \
           file://migration/commands/postinst.py \
           file://migration/commands/run.py \
           file://migration/commands/status.py \
           file://migration/commands/test.py \
           file://migration/commands/update.py \
           file://migration/compat.py \
           file://migration/console.py \
           file://migration/errors.py \
           file://migration/execute.py \
           file://migration/files.py \
           file://migration/idempotence.py \
           file://migration/interrupts.py \
           file://migration/journal.py \
           file://migration/leftovers.py \
           file://migration/lint.py \
           file://migration/logs.py \
           file://migration/manifest.py \
           file://migration/monitoring.py \
           file://migration/noop.py \
           file://migration/overlay.py \
           file://migration/runner.py \
           file://migration/sandbox.py \
           file://migration/scripts.py \
           file://migration/services.py \
           file://migration/state.py \
           file://migration/treediff.py \
           file://migration/trial.py \
           file://migration/units.py \
           file://migration/volatile.py \
           file://after-volatile-binds.conf \
           file://boot.md \
           file://hooks/request-wipe \
           file://mender-inventory-migration \
           file://migration-gate@.service \
           file://migration-install.sh \
           file://migration.catalog \
           file://migration.init \
           file://migration.service \
           file://migration.wrapper \
           file://update-hook.conf \
           file://update-hooks/ArtifactInstall_Leave_50_migration \
           file://update-hooks/rauc-hook.sh \
           file://update-hooks/swupdate-postinst.sh \
           "

# Styhead and later unpack into UNPACKDIR; scarthgap has no UNPACKDIR and unpacks into WORKDIR.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

# python3native: the package's bytecode is compiled at do_install by python3-native, which is
# the target's Python version (bytecode of another version would be ignored on the target).
inherit allarch systemd update-rc.d python3native

MIGRATION_BOOT_POLICY ??= "continue"
MIGRATION_BOOT_POLICY[doc] = "What a failed boot run does: continue (boot on, degraded and visible), rescue (systemd: emergency.target isolated, the boot stops at a root shell and the migration is not retried in that boot; sysvinit: sulogin, then the boot goes on), halt (stop the machine)."
MIGRATION_BOOT_POLICY[type] = "choice"
MIGRATION_BOOT_POLICY[choices] = "continue rescue halt"

MIGRATION_BOOT_TIMEOUT ??= "900"
MIGRATION_BOOT_TIMEOUT[doc] = "Seconds each script may run at boot before it is stopped and recorded as failed (the boot then follows MIGRATION_BOOT_POLICY); 0: no limit, so one hung script blocks the boot for good. 900 (15 min) is far beyond a sane boot step yet leaves room for a large conversion on slow flash; raise it for such a migration rather than setting 0."

MIGRATION_VOLATILE_STATE ??= "warn"
MIGRATION_VOLATILE_STATE[doc] = "What a boot run does when /var/lib/migration is on a volatile file system (tmpfs, or an overlay with its upper dir on tmpfs: a read-only-rootfs image's volatile-binds or read-only-rootfs-hook), where every migration would run again at every boot: warn (run, with a warning at every run and in migration status) or refuse (fail the unit before anything runs or is written; the boot follows MIGRATION_BOOT_POLICY). warn by default: refusing would stop the migrations, and the services gated on them, of images that work today with idempotent scripts; set refuse once the state dir has a persistent home."
MIGRATION_VOLATILE_STATE[type] = "choice"
MIGRATION_VOLATILE_STATE[choices] = "warn refuse"

MIGRATION_PROMETHEUS_TEXTFILE ??= ""
MIGRATION_PROMETHEUS_TEXTFILE[doc] = "Absolute path of a *.prom file in node_exporter's textfile collector directory: a boot run ends by writing the runner's Prometheus metrics there (migration run --prometheus-textfile). Empty: none."

# The distro's image settings (migration_image.bbclass documents them): the runner package
# carries them in ${datadir}/migration/image-settings.json, so every image that installs a
# migration package gets them in its manifest, with or without migration_image.
MIGRATION_COMPAT_LEVEL ??= "0"
MIGRATION_COMPAT_LEVEL[doc] = "Compatibility level of the distro (whole number): the lowest level of every image manifest."
MIGRATION_UPGRADE_FLOOR ??= ""
MIGRATION_UPGRADE_FLOOR[doc] = "Oldest release (os-release VERSION_ID) the distro's images upgrade from. Empty: no floor."
MIGRATION_DATA_MARKERS ??= ""
MIGRATION_DATA_MARKERS[doc] = "Absolute paths that show a device holds data written before meta-migration."

MIGRATION_PYTHON ?= "${bindir}/python3"
MIGRATION_PYTHON[doc] = "Interpreter in the shebang of the migration command."

# The init integrations to install, from DISTRO_FEATURES (sysvinit when neither is set).
MIGRATION_INIT ?= "${@' '.join(f for f in ('systemd', 'sysvinit') if bb.utils.contains('DISTRO_FEATURES', f, True, False, d)) or 'sysvinit'}"

# nooelint: oelint.task.noanonpython
python __anonymous() {
    for var in ("MIGRATION_BOOT_POLICY", "MIGRATION_VOLATILE_STATE"):
        value = d.getVar(var)
        choices = d.getVarFlag(var, "choices").split()
        if value not in choices:
            bb.fatal("%s: %s = %r: set one of %s" % (d.getVar("FILE", False), var, value, ", ".join(choices)))
    timeout = d.getVar("MIGRATION_BOOT_TIMEOUT")
    if not timeout.isdigit():
        bb.fatal("%s: MIGRATION_BOOT_TIMEOUT = %r is not a whole number of seconds (0: no limit)" % (d.getVar("FILE", False), timeout))
}

SYSTEMD_SERVICE:${PN} = "migration.service"
INITSCRIPT_NAME = "migration"
# After checkroot (S05: root remounted writable), mountall (S03: /var) and read-only-rootfs-hook
# (S29: the writable overlay of a read-only root),
# before bootmisc (S36), populate-volatile (S37) and every rc2-5 service.
INITSCRIPT_PARAMS = "start 30 S ."

do_configure[noexec] = "1"
do_compile[noexec] = "1"

# The Python package goes to ${nonarch_libdir} (/usr/lib), not ${libdir}: with multilib,
# migration and lib32-migration then install the same files (rpm shares identical files), so
# a device has one runner whichever variant a package depends on.
do_install() {
    D="${D}" sbindir="${sbindir}" libdir="${nonarch_libdir}" datadir="${datadir}" \
    sysconfdir="${sysconfdir}" localstatedir="${localstatedir}" \
    systemd_system_unitdir="${systemd_system_unitdir}" \
    MIGRATION_PYTHON="${MIGRATION_PYTHON}" MIGRATION_INIT="${MIGRATION_INIT}" \
    MIGRATION_BOOT_POLICY="${MIGRATION_BOOT_POLICY}" \
    MIGRATION_BOOT_TIMEOUT="${MIGRATION_BOOT_TIMEOUT}" \
    MIGRATION_VOLATILE_STATE="${MIGRATION_VOLATILE_STATE}" \
    MIGRATION_PROMETHEUS_TEXTFILE="${MIGRATION_PROMETHEUS_TEXTFILE}" \
    MIGRATION_COMPAT_LEVEL="${MIGRATION_COMPAT_LEVEL}" \
    MIGRATION_UPGRADE_FLOOR="${MIGRATION_UPGRADE_FLOOR}" \
    MIGRATION_DATA_MARKERS="${MIGRATION_DATA_MARKERS}" \
    MIGRATION_COMPILE="${PYTHON}" \
        sh ${S}/migration-install.sh ${S}/migration ${S}
}

# The example refusal hook (files/hooks/request-wipe) is opt-in: only an image that installs
# migration-wipe-request gets a wipe request written when this image cannot use the data.
# So is the Mender inventory script: only a Mender image wants migration-mender-inventory.
PACKAGES =+ "${PN}-wipe-request ${PN}-mender-inventory"

FILES:${PN}-wipe-request += "${sysconfdir}/migration/incompatible.d/50-request-wipe"
FILES:${PN}-mender-inventory += "${datadir}/mender/inventory/mender-inventory-migration"
# The catalog: journalctl -x texts of the runner's structured journal entries.
FILES:${PN} += "${nonarch_libdir}/migration ${systemd_system_unitdir} ${nonarch_libdir}/systemd/catalog"
# The update hooks' settings on the device (read by the hooks of the image that replaces this
# one): the device's own, so an upgrade of the package keeps local changes.
CONFFILES:${PN} += "${sysconfdir}/migration/update-hook.conf"

# What lib/migration's on-target modules import (directly and through the standard library),
# checked against OE-core's python3-manifest.json. Before Python 3.13 (scarthgap) fcntl, which
# the state lock uses, was not in python3-core but packaged alone.
RDEPENDS:${PN} = "python3-core python3-crypt python3-json"
RDEPENDS:${PN}-wipe-request = "${PN}"
RDEPENDS:${PN}-mender-inventory = "${PN}"
RDEPENDS:${PN}:append = " ${@'python3-fcntl' if 'scarthgap' in (d.getVar('LAYERSERIES_CORENAMES') or '').split() else ''}"
# python3-io holds socket, which only the structured journal entries use (lib/migration/journal.py):
# without it the runner works the same and the journal gets its plain lines only.
RRECOMMENDS:${PN} = "python3-io"
