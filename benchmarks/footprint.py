#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Installed size on the target: what the runner adds to an image, beside what Python costs.

Installs the runner exactly as the recipe's do_install does (recipes-core/migration/files/
migration-install.sh, bytecode compiled by the given Python, like python3-native's), and sums
its files by part. Then resolves the runner recipe's RDEPENDS on python3 packages through
OE-core's python3-manifest.json (its `rdepends`, and its `files` and `cached` globs with
INCLUDE_PYCS = "1", OE-core's default) and measures those globs in a CPython installation of
the target's minor version, the way OE-core's python3 recipe installs them (no opt-1/opt-2
bytecode, which it deletes; ELF files stripped with `strip --strip-unneeded`, as OE-core's
package split does), side by side with python3-core alone: the part every Python program on the
device pays, so what the runner's choice of Python costs is the difference.

    python3 benchmarks/footprint.py --oecore OE-CORE-CHECKOUT [--python PREFIX]

PREFIX: a CPython installation built like OE-core's (a shared libpython, extension modules as
lib-dynload/*.so), e.g. a pyenv one; default: the running interpreter's. Sizes are apparent
sizes in KiB; a file system with compression (squashfs, UBIFS) stores less.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes-core" / "migration"
MANIFEST = "meta/recipes-devtools/python/python3/python3-manifest.json"


def runner_install(python: Path, dest: Path) -> None:
    """The recipe's do_install into dest, with the recipe's paths (systemd and sysvinit both)."""
    env = dict(
        os.environ,
        D=str(dest),
        sbindir="/usr/sbin",
        libdir="/usr/lib",
        datadir="/usr/share",
        sysconfdir="/etc",
        localstatedir="/var",
        systemd_system_unitdir="/lib/systemd/system",
        MIGRATION_INIT="systemd sysvinit",
        MIGRATION_COMPILE=str(python),
    )
    script = RECIPES / "files" / "migration-install.sh"
    subprocess.run(
        ["sh", str(script), str(ROOT / "lib" / "migration"), str(RECIPES / "files")],
        env=env,
        check=True,
    )


def runner_parts(dest: Path) -> Dict[str, int]:
    """Bytes of the installed runner, by part (the wipe-request package's file counted apart)."""
    parts: Dict[str, int] = {}
    for path in sorted(p for p in dest.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = "/" + str(path.relative_to(dest))
        if "/__pycache__/" in rel:
            part = "bytecode (__pycache__)"
        elif rel.startswith("/usr/lib/migration/"):
            part = "Python sources"
        elif "/update-hooks/" in rel:
            part = "update hooks (copied into bundles)"
        elif rel.endswith("50-request-wipe"):
            part = "migration-wipe-request package"
        else:
            part = "wrapper, units, init script, docs"
        parts[part] = parts.get(part, 0) + path.stat().st_size
    return parts


def recipe_rdepends() -> List[str]:
    """The runner package's python3 RDEPENDS as the recipe states them (wrynose and later)."""
    recipe = next(RECIPES.glob("migration_*.bb")).read_text()
    match = re.search(r'^RDEPENDS:\$\{PN\} = "([^"]*)"', recipe, re.MULTILINE)
    if not match:
        raise SystemExit(f"{RECIPES}: no RDEPENDS:${{PN}} line")
    return match.group(1).split()


def load_manifest(oecore: Path) -> Dict[str, dict]:
    """OE-core's python3-manifest.json: the JSON after its '# EOC' comment block, as python3_*.bb
    reads it."""
    text = (oecore / MANIFEST).read_text()
    start = text.find("# EOC")
    if start < 0:
        raise SystemExit(f"{oecore / MANIFEST}: no '# EOC' marker")
    return json.loads(text[start + 6 :])


def closure(manifest: Dict[str, dict], packages: Iterable[str]) -> Set[str]:
    """The manifest's keys reached from python3-<key> packages through their rdepends."""
    todo = [p[len("python3-") :] for p in packages if p.startswith("python3-")]
    seen: Set[str] = set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        if key not in manifest:
            raise SystemExit(f"python3-{key} is not in OE-core's python3 manifest")
        seen.add(key)
        todo.extend(manifest[key].get("rdepends", []))
    return seen


def python_paths(prefix: Path) -> Tuple[Path, str]:
    """The interpreter of an installation prefix and its major.minor."""
    exe = prefix / "bin" / "python3"
    majmin = subprocess.run(
        [str(exe), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return exe, majmin


def package_files(entry: dict, prefix: Path, majmin: str) -> Set[Path]:
    """The files one manifest package holds in the installation at prefix (pycs included)."""
    found: Set[Path] = set()
    for pattern in entry.get("files", []) + entry.get("cached", []):
        expanded = (
            pattern.replace("${PYTHON_MAJMIN}", majmin)
            .replace("${libdir}", str(prefix / "lib"))
            .replace("${bindir}", str(prefix / "bin"))
            .replace("${includedir}", str(prefix / "include"))
            .replace("${datadir}", str(prefix / "share"))
        )
        for match in glob.glob(expanded):
            path = Path(match)
            if path.is_dir() and not path.is_symlink():
                found.update(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            elif path.is_file() and not path.is_symlink():
                found.add(path)
    return {p for p in found if ".opt-" not in p.name}


class Sizes:
    """Installed sizes: ELF files as stripped by OE-core's packaging (measured on a copy)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.cache: Dict[Path, int] = {}

    def __call__(self, path: Path) -> int:
        if path not in self.cache:
            with path.open("rb") as f:
                elf = f.read(4) == b"\x7fELF"
            if not elf:
                self.cache[path] = path.stat().st_size
            else:
                copy = self.scratch / "elf"
                shutil.copyfile(path, copy)
                subprocess.run(
                    [
                        "strip",
                        "--remove-section=.comment",
                        "--remove-section=.note",
                        "--strip-unneeded",
                        str(copy),
                    ],
                    check=True,
                )
                self.cache[path] = copy.stat().st_size
        return self.cache[path]


def kib(size: int) -> str:
    return f"{size / 1024:8.0f} KiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--oecore", type=Path, required=True, help="an OE-core checkout (its python3 manifest)"
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=Path(sys.base_prefix),
        help="CPython installation prefix to measure the python3 packages in",
    )
    args = parser.parse_args()

    exe, majmin = python_paths(args.python)
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        runner_install(exe, Path(tmp) / "image")
        parts = runner_parts(Path(tmp) / "image")
        report(args, exe, majmin, parts, Sizes(Path(tmp)))
    return 0


def report(
    args: argparse.Namespace, exe: Path, majmin: str, parts: Dict[str, int], size: Sizes
) -> None:
    """Prints the runner's parts, the python3 packages it pulls in, and the side-by-side totals."""

    manifest = load_manifest(args.oecore)
    rdepends = recipe_rdepends()
    core_keys = closure(manifest, ["python3-core"])
    all_keys = closure(manifest, rdepends)
    files: Dict[str, Set[Path]] = {
        k: package_files(manifest[k], args.python, majmin) for k in sorted(all_keys)
    }
    # libpython: python3-core's interpreter links it (OE's libpython3 package, a shlib dependency).
    libpython = {
        p
        for p in (args.python / "lib").glob(f"libpython{majmin}*.so*")
        if p.is_file() and not p.is_symlink()
    }

    def total(keys: Iterable[str]) -> int:
        paths: Set[Path] = set(libpython)
        for key in keys:
            paths |= files[key]
        return sum(size(p) for p in paths)

    print(f"runner {ROOT.name}: installed by migration-install.sh, bytecode by Python {majmin}")
    for part, nbytes in sorted(parts.items()):
        print(f"  {part:40s} {kib(nbytes)}")
    runner_total = sum(v for k, v in parts.items() if k != "migration-wipe-request package")
    print(f"  {'runner package (migration)':40s} {kib(runner_total)}")
    print()
    print(f"python3 packages (OE-core manifest, files measured in {args.python}, Python {majmin}):")
    for key in sorted(all_keys):
        package = sum(size(p) for p in files[key])
        print(f"  python3-{key:31s} {kib(package)}  ({len(files[key])} files)")
    print(f"  {'libpython' + majmin:40s} {kib(sum(size(p) for p in libpython))}")
    print()
    base = total(core_keys)
    full = total(all_keys)
    print("side by side:")
    print(f"  {'python3-core closure (any Python program)':48s} {kib(base)}")
    print(f"  {'the runner RDEPENDS closure (' + ' '.join(rdepends) + ')':48s} {kib(full)}")
    print(f"  {'  of which beyond python3-core':48s} {kib(full - base)}")
    print(f"  {'runner package':48s} {kib(runner_total)}")
    print(f"  {'image without python3 before: runner + closure':48s} {kib(runner_total + full)}")
    extra = runner_total + full - base
    print(f"  {'image with python3-core already: runner + rest':48s} {kib(extra)}")


if __name__ == "__main__":
    sys.exit(main())
