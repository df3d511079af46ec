# SPDX-License-Identifier: MIT
"""OpenBMC's /etc overlay across an image update (issue 14), with real overlay mounts.

The image's /etc is the overlay's lower dir and is replaced by an update; the upper dir (on
OpenBMC /run/mnt-persist/etc-data, on the rwfs) is kept. A script touched on the device is
copied up and hides the next image's changed script of that name; a script deleted on the device
leaves a whiteout that hides the image's file. Each is judged per manifest entry (refused, or
applied with a reason), and the reason names the upper dir's entry and the fix: remove it.
tests/boot/test_boot_openbmc.py does the same in QEMU boots of the whole layout.
"""

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

from migration import manifest as manifest_mod
from migration import overlay, runner
from migration.state import State
from test_volatile import mount  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting an overlay needs root")

Mount = Callable[..., None]


class Device:
    """An image's /etc (the lower dir, replaced by each update) under an overlay whose upper
    dir persists, a state dir and a log of executions."""

    def __init__(self, tmp_path: Path, mounter: Mount) -> None:
        self.tmp = tmp_path
        self.mount = mounter
        self.etc = tmp_path / "etc"
        self.upper = tmp_path / "persist" / "etc-data"
        self.work = tmp_path / "persist" / "etc-work"
        for d in (self.etc, self.upper, self.work):
            d.mkdir(parents=True)
        self.state = tmp_path / "var" / "lib" / "migration"
        self.manifest = tmp_path / "manifest.json"
        self.ran = tmp_path / "ran.log"
        self.messages: List[str] = []
        self.images = 0

    def text(self, name: str, tag: str) -> str:
        return f"echo {name} {tag} >> {self.ran}\n"

    def boot(self, scripts: Dict[str, str]) -> None:
        """Mount the overlay over a new image's /etc holding `scripts` (name -> tag), with its
        manifest; the previous image's overlay is unmounted (the upper dir stays)."""
        self.unmount()
        self.images += 1
        lower = self.tmp / f"image{self.images}" / "etc"
        (lower / "migration.d").mkdir(parents=True)
        entries = []
        for name, tag in scripts.items():
            text = self.text(name, tag)
            (lower / "migration.d" / name).write_text(text)
            sha = hashlib.sha256(text.encode()).hexdigest()
            entries.append({"name": name, "sha256": sha, "package": "pkg", "version": "1"})
        obj = {"format": 1, "digest": manifest_mod.digest(entries), "migrations": entries}
        self.manifest.write_text(json.dumps(obj))
        self.digest = obj["digest"]
        options = f"lowerdir={lower},upperdir={self.upper},workdir={self.work}"
        self.mount("-t", "overlay", "overlay", "-o", options, str(self.etc))

    def unmount(self) -> None:
        if os.path.ismount(self.etc):
            subprocess.run(["umount", str(self.etc)], check=True)

    def opts(self) -> runner.Options:
        return runner.Options(str(self.etc / "migration.d"), str(self.state), str(self.tmp),
                              manifest_path=str(self.manifest), lock_wait=1.0)  # fmt: skip

    def run(self) -> int:
        self.messages.clear()
        return runner.run(self.opts(), say=self.messages.append)

    def status(self) -> Dict[str, runner.Item]:
        items, _ = runner.inspect(self.opts(), State(str(self.state)))
        return {i.name: i for i in items}

    def executions(self) -> List[str]:
        return self.ran.read_text().splitlines() if self.ran.exists() else []

    def stamped(self) -> bool:
        return (self.state / "done" / self.digest).exists()


@pytest.fixture
def device(tmp_path: Path, mount: Mount) -> Iterator[Device]:  # noqa: F811 (the imported fixture)
    dev = Device(tmp_path, mount)
    yield dev
    dev.unmount()


