# SPDX-License-Identifier: MIT
#
# migration.bbclass: ship one-shot migration scripts that the migration runner applies once
# per device, early at boot, before the services that need them.
#
# Usage (a recipe):
#
#   inherit migration
#   SRC_URI += "file://move-foo-data.sh"
#   MIGRATION_SCRIPTS = "move-foo-data.sh"
#
# With no other line the recipe gets:
#   - do_migration_lint: every script checked at build time (after do_unpack and do_patch,
#     before do_package_qa, so an image build runs it too; without patches it needs no native
#     tool, so with file:// sources it runs offline).
#     Each finding is an OE QA issue named migration-<check>, an error by default
#     (migration-idempotence: a warning; see "QA issues" below);
#   - the script installed as ${sysconfdir}/migration.d/<priority>-<package>-<script>, e.g.
#     /etc/migration.d/50-foo-move-foo-data.sh, mode 0755. The runner applies scripts in
#     byte-wise order of these names: by MIGRATION_PRIORITY, then package, then script name;
#   - ${datadir}/migration/packages/<package>.json: the package's fragment of the image manifest
#     (installed name and sha256 of each script, its one-way level if any, package version PV-PR);
#   - FILES:<package> for all of these, and RDEPENDS:<package> on the runner (MIGRATION_RUNNER)
#     and on the script's interpreter (bash for a bash script, python3-core for a python one;
#     see MIGRATION_INTERPRETER_RDEPENDS), read from the packaged scripts, so scripts from a
#     tarball or git get it too;
#   - on a target install with a package manager (not at rootfs time), a postinst that applies
#     the package's migrations before its services restart (`migration postinst`: see
#     migration_postinst below) and a postrm that refreshes the image manifest.
#
# The image manifest (/usr/share/migration/manifest.json) is written at rootfs time by the
# migration packages' own postinsts (migration_rootfs_manifest): every image that installs one
# gets it with no extra line; migration_image.bbclass adds per-image settings. Images without
# migrations do not pull in the runner and are unchanged: only packages of recipes that inherit
# this class depend on it. The native and nativesdk variants of a recipe (BBCLASSEXTEND) get none
# of this: MIGRATION_PACKAGES is empty there and every function of the class returns at once.
#
# README.md ("Variables") documents every variable below; keep both in step
# (tests/test_readme_variables.py checks README against the names the code uses).
#
# Variables (set in the recipe; "<pkg>" is a package in MIGRATION_PACKAGES):
#
#   MIGRATION_SCRIPTS[:<pkg>]  Scripts to ship, paths relative to UNPACKDIR (WORKDIR before
#                              styhead), normally the file:// names of SRC_URI.
#                              Example: MIGRATION_SCRIPTS = "01-add-user.sh 02-move-data.py"
#   MIGRATION_PACKAGE          The package the scripts go to. Default: ${PN}.
#                              Example: MIGRATION_PACKAGE = "${PN}-migration"
#   MIGRATION_PACKAGES         Several packages, each with its own MIGRATION_SCRIPTS:<pkg>
#                              (falling back to MIGRATION_SCRIPTS). Default: ${MIGRATION_PACKAGE}.
#                              A package not yet in PACKAGES is prepended to it.
#                              Example: MIGRATION_PACKAGES = "${PN} ${PN}-tools"
#   MIGRATION_PRIORITY[:<pkg>] Two digits, 00 (first) to 99 (last): order against other
#                              packages' migrations. Default: 50.
#                              Example: MIGRATION_PRIORITY = "20"
#   MIGRATION_BEFORE[:<pkg>]   systemd units that must not start before (or without) this
#                              package's migrations: each gets the drop-in
#                              ${systemd_system_unitdir}/<unit>.d/50-migration-<pkg>.conf with
#                              Requires= and After= on migration-gate@<pkg>.service. Ignored when
#                              DISTRO_FEATURES lacks systemd. Default: empty.
#                              Example: MIGRATION_BEFORE = "foo.service"
#   MIGRATION_ONEWAY[:<pkg>]   Scripts (names from MIGRATION_SCRIPTS) whose change of the data
#                              an older release cannot read: a device that ran one must not
#                              boot an image below its compatibility level (the runner refuses
#                              such a downgrade before touching anything). Each entry is NAME or
#                              NAME:LEVEL; LEVEL, a whole number >= 1, defaults to
#                              ${MIGRATION_COMPAT_LEVEL}. MIGRATION_ONEWAY applies to the
#                              packages without a MIGRATION_ONEWAY:<pkg> of their own. The
#                              package fragment records "oneway": LEVEL for these scripts.
#                              Default: empty.
#                              Example: MIGRATION_ONEWAY = "02-convert-db.py:3"
#
# Variables a distro or local.conf may set:
#
#   MIGRATION_COMPAT_LEVEL     The distro's current compatibility level: the default LEVEL of
#                              MIGRATION_ONEWAY entries (0 is no valid level, so with the
#                              default every one-way script must pin NAME:LEVEL), and the
#                              image's minimum level (migration_image.bbclass). Raise it when a
#                              release makes data unreadable for older ones. Default: 0.
#                              Example: MIGRATION_COMPAT_LEVEL = "2"
#   MIGRATION_RUNNER           Package(s) that run the scripts. Default: migration, a weak
#                              default (??=): add one with MIGRATION_RUNNER:append = " foo"
#                              (MIGRATION_RUNNER += "foo" would drop migration).
#   MIGRATION_SHELLCHECK       "auto": run ShellCheck on shell scripts when `shellcheck` is in
#                              the task PATH (BitBake tasks see host tools only through
#                              HOSTTOOLS: add HOSTTOOLS_NONFATAL:append = " shellcheck" to
#                              local.conf); "no": never. Default: auto.
#   MIGRATION_INTERPRETER_RDEPENDS[<interpreter>]
#                              Runtime dependency per interpreter base name (as the runner sees
#                              it through env and busybox). Defaults: [bash] = "bash",
#                              [python3] = "python3-core", [python] = "python3-core"; sh needs
#                              nothing. A Python script that imports more than python3-core
#                              holds adds those packages to RDEPENDS:<pkg> (python3-json...).
#                              Example: MIGRATION_INTERPRETER_RDEPENDS[python3] = "python3"
#   MIGRATION_LINT_TOOLS       Computed, not set: the host tools do_migration_lint runs and
#                              their versions, part of its signature.
#   MIGRATION_TEST_ROOTS       Opt-in: old releases' trees (absolute paths of directories, such
#                              as a previous image's IMAGE_ROOTFS, or a rootfs tarball unpacked
#                              as the build user) that `bitbake <recipe> -c migration_test`
#                              runs the recipe's scripts on, twice, with `migration test` (see
#                              do_migration_test below). Empty: no such task. Default: empty.
#                              Example: MIGRATION_TEST_ROOTS = "/srv/releases/1.0/rootfs"
#
# QA issues (ERROR_QA by default, migration-idempotence WARN_QA; move one to a warning with
# ERROR_QA:remove = "migration-shellcheck" and WARN_QA:append = " migration-shellcheck", or skip
# it per recipe with INSANE_SKIP += "migration-shellcheck" or INSANE_SKIP:<pkg>):
#   migration-missing     a listed script is not in UNPACKDIR (add file://NAME to SRC_URI)
#   migration-empty       empty script
#   migration-shebang     no #! line
#   migration-errexit     shell script without set -e / set -eu / set -o errexit / #!/bin/sh -e
#   migration-syntax      sh -n (bash -n for bash scripts) fails, or a Python script does not
#                         compile (with the build host's Python: BitBake's)
#   migration-shellcheck  ShellCheck warnings and errors (when ShellCheck is available)
#   migration-crlf        CRLF line endings
#   migration-name        an installed name the runner skips or refuses
#   migration-duplicate   two scripts of the recipe with one installed name
#   migration-oneway      a MIGRATION_ONEWAY entry names no script of MIGRATION_SCRIPTS, or
#                         its level is not a whole number >= 1 (set MIGRATION_COMPAT_LEVEL in
#                         the distro or pin NAME:LEVEL)
#   migration-package     a file of a migration package went to another package listed before
#                         it in PACKAGES (e.g. ${PN}, whose FILES take ${sysconfdir}): the
#                         message names both and says how to order them
#   migration-manifest    (image) the image manifest cannot be made, e.g. two packages ship one
#                         name; the message names both
#   migration-idempotence a shell pattern that repeats or fails on a second run, unguarded: >>,
#                         useradd/groupadd/adduser/addgroup, mv, mkdir without -p, ln without
#                         -f (-sfn); a warning; silence one line with # migration: idempotent
# The same checks run on any host with `migration lint FILE...` (python3 -m migration from the
# layer's lib/ directory).
#
# Misconfiguration (a priority that is not two digits, a MIGRATION_BEFORE entry that is not a
# unit name) stops parsing with the recipe file, the variable and the fix.
#
# Weak defaults (??=): MIGRATION_PRIORITY, MIGRATION_RUNNER, MIGRATION_SHELLCHECK and
# MIGRATION_COMPAT_LEVEL. Only MIGRATION_RUNNER is a list: `+=` on it drops the default, extend it
# with `:append = " y"` (or `:remove`). The others hold one value each: set them with `=`.

