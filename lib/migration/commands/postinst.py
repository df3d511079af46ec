# SPDX-License-Identifier: MIT
"""What a migration package's postinst runs on a running target (a package manager installed
or upgraded PKG; at rootfs time migration_image.bbclass does the manifest and the first boot
the rest).

In order: the image manifest is refreshed from the package fragments (like `migration
manifest`, keeping the image's level, floor and markers). If any migration is not applied,
under systemd (ROOT/run/systemd/system exists) the unit files are reloaded and the gate
migration-gate@P.service of every package P with pending migrations is stopped, which stops
the services gated on P (MIGRATION_BEFORE): they must not run while their data changes, and
the gate, active since boot, would otherwise still count as satisfied. Then every pending
migration runs, in the global order, like `run --policy continue` (MIGRATION_PHASE=package).
Then, for each P: the services stopped are started again (systemctl --no-block start) if P's
migrations are now applied; else P's gate is started once, fails (journal, `systemctl
--failed`), and they stay stopped: any later start of them fails on the gate.

Exit 0 when every migration of PKG is applied: systemd.bbclass's part of the postinst, which
follows, then reloads, enables and restarts PKG's services. Exit 1 when one is not (failed,
refused, or the image refuses the device's data): the postinst exits with it, the package
manager reports the package as not configured and runs the rest of the postinst (the restart)
only on a retry (`dpkg --configure -a`, `opkg configure`). 2, 3, 70, 75 as for `run`. Nothing
is lost: a failed script is recorded as failed and retried by that retry, by the next package
postinst and at the next boot.
"""

from typing import Any

from migration.commands import seconds

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
    parser.add_argument(
        "--lock-wait",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for another runner's lock, then exit 75 (default 60)",
    )


def run(args: Any) -> int:
    import sys

    from migration import cli, runner, services
    from migration import manifest as manifest_mod
    from migration.commands import check, manifest, options
    from migration.files import shown
    from migration.state import State

    def say(msg: str) -> None:
        print(shown(f"migration: {msg}"), file=sys.stderr, flush=True)

    print(manifest.refresh(args.root), flush=True)
    loaded = manifest_mod.load(args.manifest)
    state = State(args.state_dir)
    pending = check.not_applied(loaded, state) if loaded else {}
    if pending:
        gates = services.Gates(say) if services.systemd_running(args.root) else None
        if gates:
            gates.stop(sorted(pending))
        opts = options(args, policy="continue", timeout=args.timeout or None,
                       lock_wait=args.lock_wait, phase="package")  # fmt: skip
        cli.install_signal_handlers()
        try:
            runner.run(opts)
        finally:
            if gates:
                gates.restore(check.not_applied(loaded, State(args.state_dir)))
    return check.run(args)
