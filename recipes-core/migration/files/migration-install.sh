#!/bin/sh
# SPDX-License-Identifier: MIT
#
# The one install description of the migration runner: the recipe's do_install and the QEMU boot
# tests (tests/boot) both call it, so the image under test holds exactly what the recipe installs.
#
#   sh migration-install.sh PKG_SRC_DIR FILES_DIR
#
# PKG_SRC_DIR is the Python package (the layer's lib/migration; its build-only modules
# bitbake.py and tasksources.py are left out), FILES_DIR the directory holding this script's
# unit templates and hooks (the recipe's files/, unpacked). Settings come from the environment, with BitBake's names:
#   D                       destination root (required; the recipe's ${D})
#   sbindir libdir datadir sysconfdir localstatedir systemd_system_unitdir
#                           paths as in BitBake; the defaults are OE's (/usr/sbin, /usr/lib,
#                           /usr/share, /etc, /var, /lib/systemd/system). The runner's own
#                           defaults are /etc/migration.d and /var/lib/migration, so sysconfdir
#                           and localstatedir must be /etc and /var.
#   MIGRATION_PYTHON        interpreter in the wrapper's shebang (default /usr/bin/python3)
#   MIGRATION_INIT          "systemd", "sysvinit" or "systemd sysvinit" (default systemd)
#   MIGRATION_BOOT_POLICY   continue | halt | rescue (default continue), what a failed boot run
#                           does (rescue isolates emergency.target: see the drop-in below)
#   MIGRATION_BOOT_TIMEOUT  seconds each script may take at boot (unset or empty: 900); 0: no
#                           limit
#   MIGRATION_VOLATILE_STATE  warn | refuse (default warn): what a boot run does when the state
#                           dir is on a volatile file system (--volatile-state of the runner)
#   MIGRATION_PROMETHEUS_TEXTFILE  absolute path (letters, digits, . _ - + /): a boot run ends
#                           by writing its Prometheus text there (--prometheus-textfile of the
#                           runner); empty (default): none
#   MIGRATION_COMPAT_LEVEL  the distro's image settings, written to
#   MIGRATION_UPGRADE_FLOOR ${datadir}/migration/image-settings.json: what a manifest made at
#   MIGRATION_DATA_MARKERS  rootfs time by the migration packages' postinsts carries (a whole
#                           number >= 0, default 0; a version or empty; absolute paths separated
#                           by blanks, without " or \)
#   MIGRATION_COMPILE       absolute path of a python3 of the TARGET's version (the recipe:
#                           python3-native's), to ship the package's bytecode: __pycache__/
#                           *.cpython-XY.pyc made with --invalidation-mode unchecked-hash, so
#                           the bytes are reproducible and the target never stats, hashes or
#                           compiles the sources (a read-only root too); bytecode of another
#                           Python version would be ignored silently. Empty: no bytecode (every
#                           run compiles what it imports, in memory on a read-only root)
# Besides the package, the wrapper and the units it installs (never placeholders in these):
#   ${systemd_system_unitdir}/var-lib-migration.mount.d/50-after-volatile-binds.conf
#                           orders a mount at /var/lib/migration (the state dir's persistent
#                           home on a read-only root) after volatile-binds' /var/lib
#   ${datadir}/migration/update-hooks/   update-time hooks for RAUC (rauc-hook.sh), SWUpdate
#                           (swupdate-postinst.sh) and Mender (ArtifactInstall_Leave_50_migration),
#                           for bundle/artifact recipes to copy; never run on this image itself
#   ${sysconfdir}/migration/update-hook.conf   the update hooks' settings on this system (all
#                           commented out), read when this system is being updated
#   ${sysconfdir}/migration/incompatible.d/      the hooks dir of refusals (empty), and in it
#   ${sysconfdir}/migration/incompatible.d/50-request-wipe   the example wipe-request hook: the
#                           recipe packages it alone (migration-wipe-request, opt-in)
#   ${datadir}/mender/inventory/mender-inventory-migration   the Mender inventory script: the
#                           recipe packages it alone (migration-mender-inventory, opt-in)
#   ${libdir}/systemd/catalog/migration.catalog   journalctl -x texts of the runner's journal
#                           entries (systemd only)
# Exit status: 0 done, 2 bad arguments or settings (message on stderr).
set -eu

die() {
	echo "migration-install.sh: $*" >&2
	exit 2
}

[ "$#" -eq 2 ] || die "usage: migration-install.sh PKG_SRC_DIR FILES_DIR"
src=$1
files=$2
[ -f "$src/__init__.py" ] || die "$src is not the migration Python package (no __init__.py)"
[ -f "$files/migration.service" ] || die "$files does not hold migration.service"
[ -f "$files/hooks/request-wipe" ] || die "$files does not hold hooks/request-wipe"
[ -f "$files/update-hook.conf" ] || die "$files does not hold update-hook.conf"
[ -n "${D:-}" ] || die "D (the destination root) is not set"

