# SPDX-License-Identifier: MIT
"""The update-time hooks (RAUC, SWUpdate, Mender) and the example wipe-request hook, on the host.

Each test builds image trees with the layer's migration-install.sh (the recipe's install
description), scripts and per-package fragments as the class writes them, and the manifest from
migration.manifest.generate (the image build's step). A *device* is the data that survives an
update (its /var); booting an image moves that /var into the image's tree and runs the image's
own `migration run` there, as migration.service does. An update runs the hook installed in the
NEW image (usr/share/migration/update-hooks) exactly as its framework calls it (arguments,
environment), with the new image's tree as the mounted slot, while the old image "runs":
MIGRATION_DATA_ROOT and MIGRATION_STATE_DIR point at the running tree and its state dir.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pytest

from migration import manifest
from tools import tool

REPO = Path(__file__).resolve().parents[1]
FILES = REPO / "recipes-core" / "migration" / "files"
SOURCES = FILES / "update-hooks"
INSTALL = FILES / "migration-install.sh"
PKG = REPO / "lib" / "migration"
HOOK_DIR = "usr/share/migration/update-hooks"
HOOKS = ("rauc-hook.sh", "swupdate-postinst.sh", "ArtifactInstall_Leave_50_migration")
RUNS = "var/lib/app/runs"
CONF = "etc/migration/update-hook.conf"

@dataclass
class Mig:
    """A migration script of a test image."""

    package: str
    name: str
    text: str
    priority: str = "50"
    oneway: int = 0

    @property
    def installed_name(self) -> str:
        return f"{self.priority}-{self.package}-{self.name}"


def recorder(tag: str, extra: str = "") -> str:
    """A script that logs its name, phase and attempt, and where it ran, under the data root.

    `tag` makes the content (so the identity) unique.
    """
    return (
        f"#!/bin/sh\n# {tag}\n"
        'mkdir -p "$MIGRATION_ROOT/var/lib/app"\n'
        'echo "$MIGRATION_NAME $MIGRATION_PHASE $MIGRATION_ATTEMPT" >>"$MIGRATION_ROOT/'
        f'{RUNS}"\n'
        'printf "%s\\n" "root=$MIGRATION_ROOT" "image=$MIGRATION_IMAGE_ROOT" "cwd=$(pwd)" '
        '>"$MIGRATION_ROOT/var/lib/app/env-$MIGRATION_NAME"\n' + extra
    )


# Moves the data to its new place (v2's layout); needs the new system running? No: data only.
MOVE = recorder(
    "move",
    'if [ -f "$MIGRATION_ROOT/var/lib/app/old.conf" ]; then\n'
    '    mv "$MIGRATION_ROOT/var/lib/app/old.conf" "$MIGRATION_ROOT/var/lib/app/new.conf"\n'
    "fi\n",
)
# Can only run on the new system itself (e.g. it talks to a daemon of the new image).
BOOT_ONLY = recorder(
    "boot-only",
    '[ "$MIGRATION_PHASE" = boot ] || { echo "needs the new system running" >&2; exit 1; }\n',
)

V1 = [Mig("base", "init.sh", recorder("v1-init"), "10")]
V2 = [*V1, Mig("app", "move.sh", MOVE, "50")]


def install_runner(root: Path) -> None:
    env = {
        "PATH": os.environ["PATH"], "D": str(root), "sbindir": "/usr/sbin",
        "libdir": "/usr/lib", "datadir": "/usr/share", "sysconfdir": "/etc",
        "localstatedir": "/var", "systemd_system_unitdir": "/lib/systemd/system",
        "MIGRATION_PYTHON": "/usr/bin/python3",
    }  # fmt: skip
    res = subprocess.run(["sh", str(INSTALL), str(PKG), str(FILES)], env=env,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr


def make_image(
    dest: Path, version: str, migs: Iterable[Mig], compat_level: int = 0,
    upgrade_floor: str = "", data_markers: Sequence[str] = (),
) -> Path:
    """An image tree: runner, os-release, scripts, fragments, manifest (no /var: the device's)."""
    install_runner(dest)
    # The wipe-request example is a package of its own (opt-in): not in these images.
    (dest / "etc/migration/incompatible.d/50-request-wipe").unlink()
    (dest / "usr/lib").mkdir(parents=True, exist_ok=True)
    (dest / "usr/lib/os-release").write_text(f'ID=test\nVERSION_ID="{version}"\n')
    (dest / "etc/os-release").symlink_to("../usr/lib/os-release")  # as Debian and OE do
    by_pkg: Dict[str, List[Mig]] = {}
    for m in migs:
        path = dest / "etc/migration.d" / m.installed_name
        path.write_text(m.text)
        path.chmod(0o755)
        by_pkg.setdefault(m.package, []).append(m)
    for pkg, items in by_pkg.items():
        entries = [(m.installed_name, sha(m.text), m.oneway) for m in items]
        frag = manifest.fragment(pkg, f"{version}-r0", entries)
        manifest.write_json_atomic(str(dest / "usr/share/migration/packages" / f"{pkg}.json"), frag)
    manifest.generate(str(dest), compat_level=compat_level, upgrade_floor=upgrade_floor,
                      data_markers=tuple(data_markers))  # fmt: skip
    return dest


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def digest_of(image: Path) -> str:
    return json.loads((image / "usr/share/migration/manifest.json").read_text())["digest"]


class Device:
    """The persistent data of one device (its /var), inside the tree of the image it runs."""

    def __init__(self, image: Path, var: Optional[Dict[str, str]] = None) -> None:
        self.root = image
        (image / "var").mkdir()
        for rel, text in (var or {}).items():
            p = image / "var" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)

    @property
    def state(self) -> Path:
        return self.root / "var/lib/migration"

    @property
    def conf(self) -> Path:
        """The running image's settings file of the update hooks."""
        return self.root / CONF

    def move_to(self, image: Path) -> None:
        """The reboot into another image: the same /var under the new root."""
        if image != self.root:
            os.rename(self.root / "var", image / "var")
            self.root = image

    def boot(self, image: Path) -> "subprocess.CompletedProcess[str]":
        """Boot `image` on this device's data: what migration.service runs."""
        self.move_to(image)
        return migration(image, "--root", str(image), "run")

    def stamp_exists(self) -> bool:
        """ConditionPathExists=!/usr/share/migration/done would skip the unit (no process)."""
        link = self.root / "usr/share/migration/done"
        return (self.root / os.readlink(link).lstrip("/")).is_file()

    def runs(self) -> List[str]:
        p = self.root / RUNS
        return p.read_text().splitlines() if p.exists() else []

    def snapshot(self) -> Dict[str, Tuple[bytes, int]]:
        """Every file of the data with its content and mtime (ns): to prove nothing changed."""
        out = {}
        for p in sorted((self.root / "var").rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(self.root))] = (p.read_bytes(), p.stat().st_mtime_ns)
        return out