MIGRATION_SCRIPTS ?= ""
MIGRATION_SCRIPTS[doc] = "Migration scripts (paths relative to UNPACKDIR) shipped by MIGRATION_PACKAGE; MIGRATION_SCRIPTS:<pkg> per package."

MIGRATION_PACKAGE ?= "${PN}"
MIGRATION_PACKAGE[doc] = "Package that ships MIGRATION_SCRIPTS; default ${PN}."

MIGRATION_PACKAGES ?= "${MIGRATION_PACKAGE}"
MIGRATION_PACKAGES[doc] = "Packages that ship migrations, each with MIGRATION_SCRIPTS:<pkg>; default ${MIGRATION_PACKAGE}."
MIGRATION_PACKAGES:class-native ?= ""
MIGRATION_PACKAGES:class-nativesdk ?= ""

MIGRATION_PRIORITY ??= "50"
MIGRATION_PRIORITY[doc] = "Two digits (00 first, 99 last) that order a package's migrations against other packages'; MIGRATION_PRIORITY:<pkg> per package."

MIGRATION_BEFORE ?= ""
MIGRATION_BEFORE[doc] = "systemd units that start only after this package's migrations are applied (gating drop-in); MIGRATION_BEFORE:<pkg> per package."

MIGRATION_ONEWAY ?= ""
MIGRATION_ONEWAY[doc] = "One-way scripts (NAME or NAME:LEVEL, names from MIGRATION_SCRIPTS): older releases cannot read the data they leave; LEVEL >= 1 defaults to MIGRATION_COMPAT_LEVEL. MIGRATION_ONEWAY:<pkg> per package."

