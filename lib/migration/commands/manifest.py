# SPDX-License-Identifier: MIT
"""Generate ROOT/usr/share/migration/manifest.json and the done symlink (rootfs time).

Reads the package fragments in ROOT/usr/share/migration/packages/ and the scripts really in
ROOT/etc/migration.d. Two packages shipping one name, a fragment hash that differs from the
installed file, a declared script that is missing or an undeclared one: exit 2 naming them.
"""

from typing import Any

name = "manifest"
helpmsg = "generate the image manifest from package fragments (at rootfs time)"


def setup_parser(parser: Any) -> None:
    parser.add_argument(
        "--root", dest="manifest_root", metavar="DIR", help="image root (default: global --root)"
    )


def run(args: Any) -> int:
    import os

    from migration import manifest as manifest_mod

    root = os.path.abspath(args.manifest_root) if args.manifest_root else args.root
    result = manifest_mod.generate(root)
    path = os.path.join(root, manifest_mod.MANIFEST_REL)
    print(f"{path}: {len(result['migrations'])} migrations, digest {result['digest']}")
    return 0
