# SPDX-License-Identifier: MIT
"""What a migration package's postinst runs on a running target (a package manager installed
or upgraded PKG; at rootfs time migration_image.bbclass does the manifest and the first boot
the rest).

In order: the image manifest is refreshed from the package fragments (like `migration
manifest`, keeping the image's level, floor and markers). If any migration is not applied,
under systemd (ROOT/run/systemd/system exists) the unit files are reloaded and the gate
migration-gate@P.service of every package P with pending migrations is stopped, which stops
the services gated on P (MIGRATION_BEFORE): they must not run while their data changes, and
the gate, active since boot, would otherwise still count as satisfied. Each service that ran is
first written down in ROOT/run/migration/stopped (a file per unit, naming the packages gating
it). Then every pending migration runs, in the global order, like `run --policy continue`
(MIGRATION_PHASE=package). Then every service written down, by this postinst or an earlier
one (failed, interrupted, killed, or that found the lock busy), whose gating packages'
migrations are all applied is started again (systemctl --no-block start) and forgotten; for a
package still pending whose gate this postinst stopped, the gate is started once, fails
(journal, `systemctl --failed`), and its services stay stopped, with a message saying which and
why (`migration status` too): any start of them fails on the gate until then. A reboot forgets
the list: the boot starts services as usual.

Exit 0 when every migration of PKG is applied: systemd.bbclass's part of the postinst, which
follows, then reloads, enables and restarts PKG's services. Exit 1 when one is not (failed,
refused, or the image refuses the device's data): the postinst exits with it, the package
manager reports the package as not configured and runs the rest of the postinst (the restart)
only on a retry (`dpkg --configure -a`, `opkg configure`). Exit 2 when systemctl fails while
the gated services are found or stopped: no migration runs while services that read the data
may be running. 3, 70, 75, 130 as for `run`. Nothing is lost: a failed script is recorded as
failed and retried by that retry, by the next package postinst and at the next boot.

--prometheus-textfile FILE: as for `run`, FILE is written last, whatever the outcome (the
postinst that migration.bbclass puts in packages does not give it).
"""

from typing import Any

from migration.commands import (
    add_lock_wait,
    add_prometheus_textfile,
    options,
    seconds,
    write_prometheus_textfile,
)

name = "postinst"
helpmsg = "a migration package's postinst on a running system: apply its migrations"

#: Like MIGRATION_BOOT_TIMEOUT's default: a hung script must not hang the package manager.
DEFAULT_TIMEOUT = 900.0


def setup_parser(parser: Any) -> None:
    parser.add_argument("--package", required=True, metavar="PKG", help="package name")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"kill a script's process group after this long (default {DEFAULT_TIMEOUT:.0f}; "
        "0: no limit)",
    )
    add_lock_wait(parser)
    add_prometheus_textfile(parser)


def run(args: Any) -> int:
    try:
        return _postinst(args)
    finally:  # no boot follows to refresh it; last, after the services are started again
        write_prometheus_textfile(args, options(args))


def _postinst(args: Any) -> int:
    import sys

    from migration import cli, runner, services
    from migration import manifest as manifest_mod
    from migration.commands import check, manifest
    from migration.files import shown
    from migration.state import State

    def say(msg: str) -> None:
        print(shown(f"migration: {msg}"), file=sys.stderr, flush=True)

    # A symlinked script is the runner's to refuse (exit 1, as run, status and the gate say),
    # not a configuration error of this command (exit 2 means systemctl failed).
    print(manifest.refresh(args.root, allow_symlinks=True), flush=True)
    loaded = manifest_mod.load(args.manifest)
    state = State(args.state_dir)
    # Services are stopped for what will run; a refused script does not (as at boot, the gate
    # reports it and keeps them from starting).
    pending = check.not_applied(args, loaded, state, refused=False) if loaded else {}
    # Reads what earlier postinsts stopped (and refuses a directory root must not trust).
    gates = services.Gates(say, args.root) if services.systemd_running(args.root) else None
    if not pending and not (gates and gates.remembered):
        return check.run(args)
    # Before anything is stopped: a signal from here on still starts again what can start.
    cli.install_signal_handlers()
    try:
        if pending:
            if gates:
                gates.stop(sorted(pending))
            opts = options(args, policy="continue", timeout=args.timeout or None,
                           lock_wait=args.lock_wait, phase="package")  # fmt: skip
            runner.run(opts)
    finally:
        if gates:
            gates.restore(check.not_applied(args, loaded, State(args.state_dir)) if loaded else {})
    return check.run(args)