MIGRATION_COMPAT_LEVEL ??= "0"
MIGRATION_COMPAT_LEVEL[doc] = "Compatibility level of the distro (whole number): the default level of MIGRATION_ONEWAY entries and the image's minimum level; raise it when a release's data is unreadable for older ones."

MIGRATION_RUNNER ??= "migration"
MIGRATION_RUNNER[doc] = "Package that runs the migration scripts; every migration package depends on it at run time."

MIGRATION_SHELLCHECK ??= "auto"
MIGRATION_SHELLCHECK[doc] = "auto: lint shell scripts with ShellCheck when shellcheck is in HOSTTOOLS(_NONFATAL); no: never."
MIGRATION_SHELLCHECK[type] = "choice"
MIGRATION_SHELLCHECK[choices] = "auto no"

MIGRATION_INTERPRETER_RDEPENDS[doc] = "Runtime dependency per script interpreter (varflag per interpreter base name)."
MIGRATION_INTERPRETER_RDEPENDS[bash] ?= "bash"
MIGRATION_INTERPRETER_RDEPENDS[python3] ?= "python3-core"
MIGRATION_INTERPRETER_RDEPENDS[python] ?= "python3-core"

ERROR_QA:append = " migration-missing migration-empty migration-shebang migration-errexit migration-syntax migration-shellcheck migration-crlf migration-name migration-duplicate migration-oneway migration-package"
WARN_QA:append = " migration-idempotence"

