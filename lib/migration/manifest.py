# SPDX-License-Identifier: MIT
"""The image's list of expected migrations (written at rootfs time, read on the target).

Each package that ships migrations carries a fragment written at build time by the class,
`/usr/share/migration/packages/<pkg>.json`:
`{"format": 1, "package": PKG, "version": "PV-PR", "migrations": [{"name", "sha256"}...]}`;
an entry of a one-way migration also carries `"oneway": LEVEL` (an integer >= 1).
At rootfs time `migration manifest --root IMAGE` checks the fragments against the files really in
IMAGE/etc/migration.d and writes `/usr/share/migration/manifest.json`:
`{"format": 1, "digest": HEX, "compat_level": N, "migrations": [{"name", "sha256", "package",
"version"}...]}` (sorted by name; digest: see digest(), the sha256 of the canonical JSON of the
migrations list, and of the verdict's settings when they say more than the list; one-way
entries also carry "oneway", inside the digest; entries without it hash as before), with
`"upgrade_floor": VERSION` and `"data_markers": [PATH...]` only when set (see migration.compat;
additions keep format 1: a 0.1.0 runner ignores them), plus the symlink
`/usr/share/migration/done -> /var/lib/migration/done/<digest>`, dangling until the runner has
applied every entry; the boot unit's `ConditionPathExists=!/usr/share/migration/done` then skips
the runner entirely. On the target, a script whose content differs from its manifest entry, or
that the manifest does not list, is refused as tampered.
"""

import contextlib
import json
import os
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from migration import files
from migration.compat import plausible_version
from migration.errors import ManifestError
from migration.scripts import discover, invalid_name_reason, sha256
from migration.state import atomic_write, dump_json, is_sha256

FORMAT = 1
#: Largest manifest or fragment read (a manifest of 10000 migrations is about 2 MiB).
DEFAULT_PATH = "/usr/share/migration/manifest.json"
#: Relative to the image root.
FRAGMENTS_DIR = "usr/share/migration/packages"
MANIFEST_REL = "usr/share/migration/manifest.json"
SETTINGS_REL = "usr/share/migration/image-settings.json"
"""The distro's image settings (compat_level, upgrade_floor, data_markers), written by the runner
recipe: the defaults of a manifest generated without them and without a manifest to keep them
from (the migration packages' postinst at rootfs time)."""
SCRIPTS_REL = "etc/migration.d"
DONE_LINK_REL = "usr/share/migration/done"
#: Absolute target of the done symlink (the default state dir on the target).
DONE_DIR = "/var/lib/migration/done"

__all__ = [
    "DEFAULT_PATH",
    "Entry",
    "Manifest",
    "ManifestError",
    "digest",
    "fragment",
    "generate",
    "load",
    "write_json_atomic",
]


class Entry(NamedTuple):
    name: str
    sha256: str
    package: str
    version: str
    oneway: int = 0  # compatibility level of a one-way migration; 0: not one-way


class Manifest(NamedTuple):
    path: str
    digest: str
    entries: Dict[str, Entry]  # by name, in name order
    file_sha256: str = ""  # sha256 of the file's bytes this was parsed from (the no-op key)
    #: The image's compatibility level: max of the manifest's compat_level and every entry's
    #: one-way level (a hand-written manifest may omit the former).
    compat_level: int = 0
    upgrade_floor: str = ""  # oldest release this image upgrades from; "" when none
    data_markers: Tuple[str, ...] = ()  # absolute paths that prove the device has data


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON durably and atomically (temp file, fsync, rename, fsync dir)."""
    atomic_write(path, dump_json(obj, indent=1))  # read by people; written once per image


def digest(migrations: List[Dict[str, Any]], compat_level: Optional[int] = None,
           upgrade_floor: str = "", data_markers: Sequence[str] = ()) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of what decides whether this image
    may skip the runner: the migrations list and the settings of the compatibility verdict.

    The done stamp is named by the digest, and a present stamp skips the runner, the verdict
    included. So two images with the same migrations but another upgrade floor (or level, or
    data markers) must not share a stamp: a release with a floor would otherwise boot, without
    a check, on the data of an older release below it that left the stamp. A manifest that says
    nothing beyond its migrations (no floor, no markers, the level its one-way entries imply)
    hashes its list alone, as runner 0.1.0 and 0.2.0 did."""
    implied = max([0] + [int(m.get("oneway", 0)) for m in migrations])
    level = implied if compat_level is None else compat_level
    if level == implied and not upgrade_floor and not data_markers:
        material: Any = migrations
    else:
        material = {"compat_level": level, "data_markers": list(data_markers),
                    "migrations": migrations, "upgrade_floor": upgrade_floor}
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return sha256(canonical.encode()).hexdigest()


