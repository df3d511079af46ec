# SPDX-License-Identifier: MIT
"""The image manifest without IMAGE_CLASSES (issue 11): written at rootfs time by the migration
packages' own postinsts, as OE runs them.

OE's do_rootfs cannot run here, so the test does what it does: it installs the runner package
(the recipe's install script) into an image root, then the migration packages one by one, in
every order a package manager may choose (the runner first: they depend on it), running each
package's postinst with $D set right after its files land, like rpm does (opkg and dpkg run them
after all files are in, which is the last case of every order). The postinst is the class's own
text (classes/migration.bbclass), expanded like BitBake does.
"""

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from migration import manifest
from tools import tool

REPO = Path(__file__).resolve().parent.parent
FILES = REPO / "recipes-core" / "migration" / "files"
CLASS = REPO / "classes" / "migration.bbclass"
VALUES = {"sbindir": "/usr/sbin", "nonarch_libdir": "/usr/lib", "MIGRATION_POSTINST_PACKAGE": "x"}


def class_function(name: str) -> str:
    text = CLASS.read_text()
    match = re.search(rf"^{name}\(\) \{{\n(.*?)^\}}$", text, re.M | re.S)
    assert match, f"no shell function {name} in {CLASS}"
    out = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: VALUES[m.group(1)], match.group(1))
    assert "${" not in out, out
    return out


def scriptlet(tmp: Path, kind: str) -> Path:
    """The pkg_postinst / pkg_postrm that add_postinsts() composes (the class's snippets)."""
    first = "migration_postinst" if kind == "postinst" else "migration_refresh_manifest"
    path = tmp / kind
    if not path.exists():
        path.write_text(
            "#!/bin/sh\n" + class_function(first) + class_function("migration_rootfs_manifest")
        )
    return path


def run_scriptlet(
    tmp: Path, kind: str, root: Path, cwd: Optional[Path] = None, **extra: str
) -> subprocess.CompletedProcess:
    env = {"D": str(root), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **extra}
    return subprocess.run(
        ["sh", str(scriptlet(tmp, kind))],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def install_runner(root: Path, **settings: str) -> None:
    env = {"D": str(root), "PATH": "/usr/bin:/bin", "MIGRATION_INIT": "systemd", **settings}
    subprocess.run(
        ["sh", str(FILES / "migration-install.sh"), str(REPO / "lib" / "migration"), str(FILES)],
        env=env,
        check=True,
    )


PACKAGES: Dict[str, Dict[str, bytes]] = {
    "foo": {"50-foo-a.sh": b"#!/bin/sh\nset -e\necho a\n"},
    "bar": {"20-bar-b.sh": b"#!/bin/sh\nset -e\necho b\n", "20-bar-c.sh": b"#!/bin/sh\necho c\n"},
    "baz": {"70-baz-d.py": b"#!/usr/bin/python3\nprint('d')\n"},
}


def unpack(root: Path, package: str, scripts: Dict[str, bytes], oneway: int = 0) -> None:
    """A migration package's files, as migration.bitbake.install() writes them."""
    entries = []
    for name, data in scripts.items():
        path = root / "etc/migration.d" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755)
        entry = {"name": name, "sha256": hashlib.sha256(data).hexdigest()}
        if oneway:
            entry["oneway"] = oneway
        entries.append(entry)
    fragment = root / manifest.FRAGMENTS_DIR / f"{package}.json"
    fragment.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_json_atomic(str(fragment), manifest.fragment(package, "1.0-r0", entries))


def remove(root: Path, package: str) -> None:
    for name in PACKAGES[package]:
        (root / "etc/migration.d" / name).unlink()
    (root / manifest.FRAGMENTS_DIR / f"{package}.json").unlink()


def image_manifest(root: Path) -> Dict:
    data = json.loads((root / manifest.MANIFEST_REL).read_text())
    assert os.readlink(root / manifest.DONE_LINK_REL).endswith("/" + data["digest"])
    return data


@pytest.fixture
def reference(tmp_path: Path) -> Dict:
    """The manifest of all three packages, made once at the end (what migration_image does)."""
    root = tmp_path / "reference"
    install_runner(root, MIGRATION_COMPAT_LEVEL="2")
    for package, scripts in PACKAGES.items():
        unpack(root, package, scripts)
    subprocess.run(
        [sys.executable, "-m", "migration", "manifest", "--root", str(root), "--compat-level", "2"],
        env={**os.environ, "PYTHONPATH": str(REPO / "lib")},
        check=True,
        capture_output=True,
    )
    return image_manifest(root)


@pytest.mark.parametrize("order", list(itertools.permutations(PACKAGES)))
def test_every_install_order_leaves_the_manifest_of_the_whole_image(
    tmp_path: Path, reference: Dict, order: List[str]
) -> None:
    root = tmp_path / "rootfs"
    install_runner(root, MIGRATION_COMPAT_LEVEL="2")
    for package in order:
        unpack(root, package, PACKAGES[package])
        proc = run_scriptlet(tmp_path, "postinst", root)
        assert proc.returncode == 0, proc.stderr
    assert image_manifest(root) == reference
    # The build host's Python wrote no bytecode of its own into the image.
    assert not list(root.rglob("__pycache__"))