sbindir=${sbindir:-/usr/sbin}
libdir=${libdir:-/usr/lib}
datadir=${datadir:-/usr/share}
sysconfdir=${sysconfdir:-/etc}
localstatedir=${localstatedir:-/var}
systemd_system_unitdir=${systemd_system_unitdir:-/lib/systemd/system}
python=${MIGRATION_PYTHON:-/usr/bin/python3}
init=${MIGRATION_INIT:-systemd}
policy=${MIGRATION_BOOT_POLICY:-continue}
timeout=${MIGRATION_BOOT_TIMEOUT:-900}
volatile=${MIGRATION_VOLATILE_STATE:-warn}
textfile=${MIGRATION_PROMETHEUS_TEXTFILE:-}

[ "$sysconfdir" = /etc ] || die "sysconfdir=$sysconfdir: the runner reads /etc/migration.d"
[ "$localstatedir" = /var ] || die "localstatedir=$localstatedir: the runner keeps /var/lib/migration"
[ "$datadir" = /usr/share ] || die "datadir=$datadir: the runner reads /usr/share/migration"
case "$python" in
/*) ;;
*) die "MIGRATION_PYTHON=$python is not an absolute path" ;;
esac
compile=${MIGRATION_COMPILE:-}
case "$compile" in
'' | /*) ;;
*) die "MIGRATION_COMPILE=$compile is not an absolute path" ;;
esac
case "$timeout" in
'' | *[!0-9]*) die "MIGRATION_BOOT_TIMEOUT=$timeout is not a number of seconds" ;;
esac
level=${MIGRATION_COMPAT_LEVEL:-0}
floor=${MIGRATION_UPGRADE_FLOOR:-}
markers=${MIGRATION_DATA_MARKERS:-}
case "$level" in
'' | *[!0-9]*) die "MIGRATION_COMPAT_LEVEL=$level is not a whole number >= 0" ;;
esac
level=$(echo "$level" | sed 's/^0*\([0-9]\)/\1/') # JSON numbers have no leading zeros
case "$floor" in
'') ;;
[0-9]*) case "$floor" in *[!A-Za-z0-9.+~_:-]*) die "MIGRATION_UPGRADE_FLOOR=$floor is not a version" ;; esac ;;
*) die "MIGRATION_UPGRADE_FLOOR=$floor is not a version (a digit first)" ;;
esac
markers_json=
set -f # markers are paths, not patterns
for marker in $markers; do
	case "$marker" in
	/*) ;;
	*) die "MIGRATION_DATA_MARKERS: $marker is not an absolute path" ;;
	esac
	case "$marker" in
	*[\\\"]* | *[[:cntrl:]]*) die "MIGRATION_DATA_MARKERS: $marker holds \", \\ or a control character" ;;
	esac
	markers_json="$markers_json${markers_json:+, }\"$marker\""
done
set +f

# What the runner does after a failed script, per boot policy: halt stops at the first failure
# (the system is going down anyway and later scripts may build on the failed one); continue and
# rescue apply as much as they can.
case "$policy" in
continue | rescue) run_args="--policy continue" ;;
halt) run_args="--policy stop" ;;
*) die "MIGRATION_BOOT_POLICY=$policy: expected continue, halt or rescue" ;;
esac
if [ "$timeout" -gt 0 ]; then
	run_args="$run_args --timeout $timeout"
fi
case "$volatile" in
warn | refuse) run_args="$run_args --volatile-state $volatile" ;;
*) die "MIGRATION_VOLATILE_STATE=$volatile: expected warn or refuse" ;;
esac
# One word in the unit's Environment= and the init script's run_args, and in sed's replacement.
case "$textfile" in
'') ;;
*[!A-Za-z0-9._+/-]* | [!/]*) die "MIGRATION_PROMETHEUS_TEXTFILE=$textfile: expected an absolute path of letters, digits, . _ - + /" ;;
*) run_args="$run_args --prometheus-textfile $textfile" ;;
esac

want_systemd=false
want_sysvinit=false
for i in $init; do
	case "$i" in
	systemd) want_systemd=true ;;
	sysvinit) want_sysvinit=true ;;
	*) die "MIGRATION_INIT: unknown init manager '$i' (expected systemd and/or sysvinit)" ;;
	esac
done
$want_systemd || $want_sysvinit || die "MIGRATION_INIT is empty"

# Copies a template, replacing every placeholder; mode $3.
subst() {
	mkdir -p "$(dirname "$2")"
	sed -e "s|@SBINDIR@|$sbindir|g" \
		-e "s|@LIBDIR@|$libdir|g" \
		-e "s|@DATADIR@|$datadir|g" \
		-e "s|@SYSCONFDIR@|$sysconfdir|g" \
		-e "s|@LOCALSTATEDIR@|$localstatedir|g" \
		-e "s|@PYTHON@|$python|g" \
		-e "s|@POLICY@|$policy|g" \
		-e "s|@RUN_ARGS@|$run_args|g" \
		"$1" >"$2"
	chmod "$3" "$2"
}

# The package: every module but the build-only ones (BitBake's glue), no caches of the build
# host, no tests; then its bytecode, by the target's Python version, with the paths the target
# sees in tracebacks (-s $D -p /).
build_only="./bitbake.py ./tasksources.py"
pkgdir="$D$libdir/migration/migration"
rm -rf "$pkgdir"
(cd "$src" && find . -name __pycache__ -prune -o -type f -name '*.py' -print) |
	while IFS= read -r f; do
		case " $build_only " in
		*" $f "*) continue ;;
		esac
		install -D -m 0644 "$src/$f" "$pkgdir/$f"
	done
if [ -n "$compile" ]; then
	"$compile" -m compileall -q -f --invalidation-mode unchecked-hash -s "$D" -p / "$pkgdir" ||
		die "MIGRATION_COMPILE=$compile could not compile $pkgdir"
fi

subst "$files/migration.wrapper" "$D$sbindir/migration" 0755
install -d -m 0755 "$D$sysconfdir/migration.d" "$D$datadir/migration/packages"
printf '{"compat_level": %s, "upgrade_floor": "%s", "data_markers": [%s]}\n' \
	"$level" "$floor" "$markers_json" >"$D$datadir/migration/image-settings.json"
chmod 0644 "$D$datadir/migration/image-settings.json"
install -D -m 0644 "$files/boot.md" "$D$datadir/doc/migration/boot.md"

# Update-time hooks (copied into update bundles), their settings on this system (a conffile:
# the hooks of the image that replaces this one read it here), and the refusal hooks dir
# with the example.
install -d -m 0755 "$D$datadir/migration/update-hooks" "$D$sysconfdir/migration/incompatible.d"
for hook in "$files"/update-hooks/*; do
	install -m 0755 "$hook" "$D$datadir/migration/update-hooks/"
done
install -m 0644 "$files/update-hook.conf" "$D$sysconfdir/migration/update-hook.conf"
install -m 0755 "$files/hooks/request-wipe" "$D$sysconfdir/migration/incompatible.d/50-request-wipe"
subst "$files/mender-inventory-migration" "$D$datadir/mender/inventory/mender-inventory-migration" 0755

if $want_systemd; then
	unitdir="$D$systemd_system_unitdir"
	subst "$files/migration.service" "$unitdir/migration.service" 0644
	subst "$files/migration-gate@.service" "$unitdir/migration-gate@.service" 0644
	dropin="$unitdir/migration.service.d/50-boot-policy.conf"
	mkdir -p "$(dirname "$dropin")"
	{
		echo "# Written by migration-install.sh for MIGRATION_BOOT_POLICY=$policy."
		case "$policy" in
		rescue)
			# Not rescue.target: it requires sysinit.target, which wants migration.service,
			# so isolating it ran the failed migration again (5 times in one boot, until
			# the start limit). emergency.target pulls in nothing but its shell, like a
			# failed local-fs.target.
			echo "[Unit]"
			echo "# A failed run stops the boot in emergency mode: the boot jobs are cancelled,"
			echo "# no regular service starts, sulogin offers a root shell on the console."
			echo "# The failed migration is not started again in this boot."
			echo "OnFailure=emergency.target"
			echo "OnFailureJobMode=isolate"
			echo
			;;
		halt)
			echo "[Unit]"
			echo "# A failed run shuts the system down cleanly and halts it: nothing else starts."
			echo "# (halt.target, not FailureAction=halt, which systemd < 254 does not know.)"
			echo "OnFailure=halt.target"
			echo "OnFailureJobMode=replace-irreversibly"
			echo
			;;
		esac
		echo "[Service]"
		echo "Environment=\"MIGRATION_RUN_ARGS=$run_args\""
	} >"$dropin"
	chmod 0644 "$dropin"
	install -D -m 0644 "$files/migration.catalog" "$D$libdir/systemd/catalog/migration.catalog"
	# A persistent home for the state dir goes on top of volatile-binds' /var/lib, not under it.
	install -D -m 0644 "$files/after-volatile-binds.conf" \
		"$unitdir/var-lib-migration.mount.d/50-after-volatile-binds.conf"
fi
if $want_sysvinit; then
	subst "$files/migration.init" "$D$sysconfdir/init.d/migration" 0755
fi
