#!/bin/sh
# SPDX-License-Identifier: MIT
#
# RAUC slot hook: applies the new image's pending migrations to the live data right after RAUC
# installed the new root file system, while the old system still runs (meta-migration, R8).
# Installed as /usr/share/migration/update-hooks/rauc-hook.sh; put it in the bundle as its hook
# and enable the post-install hook on the rootfs image (bundle manifest):
#   [hooks]
#   filename=rauc-hook.sh
#   [image.rootfs]
#   filename=rootfs.ext4
#   hooks=post-install
# Calling convention (RAUC docs/using.rst "Slot Hooks" and docs/reference.rst "Slot Hooks
# Interface"; src/update_handler.c run_slot_hook_extra_env()): RAUC runs the bundle's hook file
# with one argument, "slot-post-install", for every slot an image with hooks=post-install was
# written to, with the slot's file system mounted and its mount point in RAUC_SLOT_MOUNT_POINT
# (RAUC mounts it with the slot's type and options: read-write unless configured otherwise),
# its class in RAUC_SLOT_CLASS and its device in RAUC_SLOT_DEVICE. A non-zero exit fails the
# installation (g_subprocess_wait_check), so the slot is not marked to be booted.
#
# Only slots of class MIGRATION_RAUC_SLOT_CLASS (default rootfs) are handled; other classes
# exit 0. Other hook arguments (install-check, slot-pre-install, slot-install) exit 1, as in
# RAUC's own example: this hook must not silently pass a check it does not do.
set -u
hook_name=rauc

