#!/bin/sh
# SPDX-License-Identifier: MIT
#
# SWUpdate script: applies the new image's pending migrations to the live data after SWUpdate
# installed the images, while the old system still runs (meta-migration, R8).
# Installed as /usr/share/migration/update-hooks/swupdate-postinst.sh; add it to the .swu and to
# sw-description, telling it where the new root is with the "data" attribute (a block device,
# mounted read-only here, or a directory where it is mounted) or MIGRATION_NEW_ROOT:
#   scripts: ( {
#       filename = "swupdate-postinst.sh";
#       type = "shellscript";
#       data = "/dev/mmcblk0p3";
#   } );
# Calling convention (SWUpdate doc/source/sw-description.rst "shellscript" and
# handlers/shell_scripthandler.c execute_shell_script()): a "shellscript" runs as
#   <tmpdir>/swupdate-postinst.sh preinst|postinst|postfailure [data...]
# (a "postinstall" script runs as <tmpdir>/swupdate-postinst.sh [data...], after the images);
# a non-zero exit fails the update. Here preinst and postfailure do nothing.
set -u
hook_name=swupdate

# --- common part: identical in the three update hooks (tests/test_update_hooks.py checks) ---
# Settings (environment; all optional):
#   MIGRATION_PYTHON       interpreter of the RUNNING system that runs the new image's runner
#                          (default python3; the runner needs Python >= 3.8)
#   MIGRATION_COMMAND      the migration command inside the new root (default /usr/sbin/migration)
#   MIGRATION_DATA_ROOT    root of the live data the migrations change (default /; --root)
#   MIGRATION_STATE_DIR    the device's state dir (default DATA_ROOT/var/lib/migration; --state-dir)
#   MIGRATION_UPDATE_ARGS  more options of `migration update`, split at blanks (e.g.
#                          "--timeout 300 --defer-oneway")
# What the runner's exit status means for the update:
#   0       everything applied: the new image's first boot starts no migration process;
#   1, 75   a migration failed or is pending (1), or another runner held the lock (75; the
#           verdict comes before the lock, so the new image is not refused): the update goes
#           on, the new image's first boot retries what is left (a warning here);
#   3       refused: the new image cannot use this device's data (incompatible downgrade, or
#           the device's release is below the new image's upgrade floor): abort the update;
#   70      internal error: a bug, or this system's python3 cannot run the new runner (older
#           than 3.8, or without python3-crypt or python3-json, which with python3-core are
#           what the update path needs): nothing was checked, abort the update;
#   other   (2 usage/configuration, 130 interrupted, anything else): abort the update.
# Python runs with -I (isolated from the environment) and -B: no __pycache__ is written into
# the new root, which is signed content (and may be mounted read-write by the updater).

say() {
	echo "migration-update ($hook_name): $*" >&2
}

# Mounts $1 read-only on a new temporary directory, kept in $mounted for cleanup; $2, when
# given, is the file system type.
mounted=
cleanup() {
	if [ -n "$mounted" ]; then
		if ! { umount "$mounted" && rmdir "$mounted"; }; then
			say "WARNING: could not unmount and remove $mounted"
		fi
		mounted=
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mount_ro() {
	mounted=$(mktemp -d "${TMPDIR:-/tmp}/migration-newroot.XXXXXX") || return 1
	if ! mount ${2:+-t "$2"} -o ro "$1" "$mounted"; then
		rmdir "$mounted"
		mounted=
		return 1
	fi
}

# Sets new_root_dir for $1: a directory; a block device, or a UBI volume holding a UBIFS
# (ubiX_Y, /dev/ubiX_Y or ubiX:NAME, as in Mender's RootfsPartA/B on raw NAND), mounted
# read-only (UBI volumes with `mount -t ubifs`: they are character devices or plain names).
new_root() {
	case $1 in
	ubi[0-9]*_[0-9]* | /dev/ubi[0-9]*_[0-9]* | ubi[0-9]*:?*) fstype=ubifs ;;
	*) fstype= ;;
	esac
	if [ -d "$1" ]; then
		new_root_dir=$1
	elif [ -b "$1" ] || [ -n "$fstype" ]; then
		mount_ro "$1" "$fstype" || {
			say "cannot mount $1 read-only"
			return 1
		}
		new_root_dir=$mounted
	else
		say "the new root '$1' is neither a directory, a block device nor a UBI volume"
		return 1
	fi
}

# Runs the new image's runner (`migration update NEWROOT`) and maps its exit status (above).
run_update() {
	root=$1
	command=$root${MIGRATION_COMMAND:-/usr/sbin/migration}
	python=${MIGRATION_PYTHON:-python3}
	if [ ! -f "$command" ]; then
		say "$command does not exist: the new image has no migration runner, nothing to do"
		return 0
	fi
	# The runner's default manifest path: an image built without it has no list of its
	# migrations; its first boot runs them. Anything there (a symlink, a device) is the
	# runner's to judge: it refuses what is not a manifest.
	if [ ! -e "$root/usr/share/migration/manifest.json" ] &&
		[ ! -L "$root/usr/share/migration/manifest.json" ]; then
		say "the new image has no migration manifest: its first boot applies its migrations"
		return 0
	fi
	if ! command -v "$python" >/dev/null 2>&1; then
		say "WARNING: no $python on the running system: the new image's first boot applies" \
			"its migrations"
		return 0
	fi
	set --
	if [ -n "${MIGRATION_DATA_ROOT:-}" ]; then
		set -- "$@" --root "$MIGRATION_DATA_ROOT"
	fi
	if [ -n "${MIGRATION_STATE_DIR:-}" ]; then
		set -- "$@" --state-dir "$MIGRATION_STATE_DIR"
	fi
	say "running: $python -I -B $command $* update $root ${MIGRATION_UPDATE_ARGS:-}"
	# The runner's report goes to stderr: some updaters (Mender) keep only that stream.
	# shellcheck disable=SC2086 # MIGRATION_UPDATE_ARGS holds several options on purpose
	"$python" -I -B "$command" "$@" update "$root" ${MIGRATION_UPDATE_ARGS:-} >&2
	rc=$?
	case $rc in
	0)
		say "the new image's migrations are applied"
		return 0
		;;
	1 | 75)
		say "WARNING: not every migration of the new image could be applied now (exit $rc," \
			"see above); the update goes on and the new image's first boot retries them"
		return 0
		;;
	3)
		say "REFUSED: the new image cannot use this device's data (see above): aborting the update"
		return 1
		;;
	70)
		say "ERROR: the new image's migration runner could not check the update (internal" \
			"error, see above): aborting the update"
		return 1
		;;
	*)
		say "ERROR: the migration runner failed (exit $rc, see above): aborting the update"
		return 1
		;;
	esac
}
# --- end of common part ---

case "${1:-}" in
preinst | postfailure) exit 0 ;;
postinst) shift ;;
esac
spec=${1:-${MIGRATION_NEW_ROOT:-}}
if [ -z "$spec" ]; then
	say "where is the new root? set the script's data attribute in sw-description or" \
		"MIGRATION_NEW_ROOT (a block device or a directory)"
	exit 1
fi
new_root "$spec" || exit 1
run_update "$new_root_dir"