def digest_of(document: Dict[str, Any]) -> str:
    """The digest a manifest document must carry: digest() of its migrations and settings."""
    return digest(document.get("migrations", []), document.get("compat_level"),
                  document.get("upgrade_floor", ""), document.get("data_markers", ()))


def _check_entry(where: str, name: Any, sha: Any) -> None:
    if not isinstance(name, str) or invalid_name_reason(name):
        reason = invalid_name_reason(name) if isinstance(name, str) else "not a string"
        raise ManifestError(f"{where}: invalid migration name {name!r}: {reason}")
    if not isinstance(sha, str) or not is_sha256(sha):
        raise ManifestError(f"{where}: {name}: sha256 must be 64 lower-case hex digits")


def _is_level(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_oneway(where: str, name: Any, entry: Dict[str, Any]) -> int:
    """The entry's one-way level (0 when it has none); ManifestError unless an integer >= 1."""
    if "oneway" not in entry:
        return 0
    level = entry["oneway"]
    if not _is_level(level, 1):
        raise ManifestError(f"{where}: {name}: oneway must be an integer >= 1, not {level!r}")
    return int(level)


def fragment(
    package: str,
    version: str,
    entries: Iterable[Union[Dict[str, Any], "tuple[str, str]", "tuple[str, str, int]"]],
) -> Dict[str, Any]:
    """A package's fragment from (name, sha256[, oneway]) tuples or {"name", "sha256"[,
    "oneway"]} dicts; "oneway" (the level of a one-way migration, >= 1) is kept when given and
    not 0 or None."""
    if not isinstance(package, str) or not package:
        raise ManifestError(f"invalid package name {package!r}")
    migrations = []
    for entry in entries:
        if isinstance(entry, dict):
            item = dict(entry)
        else:
            item = {"name": entry[0], "sha256": entry[1]}
            if len(entry) > 2:
                item["oneway"] = entry[2]  # type: ignore[misc]
        if item.get("oneway") in (0, None):
            item.pop("oneway", None)
        name, sha = item.get("name"), item.get("sha256")
        _check_entry(f"package {package}", name, sha)
        m: Dict[str, Any] = {"name": name, "sha256": sha}
        level = _check_oneway(f"package {package}", name, item)
        if level:
            m["oneway"] = level
        migrations.append(m)
    migrations.sort(key=lambda m: os.fsencode(m["name"]))
    names = [m["name"] for m in migrations]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ManifestError(f"package {package} lists {', '.join(dups)} more than once")
    return {"format": FORMAT, "package": package, "version": str(version), "migrations": migrations}


def _read_json(path: str, raw: Optional[List[bytes]] = None) -> Any:
    """The JSON document at `path` (a regular file of at most files.MANIFEST_MAX bytes); its
    bytes are appended to `raw` when given."""
    try:
        data = files.read_bytes(path, files.MANIFEST_MAX, follow=True)
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {files.why_unreadable(e)}") from None
    if raw is not None:
        raw.append(data)
    try:
        return files.load_json(data)
    except ValueError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None


def _text(where: str, key: str, value: Any) -> str:
    """A package or version string: printable, one line (it is printed by status)."""
    if not isinstance(value, str) or files.shown(value) != value or len(value) > 255:
        raise ManifestError(f"{where}: {key} {files.shown(repr(value))[:80]} is not a printable "
                            "string of at most 255 characters")
    return value


def _read_fragment(path: str) -> Dict[str, Any]:
    obj = _read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("format"), int):
        raise ManifestError(f"{path}: not a migration fragment (no format)")
    if obj["format"] > FORMAT:
        raise ManifestError(f"{path}: format {obj['format']} is newer than this tool ({FORMAT})")
    package, version = obj.get("package"), obj.get("version")
    if not isinstance(package, str) or not package or not isinstance(version, str):
        raise ManifestError(f"{path}: package and version must be non-empty strings")
    _text(path, "package", package)
    _text(path, "version", version)
    migrations = obj.get("migrations")
    if not isinstance(migrations, list):
        raise ManifestError(f"{path}: migrations must be a list")
    for m in migrations:
        if not isinstance(m, dict):
            raise ManifestError(f"{path}: each migration must be an object")
        _check_entry(path, m.get("name"), m.get("sha256"))
        _check_oneway(path, m.get("name"), m)
    return obj