# --- common part: identical in the three update hooks (tests/test_update_hooks.py checks) ---
# Settings (all optional), from the RUNNING system's /etc/migration/update-hook.conf (the old
# image's: the hook runs there, and RAUC, SWUpdate and Mender pass a hook no environment of
# ours; MIGRATION_HOOK_CONF in the environment names another file) and from the environment,
# which wins over the file (also when set to the empty string, which means the default):
#   MIGRATION_PYTHON       interpreter of the RUNNING system that runs the new image's runner
#                          (default python3; the runner needs Python >= 3.8)
#   MIGRATION_COMMAND      the migration command inside the new root (default /usr/sbin/migration)
#   MIGRATION_DATA_ROOT    root of the live data the migrations change (default /; --root)
#   MIGRATION_STATE_DIR    the device's state dir (default DATA_ROOT/var/lib/migration; --state-dir)
#   MIGRATION_UPDATE_ARGS  more options of `migration update`, split at blanks (e.g.
#                          "--timeout 300 --defer-oneway")
#   MIGRATION_NEW_ROOT     SWUpdate, Mender: the new root when the updater does not name it
#   MIGRATION_RAUC_SLOT_CLASS  RAUC: the class of the root file system's slots (default rootfs)
# The file is parsed, never run as shell: KEY=VALUE lines (no blanks around =; the value may be
# in "" or ''), comment lines (#) and blank lines, printable ASCII only; only the keys above,
# each once; values of letters, digits, blanks and / . _ - + , : = @ %, no blank at either end.
# MIGRATION_PYTHON is a command run as root, so (when the hook runs as root) only root may be
# able to change what is read: the file must not be a symlink, it must be root's regular file
# that group and others cannot write, and so must every directory from / down to it (symlinked
# directories resolved, then checked where they lead), a directory with the sticky bit (as /tmp)
# excepted, where only root can rename or remove root's entries. Checking every directory, not
# only the file's, is what stops a user who can rename one of them from swapping the file
# between the check and the read; the hook then opens the file once and checks and parses that
# open file (/proc/self/fd), never the name again. Anything else, or a MIGRATION_HOOK_CONF that
# does not exist, makes the hook exit 1 before anything runs: an update does not go on with a
# setting ignored. So does a MIGRATION_PYTHON or MIGRATION_COMMAND that is set (file or
# environment) and not there: only the defaults missing (no python3 here, no runner in the new
# image) leave the migrations to the new image's first boot.
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
	# Set on purpose (file or environment) and not there: a mistake, never a silent skip (the
	# image would be installed without the runner's verdict).
	if [ -n "${MIGRATION_PYTHON:-}" ]; then
		case $python in
		*/*)
			if [ ! -f "$python" ] || [ ! -x "$python" ]; then
				say "ERROR: MIGRATION_PYTHON=$python: is not an executable file: aborting the update"
				return 1
			fi
			;;
		*)
			if ! command -v "$python" >/dev/null 2>&1; then
				say "ERROR: MIGRATION_PYTHON=$python: is not a command on the running system" \
					"(PATH=$PATH): aborting the update"
				return 1
			fi
			;;
		esac
	fi
	if [ -n "${MIGRATION_COMMAND:-}" ] && [ ! -f "$command" ]; then
		say "ERROR: MIGRATION_COMMAND=$MIGRATION_COMMAND: $command is not a file in the new" \
			"root: aborting the update"
		return 1
	fi
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

# The settings file (see above): read_settings sets what the environment does not; refusal()
# says why the update stops.
settings_max=65536
value_chars='ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 /._+,:=@%-'
refusal() {
	say "ERROR: $conf: $*; not updating with a setting ignored: aborting the update"
}
# Refuses (returns 0, with the reason) $1 when only root must be able to change it and another
# user can: not root's, or writable by group or others (a directory with the sticky bit
# excepted); $2 names it in the message. Checked only when the hook runs as root.
untrusted() {
	owner_mode=$(stat -L -c '%u %a' "$1") || {
		refusal "cannot stat $2"
		return 0
	}
	if [ "$(id -u)" != 0 ]; then
		return 1
	elif [ "${owner_mode% *}" != 0 ]; then
		refusal "$2 is owned by uid ${owner_mode% *}, not root"
	elif [ $((0${owner_mode#* } & 022)) -ne 0 ] &&
		{ [ ! -d "$1" ] || [ $((0${owner_mode#* } & 01000)) -eq 0 ]; }; then
		refusal "$2 is writable by group or others (mode ${owner_mode#* })"
	else
		return 1
	fi
}
read_settings() {
	conf=${MIGRATION_HOOK_CONF:-/etc/migration/update-hook.conf}
	if [ ! -e "$conf" ] && [ ! -L "$conf" ] && [ -z "${MIGRATION_HOOK_CONF:-}" ]; then
		return 0 # no file: the defaults and the environment
	elif [ ! -e "$conf" ] && [ ! -L "$conf" ]; then
		refusal "does not exist (MIGRATION_HOOK_CONF)"
		return 1
	fi
	# The directories from / down to the file, symlinks resolved: each checked before the
	# next, so none can be swapped under the checks once its parent passed.
	dir=$(CDPATH='' cd -P -- "$(dirname -- "$conf")" && pwd -P) || {
		refusal "cannot resolve its directory"
		return 1
	}
	if untrusted / /; then
		return 1
	fi
	rest=${dir#/}
	path=
	while [ -n "$rest" ]; do
		path=$path/${rest%%/*}
		case $rest in
		*/*) rest=${rest#*/} ;;
		*) rest= ;;
		esac
		untrusted "$path" "$path" && return 1
	done
	file=${dir%/}/${conf##*/}
	if [ -L "$file" ]; then
		refusal "is a symlink (keep the file itself there: a symlink could lead anywhere)"
		return 1
	elif [ ! -f "$file" ]; then
		refusal "not a regular file"
		return 1
	fi
	# Opened once: what is checked and parsed is this open file, whatever the name becomes.
	exec 3<"$file" || {
		refusal "cannot open $file"
		return 1
	}
	parse_settings
	parsed=$?
	exec 3<&-
	return $parsed
}
# Checks the open settings file (fd 3) and parses it.
parse_settings() {
	if [ ! -f /proc/self/fd/3 ]; then
		refusal "not a regular file"
		return 1
	elif untrusted /proc/self/fd/3 "$conf"; then
		return 1
	fi
	size=$(stat -L -c %s /proc/self/fd/3) || size=$((settings_max + 1))
	if [ "$size" -gt "$settings_max" ]; then
		refusal "larger than $settings_max bytes"
		return 1
	fi
	seen=
	used=
	overridden=
	lineno=0
	bytes=0
	while :; do
		if IFS= read -r line; then
			bytes=$((bytes + ${#line} + 1))
		elif [ -n "$line" ]; then
			bytes=$((bytes + ${#line})) # a last line without its newline
		else
			break
		fi
		lineno=$((lineno + 1))
		setting "$line" || return 1
	done <&3
	# The shell drops NUL bytes and counts a multibyte character once: either makes the
	# count differ from the file's size.
	if [ "$bytes" -ne "$size" ]; then
		refusal "holds control or non-ASCII bytes (NUL, multibyte characters)"
		return 1
	fi
	if [ -n "$used" ]; then
		say "settings from $conf:$used"
	fi
	if [ -n "$overridden" ]; then
		say "settings of $conf that the environment overrides:$overridden"
	fi
}
# One line of the settings file ($1, line $lineno).
setting() {
	case $1 in
	*[![:print:][:blank:]]*)
		refusal "line $lineno: control or non-ASCII bytes"
		return 1
		;;
	esac
	case ${1#"${1%%[![:blank:]]*}"} in
	'' | '#'*) return 0 ;;
	esac
	key=${1%%=*}
	value=${1#*=}
	case $key in
	'' | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_]*)
		refusal "line $lineno: not KEY=VALUE (a settings file, not shell)"
		return 1
		;;
	esac
	if [ "$key" = "$1" ]; then
		refusal "line $lineno: not KEY=VALUE (a settings file, not shell)"
		return 1
	fi
	case $value in
	\"*\" | \'*\')
		value=${value#?}
		value=${value%?}
		;;
	esac
	# shellcheck disable=SC2254 # value_chars is the set of characters, on purpose
	case $value in
	*[!$value_chars]*)
		refusal "line $lineno: the value of $key holds characters other than letters, digits," \
			"blanks and / . _ - + , : = @ %"
		return 1
		;;
	esac
	# Invisible, and the value would not resolve: no interpreter "python3 ", no slot class
	# "rootfs " (every slot "not ours", the install unchecked).
	case $value in
	[[:blank:]]* | *[[:blank:]])
		refusal "line $lineno: the value of $key begins or ends with a blank"
		return 1
		;;
	esac
	case " $seen " in
	*" $key "*)
		refusal "line $lineno: $key is set twice"
		return 1
		;;
	esac
	case $key in
	MIGRATION_PYTHON)
		from_env=${MIGRATION_PYTHON+set}
		MIGRATION_PYTHON=${MIGRATION_PYTHON-$value}
		;;
	MIGRATION_COMMAND)
		from_env=${MIGRATION_COMMAND+set}
		MIGRATION_COMMAND=${MIGRATION_COMMAND-$value}
		;;
	MIGRATION_DATA_ROOT)
		from_env=${MIGRATION_DATA_ROOT+set}
		MIGRATION_DATA_ROOT=${MIGRATION_DATA_ROOT-$value}
		;;
	MIGRATION_STATE_DIR)
		from_env=${MIGRATION_STATE_DIR+set}
		MIGRATION_STATE_DIR=${MIGRATION_STATE_DIR-$value}
		;;
	MIGRATION_UPDATE_ARGS)
		from_env=${MIGRATION_UPDATE_ARGS+set}
		MIGRATION_UPDATE_ARGS=${MIGRATION_UPDATE_ARGS-$value}
		;;
	MIGRATION_NEW_ROOT)
		from_env=${MIGRATION_NEW_ROOT+set}
		MIGRATION_NEW_ROOT=${MIGRATION_NEW_ROOT-$value}
		;;
	MIGRATION_RAUC_SLOT_CLASS)
		from_env=${MIGRATION_RAUC_SLOT_CLASS+set}
		MIGRATION_RAUC_SLOT_CLASS=${MIGRATION_RAUC_SLOT_CLASS-$value}
		;;
	*)
		refusal "line $lineno: unknown setting $key (known: MIGRATION_PYTHON, MIGRATION_COMMAND," \
			"MIGRATION_DATA_ROOT, MIGRATION_STATE_DIR, MIGRATION_UPDATE_ARGS," \
			"MIGRATION_NEW_ROOT, MIGRATION_RAUC_SLOT_CLASS)"
		return 1
		;;
	esac
	seen="$seen $key"
	if [ -n "$from_env" ]; then
		overridden="$overridden $key"
	else
		used="$used $key"
	fi
}
read_settings || exit 1
# --- end of common part ---

