# SPDX-License-Identifier: MIT
"""Exit 0 if and only if every manifest entry of package PKG is applied, else 1.

Used by the gate unit migration-gate@PKG.service, which services of the package are ordered
after (MIGRATION_BEFORE), so they do not start on data their migrations did not convert.
A package without entries in the manifest passes. Needs no lock and writes nothing.
Exit 1 with the reason also when this image cannot use the device's data (migration.compat:
an incompatible downgrade, below the upgrade floor, data older than the framework), so gated
services do not start on data they cannot read.
"""

from typing import Any, Dict, List

name = "check"
helpmsg = "exit 0 iff every migration of a package is applied"


def setup_parser(parser: Any) -> None:
    parser.add_argument("--package", required=True, metavar="PKG", help="package name")


def not_applied(manifest: Any, state: Any) -> Dict[str, List[str]]:
    """Package -> names of its manifest entries without an applied record (in name order);
    packages with everything applied are left out. Reads no record when the done stamp of the
    manifest's digest exists."""
    if state.has_done(manifest.digest):
        return {}
    out: Dict[str, List[str]] = {}
    for e in manifest.entries.values():
        if state.read_record("applied", e.sha256)[0] is None:
            out.setdefault(e.package, []).append(e.name)
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
    missing = not_applied(manifest, state).get(args.package)
    if missing:
        print(
            shown(f"migration: package {args.package}: not applied: {', '.join(missing)} "
                  "(see `migration status`)"),
            file=sys.stderr,
        )
        return 1
    return 0