def _check_top(where: str, compat_level: Any, upgrade_floor: Any,
               data_markers: Any) -> Tuple[int, str, Tuple[str, ...]]:
    """Validated (compat_level, upgrade_floor, data_markers); ManifestError naming the bad one."""
    if not _is_level(compat_level, 0):
        raise ManifestError(f"{where}compat_level must be an integer >= 0, not {compat_level!r}")
    if not isinstance(upgrade_floor, str) or (upgrade_floor and
                                              not plausible_version(upgrade_floor)):
        raise ManifestError(
            f"{where}upgrade floor {upgrade_floor!r} is not a version (expected e.g. 2.1 or "
            "5.0.4: a digit first, then letters, digits and . + ~ _ : -)"
        )
    if isinstance(data_markers, str) or not isinstance(data_markers, (list, tuple)):
        raise ManifestError(f"{where}data markers must be a list of absolute paths")
    for marker in data_markers:
        if not isinstance(marker, str) or not marker.startswith("/") or "\n" in marker:
            raise ManifestError(f"{where}data marker {marker!r} is not an absolute path")
    return int(compat_level), upgrade_floor, tuple(data_markers)


def generate(
    root: str,
    compat_level: int = 0,
    upgrade_floor: str = "",
    data_markers: Sequence[str] = (),
    allow_symlinks: bool = False,
) -> Dict[str, Any]:
    """Build and write `<root>/usr/share/migration/manifest.json` and the done symlink from the
    fragments and the files really in `<root>/etc/migration.d`; returns the manifest.

    `compat_level` (MIGRATION_COMPAT_LEVEL) is written max'ed with every one-way level of the
    entries; `upgrade_floor` (MIGRATION_UPGRADE_FLOOR) and `data_markers`
    (MIGRATION_DATA_MARKERS, absolute paths) are written only when set (see migration.compat).

    Raises ManifestError when two packages ship one name (naming both) or a fragment lists one
    twice, when a script is a symlink (the runner would refuse it; unless `allow_symlinks`: a
    package postinst on a device leaves the refusal to the runner), when a fragment's hash
    differs from the installed file, when a declared script is missing, when the scripts dir
    holds a migration that no fragment declares, or when the floor is not a version or a marker
    not an absolute path.
    """
    compat_level, upgrade_floor, markers = _check_top("", compat_level, upgrade_floor,
                                                      list(data_markers))
    frag_dir = os.path.join(root, FRAGMENTS_DIR)
    try:
        frag_names = sorted(n for n in os.listdir(frag_dir) if n.endswith(".json"))
    except FileNotFoundError:
        frag_names = []
    except OSError as e:
        raise ManifestError(f"cannot read {frag_dir}: {e.strerror}") from None
    declared: Dict[str, Entry] = {}
    fragment_of: Dict[str, str] = {}  # name -> the fragment that declared it
    for fname in frag_names:
        path = os.path.join(frag_dir, fname)
        frag = _read_fragment(path)
        for m in frag["migrations"]:
            entry = Entry(m["name"], m["sha256"], frag["package"], frag["version"],
                          int(m.get("oneway", 0)))
            other = declared.get(entry.name)
            if other is not None:
                raise ManifestError(_duplicate(entry, other, path, fragment_of[entry.name]))
            declared[entry.name] = entry
            fragment_of[entry.name] = path
    scripts_dir = os.path.join(root, SCRIPTS_REL)
    if os.path.isdir(scripts_dir) or declared:
        # Every script is read, whoever owns it (the runner refuses by owner, not this);
        # a symlink is followed, and named below.
        scripts, _warnings = discover(scripts_dir, refuse_unsafe=False)
    else:
        scripts = []
    found = {s.name: s for s in scripts}
    problems = [f"{s.path} is a symlink: the runner refuses symlinked scripts (as root); "
                "install the script itself" for s in scripts if s.symlink and not allow_symlinks]
    for name, entry in declared.items():
        script = found.get(name)
        if script is None:
            problems.append(f"{name} (package {entry.package}) is missing from {scripts_dir}")
        elif script.refusal:
            problems.append(f"{script.path} {script.refusal}")
        elif script.sha256 != entry.sha256:
            problems.append(
                f"{name}: package {entry.package} declares sha256 {entry.sha256}, "
                f"but {script.path} has {script.sha256}"
            )
    for name, script in found.items():
        if name not in declared:
            problems.append(f"{script.path} is not declared by any package fragment")
    if problems:
        raise ManifestError("; ".join(problems))
    migrations: List[Dict[str, Any]] = []
    for e in sorted(declared.values(), key=lambda e: os.fsencode(e.name)):
        m: Dict[str, Any] = {
            "name": e.name, "sha256": e.sha256, "package": e.package, "version": e.version
        }
        if e.oneway:
            m["oneway"] = e.oneway
        migrations.append(m)
    level = max([compat_level] + [e.oneway for e in declared.values()])
    manifest: Dict[str, Any] = {
        "format": FORMAT, "digest": digest(migrations, level, upgrade_floor, markers),
        "compat_level": level,
    }
    if upgrade_floor:
        manifest["upgrade_floor"] = upgrade_floor
    if markers:
        manifest["data_markers"] = list(markers)
    manifest["migrations"] = migrations
    path = os.path.join(root, MANIFEST_REL)
    _refuse_outside(root, os.path.dirname(path))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, manifest)
    except OSError as e:
        raise ManifestError(f"cannot write {path}: {e.strerror}") from None
    link = os.path.join(root, DONE_LINK_REL)
    try:
        _replace_symlink(link, f"{DONE_DIR}/{manifest['digest']}")
    except OSError as e:
        raise ManifestError(f"cannot write the done link {link}: {e.strerror}") from None
    return manifest


