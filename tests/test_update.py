# SPDX-License-Identifier: MIT
"""`migration update NEWROOT` (R8) with real image trees on the host, through the command line.

Two (or three) image trees are built the way the layer builds them: scripts in etc/migration.d,
package fragments, os-release with VERSION_ID, and `manifest.generate` (levels, floor, markers).
A separate data root holds the device's persistent data and the live state dir
(var/lib/migration). "Booting" an image copies its etc/ and usr/ over the data root (a new root
file system on a persistent /var) and runs `migration run` there, as the boot unit does; an
"update" runs `migration --root DATA update IMAGE` while the old image is in place.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from fstree import tree
from migration import manifest, noop

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the image trees are root's")

# Each script logs "<name> <phase> <image root> <pwd>" to the data root: what a script sees.
SCRIPT = ('echo "{name} $MIGRATION_PHASE $MIGRATION_IMAGE_ROOT $(pwd) $MIGRATION_ATTEMPT" '
          '>> "$MIGRATION_ROOT/ran.log"\n{body}\n')


def build_image(path, version, scripts, oneway=None, compat_level=0, floor="", markers=()):
    """An image root: os-release, scripts (name -> extra body), one fragment, the manifest."""
    oneway = oneway or {}
    (path / "etc" / "migration.d").mkdir(parents=True)
    (path / "etc" / "os-release").write_text(f'ID=test\nVERSION_ID="{version}"\n')
    entries = []
    for name, body in scripts.items():
        p = path / "etc" / "migration.d" / name
        p.write_text(SCRIPT.format(name=name, body=body))
        p.chmod(0o755)
        entries.append((name, hashlib.sha256(p.read_bytes()).hexdigest(), oneway.get(name, 0)))
    frags = path / manifest.FRAGMENTS_DIR
    frags.mkdir(parents=True)
    manifest.write_json_atomic(str(frags / "pkg.json"),
                               manifest.fragment("pkg", f"{version}-r0", entries))
    result = manifest.generate(str(path), compat_level=compat_level, upgrade_floor=floor,
                               data_markers=list(markers))
    return result["digest"]


def cli(*args):
    env = dict(os.environ, PYTHONPATH=LIB)
    return subprocess.run([sys.executable, "-m", "migration", *args], capture_output=True,
                          text=True, env=env, timeout=60)


class Device:
    """The data root with the live state dir; images are booted onto it or updated from."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        (self.data / "var" / "lib").mkdir(parents=True)
        self.state = self.data / "var" / "lib" / "migration"

    def image(self, version, scripts, **kw):
        root = self.tmp / f"image-{version}"
        digest = build_image(root, version, scripts, **kw)
        return root, digest

    def boot(self, image_root, *args):
        """Switch the root file system to `image_root` (keeping /var) and run the boot unit's
        command."""
        for top in ("etc", "usr"):
            shutil.rmtree(self.data / top, ignore_errors=True)
            shutil.copytree(image_root / top, self.data / top, symlinks=True)
        return cli("--root", str(self.data), "run", *args)

    def update(self, image_root, *args):
        return cli("--root", str(self.data), "update", str(image_root), *args)

    def ran(self):
        log = self.data / "ran.log"
        return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

    def names_ran(self):
        return [r[0] for r in self.ran()]

    def stamps(self):
        return sorted(os.listdir(self.state / "done"))

    def meta(self):
        return json.loads((self.state / "state.json").read_text())

    def record(self, kind, image_root, name):
        sha = hashlib.sha256((image_root / "etc" / "migration.d" / name).read_bytes()).hexdigest()
        return json.loads((self.state / kind / sha).read_text())

    def boot_would_skip(self, image_root):
        """The boot unit's ConditionPathExists=!/usr/share/migration/done, resolved on the
        device: the image's done symlink points at the live state dir's stamp."""
        target = os.readlink(image_root / manifest.DONE_LINK_REL)
        return os.path.isfile(os.path.join(self.data, target.lstrip("/")))


@pytest.fixture
def device(tmp_path):
    return Device(tmp_path)


@pytest.fixture
def v1(device):
    root, digest = device.image("1.0", {"10-pkg-a": "", "20-pkg-b": ""})
    proc = device.boot(root)
    assert proc.returncode == 0, proc.stderr
    assert device.names_ran() == ["10-pkg-a", "20-pkg-b"]
    assert device.stamps() == [digest]
    return root


