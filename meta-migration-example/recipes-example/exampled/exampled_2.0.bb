# SPDX-License-Identifier: MIT
SUMMARY = "Example daemon that moves from root to its own user, with its migration"
DESCRIPTION = "exampled 1.x ran as root with /etc/exampled.conf; 2.0 runs as user \
               exampled with /etc/exampled/exampled.conf. The migration \
               run-as-exampled-user.sh creates the user on devices whose old /etc/passwd \
               survives in an overlay, chowns /var/lib/exampled and moves the configuration; \
               exampled.service starts only after it is applied (MIGRATION_BEFORE). The \
               migration is one-way (level 1): images below level 1 refuse the migrated data."
SECTION = "examples"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

SRC_URI = "file://exampled \
           file://exampled.conf \
           file://exampled.service \
           file://run-as-exampled-user.sh \
           "

# Styhead and later unpack into UNPACKDIR; scarthgap has no UNPACKDIR and unpacks into WORKDIR.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit allarch useradd systemd migration

MIGRATION_SCRIPTS = "run-as-exampled-user.sh"
MIGRATION_BEFORE = "exampled.service"
# One-way: exampled 1.x reads /etc/exampled.conf, which the migration moves away, so a 1.x image
# booted on migrated data would lose its settings. Pinned to level 1 (the first incompatible
# change), not to the distro's MIGRATION_COMPAT_LEVEL, which later releases raise.
MIGRATION_ONEWAY = "run-as-exampled-user.sh:1"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/exampled --no-create-home \
                       --shell /sbin/nologin --user-group exampled"

SYSTEMD_SERVICE:${PN} = "exampled.service"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -D -m 0755 ${S}/exampled ${D}${sbindir}/exampled
    install -D -m 0640 -g exampled ${S}/exampled.conf ${D}${sysconfdir}/exampled/exampled.conf
    install -D -m 0644 ${S}/exampled.service ${D}${systemd_system_unitdir}/exampled.service
    sed -i -e 's:@SBINDIR@:${sbindir}:g' \
           -e 's:@SYSCONFDIR@:${sysconfdir}:g' \
           -e 's:@LOCALSTATEDIR@:${localstatedir}:g' \
           ${D}${sbindir}/exampled ${D}${systemd_system_unitdir}/exampled.service
    install -d -m 0750 -o exampled -g exampled ${D}${localstatedir}/lib/exampled
}

FILES:${PN} += "${systemd_system_unitdir}"

# The migration creates the user with shadow's groupadd/useradd.
RDEPENDS:${PN} += "shadow"