def _duplicate(entry: Entry, other: Entry, path: str, other_path: str) -> str:
    """Why a name declared twice fails the manifest, naming where."""
    if path == other_path:
        return f"migration {entry.name} is listed twice in {path} (package {entry.package})"
    if entry.package == other.package:
        return (f"migration {entry.name} is declared by package {entry.package} in two "
                f"fragments: {other_path} and {path}")
    return (f"migration {entry.name} is shipped by two packages: {other.package} and "
            f"{entry.package}")


def _refuse_outside(root: str, path: str) -> None:
    """ManifestError when `path`, its symlinks followed, is not inside `root`: at rootfs time
    the build host writes the manifest, and an image's absolute symlink (usr/share/migration ->
    /usr/share/...) would otherwise point that write at the host's own files."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise ManifestError(
            f"{path} resolves to {real}, outside the image root {root} (a symlink in the image "
            "points out of it): the manifest is not written there"
        )


def _replace_symlink(link: str, target: str) -> None:
    tmp = f"{link}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, link)


def load_settings(root: str) -> Tuple[int, str, Tuple[str, ...]]:
    """The image settings ROOT's runner package carries (:data:`SETTINGS_REL`), validated; the
    built-in defaults (level 0, no floor, no markers) when there is no such file."""
    path = os.path.join(root, SETTINGS_REL)
    if not os.path.lexists(path):
        return 0, "", ()
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a JSON object")
    return _check_top(
        f"{path}: ",
        data.get("compat_level", 0),
        data.get("upgrade_floor", ""),
        data.get("data_markers", []),
    )


def load(path: str) -> Optional[Manifest]:
    """The manifest at `path`, None when there is none; ManifestError when it is unreadable,
    invalid, or its digest does not match its content."""
    if not os.path.lexists(path):
        return None
    raw: List[bytes] = []
    obj = _read_json(path, raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("format"), int):
        raise ManifestError(f"{path}: not a migration manifest (no format)")
    if obj["format"] > FORMAT:
        raise ManifestError(f"{path}: format {obj['format']} is newer than this runner ({FORMAT})")
    migrations = obj.get("migrations")
    if not isinstance(migrations, list):
        raise ManifestError(f"{path}: migrations must be a list")
    entries: Dict[str, Entry] = {}
    for m in migrations:
        if not isinstance(m, dict):
            raise ManifestError(f"{path}: each migration must be an object")
        _check_entry(path, m.get("name"), m.get("sha256"))
        entries[m["name"]] = Entry(
            m["name"], m["sha256"], _text(path, "package", m.get("package", "")),
            _text(path, "version", m.get("version", "")), _check_oneway(path, m["name"], m),
        )
    level, floor, markers = _check_top(
        f"{path}: ", obj.get("compat_level", 0), obj.get("upgrade_floor", ""),
        obj.get("data_markers", []),
    )
    written_level = level if "compat_level" in obj else None
    if obj.get("digest") != digest(migrations, written_level, floor, markers):
        raise ManifestError(f"{path}: digest does not match its content (damaged or edited)")
    level = max([level] + [e.oneway for e in entries.values()])
    return Manifest(path, obj["digest"], entries, sha256(raw[0]).hexdigest(), level, floor,
                    markers)