def test_update_applies_the_new_scripts_and_the_first_boot_runs_nothing(device, v1):
    v2, d2 = device.image("2.0", {"10-pkg-a": "", "20-pkg-b": "", "30-pkg-c": "",
                                  "40-pkg-d": ""})
    proc = device.update(v2)
    assert proc.returncode == 0, proc.stderr
    ran = device.ran()[2:]
    assert [r[0] for r in ran] == ["30-pkg-c", "40-pkg-d"]
    for r in ran:  # phase, image root, cwd = data root, first attempt
        assert r[1:] == ["update", str(v2), str(device.data), "1"]
    assert device.stamps() == [d2]
    meta = device.meta()
    assert meta["image"]["version_id"] == "2.0" and meta["applied_image"]["version_id"] == "2.0"
    rec = device.record("applied", v2, "30-pkg-c")
    assert rec["image"]["version_id"] == "2.0" and rec["phase"] == "update"
    # the first boot of v2: the unit's condition skips it; even run, it does nothing
    assert device.boot_would_skip(v2)
    proc = device.boot(v2)
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(device.ran()) == 4
    assert noop.fast_run(["--root", str(device.data), "run"]) == 0  # and without the full path


def test_update_with_nothing_new_writes_the_new_stamp(device, v1):
    v2, d2 = device.image("2.0", {"10-pkg-a": "", "20-pkg-b": ""}, compat_level=1)
    proc = device.update(v2)
    assert proc.returncode == 0, proc.stderr
    assert device.names_ran() == ["10-pkg-a", "20-pkg-b"]
    assert device.stamps() == [d2] and device.boot_would_skip(v2)
    assert device.meta()["applied_image"]["version_id"] == "2.0"
    # a repeated update changes nothing
    before = tree(device.state)
    assert device.update(v2).returncode == 0
    assert tree(device.state) == before


def test_failed_update_leaves_the_retry_to_the_first_boot(device, v1):
    flag = device.data / "fixed"
    v2, d2 = device.image("2.0", {"10-pkg-a": "", "20-pkg-b": "",
                                  "30-pkg-c": f"test -e {flag}", "40-pkg-d": ""})
    proc = device.update(v2)
    assert proc.returncode == 1
    assert "30-pkg-c: FAILED: exit 1" in proc.stderr
    assert device.stamps() == []  # not v1's either: the data changed under it
    assert not device.boot_would_skip(v2)
    meta = device.meta()
    assert meta["image"]["version_id"] == "2.0" and meta["applied_image"]["version_id"] == "1.0"
    assert device.record("failed", v2, "30-pkg-c")["phase"] == "update"
    flag.touch()
    proc = device.boot(v2)
    assert proc.returncode == 0, proc.stderr
    assert device.names_ran()[2:] == ["30-pkg-c", "40-pkg-d", "30-pkg-c"]
    retry = device.ran()[-1]
    assert retry[1:] == ["boot", str(device.data), str(device.data), "2"]
    assert device.record("applied", v2, "30-pkg-c")["attempts"] == 2
    assert device.stamps() == [d2]


def test_update_from_below_the_floor_is_refused_and_writes_nothing(device, v1):
    hooks = device.data / "etc" / "migration" / "incompatible.d"
    hooks.mkdir(parents=True)
    (hooks / "50-hook").write_text(f"#!/bin/sh\ntouch {device.tmp}/hook-ran\n")
    (hooks / "50-hook").chmod(0o755)
    v3, _ = device.image("3.0", {"30-pkg-c": ""}, floor="2.0")
    before = tree(device.state)
    proc = device.update(v3)
    assert proc.returncode == 3
    assert "migration: refused: upgrade from a too old release" in proc.stderr
    assert "release 1.0" in proc.stderr and "Install release 2.0" in proc.stderr
    assert tree(device.state) == before
    assert not (device.tmp / "hook-ran").exists()  # no hooks at update time
    assert device.names_ran() == ["10-pkg-a", "20-pkg-b"]
    # --dry-run says the same, exit 3
    proc = device.update(v3, "--dry-run")
    assert proc.returncode == 3 and "would refuse (below-floor)" in proc.stdout
    assert "hooks" not in proc.stdout
    assert tree(device.state) == before
    # an intermediate release inside the floor first, then v3 is fine
    v2, _ = device.image("2.0", {"10-pkg-a": "", "20-pkg-b": "", "25-pkg-x": ""})
    assert device.update(v2).returncode == 0
    assert device.update(v3).returncode == 0
    assert device.names_ran() == ["10-pkg-a", "20-pkg-b", "25-pkg-x", "30-pkg-c"]


