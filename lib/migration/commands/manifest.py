# SPDX-License-Identifier: MIT
"""Generate ROOT/usr/share/migration/manifest.json and the done symlink (rootfs time).

Reads the package fragments in ROOT/usr/share/migration/packages/ and the scripts really in
ROOT/etc/migration.d. Two packages shipping one name (or one fragment listing it twice), a
symlinked script (the runner refuses it), a fragment hash that differs from the
installed file, a declared script that is missing or an undeclared one: exit 2 naming them.

--compat-level N (MIGRATION_COMPAT_LEVEL) is written max'ed with the one-way levels of the
fragments; --upgrade-floor VERSION (MIGRATION_UPGRADE_FLOOR: the oldest release this image
upgrades from) and --data-marker PATH (MIGRATION_DATA_MARKERS, repeatable: absolute paths whose
existence proves that a device without migration state has data) are written when given. A floor
that is not a version or a marker that is not absolute: exit 2.

A setting not given keeps the value of the manifest being replaced (when there is a readable
one): a package installed or removed on a running device refreshes the manifest with a plain
`migration manifest` (the class's postinst), which must not drop the image's level, floor and
markers. Without a manifest (the first migration package installed at rootfs time) the settings
come from ROOT/usr/share/migration/image-settings.json, the distro's (MIGRATION_COMPAT_LEVEL,
MIGRATION_UPGRADE_FLOOR, MIGRATION_DATA_MARKERS) that the runner recipe writes, else level 0,
no floor, no markers. `--upgrade-floor ""` removes a floor.
"""

from typing import Any

name = "manifest"
helpmsg = "generate the image manifest from package fragments (at rootfs time)"


def _level(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {text!r}")
    return value


def setup_parser(parser: Any) -> None:
    parser.add_argument(
        "--root", dest="manifest_root", metavar="DIR", help="image root (default: global --root)"
    )
    parser.add_argument(
        "--compat-level", type=_level, metavar="N",
        help="the image's compatibility level (default: the current manifest's, else 0; max'ed "
        "with the one-way levels)",
    )
    parser.add_argument(
        "--upgrade-floor", metavar="VERSION",
        help="oldest release (VERSION_ID) this image upgrades from (default: the current "
        "manifest's, else none; \"\" for none)",
    )
    parser.add_argument(
        "--data-marker", action="append", metavar="PATH", dest="data_markers",
        help="absolute path proving that a device has data (repeatable; default: the current "
        "manifest's)",
    )


def run(args: Any) -> int:
    import os

    root = os.path.abspath(args.manifest_root) if args.manifest_root else args.root
    print(refresh(root, args.compat_level, args.upgrade_floor, args.data_markers))
    return 0


def refresh(root: str, level: Any = None, floor: Any = None, markers: Any = None,
            allow_symlinks: bool = False) -> str:
    """Write ROOT's manifest; a setting that is None keeps the current manifest's, or, without
    one, takes the image settings the runner package carries (the distro's, written by the
    runner recipe). `allow_symlinks`: a symlinked script is no error here (postinst: the runner
    refuses it, exit 1, as run, status and the gate do). Returns the line that says what was
    written."""
    import os

    from migration import manifest as manifest_mod
    from migration.errors import ManifestError

    path = os.path.join(root, manifest_mod.MANIFEST_REL)
    if level is None or floor is None or markers is None:
        try:
            current = manifest_mod.load(path)
        except ManifestError:
            current = None  # a damaged manifest is replaced; its settings are lost
        if current is not None:
            defaults = (current.compat_level, current.upgrade_floor, current.data_markers)
        else:
            defaults = manifest_mod.load_settings(root)
        if level is None:
            level = defaults[0]
        if floor is None:
            floor = defaults[1]
        if markers is None:
            markers = list(defaults[2])
    result = manifest_mod.generate(
        root, compat_level=level, upgrade_floor=floor, data_markers=markers,
        allow_symlinks=allow_symlinks,
    )
    extra = f", compatibility level {result['compat_level']}"
    if result.get("upgrade_floor"):
        extra += f", upgrades from {result['upgrade_floor']} or newer"
    return f"{path}: {len(result['migrations'])} migrations, digest {result['digest']}{extra}"