def migration(image: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    """The image's own command (its wrapper finds its own package)."""
    return subprocess.run([sys.executable, "-I", str(image / "usr/sbin/migration"), *args],
                          capture_output=True, text=True, check=False)  # fmt: skip


def run_hook(
    hook: str, device: Device, new: Path, extra_env: Optional[Dict[str, str]] = None,
    args: Optional[List[str]] = None, drop_env: Sequence[str] = (), wrapper: Sequence[str] = (),
) -> "subprocess.CompletedProcess[str]":
    """Run the NEW image's copy of `hook` as its framework would, against `new` (its root,
    mounted), with the running device's data root and state dir, and its settings file (the
    running image's /etc/migration/update-hook.conf; `drop_env`: settings not in the
    environment), through `wrapper` (a command that runs its arguments) when given."""
    path = new / HOOK_DIR / hook
    env = {
        "PATH": os.environ["PATH"],
        "MIGRATION_DATA_ROOT": str(device.root),
        "MIGRATION_STATE_DIR": str(device.state),
        "MIGRATION_HOOK_CONF": str(device.conf),
    }
    if hook == "rauc-hook.sh":
        # RAUC's slot hook interface (docs/reference.rst, src/update_handler.c).
        argv = args if args is not None else ["slot-post-install"]
        env.update(
            RAUC_SYSTEM_COMPATIBLE="meta-migration test", RAUC_SLOT_NAME="rootfs.1",
            RAUC_SLOT_STATE="inactive", RAUC_SLOT_CLASS="rootfs", RAUC_SLOT_TYPE="ext4",
            RAUC_SLOT_DEVICE="/dev/disk/by-partlabel/rootfs-b", RAUC_SLOT_BOOTNAME="B",
            RAUC_SLOT_PARENT="", RAUC_SLOT_MOUNT_POINT=str(new),
            RAUC_IMAGE_NAME="rootfs.ext4", RAUC_IMAGE_CLASS="rootfs",
            RAUC_MOUNT_PREFIX="/run/mount/rauc",
        )  # fmt: skip
    elif hook == "swupdate-postinst.sh":
        # A "shellscript": <script> postinst <data attribute>.
        argv = args if args is not None else ["postinst", str(new)]
    else:
        # A Mender state script: no arguments.
        argv = args if args is not None else []
        env["MIGRATION_NEW_ROOT"] = str(new)
    env.update(extra_env or {})
    for name in drop_env:
        del env[name]
    return subprocess.run([*wrapper, str(path), *argv], env=env, capture_output=True, text=True,
                          check=False, cwd=str(new.parent))  # fmt: skip


@pytest.fixture
def v1_device(tmp_path: Path) -> Device:
    """A device that booted image 1.0 (its migration applied) with application data."""
    v1 = make_image(tmp_path / "v1", "1.0", V1)
    device = Device(v1, {"lib/app/old.conf": "setting=1\n"})
    res = device.boot(v1)
    assert res.returncode == 0, res.stderr
    assert device.runs() == ["10-base-init.sh boot 1"]
    return device


def test_the_three_hooks_share_one_common_part() -> None:
    """The hooks are copied into bundles one by one, so each carries the common code: it must
    not drift between them."""
    parts = set()
    for hook in HOOKS:
        text = (SOURCES / hook).read_text()
        m = re.search(r"^# --- common part.*?^# --- end of common part ---$", text, re.M | re.S)
        assert m, hook
        parts.add(m.group(0))
    assert len(parts) == 1


def test_hooks_are_installed_executable(tmp_path: Path) -> None:
    install_runner(tmp_path)
    installed = sorted(p.name for p in (tmp_path / HOOK_DIR).iterdir())
    assert installed == sorted(HOOKS)
    for hook in HOOKS:
        path = tmp_path / HOOK_DIR / hook
        assert path.stat().st_mode & 0o777 == 0o755
        assert path.read_bytes() == (SOURCES / hook).read_bytes()
    wipe = tmp_path / "etc/migration/incompatible.d/50-request-wipe"
    assert wipe.stat().st_mode & 0o777 == 0o755
    # The hooks' settings file: every setting documented, none set (the defaults apply).
    conf = tmp_path / CONF
    assert conf.stat().st_mode & 0o777 == 0o644
    text = conf.read_text()
    assert all(not line or line.startswith("#") for line in text.splitlines())
    for key in HOOK_SETTINGS:
        assert f"#{key}=" in text, key


def test_shellcheck_clean() -> None:
    tool("shellcheck", "apt-get install shellcheck")
    files = [str(SOURCES / h) for h in HOOKS] + [str(FILES / "hooks" / "request-wipe")]
    res = subprocess.run(["shellcheck", "-s", "sh", *files], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("hook", HOOKS)
def test_update_time_run_applies_the_new_migrations_and_the_boot_runs_nothing(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    res = run_hook(hook, device, v2)
    assert res.returncode == 0, res.stderr
    assert "the new image's migrations are applied" in res.stderr
    # The new script ran once, at update time, against the live data, from the new root.
    assert device.runs() == ["10-base-init.sh boot 1", "50-app-move.sh update 1"]
    data = device.root / "var/lib/app"
    assert (data / "new.conf").read_text() == "setting=1\n"
    assert not (data / "old.conf").exists()
    env = (data / "env-50-app-move.sh").read_text().splitlines()
    assert env == [f"root={device.root}", f"image={v2}", f"cwd={device.root}"]
    assert (device.state / "applied" / sha(MOVE)).is_file()
    # Nothing written into the new root (signed content): no state, no bytecode.
    assert not (v2 / "var").exists()
    assert not list(v2.rglob("__pycache__"))
    # The reboot into v2: the unit's condition already holds, and a run has nothing to do.
    device.move_to(v2)
    assert device.stamp_exists()
    assert (device.state / "done" / digest_of(v2)).is_file()
    res = device.boot(v2)
    assert res.returncode == 0, res.stderr
    assert device.runs() == ["10-base-init.sh boot 1", "50-app-move.sh update 1"]


@pytest.mark.parametrize("hook", HOOKS)
def test_a_failing_update_time_migration_lets_the_update_go_on_and_the_boot_retries(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    device = v1_device
    boot_only = Mig("app", "needs-system.sh", BOOT_ONLY, "60")
    v2 = make_image(tmp_path / "v2", "2.0", [*V2, boot_only])
    res = run_hook(hook, device, v2)
    assert res.returncode == 0, res.stderr
    assert "WARNING: not every migration of the new image could be applied now (exit 1" in (
        res.stderr
    )
    assert "needs the new system running" in res.stderr
    assert (device.state / "failed" / sha(BOOT_ONLY)).is_file()
    assert not list((device.state / "done").iterdir())
    device.move_to(v2)
    assert not device.stamp_exists()  # the unit runs at the first boot of v2
    res = device.boot(v2)
    assert res.returncode == 0, res.stderr
    assert device.runs()[1:] == [
        "50-app-move.sh update 1", "60-app-needs-system.sh update 1",
        "60-app-needs-system.sh boot 2",
    ]  # fmt: skip
    assert device.stamp_exists()


@pytest.mark.parametrize("hook", HOOKS)
def test_a_refused_update_aborts_the_install_and_touches_nothing(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    """Exit 3 of the runner (here: the device's release 1.0 is below the new image's floor)
    makes the hook fail, so the updater aborts the installation."""
    device = v1_device
    v3 = make_image(tmp_path / "v3", "3.0", [*V2, Mig("app", "v3.sh", recorder("v3"), "70")],
                    upgrade_floor="2.0")  # fmt: skip
    before = device.snapshot()
    res = run_hook(hook, device, v3)
    assert res.returncode == 1, res.stderr
    assert "REFUSED: the new image cannot use this device's data" in res.stderr
    assert "2.0" in res.stderr  # the runner's message names the floor
    assert device.snapshot() == before


@pytest.mark.parametrize("hook", HOOKS)
def test_a_refused_update_aborts_the_install_even_while_the_lock_is_busy(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    """A runner holding the lock (say a `migration run` started by hand) must not turn the
    refusal into exit 75, which the hooks take for "the first boot retries"."""
    from migration.state import State

    device = v1_device
    v3 = make_image(tmp_path / "v3", "3.0", V2, upgrade_floor="2.0")
    before = device.snapshot()
    other = State(str(device.state))
    other.lock(0)
    try:
        res = run_hook(hook, device, v3, {"MIGRATION_UPDATE_ARGS": "--lock-wait 0.2"})
    finally:
        other.unlock()
    assert res.returncode == 1, res.stderr
    assert "REFUSED: the new image cannot use this device's data" in res.stderr
    assert device.snapshot() == before


# What each exit code of the runner makes of the install: (hook's exit, its words).
EXIT_CODES = {
    0: (0, "the new image's migrations are applied"),
    1: (0, "the update goes on and the new image's first boot retries them"),
    75: (0, "the update goes on and the new image's first boot retries them"),
    3: (1, "REFUSED: the new image cannot use this device's data"),
    70: (1, "could not check the update (internal error"),
    2: (1, "ERROR: the migration runner failed (exit 2"),
    64: (1, "ERROR: the migration runner failed (exit 64"),
    130: (1, "ERROR: the migration runner failed (exit 130"),
}


@pytest.mark.parametrize("hook", HOOKS)
def test_exit_code_table(hook: str, v1_device: Device, tmp_path: Path) -> None:
    """Which exit codes of the runner leave the migrations to the boot (the install goes on)
    and which abort the install (Mender too: 0 or 1 only)."""
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    fake = v2 / "usr/sbin/fake-migration"
    fake.write_text("import os, sys\nsys.exit(int(os.environ['FAKE_RC']))\n")
    seen = {}
    for rc in EXIT_CODES:
        res = run_hook(hook, v1_device, v2, {"MIGRATION_COMMAND": "/usr/sbin/fake-migration",
                                             "FAKE_RC": str(rc)})  # fmt: skip
        words = next((w for _, w in EXIT_CODES.values() if w in res.stderr), res.stderr)
        seen[rc] = (res.returncode, words)
    assert seen == EXIT_CODES


#: A python3 as OE installs it from a subset of its packages (python3-manifest.json): any import
#: outside the allowed modules fails as it does when the package is not installed.
REDUCED_PYTHON = """\
import runpy, sys
ALLOWED = set(sys.argv[1].split(","))

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top != "migration" and top not in ALLOWED and top not in sys.builtin_module_names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
args = sys.argv[2:]
while args[0].startswith("-"):  # the hook's -I -B: this interpreter has them already
    args.pop(0)
sys.argv = args
runpy.run_path(args[0], run_name="__main__")
"""


def reduced_python(tmp_path: Path, modules: Iterable[str]) -> str:
    script = tmp_path / "reduced-python.py"
    script.write_text(REDUCED_PYTHON)
    fake = tmp_path / "python3-reduced"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -I -B {script} {",".join(modules)} "$@"\n')
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("packages", [("core",), ("core", "crypt")])
def test_an_old_python3_without_the_runners_packages_aborts_the_install(
    hook: str, packages: Tuple[str, ...], v1_device: Device, tmp_path: Path
) -> None:
    """The update path needs python3-core, python3-crypt and python3-json on the OLD system;
    without one the runner exits 70 naming the package, and the install is aborted (nothing
    was checked, so this is no "the boot retries")."""
    from test_imports import CORE, CRYPT

    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    modules = CORE | (CRYPT if "crypt" in packages else set())
    before = device.snapshot()
    res = run_hook(hook, device, v2, {"MIGRATION_PYTHON": reduced_python(tmp_path, modules)})
    assert res.returncode == 1, res.stderr
    missing = "python3-json" if "crypt" in packages else "python3-crypt"
    assert f"(OE-core package {missing}; the runner needs python3-core" in res.stderr
    assert "could not check the update (internal error" in res.stderr
    assert "Traceback" not in res.stderr
    assert device.snapshot() == before


def test_python3_core_crypt_and_json_are_enough_for_the_update(
    v1_device: Device, tmp_path: Path
) -> None:
    from test_imports import CORE, CRYPT, JSON

    v2 = make_image(tmp_path / "v2", "2.0", V2)
    python = reduced_python(tmp_path, CORE | CRYPT | JSON)
    res = run_hook("rauc-hook.sh", v1_device, v2, {"MIGRATION_PYTHON": python})
    assert res.returncode == 0, res.stderr
    assert v1_device.runs()[-1] == "50-app-move.sh update 1"


def test_a_runner_that_cannot_load_is_70(tmp_path: Path) -> None:
    """The wrapper maps what fails before cli.main (a damaged install, a syntax the old
    system's python3 does not know) to 70 too, never to Python's own 1."""
    install_runner(tmp_path)
    (tmp_path / "usr/lib/migration/migration/cli.py").write_text("def main(:\n")
    res = migration(tmp_path, "--version")
    assert res.returncode == 70, res.stderr
    assert "migration: error: cannot load the runner from" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("old_version", ["v1.0", "²:1.0"])
def test_a_device_release_not_comparable_with_the_floor_is_refused(
    hook: str, old_version: str, tmp_path: Path
) -> None:
    """dpkg's order puts `v1.0` after `2.0`, and `²` made int() raise (exit 1: "the update goes
    on"): a device release that cannot be compared with the new image's floor is refused."""
    v1 = make_image(tmp_path / "v1", old_version, V1)
    device = Device(v1, {"lib/app/old.conf": "setting=1\n"})
    assert device.boot(v1).returncode == 0
    v3 = make_image(tmp_path / "v3", "3.0", V2, upgrade_floor="2.0")
    before = device.snapshot()
    res = run_hook(hook, device, v3)
    assert res.returncode == 1, res.stderr
    assert "REFUSED: the new image cannot use this device's data" in res.stderr
    assert "cannot be compared with the upgrade floor 2.0" in res.stderr
    assert device.snapshot() == before


def test_downgrades_across_and_within_compatibility_levels(
    v1_device: Device, tmp_path: Path
) -> None:
    """v1 -> v2 (one-way, level 1) -> v1 is refused; v2 -> v2.1 -> v2 (same level) goes on and
    runs nothing."""
    device = v1_device
    oneway = Mig("app", "to-user.sh", recorder("to-user"), "80", oneway=1)
    v2 = make_image(tmp_path / "v2", "2.0", [*V2, oneway])
    v21 = make_image(tmp_path / "v21", "2.1", [*V2, oneway, Mig("app", "v21.sh",
                     recorder("v21"), "85")])  # fmt: skip
    v2_again = make_image(tmp_path / "v2-again", "2.0", [*V2, oneway])
    v1_again = make_image(tmp_path / "v1-again", "1.0", V1)
    assert run_hook("rauc-hook.sh", device, v2).returncode == 0
    assert device.boot(v2).returncode == 0
    assert run_hook("rauc-hook.sh", device, v21).returncode == 0
    assert device.boot(v21).returncode == 0
    runs = device.runs()
    assert runs[-1] == "85-app-v21.sh update 1"
    # Within the level: the downgrade installs, nothing runs, the boot starts no process.
    res = run_hook("rauc-hook.sh", device, v2_again)
    assert res.returncode == 0, res.stderr
    device.move_to(v2_again)
    assert device.stamp_exists()
    assert device.boot(v2_again).returncode == 0
    assert device.runs() == runs
    # Across the one-way migration: refused, nothing touched.
    before = device.snapshot()
    res = run_hook("rauc-hook.sh", device, v1_again)
    assert res.returncode == 1, res.stderr
    assert "REFUSED" in res.stderr
    assert device.snapshot() == before


def test_hook_arguments_of_other_calls(v1_device: Device, tmp_path: Path) -> None:
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    # RAUC: another slot class is not ours; another hook call is not handled (RAUC's example).
    res = run_hook("rauc-hook.sh", device, v2, {"RAUC_SLOT_CLASS": "appfs"})
    assert res.returncode == 0 and "not the root file system" in res.stderr
    res = run_hook("rauc-hook.sh", device, v2, args=["install-check"])
    assert res.returncode == 1 and "handles slot-post-install only" in res.stderr
    # SWUpdate: preinst and postfailure do nothing; the "postinstall" type gets only the data.
    for phase in ("preinst", "postfailure"):
        assert run_hook("swupdate-postinst.sh", device, v2, args=[phase, str(v2)]).returncode == 0
    assert device.runs() == ["10-base-init.sh boot 1"]
    res = run_hook("swupdate-postinst.sh", device, v2, args=["postinst"])
    assert res.returncode == 1 and "where is the new root?" in res.stderr
    res = run_hook("swupdate-postinst.sh", device, v2, args=[str(v2)])
    assert res.returncode == 0, res.stderr
    assert device.runs()[-1] == "50-app-move.sh update 1"
    # A new image without the runner: nothing to do.
    bare = tmp_path / "bare"
    bare.mkdir()
    res = run_hook("rauc-hook.sh", device, v2, {"RAUC_SLOT_MOUNT_POINT": str(bare)})
    assert res.returncode == 0 and "has no migration runner, nothing to do" in res.stderr
    # One without a manifest (not built with migration_image): left to its first boot.
    (v2 / "usr/share/migration/manifest.json").unlink()
    before = device.snapshot()
    res = run_hook("rauc-hook.sh", device, v2)
    assert res.returncode == 0 and "has no migration manifest" in res.stderr
    assert device.snapshot() == before


def test_mender_hook_finds_the_new_root_from_the_bootloader_environment(
    v1_device: Device, tmp_path: Path
) -> None:
    """Without MIGRATION_NEW_ROOT: RootfsPartA/B from mender.conf, mender_boot_part from
    fw_printenv, as Mender's rootfs-image module does (here the "partitions" are directories)."""
    device = v1_device
    parts = tmp_path / "parts"
    parts.mkdir()
    v2 = make_image(parts / "rootfs3", "2.0", V2)
    conf = tmp_path / "etc-mender"
    conf.mkdir()
    (conf / "mender.conf").write_text(json.dumps(
        {"RootfsPartA": str(parts / "rootfs2"), "RootfsPartB": str(v2)}, indent=2))  # fmt: skip
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    printenv = fakebin / "fw_printenv"
    printenv.write_text('#!/bin/sh\n[ "$1" = mender_boot_part ] && echo mender_boot_part=3\n')
    printenv.chmod(0o755)
    env = {
        "PATH": f"{fakebin}:{os.environ['PATH']}", "MENDER_CONF_DIR": str(conf),
        "MENDER_DATASTORE_DIR": str(tmp_path / "nowhere"), "MIGRATION_NEW_ROOT": "",
    }  # fmt: skip
    res = run_hook("ArtifactInstall_Leave_50_migration", device, v2, env)
    assert res.returncode == 0, res.stderr
    assert device.runs()[-1] == "50-app-move.sh update 1"
    # A boot partition that is neither A nor B: the update is aborted (exit 1, Mender's abort).
    printenv.write_text('#!/bin/sh\necho mender_boot_part=5\n')
    res = run_hook("ArtifactInstall_Leave_50_migration", device, v2, env)
    assert res.returncode == 1 and "is neither" in res.stderr


# Runs its arguments in a private mount namespace whose /dev is the directory $1 (with the host's
# null, zero, random and urandom bound into it): device links without touching the host's /dev.
PRIVATE_DEV = r"""
dev=$1
shift
for node in null zero random urandom; do
    : >"$dev/$node" && mount --bind "/dev/$node" "$dev/$node" || exit 97
done
mount --rbind "$dev" /dev || exit 97
exec "$@"
"""


def test_mender_hook_resolves_partition_links_as_mender_does(
    v1_device: Device, tmp_path: Path
) -> None:
    """RootfsPartA/B as /dev/disk/by-partlabel or by-partuuid links (as integrators write them
    when the device name is not stable): Mender resolves them to the partition, whose trailing
    number mender_boot_part holds (3.4: installer/partitions.go maybeResolveLink); the hook took
    the link's own name (rootfs-b, a UUID), found neither slot, and aborted the update. Here /dev
    is private (unshare), its links point at directories named like partitions."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux) for a private /dev")
    device = v1_device
    parts = tmp_path / "parts"
    parts.mkdir()
    v2 = make_image(parts / "mmcblk0p3", "2.0", V2)
    dev = tmp_path / "dev"
    (dev / "disk/by-partlabel").mkdir(parents=True)
    (dev / "disk/by-partuuid").mkdir(parents=True)
    (dev / "disk/by-partlabel/rootfs-a").symlink_to(parts / "mmcblk0p2")
    (dev / "disk/by-partuuid/0a6697f4-03").symlink_to(v2)
    conf = tmp_path / "etc-mender"
    conf.mkdir()
    (conf / "mender.conf").write_text(json.dumps(
        {"RootfsPartA": "/dev/disk/by-partlabel/rootfs-a",
         "RootfsPartB": "/dev/disk/by-partuuid/0a6697f4-03"}))  # fmt: skip
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    printenv = fakebin / "fw_printenv"
    printenv.write_text('#!/bin/sh\necho mender_boot_part=3\n')
    printenv.chmod(0o755)
    env = {
        "PATH": f"{fakebin}:{os.environ['PATH']}", "MENDER_CONF_DIR": str(conf),
        "MENDER_DATASTORE_DIR": str(tmp_path / "nowhere"), "MIGRATION_NEW_ROOT": "",
    }  # fmt: skip
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_DEV, "sh",
               str(dev)]  # fmt: skip
    res = run_hook("ArtifactInstall_Leave_50_migration", device, v2, env, wrapper=wrapper)
    assert res.returncode == 0, res.stderr
    assert device.runs()[-1] == "50-app-move.sh update 1"
    # No number in the environment: not a partition, so no match by accident (every name ends
    # in "" after a non-digit): the update is aborted.
    printenv.write_text("#!/bin/sh\necho mender_boot_part=\n")
    res = run_hook("ArtifactInstall_Leave_50_migration", device, v2, env, wrapper=wrapper)
    assert res.returncode == 1 and "is not a partition number" in res.stderr, res.stderr


@pytest.mark.parametrize("hook", HOOKS)
def test_a_manifest_that_is_no_file_aborts_the_install(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    """manifest.json -> /dev/zero: the hooks took it for "no manifest" (install, no check) and
    the runner ran out of memory (exit 1); now the runner refuses it (2): abort."""
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    mf = v2 / "usr/share/migration/manifest.json"
    mf.unlink()
    mf.symlink_to("/dev/zero")
    before = v1_device.snapshot()
    res = run_hook(hook, v1_device, v2)
    assert res.returncode == 1, res.stderr
    assert ": not a regular file" in res.stderr and "aborting the update" in res.stderr
    assert v1_device.snapshot() == before


def test_mender_hook_mounts_a_ubi_volume(v1_device: Device, tmp_path: Path) -> None:
    """RootfsPartA/B = ubi0_0/ubi0_1 (UBI volumes on raw NAND): neither a directory nor a block
    device; the hook mounts the next one with `mount -t ubifs -o ro ubi0_1 DIR` (here a fake
    mount that copies the image tree, and a fake umount that empties the directory)."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    conf = tmp_path / "etc-mender"
    conf.mkdir()
    (conf / "mender.conf").write_text(json.dumps({"RootfsPartA": "ubi0_0",
                                                  "RootfsPartB": "ubi0_1"}))  # fmt: skip
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    log = tmp_path / "mount.log"
    tools = {
        "fw_printenv": 'echo mender_boot_part=1\n',
        "mount": f'echo "$*" >>{log}\nfor dir; do :; done\ncp -a {v2}/. "$dir"\n',
        "umount": f'echo "umount $*" >>{log}\nrm -rf "$1"/*\n',
    }
    for name, body in tools.items():
        (fakebin / name).write_text("#!/bin/sh\n" + body)
        (fakebin / name).chmod(0o755)
    env = {
        "PATH": f"{fakebin}:{os.environ['PATH']}", "MENDER_CONF_DIR": str(conf),
        "MENDER_DATASTORE_DIR": str(tmp_path / "nowhere"), "MIGRATION_NEW_ROOT": "",
        "TMPDIR": str(tmp_path),
    }  # fmt: skip
    res = run_hook("ArtifactInstall_Leave_50_migration", device, v2, env)
    assert res.returncode == 0, res.stderr
    mount, umount = log.read_text().splitlines()
    assert re.fullmatch(rf"-t ubifs -o ro ubi0_1 {tmp_path}/migration-newroot\.\w+", mount)
    assert umount == f"umount {mount.split()[-1]}"
    assert device.runs()[-1] == "50-app-move.sh update 1"
    assert not list(tmp_path.glob("migration-newroot.*"))


def test_swupdate_hook_mounts_a_block_device_read_only(v1_device: Device, tmp_path: Path) -> None:
    """The data attribute names the new root's partition: mounted read-only, unmounted after."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    img = tmp_path / "rootfs-b.ext4"
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    if not os.path.exists(mkfs) or os.geteuid() != 0:
        pytest.skip("needs mkfs.ext4 (e2fsprogs) and root for a loop device")
    subprocess.run([mkfs, "-q", "-d", str(v2), str(img), "64M"], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    if loop.returncode != 0:
        pytest.skip(f"no loop device here: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    try:
        res = run_hook("swupdate-postinst.sh", device, v2, args=["postinst", dev],
                       extra_env={"TMPDIR": str(tmp_path)})  # fmt: skip
        mounts = Path("/proc/mounts").read_text()
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert res.returncode == 0, res.stderr
    assert device.runs()[-1] == "50-app-move.sh update 1"
    env = (device.root / "var/lib/app/env-50-app-move.sh").read_text()
    assert f"image={tmp_path}/migration-newroot." in env
    assert dev not in mounts
    assert not list(tmp_path.glob("migration-newroot.*"))


# ------------------------------------------------------------------------------------------
# The wipe-request hook


WIPE = FILES / "hooks" / "request-wipe"


def run_wipe(tmp_path: Path, **env: str) -> "subprocess.CompletedProcess[str]":
    osr = tmp_path / "os-release"
    osr.write_text('NAME="Test"\nVERSION_ID="1.0"\nBUILD_ID=20261125\n')
    full = {"PATH": os.environ["PATH"], "MIGRATION_PHASE": "boot",
            "MIGRATION_STATE_DIR": str(tmp_path / "state"), "MIGRATION_OS_RELEASE": str(osr),
            **env}  # fmt: skip
    return subprocess.run(["sh", "-e", str(WIPE)], env=full, capture_output=True, text=True,
                          check=False)  # fmt: skip


def test_request_wipe_writes_the_flag_with_verdict_image_and_message(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    msg = "state level 1 > image level 0:\nboot an image of level >= 1, or wipe the data"
    res = run_wipe(tmp_path, MIGRATION_VERDICT="downgrade", MIGRATION_MESSAGE=msg)
    assert res.returncode == 0, res.stderr
    flag = tmp_path / "state/wipe-requested"
    head, _, body = flag.read_text().partition("\n\n")
    fields = dict(line.split("=", 1) for line in head.splitlines())
    assert fields["verdict"] == "downgrade"
    assert (fields["version_id"], fields["build_id"]) == ("1.0", "20261125")
    assert float(fields["requested_uptime"]) > 0
    assert body == msg + "\n"
    assert "nothing was deleted" in res.stderr
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["wipe-requested"]


def test_request_wipe_flag_path_and_verdicts_are_settings(tmp_path: Path) -> None:
    flag = tmp_path / "data" / ".wipe"
    res = run_wipe(tmp_path, MIGRATION_VERDICT="below-floor", MIGRATION_WIPE_FLAG=str(flag),
                   MIGRATION_WIPE_VERDICTS="downgrade")  # fmt: skip
    assert res.returncode == 0
    assert "not in MIGRATION_WIPE_VERDICTS" in res.stderr
    assert not flag.exists()
    res = run_wipe(tmp_path, MIGRATION_VERDICT="below-floor", MIGRATION_WIPE_FLAG=str(flag))
    assert res.returncode == 0
    assert flag.read_text().startswith("verdict=below-floor\n")
    res = run_wipe(tmp_path)
    assert res.returncode == 1 and "MIGRATION_VERDICT is not set" in res.stderr


def test_a_refused_boot_runs_the_wipe_request_hook(tmp_path: Path) -> None:
    """The boot phase: v1 boots on data a one-way migration of v2 converted; the runner refuses
    (exit 3) and runs incompatible.d, where migration-wipe-request put the example."""
    v1 = make_image(tmp_path / "v1", "1.0", V1)
    oneway = Mig("app", "to-user.sh", recorder("to-user"), "80", oneway=1)
    v2 = make_image(tmp_path / "v2", "2.0", [*V2, oneway])
    device = Device(v2, {"lib/app/old.conf": "setting=1\n"})
    assert device.boot(v2).returncode == 0
    # The package migration-wipe-request in v1.
    hook = v1 / "etc/migration/incompatible.d/50-request-wipe"
    shutil.copy2(WIPE, hook)
    hook.chmod(0o755)
    before = device.snapshot()
    runs = device.runs()
    res = device.boot(v1)
    assert res.returncode == 3, res.stderr
    assert "hook 50-request-wipe" in res.stderr
    flag = device.state / "wipe-requested"
    text = flag.read_text()
    assert text.startswith("verdict=downgrade\nversion_id=1.0\n")
    assert device.runs() == runs
    after = device.snapshot()
    del after[str(flag.relative_to(device.root))]
    assert after == before


BUSYBOX_APPLETS = (
    "cat", "cut", "dirname", "echo", "head", "id", "mkdir", "mktemp", "mount", "mv", "rm", "rmdir",
    "sed", "stat", "sync", "umount",
)  # fmt: skip


def test_hooks_need_only_busybox_and_python(v1_device: Device, tmp_path: Path) -> None:
    """OE images often have busybox as /bin/sh and their only tools: the hooks run with busybox
    sh and a PATH of busybox applets (plus python3) and nothing else."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir()
    for applet in BUSYBOX_APPLETS:
        (bindir / applet).symlink_to(busybox)
    (bindir / "python3").symlink_to(sys.executable)
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    device.conf.write_text("# busybox\nMIGRATION_UPDATE_ARGS='--lock-wait 5'\n")
    env = {
        "PATH": str(bindir), "MIGRATION_DATA_ROOT": str(device.root),
        "MIGRATION_STATE_DIR": str(device.state), "RAUC_SLOT_CLASS": "rootfs",
        "RAUC_SLOT_MOUNT_POINT": str(v2), "MIGRATION_HOOK_CONF": str(device.conf),
    }  # fmt: skip
    res = subprocess.run([busybox, "sh", str(v2 / HOOK_DIR / "rauc-hook.sh"), "slot-post-install"],
                         env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert device.runs()[-1] == "50-app-move.sh update 1"
    flag = tmp_path / "flag"
    res = subprocess.run(
        [busybox, "sh", "-e", str(WIPE)], capture_output=True, text=True, check=False,
        env={"PATH": str(bindir), "MIGRATION_VERDICT": "predates", "MIGRATION_MESSAGE": "m",
             "MIGRATION_ROOT": str(v2), "MIGRATION_WIPE_FLAG": str(flag)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert flag.read_text().startswith("verdict=predates\nversion_id=2.0\nbuild_id=\n")


def test_deferred_one_way_migrations_keep_the_old_image_as_a_fallback(
    v1_device: Device, tmp_path: Path
) -> None:
    """MIGRATION_UPDATE_ARGS="--defer-oneway": the one-way migration waits for the new image's
    first boot, so a rollback to the old image (updater fallback) still finds data it can use."""
    device = v1_device
    oneway = Mig("app", "to-user.sh", recorder("to-user"), "80", oneway=1)
    v2 = make_image(tmp_path / "v2", "2.0", [*V2, oneway])
    v1_again = make_image(tmp_path / "v1-again", "1.0", V1)
    res = run_hook("ArtifactInstall_Leave_50_migration", device, v2,
                   {"MIGRATION_UPDATE_ARGS": "--defer-oneway"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "deferred to the first boot" in res.stderr
    assert device.runs()[1:] == ["50-app-move.sh update 1"]
    # The new image does not come up; the updater rolls back: the old image still boots.
    res = device.boot(v1_again)
    assert res.returncode == 0, res.stderr
    # The next try of the new image runs the one-way migration at its first boot.
    res = device.boot(v2)
    assert res.returncode == 0, res.stderr
    assert device.runs()[1:] == ["50-app-move.sh update 1", "80-app-to-user.sh boot 1"]


# ------------------------------------------------------------------------------------------
# The hooks' settings file (/etc/migration/update-hook.conf of the running system)

HOOK_SETTINGS = (
    "MIGRATION_PYTHON", "MIGRATION_COMMAND", "MIGRATION_DATA_ROOT", "MIGRATION_STATE_DIR",
    "MIGRATION_UPDATE_ARGS", "MIGRATION_NEW_ROOT", "MIGRATION_RAUC_SLOT_CLASS",
)  # fmt: skip


@pytest.mark.parametrize("hook", HOOKS)
def test_settings_come_from_the_running_systems_file_and_the_environment_wins(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    """RAUC, SWUpdate and Mender pass no environment of ours to a hook: the running system's
    file carries the settings (here every one the test needs, none in the environment)."""
    device = v1_device
    oneway = Mig("app", "to-user.sh", recorder("to-user"), "80", oneway=1)
    v2 = make_image(tmp_path / "v2", "2.0", [*V2, oneway])
    device.conf.write_text(
        "# the device's settings\n\n"
        f"MIGRATION_DATA_ROOT={device.root}\n"
        f'MIGRATION_STATE_DIR="{device.state}"\n'
        "MIGRATION_UPDATE_ARGS=--defer-oneway --lock-wait 5\n"
        "MIGRATION_RAUC_SLOT_CLASS=rootfs"  # no newline at the end: still read
    )
    # An interpreter (from the environment) that runs the runner only on the device's data
    # and state dir: a hook that ignored the file must not update this machine's own /.
    guard = tmp_path / "python-guard"
    argv = tmp_path / "argv"
    guard.write_text(
        f'#!/bin/sh\necho "$*" >{argv}\n'
        f'case " $* " in *" --root {device.root} --state-dir {device.state} update "*) ;;\n'
        '*) echo "guard: not the device\'s data root and state dir" >&2; exit 99 ;;\nesac\n'
        f'exec {sys.executable} "$@"\n'
    )
    guard.chmod(0o755)
    env = {"MIGRATION_PYTHON": str(guard)}
    drop = ("MIGRATION_DATA_ROOT", "MIGRATION_STATE_DIR")
    res = run_hook(hook, device, v2, env, drop_env=drop)
    assert res.returncode == 0, res.stderr
    assert argv.read_text().endswith(f" update {v2} --defer-oneway --lock-wait 5\n")
    assert (f"settings from {device.conf}: MIGRATION_DATA_ROOT MIGRATION_STATE_DIR "
            "MIGRATION_UPDATE_ARGS MIGRATION_RAUC_SLOT_CLASS\n") in res.stderr  # fmt: skip
    assert "80-app-to-user.sh: deferred to the first boot" in res.stderr
    assert device.runs()[1:] == ["50-app-move.sh update 1"]
    # The environment overrides the file, also with an empty value (the default).
    res = run_hook(hook, device, v2, {**env, "MIGRATION_UPDATE_ARGS": ""}, drop_env=drop)
    assert res.returncode == 0, res.stderr
    assert "that the environment overrides: MIGRATION_UPDATE_ARGS\n" in res.stderr
    assert device.runs()[1:] == ["50-app-move.sh update 1", "80-app-to-user.sh update 1"]


HOSTILE = {
    "command substitution": ("MIGRATION_UPDATE_ARGS=$(touch {pwned})\n", "line 1: the value"),
    "backquotes": ("MIGRATION_PYTHON=`touch {pwned}`\n", "line 1: the value"),
    "unknown key": ("# ok\nMIGRATION_TIMEOUT=5\n", "line 2: unknown setting MIGRATION_TIMEOUT"),
    "shell syntax": ("export MIGRATION_UPDATE_ARGS=--defer-oneway\n", "line 1: not KEY=VALUE"),
    "a command": ("touch {pwned}\n", "line 1: not KEY=VALUE"),
    "set twice": ("MIGRATION_UPDATE_ARGS=\nMIGRATION_UPDATE_ARGS=--x\n", "line 2: "
                  "MIGRATION_UPDATE_ARGS is set twice"),
    "NUL byte": ("MIGRATION_UPDATE_ARGS=--defer\0-oneway\n", "holds control or non-ASCII bytes"),
    "escape sequence": ("MIGRATION_UPDATE_ARGS=\x1b[2J--defer-oneway\n",
                        "line 1: control or non-ASCII bytes"),
    "non-ASCII byte": ("MIGRATION_COMMAND=/usr/sbin/migr\xe9tion\n",
                       "line 1: control or non-ASCII bytes"),
    "CR line end": ("MIGRATION_UPDATE_ARGS=--defer-oneway\r\n", "line 1: control or non-ASCII"),
    # A blank at either end of a value is invisible, and the value would not resolve (no
    # interpreter "python3 ", no slot class "rootfs "): the install would go on unchecked.
    "trailing blank": (
        "MIGRATION_PYTHON=python3 \n",
        "line 1: the value of MIGRATION_PYTHON begins or ends with a blank",
    ),
    "slot class with a trailing blank": (
        "MIGRATION_RAUC_SLOT_CLASS=rootfs \n",
        "line 1: the value of MIGRATION_RAUC_SLOT_CLASS begins",
    ),
    "leading blank in quotes": (
        'MIGRATION_COMMAND=" /usr/sbin/migration"\n',
        "line 1: the value of MIGRATION_COMMAND begins or ends",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_settings_file_is_refused_before_anything_runs(
    case: str, v1_device: Device, tmp_path: Path
) -> None:
    """The file is parsed, never sourced: no command in it runs, and a line the parser does
    not take aborts the update (exit 1) rather than updating with a setting ignored."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    pwned = tmp_path / "pwned"
    text, words = HOSTILE[case]
    device.conf.write_bytes(text.format(pwned=pwned).encode("latin-1"))
    before = device.snapshot()
    res = run_hook("rauc-hook.sh", device, v2)
    assert res.returncode == 1, res.stderr
    assert f"{device.conf}: {words}" in res.stderr or words in res.stderr, res.stderr
    assert "not updating with a setting ignored" in res.stderr
    assert "running:" not in res.stderr  # the runner never started
    assert not pwned.exists()
    assert device.snapshot() == before


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_refuses_a_settings_file_others_can_write(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    """MIGRATION_PYTHON is a command the hook runs as root: a file (or its directory) a local
    user could write is refused, as the runner refuses such scripts; so is a file named by
    MIGRATION_HOOK_CONF that does not exist (a setting silently ignored)."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    before = device.snapshot()
    device.conf.chmod(0o666)
    res = run_hook(hook, device, v2)
    assert res.returncode == 1 and "is writable by group or others" in res.stderr, res.stderr
    device.conf.chmod(0o644)
    device.conf.parent.chmod(0o777)
    res = run_hook(hook, device, v2)
    assert res.returncode == 1 and "is writable by group or others" in res.stderr, res.stderr
    device.conf.parent.chmod(0o755)
    res = run_hook(hook, device, v2, {"MIGRATION_HOOK_CONF": str(tmp_path / "nothing.conf")})
    assert res.returncode == 1 and "does not exist" in res.stderr, res.stderr
    assert device.snapshot() == before


def attack_dir(tmp_path: Path, name: str) -> Path:
    """A directory of an unprivileged user (uid 65534), as on a data partition."""
    udir = tmp_path / name
    udir.mkdir()
    os.chown(udir, 65534, 65534)
    return udir


def roots_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    os.chown(path, 0, 0)
    return path


@pytest.mark.parametrize("hook", HOOKS)
def test_a_settings_file_that_is_a_symlink_is_refused(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    """The settings file must be the file itself: a symlink is refused wherever it points (here
    to root's own file, mode 0644, in a directory everyone can write with the sticky bit, as
    /tmp): whoever can change a directory on the way to the file could swap what is read."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target = roots_file(shared / "update-hook.conf", "MIGRATION_UPDATE_ARGS=--defer-oneway\n")
    device.conf.unlink()
    device.conf.symlink_to(target)
    before = device.snapshot()
    res = run_hook(hook, device, v2)
    assert res.returncode == 1, res.stderr
    assert f"{device.conf}: is a symlink" in res.stderr
    assert "not updating with a setting ignored" in res.stderr
    assert "running:" not in res.stderr
    assert device.snapshot() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="owners and modes are checked when run as root")
@pytest.mark.parametrize("hook", HOOKS)
def test_every_directory_from_the_root_down_to_the_settings_file_is_checked(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    """Not only the file's own directory: whoever can rename any directory on the way (or the
    directory a symlinked directory leads to) can put another file in its place between the
    check and the read. Each must be root's and closed to group and others; a directory with
    the sticky bit (as /tmp, above these test trees) is safe for root's entries in it."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    etc = device.root / "etc"
    before = device.snapshot()
    etc.chmod(0o777)
    res = run_hook(hook, device, v2)
    assert res.returncode == 1, res.stderr
    assert f"{etc} is writable by group or others (mode 777)" in res.stderr
    etc.chmod(0o755)
    os.chown(etc, 65534, 65534)
    res = run_hook(hook, device, v2)
    assert res.returncode == 1 and f"{etc} is owned by uid 65534, not root" in res.stderr
    os.chown(etc, 0, 0)
    # A symlinked directory is followed, and where it leads is checked.
    open_dir = tmp_path / "open"
    (open_dir / "migration").mkdir(parents=True)
    open_dir.chmod(0o777)
    os.rename(device.conf.parent, open_dir / "migration")
    device.conf.parent.symlink_to(open_dir / "migration")
    res = run_hook(hook, device, v2)
    assert res.returncode == 1 and f"{open_dir} is writable by group or others" in res.stderr
    assert "running:" not in res.stderr
    assert device.snapshot() == before
    open_dir.chmod(0o755)
    device.conf.write_text("MIGRATION_UPDATE_ARGS=--lock-wait 5\n")
    res = run_hook(hook, device, v2)
    assert res.returncode == 0, res.stderr
    assert f"settings from {device.conf}: MIGRATION_UPDATE_ARGS" in res.stderr
    assert device.runs()[-1] == "50-app-move.sh update 1"


#: The attacker: swaps two names of its directory (an open fd of it, taken while root) for ever.
SWAPPER = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
a, b = sys.argv[2].encode(), sys.argv[3].encode()
while True:
    libc.renameat2(fd, a, fd, b, 2)  # RENAME_EXCHANGE
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the attacker is another uid: needs root")
@pytest.mark.parametrize("way", ["symlinked file", "directory above"])
def test_a_user_racing_the_hook_never_runs_code_as_root(
    way: str, v1_device: Device, tmp_path: Path
) -> None:
    """A user who can write a directory on the way to the settings file swaps root's file with
    one naming the user's program as MIGRATION_PYTHON, over and over while the hook runs: the
    hook refuses the file every time, and the program never runs (it did in about one run in
    four when only the file's own directory was checked, and the file read again by name)."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    udir = attack_dir(tmp_path, "user")
    pwned = tmp_path / "pwned"
    evil_python = udir / "python"
    evil_python.write_text(f"#!/bin/sh\necho $(id -u) >{pwned}\n")
    evil_python.chmod(0o755)
    evil = f"MIGRATION_PYTHON={evil_python}\n"
    harmless = "MIGRATION_UPDATE_ARGS=--lock-wait 5\n"
    if way == "symlinked file":
        roots_file(udir / "conf", harmless)
        (udir / "evil").write_text(evil)
        device.conf.unlink()
        device.conf.symlink_to(udir / "conf")
        conf, names = device.conf, ("conf", "evil")
    else:
        (udir / "sub").mkdir()
        conf = roots_file(udir / "sub" / "update-hook.conf", harmless)
        (udir / "other").mkdir()
        (udir / "other" / "update-hook.conf").write_text(evil)
        conf, names = udir / "sub" / "update-hook.conf", ("sub", "other")
    for p in udir.rglob("*"):
        if p.owner() != "root" or p.name not in ("conf", "sub", "update-hook.conf"):
            os.lchown(p, 65534, 65534)
    if way == "directory above":
        os.chown(udir / "sub", 0, 0)
        os.chown(udir / "sub" / "update-hook.conf", 0, 0)
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(udir), *names])
    try:
        results = [run_hook("rauc-hook.sh", device, v2, {"MIGRATION_HOOK_CONF": str(conf)})
                   for _ in range(30)]  # fmt: skip
    finally:
        swapper.kill()
        swapper.wait()
    assert not pwned.exists(), pwned.read_text()
    for res in results:
        assert res.returncode == 1, res.stderr
        assert "not updating with a setting ignored" in res.stderr
        assert "running:" not in res.stderr


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_configured_interpreter_or_command_that_is_not_there_aborts_the_install(
    hook: str, where: str, v1_device: Device, tmp_path: Path
) -> None:
    """Left to the first boot only when the DEFAULTS do not resolve (no python3 on the running
    system, no runner in the new image): a MIGRATION_PYTHON or MIGRATION_COMMAND set on purpose
    that is not there is a mistake, and going on would install the image without the runner's
    verdict (a refused downgrade, an image below the floor)."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    not_executable = tmp_path / "python3-not-executable"
    not_executable.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    not_executable.chmod(0o644)
    cases = {
        "MIGRATION_PYTHON": [
            (str(tmp_path / "no-python3"), "is not an executable file"),
            (str(not_executable), "is not an executable file"),
            ("python3.99", "is not a command on the running system (PATH"),
        ],
        "MIGRATION_COMMAND": [
            ("/usr/sbin/no-migration", f"{v2}/usr/sbin/no-migration is not a file in the new"),
        ],
    }
    before = device.snapshot()
    for key, values in cases.items():
        for value, words in values:
            env: Dict[str, str] = {}
            if where == "file":
                device.conf.write_text(f"{key}={value}\n")
            else:
                env[key] = value
            res = run_hook(hook, device, v2, env)
            assert res.returncode == 1, (value, res.stderr)
            assert f"ERROR: {key}={value}: {words}" in res.stderr, res.stderr
            assert "aborting the update" in res.stderr
            assert "running:" not in res.stderr
            assert device.snapshot() == before


@pytest.mark.parametrize("hook", HOOKS)
def test_without_python3_and_no_setting_the_first_boot_applies_the_migrations(
    hook: str, v1_device: Device, tmp_path: Path
) -> None:
    """The default interpreter missing on the running system (MIGRATION_PYTHON unset or empty)
    is no mistake of the device's settings: the update goes on, the new image's first boot
    runs its migrations."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in BUSYBOX_APPLETS:
        found = shutil.which(name)
        if found:
            (bindir / name).symlink_to(found)
    for env in ({}, {"MIGRATION_PYTHON": ""}):
        res = run_hook(hook, device, v2, {"PATH": str(bindir), **env})
        assert res.returncode == 0, res.stderr
        assert "WARNING: no python3 on the running system: the new image's first boot" in res.stderr
    assert device.runs() == ["10-base-init.sh boot 1"]


def test_a_rauc_slot_class_that_cannot_be_a_class_is_refused(
    v1_device: Device, tmp_path: Path
) -> None:
    """A slot class no slot has makes every slot "not ours" (exit 0, nothing checked): one
    with a blank or a dot (a slot's name, not its class) is a mistake, refused."""
    device = v1_device
    v2 = make_image(tmp_path / "v2", "2.0", V2)
    for value in ("rootfs ", "root fs", "rootfs.1"):
        res = run_hook("rauc-hook.sh", device, v2, {"MIGRATION_RAUC_SLOT_CLASS": value})
        assert res.returncode == 1, res.stderr
        assert f"MIGRATION_RAUC_SLOT_CLASS='{value}' is not a slot class" in res.stderr
    device.conf.write_text("MIGRATION_RAUC_SLOT_CLASS=root fs\n")
    res = run_hook("rauc-hook.sh", device, v2)
    assert res.returncode == 1 and "is not a slot class" in res.stderr, res.stderr
    assert device.runs() == ["10-base-init.sh boot 1"]