# Parse time, like systemd.bbclass: FILES and RDEPENDS depend on the scripts listed.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    migration.bitbake.setup(d)
}

# The host tools the lint runs and their versions: in its signature, so that one hash means one
# QA verdict (another ShellCheck, or none, runs the lint again).
MIGRATION_LINT_TOOLS = "${@migration.bitbake.lint_tools(d)}"
MIGRATION_LINT_TOOLS[doc] = "The host tools do_migration_lint runs (sh, bash, shellcheck) and their versions; computed, part of the lint's signature."
MIGRATION_LINT_TOOLS[vardepvalue] = "${MIGRATION_LINT_TOOLS}"

python do_migration_lint() {
    migration.bitbake.lint_task(d)
}
do_migration_lint[doc] = "Checks the migration scripts (MIGRATION_SCRIPTS) and reports each problem as a migration-* QA issue."
do_migration_lint[vardeps] += "MIGRATION_SCRIPTS MIGRATION_PRIORITY MIGRATION_BEFORE MIGRATION_ONEWAY MIGRATION_SHELLCHECK MIGRATION_LINT_TOOLS"
# BitBake scans only lib/migration/bitbake.py's functions: the modules they import (lint.py,
# scripts.py, ...) enter the signatures of the tasks that run them as files.
do_migration_lint[file-checksums] += "${@migration.tasksources.file_checksums('lint_task')}"
# After do_unpack, and after do_patch in a recipe with patches (setup() adds it): the lint
# reads the bytes that do_install installs, patched, and a recipe without patches keeps a lint
# that needs no native tool (do_patch needs quilt-native). Before do_package_qa, like OE's own
# package QA: an image build (do_build[rdeptask] do_package_qa) runs it and fails on its errors,
# and no package's signature takes in the lint's, so builders with other host tools
# (MIGRATION_LINT_TOOLS) still share the packages' sstate.
addtask migration_lint after do_unpack before do_package_qa do_build

MIGRATION_TEST_ROOTS ?= ""
MIGRATION_TEST_ROOTS[doc] = "Old releases' trees (absolute paths of directories: a previous image's IMAGE_ROOTFS, an unpacked rootfs) that do_migration_test runs the scripts on; empty: no do_migration_test."

# Opt-in (MIGRATION_TEST_ROOTS): `bitbake <recipe> -c migration_test` runs the scripts that
# do_migration_lint read, under their installed names, twice on a private copy-on-write view of
# each tree (`migration test`: lib/migration/commands/test.py), and fails on a script that
# fails or changes something again in the second run, naming the recipe, the tree, the script
# and the path; the full report is in the task log. setup() adds the task only when the
# variable is set: other recipes have no such task and the same signatures. Never part of a
# build (nothing depends on it). nostamp: the trees can change under the same path.
# network: the sandbox maps ids in user namespaces of its own, and BitBake's no-network
# namespace maps the build user alone, so newuidmap could not map the subordinate ids a script
# needs to chown to other users; the scripts still get no network (a network namespace of their
# own, as at boot before the network is up).
python do_migration_test() {
    migration.bitbake.test_task(d)
}
do_migration_test[doc] = "Runs the migration scripts twice on each tree of MIGRATION_TEST_ROOTS (migration test) and fails on a script that fails or is not idempotent."
do_migration_test[nostamp] = "1"
# nooelint: oelint.task.network
do_migration_test[network] = "1"