def test_update_is_refused_even_while_another_runner_holds_the_lock(device, v1):
    """Exit 3, not 75: the hooks would take 75 for "the boot retries" and install the image."""
    from migration.state import State

    v3, _ = device.image("3.0", {"30-pkg-c": ""}, floor="2.0")
    other = State(str(device.state))
    other.lock(0)
    try:
        before = tree(device.state)
        proc = device.update(v3, "--lock-wait", "0.2")
        assert proc.returncode == 3, proc.stderr
        assert "migration: refused: upgrade from a too old release" in proc.stderr
        assert tree(device.state) == before
        # an image the data allows waits for the lock as before
        v2, _ = device.image("2.0", {"10-pkg-a": "", "20-pkg-b": "", "25-pkg-x": ""})
        assert device.update(v2, "--lock-wait", "0.2").returncode == 75
    finally:
        other.unlock()
    assert device.names_ran() == ["10-pkg-a", "20-pkg-b"]


def test_special_files_in_newroot_neither_hang_nor_exhaust_the_update(device, v1):
    """A FIFO as NEWROOT's os-release hung `update` forever; manifest.json -> /dev/zero ended
    in MemoryError (exit 1, "the update goes on" for the hooks)."""
    v2, _ = device.image("2.0", {"10-pkg-a": "", "20-pkg-b": "", "30-pkg-c": ""})
    osr = v2 / "etc" / "os-release"
    osr.unlink()
    os.mkfifo(osr)
    env = dict(os.environ, PYTHONPATH=LIB)
    argv = [sys.executable, "-m", "migration", "--root", str(device.data), "update", str(v2)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=20)
    assert proc.returncode == 0, proc.stderr  # an os-release that is no file: no VERSION_ID
    assert device.names_ran()[-1] == "30-pkg-c"
    mf = v2 / manifest.MANIFEST_REL
    mf.unlink()
    mf.symlink_to("/dev/zero")
    before = tree(device.state)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert f"migration: error: cannot read {mf}: not a regular file" in proc.stderr
    assert tree(device.state) == before


def test_boot_from_below_the_floor_runs_the_hooks(device, v1):
    out = device.tmp / "hook.txt"
    v3, _ = device.image("3.0", {"30-pkg-c": ""}, floor="2.0")
    hooks = v3 / "etc" / "migration" / "incompatible.d"
    hooks.mkdir(parents=True)
    (hooks / "50-hook").write_text(f'#!/bin/sh\necho "$MIGRATION_VERDICT" > {out}\n')
    (hooks / "50-hook").chmod(0o755)
    state_before = tree(device.state)
    proc = device.boot(v3)
    assert proc.returncode == 3
    assert out.read_text() == "below-floor\n"
    assert tree(device.state) == state_before


def test_downgrade_across_a_one_way_migration_is_refused(device, v1):
    v2, _ = device.image("2.0", {"10-pkg-a": "", "20-pkg-b": "", "30-pkg-users": ""},
                         oneway={"30-pkg-users": 1})
    assert device.update(v2).returncode == 0
    assert device.meta()["compat_level"] == 1
    assert device.record("applied", v2, "30-pkg-users")["oneway"] == 1
    assert device.boot(v2).returncode == 0
    state_before = tree(device.state)
    data_before = (device.data / "ran.log").read_bytes()
    # an updater installing v1 again: refused, nothing written, no hooks
    proc = device.update(v1)
    assert proc.returncode == 3 and "incompatible downgrade" in proc.stderr
    assert tree(device.state) == state_before
    # v1 booted anyway (golden image): detected, hooks run, data untouched
    out = device.tmp / "hook.txt"
    hooks = device.data / "etc" / "migration" / "incompatible.d"
    proc = device.boot(v1)  # switches the root file system to v1 (no hooks there yet)
    assert proc.returncode == 3
    hooks.mkdir(parents=True)
    (hooks / "50-wipe").write_text(f'#!/bin/sh\necho "$MIGRATION_VERDICT $MIGRATION_PHASE" > '
                                   f'{out}\necho "$MIGRATION_MESSAGE" >> {out}\n')
    (hooks / "50-wipe").chmod(0o755)
    proc = cli("--root", str(device.data), "run")  # the default hooks dir
    assert proc.returncode == 3
    assert "Boot an image of compatibility level >= 1" in proc.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "downgrade boot" and "incompatible downgrade" in lines[1]
    assert tree(device.state) == state_before
    assert (device.data / "ran.log").read_bytes() == data_before
    # the gate unit keeps gated services down
    proc = cli("--root", str(device.data), "check", "--package", "pkg")
    assert proc.returncode == 1 and "incompatible downgrade" in proc.stderr


