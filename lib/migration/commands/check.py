# SPDX-License-Identifier: MIT
"""Exit 0 if and only if every manifest entry of package PKG is applied, else 1.

Used by the gate unit migration-gate@PKG.service, which services of the package are ordered
after (MIGRATION_BEFORE), so they do not start on data their migrations did not convert.
A package without entries in the manifest passes. Needs no lock and writes nothing.
"Applied" is what `run` and `status` say (runner.unapplied): an entry whose script `run`
refuses (a symlink, not root's, writable by others, other bytes than the manifest's) fails the
gate too, with the reason, even when its content ran once; only the package's own scripts are
read.
Exit 1 with the reason also when this image cannot use the device's data (migration.compat:
an incompatible downgrade, below the upgrade floor, data older than the framework), so gated
services do not start on data they cannot read.
"""

from typing import Any, Dict, List

name = "check"
helpmsg = "exit 0 iff every migration of a package is applied"


def setup_parser(parser: Any) -> None:
    parser.add_argument("--package", required=True, metavar="PKG", help="package name")


def not_applied(args: Any, manifest: Any, state: Any,
                refused: bool = True) -> Dict[str, List[str]]:
    """Package -> names of its manifest entries that are not applied (in name order), the
    refused ones too unless not `refused` (what a run would run); packages with nothing to
    name are left out (runner.unapplied)."""
    from migration import runner
    from migration.commands import options

    out: Dict[str, List[str]] = {}
    for pkg, items in runner.unapplied(options(args), state, manifest).items():
        names = [i.name for i in items if refused or i.state != runner.REFUSED]
        if names:
            out[pkg] = names
    return out


def run(args: Any) -> int:
    import sys

    from migration import manifest as manifest_mod
    from migration.errors import MigrationError
    from migration.files import shown
    from migration.state import State

    manifest = manifest_mod.load(args.manifest)
    if manifest is None:
        raise MigrationError(f"no image manifest at {args.manifest}")
    state = State(args.state_dir)
    state.verify()  # the gate trusts no state dir that run would refuse
    from migration import runner
    from migration.commands import options

    verdict, _facts, _meta = runner.verdict_of(options(args), state, manifest)
    if verdict.refused:
        print(shown(f"migration: package {args.package}: this image cannot use the device's "
                    f"data ({verdict.kind}): {verdict.message}"), file=sys.stderr)
        return 1
    items = runner.unapplied(options(args), state, manifest, args.package).get(args.package)
    if not items:
        return 0
    for item in items:
        if item.state == runner.REFUSED:
            print(shown(f"migration: package {args.package}: {item.name}: refused: "
                        f"{item.reason}"), file=sys.stderr)
    missing = [i.name for i in items if i.state != runner.REFUSED]
    if missing:
        print(shown(f"migration: package {args.package}: not applied: {', '.join(missing)} "
                    "(see `migration status`)"), file=sys.stderr)
    return 1
