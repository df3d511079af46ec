# SPDX-License-Identifier: MIT
"""Apply a new image's pending migrations to the live data while the old system still runs.

For updaters (RAUC, SWUpdate, Mender, a plain script) that have the new image's root mounted at
NEWROOT: runs NEWROOT's scripts (NEWROOT/etc/migration.d), checked against NEWROOT's manifest
(NEWROOT/usr/share/migration/manifest.json, required), on the device's real state dir (global
--state-dir, default ROOT/var/lib/migration) and data (global --root, default /; the scripts'
working directory). The image recorded in the state (records, state.json image and
applied_image) is NEWROOT's os-release. When every entry is applied, the done stamp of NEWROOT's
manifest is written, so the new image's first boot starts no process; otherwise the boot runs
what is left (the fallback). Every done stamp is removed before the first script starts: the
running old image's stamp must not vouch for data that changed under it.

The compatibility check of `run` applies with NEWROOT's manifest (upgrade floor, levels, data
markers): a refusal writes nothing and exits 3, with no hooks (the updater must abort the
install). It comes before the wait for the lock, so a busy lock (75) never hides a refusal.
Scripts see MIGRATION_PHASE=update, MIGRATION_ROOT (the data root) and
MIGRATION_IMAGE_ROOT=NEWROOT; they run under the OLD system's kernel, services and tools, with
the new image's files only below NEWROOT.

--defer-oneway leaves every one-way script (and every script ordered after the first of them)
pending for the first boot of the new image, so the old image, still the fallback if the update
is abandoned, keeps data it can read; exit 0 if everything else is applied.

--prometheus-textfile FILE: as for `run`, FILE is written at the end whatever the outcome, as
the new image sees it (its scripts, manifest and level). Without it, when every migration
applies here, the new image's first boot starts no runner and FILE keeps the old image's values.

Exit codes as `run`: 0 all applied (or deferred), 1 a script failed, was refused or is pending
(the boot retries), 2 usage/configuration (no manifest in NEWROOT, --scripts-dir or --manifest
given), 3 refused (this image cannot use the device's data), 70 internal error (a bug, or the old
system's python3 lacks python3-crypt or python3-json: nothing was checked, abort the install), 75
lock busy (not refused: the verdict comes first), 130 interrupted.
"""

from typing import Any

from migration.commands import (
    add_prometheus_textfile,
    add_run_options,
    run_settings,
    write_prometheus_textfile,
)

name = "update"
helpmsg = "apply a new image's migrations from its mounted root (at update time)"


def setup_parser(parser: Any) -> None:
    parser.add_argument("newroot", metavar="NEWROOT", help="root of the new image (mounted)")
    add_run_options(parser)
    parser.add_argument(
        "--defer-oneway",
        action="store_true",
        help="leave one-way migrations (and those after them) to the new image's first boot",
    )
    add_prometheus_textfile(parser)


def run(args: Any) -> int:
    import os

    from migration import cli, journal, runner
    from migration.errors import MigrationError

    explicit = getattr(args, "explicit_paths", [])
    if explicit:
        raise MigrationError(
            f"update takes the scripts and the manifest from NEWROOT; do not give "
            f"{' or '.join(explicit)}"
        )
    newroot = os.path.abspath(args.newroot)
    if not os.path.isdir(newroot):
        raise MigrationError(f"NEWROOT {newroot} is not a directory")
    manifest = os.path.join(newroot, cli.MANIFEST)
    if not os.path.lexists(manifest):
        raise MigrationError(
            f"no image manifest at {manifest}: update needs the new image's manifest"
        )
    opts = runner.Options(
        scripts_dir=os.path.join(newroot, cli.SCRIPTS_DIR),
        state_dir=args.state_dir,
        root=args.root,
        manifest_path=manifest,
        **run_settings(args),
        phase="update",
        image_root=newroot,
        defer_oneway=args.defer_oneway,
        journal=journal.socket_for(args.root),
    )
    if args.dry_run:
        return runner.dry_run(opts, print)
    cli.install_signal_handlers()
    try:
        return runner.run(opts)
    finally:  # the new image's first boot may start no runner: this is the fresh view
        write_prometheus_textfile(args, opts)