def test_the_distro_settings_come_from_the_runner_package(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    install_runner(
        root,
        MIGRATION_COMPAT_LEVEL="02",
        MIGRATION_UPGRADE_FLOOR="3.1",
        MIGRATION_DATA_MARKERS="/var/lib/foo /etc/foo.conf",
    )
    unpack(root, "foo", PACKAGES["foo"], oneway=4)
    assert run_scriptlet(tmp_path, "postinst", root).returncode == 0
    data = image_manifest(root)
    assert data["compat_level"] == 4  # the one-way level above the distro's 2
    assert data["upgrade_floor"] == "3.1"
    assert data["data_markers"] == ["/var/lib/foo", "/etc/foo.conf"]
    unpack(root, "bar", PACKAGES["bar"])
    assert run_scriptlet(tmp_path, "postinst", root).returncode == 0
    assert image_manifest(root)["upgrade_floor"] == "3.1"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("MIGRATION_COMPAT_LEVEL", "two", "not a whole number"),
        ("MIGRATION_UPGRADE_FLOOR", "next", "not a version"),
        ("MIGRATION_DATA_MARKERS", "var/lib/foo", "not an absolute path"),
        ("MIGRATION_DATA_MARKERS", '/var/"x"', 'holds ", \\ or a control character'),
        ("MIGRATION_DATA_MARKERS", "/var/a\x01b", "a control character"),
        ("MIGRATION_DATA_MARKERS", "/var/a\rb", "a control character"),
    ],
)
def test_invalid_distro_settings_fail_the_runner_install(
    tmp_path: Path, setting: str, value: str, message: str
) -> None:
    env = {"D": str(tmp_path / "r"), "PATH": "/usr/bin:/bin", setting: value}
    proc = subprocess.run(
        ["sh", str(FILES / "migration-install.sh"), str(REPO / "lib" / "migration"), str(FILES)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_a_package_removed_at_rootfs_time_leaves_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    install_runner(root)
    for package, scripts in PACKAGES.items():
        unpack(root, package, scripts)
        assert run_scriptlet(tmp_path, "postinst", root).returncode == 0
    remove(root, "bar")
    proc = run_scriptlet(tmp_path, "postrm", root)
    assert proc.returncode == 0, proc.stderr
    assert [m["package"] for m in image_manifest(root)["migrations"]] == ["foo", "baz"]


def test_two_packages_with_one_name_fail_the_postinst_and_so_the_image(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    install_runner(root)
    unpack(root, "foo", PACKAGES["foo"])
    assert run_scriptlet(tmp_path, "postinst", root).returncode == 0
    unpack(root, "foo-extra", {"50-foo-a.sh": b"#!/bin/sh\nset -e\necho other\n"})
    proc = run_scriptlet(tmp_path, "postinst", root)
    assert proc.returncode != 0
    assert "50-foo-a.sh" in proc.stdout + proc.stderr


def test_the_rootfs_snippet_does_nothing_on_a_running_target(tmp_path: Path) -> None:
    script = tmp_path / "only-rootfs"
    script.write_text("#!/bin/sh\n" + class_function("migration_rootfs_manifest") + "echo after\n")
    proc = subprocess.run(
        ["sh", str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert (proc.returncode, proc.stdout) == (0, "after\n")
    shellcheck = tool("shellcheck", "apt-get install shellcheck")
    proc = subprocess.run(
        [shellcheck, "--shell=sh", str(script)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


def test_only_the_runner_in_the_image_runs_whatever_the_build_environment(tmp_path: Path) -> None:
    """do_rootfs runs in the build dir: a `migration` package or an `argparse.py` there, or
    PYTHON* variables of the build, must not decide what runs (adversary finding)."""
    root = tmp_path / "rootfs"
    install_runner(root)
    unpack(root, "foo", PACKAGES["foo"])
    cwd = tmp_path / "builddir"
    (cwd / "migration").mkdir(parents=True)
    (cwd / "migration" / "__init__.py").write_text("raise SystemExit('SHADOWED')\n")
    (cwd / "argparse.py").write_text("raise SystemExit('SHADOWED')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "json.py").write_text("raise SystemExit('SHADOWED')\n")
    proc = run_scriptlet(
        tmp_path, "postinst", root, cwd=cwd, PYTHONPATH=str(elsewhere), PYTHONSTARTUP="/nonexistent"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SHADOWED" not in proc.stdout + proc.stderr
    assert image_manifest(root)["migrations"][0]["name"] == "50-foo-a.sh"


def test_without_a_runner_in_the_image_the_postinst_says_so(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    unpack(root, "foo", PACKAGES["foo"])
    proc = run_scriptlet(tmp_path, "postinst", root)
    assert proc.returncode != 0
    assert "No module named 'migration'" in proc.stderr