case "${1:-}" in
slot-post-install) ;;
*)
	say "called as '${1:-}': this hook handles slot-post-install only"
	exit 1
	;;
esac
slot_class=${MIGRATION_RAUC_SLOT_CLASS:-rootfs}
# A value that cannot be a class (a blank, a slot's name with its dot) would make every slot
# "not ours": the install would go on unchecked.
case $slot_class in
*[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-]*)
	say "ERROR: MIGRATION_RAUC_SLOT_CLASS='$slot_class' is not a slot class (letters, digits," \
		"_ and - only): aborting the update"
	exit 1
	;;
esac
if [ "${RAUC_SLOT_CLASS:-}" != "$slot_class" ]; then
	say "slot ${RAUC_SLOT_NAME:-?} of class ${RAUC_SLOT_CLASS:-?}: not the root file system, nothing to do"
	exit 0
fi
if [ -n "${RAUC_SLOT_MOUNT_POINT:-}" ]; then
	new_root "$RAUC_SLOT_MOUNT_POINT" || exit 1
elif [ -n "${RAUC_SLOT_DEVICE:-}" ]; then
	new_root "$RAUC_SLOT_DEVICE" || exit 1
else
	say "neither RAUC_SLOT_MOUNT_POINT nor RAUC_SLOT_DEVICE is set: not run by RAUC?"
	exit 1
fi
run_update "$new_root_dir"