python migration_install() {
    migration.bitbake.install(d)
}
migration_install[doc] = "Installs the migration scripts, gating drop-ins and manifest fragments into D (a do_install postfunc)."
migration_install[vardeps] += "MIGRATION_SCRIPTS MIGRATION_PRIORITY MIGRATION_BEFORE MIGRATION_ONEWAY"
do_install[postfuncs] += "migration_install"
do_install[file-checksums] += "${@migration.tasksources.file_checksums('install')}"

# On a running target (a package manager, $D empty; at rootfs time migration_rootfs_manifest
# below does the manifest): a migration package's postinst refreshes the image manifest, stops the services
# gated on pending migrations, applies the pending migrations in order and starts those
# services again (`migration postinst`, lib/migration/commands/postinst.py). It comes first in
# the postinst (right after its #! line), before the recipe's own pkg_postinst and before
# systemd.bbclass's restart of the package's services, which it skips by exiting non-zero when a
# migration of the package is not applied: the package is then not configured (retry: dpkg
# --configure -a, opkg configure) and its gated services stay stopped until then.
migration_postinst() {
    if [ -z "$D" ] && [ -x ${sbindir}/migration ]; then
        ${sbindir}/migration postinst --package ${MIGRATION_POSTINST_PACKAGE} || exit $?
    fi
}
migration_postinst[doc] = "Shell fragment put first in the postinst of migration packages (MIGRATION_POSTINST_PACKAGE: the package)."

# At rootfs time ($D set) every migration package's postinst (and postrm) writes the image
# manifest anew from the fragments installed so far, with the build host's python3 running the
# runner package already in $D (a dependency, so installed before): the last one leaves the
# manifest of the whole image, with no IMAGE_CLASSES line, while an image without migration
# packages runs none of this and keeps its signatures. The image settings come from the runner
# package (the distro's MIGRATION_COMPAT_LEVEL, MIGRATION_UPGRADE_FLOOR, MIGRATION_DATA_MARKERS)
# or, per image, from migration_image.bbclass, which writes the manifest once more after all
# postinsts. A failure (two packages ship one name) fails the postinst and so the image build.
# Like migration_postinst it comes before the recipe's own text, so no `exit 0` there skips it.
migration_rootfs_manifest() {
    if [ -n "$D" ]; then
        # -I: neither the working directory (the build dir) nor PYTHON* variables decide what
        # runs; -B: no host bytecode in the image.
        python3 -I -B -c 'import sys; sys.path.insert(0, sys.argv[1]); from migration.cli import main; sys.exit(main(sys.argv[2:]))' \
            "$D${nonarch_libdir}/migration" manifest --root "$D" || exit $?
    fi
}
migration_rootfs_manifest[doc] = "Shell fragment put first (after migration_postinst or migration_refresh_manifest) in the postinst and postrm of migration packages: the image manifest at rootfs time."

# Removal on a running target: the manifest forgets the package's migrations.
migration_refresh_manifest() {
    if [ -z "$D" ] && [ -x ${sbindir}/migration ]; then
        ${sbindir}/migration manifest
    fi
}
migration_refresh_manifest[doc] = "Shell fragment put first in pkg_postrm of migration packages."

python migration_populate_packages() {
    migration.bitbake.add_postinsts(d)
}
migration_populate_packages[doc] = "Adds `migration postinst` to the migration packages' postinst and the manifest refresh to their postrm."
migration_populate_packages[vardeps] += "migration_postinst migration_refresh_manifest migration_rootfs_manifest"
# :prepend, applied after every `PACKAGESPLITFUNCS =+` of other classes (systemd.bbclass's
# systemd_populate_packages among them), whatever the inherit order: this runs first, so
# systemd's snippet, which that function appends, comes after ours in the postinst.
PACKAGESPLITFUNCS:prepend = "migration_populate_packages "

# After the split (as gtk-icon-cache.bbclass does): each migration package holds its files
# (QA issue migration-package otherwise) and depends on the interpreters of the scripts it holds.
python populate_packages:append () {
    migration.bitbake.check_packaging(d)
}
do_package[file-checksums] += "${@migration.tasksources.file_checksums('add_postinsts', 'check_packaging')}"