def test_downgrade_within_a_compatible_branch_runs_nothing_again(device, v1):
    v1_digest = sorted(os.listdir(device.state / "done"))
    v2, _ = device.image("2.0", {"10-pkg-a": "", "20-pkg-b": "", "30-pkg-c": ""})
    assert device.update(v2).returncode == 0
    assert device.boot(v2).returncode == 0
    ran = device.names_ran()
    # back to v1 (through the updater, then its boot)
    proc = device.update(v1)
    assert proc.returncode == 0, proc.stderr
    assert device.stamps() == v1_digest and device.boot_would_skip(v1)
    proc = device.boot(v1)
    assert proc.returncode == 0 and proc.stderr == ""
    assert device.names_ran() == ran
    assert device.meta()["applied_image"]["version_id"] == "1.0"


def test_defer_oneway_leaves_it_and_what_follows_to_the_first_boot(device, v1):
    v2, d2 = device.image(
        "2.0", {"10-pkg-a": "", "20-pkg-b": "", "25-pkg-plain": "", "30-pkg-users": "",
                "40-pkg-after": ""},
        oneway={"30-pkg-users": 1},
    )
    proc = device.update(v2, "--defer-oneway", "--dry-run")
    assert proc.returncode == 1  # as for run: something would run
    assert proc.stdout.splitlines() == [
        "would run 25-pkg-plain",
        "would defer 30-pkg-users to the first boot: one-way (level 1)",
        "would defer 40-pkg-after to the first boot: ordered after the one-way 30-pkg-users",
    ]
    proc = device.update(v2, "--defer-oneway")
    assert proc.returncode == 0, proc.stderr
    assert "30-pkg-users: deferred to the first boot: one-way (level 1)" in proc.stderr
    assert "2 deferred to the first boot" in proc.stderr
    assert device.names_ran()[2:] == ["25-pkg-plain"]
    assert device.meta().get("compat_level", 0) == 0  # v1 can still read the data
    assert device.stamps() == [] and not device.boot_would_skip(v2)
    # the old image (still the fallback) boots fine on it
    assert device.update(v1, "--dry-run").returncode == 0
    proc = device.boot(v2)
    assert proc.returncode == 0, proc.stderr
    assert [r[:2] for r in device.ran()[3:]] == [["30-pkg-users", "boot"],
                                                  ["40-pkg-after", "boot"]]
    assert device.meta()["compat_level"] == 1 and device.stamps() == [d2]


def test_usage_errors_exit_2(device, v1, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = device.update(empty)
    assert proc.returncode == 2 and "no image manifest at" in proc.stderr
    proc = device.update(tmp_path / "missing")
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
    proc = cli("--root", str(device.data), "--scripts-dir", "/x", "update", str(v1))
    assert proc.returncode == 2 and "takes the scripts and the manifest from NEWROOT" in proc.stderr
    proc = cli("--root", str(device.data), "--manifest", "/x", "update", str(v1))
    assert proc.returncode == 2 and "--manifest" in proc.stderr
    (v1 / manifest.MANIFEST_REL).write_text("{")
    proc = device.update(v1)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_update_state_dir_option_and_fresh_data(tmp_path):
    """A fresh device (no state, no data markers present) updated from outside: everything of
    the new image runs, into the state dir given with --state-dir."""
    image = tmp_path / "image"
    build_image(image, "2.0", {"10-pkg-a": ""}, floor="1.0", markers=["/var/lib/app"])
    data = tmp_path / "data"
    data.mkdir()
    state = tmp_path / "state"
    proc = cli("--root", str(data), "--state-dir", str(state), "update", str(image))
    assert proc.returncode == 0, proc.stderr
    assert "fresh device" in proc.stderr
    assert (data / "ran.log").read_text().split()[:2] == ["10-pkg-a", "update"]
    assert os.listdir(state / "done")
    # with data but no state: predates, refused
    (data / "var" / "lib" / "app").mkdir(parents=True)
    proc = cli("--root", str(data), "--state-dir", str(tmp_path / "state2"), "update",
               str(image))
    assert proc.returncode == 3 and "older than meta-migration" in proc.stderr
