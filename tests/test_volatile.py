# SPDX-License-Identifier: MIT
"""A state dir on a volatile file system (issue 14): read-only-rootfs images put /var/lib on a
tmpfs (OE's volatile-binds binds /var/volatile/lib over it) or under an overlay whose upper dir
is on a tmpfs (sysvinit's read-only-rootfs-hook), so every record is lost at every reboot.

Real mounts (these tests run as root): a tmpfs, a bind mount of a tmpfs dir, an overlay with a
tmpfs upper; the test machine's ext4 (tmp_path) and an overlay with an ext4 upper are not
flagged. `--volatile-state refuse` exits 2 before anything is written; `warn` (the default)
runs and says so at every run; `status` says so in text and, with --json, on stderr.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from migration import volatile
from test_cli import Root, no_traceback

SCRIPT = "#!/bin/sh\necho ran >>\"$MIGRATION_ROOT/ran\"\n"


@pytest.fixture
def mount() -> Iterator[Callable[..., None]]:
    """mount(ARGS..., TARGET): mounts, unmounted (lazily, in reverse) after the test."""
    targets: List[str] = []
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")

    def do(*args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)
        targets.append(args[-1])

    yield do
    for target in reversed(targets):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def tmpfs(mount: Callable[..., None], path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(path))
    return path


def overlay(mount: Callable[..., None], base: Path, upper_fs: Path) -> Path:
    """An overlay at base/merged: lower base/lower (ext4), upper and work under upper_fs."""
    lower, merged = base / "lower", base / "merged"
    upper, work = upper_fs / "upper", upper_fs / "work"
    for d in (lower, merged, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    mount("-t", "overlay", "overlay", "-o",
          f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged))
    merged.chmod(0o755)
    return merged


def volatile_root(tmp_path: Path, state: Path) -> Root:
    root = Root(tmp_path / "root")
    root.state = state / "migration"
    root.add("10-a.sh", SCRIPT)
    return root


def run(root: Root, *args: str) -> "subprocess.CompletedProcess[str]":
    proc = root("--state-dir", str(root.state), "run", *args)
    no_traceback(proc)
    return proc


def test_refuse_exits_2_before_anything_runs_or_is_written(
    tmp_path: Path, mount: Callable[..., None]
) -> None:
    fs = tmpfs(mount, tmp_path / "var-lib")
    root = volatile_root(tmp_path, fs)
    for args in (["--volatile-state", "refuse"], ["--volatile-state=refuse", "--policy", "stop"],
                 ["--volatile-state", "refuse", "--dry-run"]):
        proc = run(root, *args)
        assert proc.returncode == 2, args
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("migration: error: refusing to run (--volatile-state refuse): "
                                   f"state dir {root.state} is on a volatile file system: "
                                   f"{fs} (tmpfs); ")
        assert not (root.path / "ran").exists()
        assert os.listdir(fs) == []  # not even the state dir or its lock


def test_warn_is_the_default_and_warns_at_every_run(
    tmp_path: Path, mount: Callable[..., None]
) -> None:
    fs = tmpfs(mount, tmp_path / "var-lib")
    root = volatile_root(tmp_path, fs)
    warning = (f"migration: WARNING: state dir {root.state} is on a volatile file system: "
               f"{fs} (tmpfs)")
    for args in ([], ["--volatile-state", "warn"], []):
        proc = run(root, *args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith(warning), proc.stderr
    # Applied once: the next runs had nothing to do, yet each one warned (no no-op key, so
    # never the silent fast path).
    assert (root.path / "ran").read_text() == "ran\n"
    assert not (root.state / "noop-key").exists()
    proc = run(root, "--dry-run")
    assert proc.returncode == 0 and warning in proc.stderr


def test_status_says_so_in_text_and_json(tmp_path: Path, mount: Callable[..., None]) -> None:
    fs = tmpfs(mount, tmp_path / "var-lib")
    root = volatile_root(tmp_path, fs)
    warning = f"WARNING: state dir {root.state} is on a volatile file system: {fs} (tmpfs)"
    proc = root("--state-dir", str(root.state), "status")
    assert proc.returncode == 1  # pending: the exit codes are unchanged
    assert warning in " ".join(proc.stdout.split()), proc.stdout  # wrapped at 80 columns
    proc = root("--state-dir", str(root.state), "status", "--json")
    assert [row["state"] for row in json.loads(proc.stdout)] == ["pending"]
    assert f"migration: {warning}" in proc.stderr


def test_overlay_with_a_tmpfs_upper_is_volatile(tmp_path: Path, mount: Callable[..., None]) -> None:
    """read-only-rootfs-hook: /var/lib is an overlay, its upper dir on a tmpfs."""
    fs = tmpfs(mount, tmp_path / "volatile")
    merged = overlay(mount, tmp_path / "ovl", fs)
    root = volatile_root(tmp_path, merged)
    proc = run(root, "--volatile-state", "refuse")
    assert proc.returncode == 2
    assert (f"volatile file system: {merged} (overlay, upperdir {fs}/upper) on {fs} (tmpfs)"
            in proc.stderr)
    assert os.listdir(fs / "upper") == []
    proc = run(root)
    assert proc.returncode == 0 and "WARNING" in proc.stderr
    proc = root("--state-dir", str(root.state), "status")
    text = " ".join(proc.stdout.split())  # wrapped at 80 columns
    assert f"{merged} (overlay, upperdir {fs}/upper) on {fs} (tmpfs)" in text


def test_bind_mount_of_a_tmpfs_dir_is_volatile(tmp_path: Path, mount: Callable[..., None]) -> None:
    """volatile-binds: /var/volatile/lib (on a tmpfs) bound over /var/lib."""
    fs = tmpfs(mount, tmp_path / "var-volatile")
    (fs / "lib").mkdir()
    bound = tmp_path / "var-lib"
    bound.mkdir()
    mount("--bind", str(fs / "lib"), str(bound))
    assert volatile.check(str(bound / "migration")) is not None
    assert f"{bound} (tmpfs)" in str(volatile.check(str(bound / "migration")))


def test_persistent_state_dirs_are_not_flagged(tmp_path: Path, mount: Callable[..., None]) -> None:
    """The machine's own disk, and an overlay whose upper dir is on it."""
    fstype = subprocess.run(["findmnt", "-no", "FSTYPE", "--target", str(tmp_path)],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert fstype not in volatile.VOLATILE_TYPES, "the test needs a persistent tmp_path"
    assert volatile.check(str(tmp_path / "var/lib/migration")) is None
    merged = overlay(mount, tmp_path / "ovl", tmp_path / "persistent")
    assert volatile.check(str(merged / "migration")) is None
    root = volatile_root(tmp_path, merged)
    proc = run(root, "--volatile-state", "refuse")
    assert proc.returncode == 0 and "volatile" not in proc.stderr, proc.stderr
    assert "volatile" not in root("--state-dir", str(root.state), "status").stdout


def test_mountinfo_escapes_and_hidden_mounts() -> None:
    """Octal escapes in mount points and options; of two mounts on one point the later wins."""
    text = ("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "2 1 0:40 / /var/lib\\040x rw - ext4 /dev/sda2 rw\n"
            "3 1 0:41 / /var/lib\\040x rw - tmpfs tmpfs rw\n"
            "4 1 0:42 / /o rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib\\040x/u\\054v,"
            "workdir=/w\n")
    mounts = volatile.parse_mountinfo(text)
    assert [m.point for m in mounts] == ["/", "/var/lib x", "/var/lib x", "/o"]
    devs = {"/o": "0:42", "/": "8:1"}

    def where(path: str) -> "tuple[str, str]":
        return path, devs.get(path.rsplit("/", 1)[0] or "/", "0:41")

    assert volatile.mount_at("/var/lib x/migration", "0:41", mounts) == mounts[2]
    assert volatile.mount_at("/var/lib x/migration", "9:9", mounts) == mounts[2]  # no dev match
    assert volatile.mount_at("/var/lib xy", "8:1", mounts) == mounts[0]
    assert volatile.why_volatile("/o/migration", mounts, where) == (
        "/o (overlay, upperdir /var/lib x/u,v) on /var/lib x (tmpfs)")
    assert volatile.why_volatile("/migration", mounts, where) is None


def test_unreadable_mountinfo_is_taken_as_persistent(tmp_path: Path) -> None:
    assert volatile.check("/var/lib/migration", str(tmp_path / "missing")) is None


def test_update_refuses_a_volatile_state_dir_too(
    tmp_path: Path, mount: Callable[..., None]
) -> None:
    fs = tmpfs(mount, tmp_path / "var-lib")
    newroot = tmp_path / "new"
    (newroot / "usr/share/migration").mkdir(parents=True)
    (newroot / "usr/share/migration/manifest.json").write_text("{}")
    root = volatile_root(tmp_path, fs)
    proc = root("--state-dir", str(root.state), "update", str(newroot),
                "--volatile-state", "refuse")
    no_traceback(proc)
    assert proc.returncode == 2
    assert "refusing to run (--volatile-state refuse): state dir" in proc.stderr
    assert os.listdir(fs) == []