def test_a_touched_script_copied_up_is_refused_naming_the_copy_until_it_is_removed(
    device: Device,
) -> None:
    device.boot({"10-a": "v1", "20-b": "v1"})
    assert device.run() == 0
    (device.etc / "migration.d" / "20-b").touch()  # a change on the device: copy-up
    copy = device.upper / "migration.d" / "20-b"
    assert copy.is_file()
    device.boot({"10-a": "v1", "20-b": "v2"})  # the update changes B under the same name
    assert device.run() == 1
    reason = device.status()["20-b"].reason
    assert device.status()["20-b"].state == "refused"
    assert f"{copy}, a copy that the overlay's upper dir keeps" in reason
    assert f"remove {copy} to run the image's version" in reason
    assert f"20-b: refused: {reason}" in device.messages
    assert not device.stamped()
    assert device.executions() == ["10-a v1", "20-b v1"]
    # The fix the reason names; the overlay mounted anew (the next boot) shows the image's B'.
    device.unmount()
    copy.unlink()
    device.boot({"10-a": "v1", "20-b": "v2"})
    assert device.run() == 0
    assert device.executions() == ["10-a v1", "20-b v1", "20-b v2"]
    assert device.stamped()


def test_whiteouts_name_themselves_applied_or_refused(device: Device) -> None:
    """D deleted on the device after it ran (v2 ships it unchanged): applied, the whiteout
    named, the stamp written once nothing else is wrong. E deleted too, but v2 changes it: the
    image's E never ran, so it is refused, the whiteout named."""
    device.boot({"10-a": "v1", "40-d": "v1", "50-e": "v1"})
    assert device.run() == 0
    for name in ("40-d", "50-e"):
        (device.etc / "migration.d" / name).unlink()
    d, e = (device.upper / "migration.d" / n for n in ("40-d", "50-e"))
    assert overlay.entry(str(d.parent), "40-d") == overlay.UpperEntry(str(d), True)
    device.boot({"10-a": "v1", "40-d": "v1", "50-e": "v2"})
    assert device.run() == 1
    status = device.status()
    assert status["40-d"].state == "applied"
    head = f"applied, but missing from {device.etc}/migration.d: {d}, a whiteout in the overlay's"
    assert status["40-d"].reason.startswith(head)
    assert f"remove {d} to show it again" in status["40-d"].reason
    assert status["50-e"].state == "refused"
    assert f"{e}, a whiteout in the overlay's upper dir" in status["50-e"].reason
    assert f"40-d: {status['40-d'].reason}" in device.messages
    assert not device.stamped()
    assert device.executions() == ["10-a v1", "40-d v1", "50-e v1"]
    device.boot({"10-a": "v1", "40-d": "v1"})  # an image without E: only D's whiteout is left
    assert device.run() == 0
    assert device.stamped()
    assert "whiteout" in device.status()["40-d"].reason


def test_an_opaque_upper_dir_names_itself_for_every_hidden_script(device: Device) -> None:
    """migration.d removed and re-created on the device: the upper dir's copy is opaque
    (trusted.overlay.opaque=y) and hides every script of every later image. Each missing entry,
    applied or new, names the opaque dir and the fix, not a whiteout."""
    device.boot({"10-a": "v1"})
    assert device.run() == 0
    scripts = device.etc / "migration.d"
    for p in scripts.iterdir():
        p.unlink()
    scripts.rmdir()
    scripts.mkdir()
    upper = device.upper / "migration.d"
    assert os.getxattr(upper, "trusted.overlay.opaque") == b"y"
    device.boot({"10-a": "v1", "20-b": "v1"})
    assert device.run() == 1
    status = device.status()
    for name, state in (("10-a", "applied"), ("20-b", "refused")):
        assert status[name].state == state
        assert f"{upper}, the overlay's upper dir of {scripts}, is opaque" in status[name].reason
        assert f"remove {upper} to show them again" in status[name].reason
        assert "whiteout" not in status[name].reason
    # The fix: the image's scripts show again once the overlay is mounted anew.
    device.unmount()
    subprocess.run(["rm", "-rf", str(upper)], check=True)
    device.boot({"10-a": "v1", "20-b": "v1"})
    assert device.run() == 0
    assert device.executions() == ["10-a v1", "20-b v1"]


def test_no_overlay_no_upper_entry(tmp_path: Path) -> None:
    """A plain dir (or an unreadable mountinfo) gives no upper dir: the generic reason stays."""
    assert overlay.upper_dir_of(str(tmp_path)) is None
    assert overlay.upper_dir_of(str(tmp_path), str(tmp_path / "no-mountinfo")) is None
    assert overlay.finder(str(tmp_path))("x") is None
