# SPDX-License-Identifier: MIT
"""The no-op fast path (migration.noop): it answers 0 only when the full path would answer 0
without writing or printing, and steps aside (None) for every change the full path must see."""

import fcntl
import hashlib
import json
import os
import subprocess
import sys

import pytest

from migration import manifest as manifest_mod
from migration import noop, runner
from migration.state import State

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")


class Image:
    """An image root with scripts, a manifest of them, and a state dir after a full run."""

    def __init__(self, root):
        self.root = root
        self.scripts = root / "etc" / "migration.d"
        self.scripts.mkdir(parents=True)
        self.scripts.chmod(0o755)
        self.state = root / "var" / "lib" / "migration"
        self.manifest = root / "usr" / "share" / "migration" / "manifest.json"
        self.manifest.parent.mkdir(parents=True)
        self.ran = root / "ran.log"
        (root / "etc" / "os-release").write_text('VERSION_ID="1.0"\nBUILD_ID=b1\n')
        for name in ("10-a", "20-b", "30-c"):
            self.add(name)
        self.write_manifest()

    def add(self, name, extra=""):
        path = self.scripts / name
        path.write_text(f"echo {name} >> {self.ran}\n{extra}")
        path.chmod(0o755)

    def write_manifest(self):
        migrations = [
            {"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
             "package": "pkg", "version": "1.0-r0"}
            for p in sorted(self.scripts.iterdir())
        ]
        obj = {"format": 1, "digest": manifest_mod.digest(migrations), "migrations": migrations}
        self.manifest.write_text(json.dumps(obj))

    def argv(self, *extra):
        return ["--root", str(self.root), "run", *extra]

    def full_run(self):
        opts = runner.Options(str(self.scripts), str(self.state), str(self.root),
                              str(self.manifest), lock_wait=1.0)
        return runner.run(opts, say=lambda _msg: None)

    def executions(self):
        return self.ran.read_text().split() if self.ran.exists() else []


@pytest.fixture
def image(tmp_path):
    img = Image(tmp_path)
    assert img.full_run() == 0
    assert img.executions() == ["10-a", "20-b", "30-c"]
    return img


def test_all_applied_is_proven_without_the_full_path(image):
    assert (image.state / noop.KEY_NAME).is_file()
    assert noop.fast_run(image.argv()) == 0
    assert noop.fast_run(["--root=" + str(image.root), "run", "--policy", "stop",
                          "--timeout=5", "--lock-wait", "1"]) == 0


def test_cli_noop_run_imports_neither_argparse_nor_json_nor_the_runner(image):
    # Compared with what this interpreter's start already imported (site hooks may import re).
    code = ("import sys; before = set(sys.modules); from migration.cli import main; "
            "rc = main(sys.argv[1:]); "
            "heavy = [m for m in ('argparse', 'json', 're', 'typing', 'enum', 'migration.runner', "
            "'migration.execute', 'subprocess') if m in sys.modules and m not in before]; "
            "print(rc, heavy)")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {LIB!r}); "
                          + code, *image.argv()], capture_output=True, text=True, check=True)
    assert out.stdout == "0 []\n"
    assert out.stderr == ""


def test_a_changed_script_is_noticed_and_refused_as_tampered(image):
    image.add("20-b", "echo changed\n")
    assert noop.fast_run(image.argv()) is None
    assert image.full_run() == 1  # content differs from the manifest
    assert image.executions() == ["10-a", "20-b", "30-c"]


def test_a_new_updated_image_runs_the_new_script(image):
    image.add("40-d")
    image.write_manifest()
    assert noop.fast_run(image.argv()) is None
    assert image.full_run() == 0
    assert image.executions()[-1] == "40-d"
    assert noop.fast_run(image.argv()) == 0  # the key follows the new manifest


@pytest.mark.parametrize("change", [
    "unlisted file", "removed script", "symlinked script", "fifo", "forgotten",
    "manifest edited", "state.json newer", "os-release changed", "key torn", "key missing",
    "runner version", "ignored name in manifest",
])
def test_any_change_steps_aside_to_the_full_path(image, change):
    key = image.state / noop.KEY_NAME
    if change == "unlisted file":
        image.add("50-extra")
    elif change == "removed script":
        (image.scripts / "30-c").unlink()
    elif change == "symlinked script":
        target = image.root / "elsewhere"
        os.rename(image.scripts / "20-b", target)
        os.symlink(target, image.scripts / "20-b")
    elif change == "fifo":
        (image.scripts / "30-c").unlink()
        os.mkfifo(image.scripts / "30-c")
    elif change == "forgotten":
        State(str(image.state)).clear_done()
    elif change == "manifest edited":
        image.manifest.write_text(image.manifest.read_text() + " ")
    elif change == "state.json newer":
        meta = json.loads((image.state / "state.json").read_text())
        meta["format"] = 99
        (image.state / "state.json").write_text(json.dumps(meta))
    elif change == "os-release changed":
        (image.root / "etc" / "os-release").write_text('VERSION_ID="2.0"\n')
    elif change == "key torn":
        key.write_bytes(key.read_bytes()[:-40])
    elif change == "key missing":
        key.unlink()
    elif change == "runner version":
        key.write_text(key.read_text().replace("\nrunner ", "\nrunner 0.0.0-"))
    elif change == "ignored name in manifest":
        key.write_text(key.read_text().replace(" 30-c\n", " 30-c.bak\n"))
    assert noop.fast_run(image.argv()) is None


def test_a_busy_lock_steps_aside_so_the_full_path_waits(image):
    fd = os.open(image.state / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert noop.fast_run(image.argv()) is None
    finally:
        os.close(fd)
    assert noop.fast_run(image.argv()) == 0


@pytest.mark.parametrize("argv", [
    [], ["status"], ["run", "--dry-run"], ["run", "--policy", "bogus"], ["run", "--timeout", "-1"],
    ["run", "--timeout", "inf"], ["run", "--timeout"], ["--root"], ["--pol", "run"],
    ["run", "--root", "/x"], ["run", "extra"], ["--version"],
    # the full path writes the textfile: a no-op run with it is not silent
    ["run", "--prometheus-textfile", "/x/migration.prom"],
])
def test_other_command_lines_step_aside(image, argv):
    fixed = [a.replace("/x", str(image.root)) for a in argv]
    assert noop.fast_run(["--root", str(image.root), *fixed] if fixed[:1] != ["--root"]
                         else fixed) is None


def test_no_key_without_a_manifest_or_with_failures(tmp_path):
    img = Image(tmp_path)
    img.add("20-b", "exit 3\n")
    img.write_manifest()
    assert img.full_run() == 1
    assert not (img.state / noop.KEY_NAME).exists()
    assert noop.fast_run(img.argv()) is None


@pytest.mark.parametrize("argv", [
    ["run"], ["--root", "/r", "run"], ["--root=/r", "--state-dir", "/s", "run", "--policy=stop"],
    ["--scripts-dir", "/d", "--manifest", "/m", "--root", "/a", "--root", "/b", "run",
     "--timeout", "2.5", "--lock-wait=0", "--kill-grace", "1", "--policy", "continue"],
    ["--root=", "run", "--timeout", "0"], ["--root=-x", "run"],
    ["run", "--volatile-state", "refuse"], ["run", "--volatile-state=warn", "--timeout", "900"],
])
def test_plain_run_lines_read_exactly_as_argparse_reads_them(argv):
    from migration import cli

    parsed = noop.parse_run_argv(argv)
    assert parsed is not None
    ours = vars(cli._plain_run_args(*parsed))
    theirs = vars(cli.build_parser("run").parse_args(argv))
    assert ours == theirs


@pytest.mark.parametrize("argv", [
    ["--root", "-x", "run"], ["run", "--timeout", "-1"], ["run", "--lock-wait", "nan"],
    ["run", "--", "x"], ["-h"], ["run", "-h"], ["run", "--dry-run"], ["status"],
    ["run", "--volatile-state", "ignore"], ["run", "--volatile-state"],
])
def test_other_lines_are_left_to_argparse(argv):
    assert noop.parse_run_argv(argv) is None


# -- issue 5: the fast path never answers 0 where the full path refuses -----------------------
#
# The verdict (runner.assess) is a function of: the manifest (compat_level, one-way levels,
# upgrade_floor, data_markers), the image's os-release (VERSION_ID), state.json (compat_level,
# applied_image, image), the records (only when state.json is missing or damaged) and the data
# markers' existence (only when there is no state at all). The key is written only by a full run
# whose verdict allowed it, and it pins the manifest's bytes, state.json's bytes and the
# os-release values; a key can only match when state.json exists (its hash is in the key), so
# neither the records nor the markers can decide. Each way to reach a refusal therefore changes
# a pinned input: the table below goes through them.


def _refuse_by(image, change):
    if change == "downgrade: older image":
        # v1.0 ran a one-way migration of level 1; an image of level 0 boots on the state
        meta = json.loads((image.state / "state.json").read_text())
        assert meta["compat_level"] == 1
        (image.root / "etc" / "os-release").write_text('VERSION_ID="0.9"\nBUILD_ID=b0\n')
        obj = json.loads(image.manifest.read_text())
        for m in obj["migrations"]:
            m.pop("oneway", None)
        obj["compat_level"] = 0
        obj["digest"] = manifest_mod.digest_of(obj)
        image.manifest.write_text(json.dumps(obj))
    elif change == "downgrade: same manifest bytes, lower level in state.json's eyes":
        # the state's level raised behind the key's back (another image's run)
        meta = json.loads((image.state / "state.json").read_text())
        meta["compat_level"] = 5
        (image.state / "state.json").write_text(json.dumps(meta, sort_keys=True) + "\n")
    elif change == "below floor: new image with a floor above the applied image":
        (image.root / "etc" / "os-release").write_text('VERSION_ID="3.0"\nBUILD_ID=b3\n')
        obj = json.loads(image.manifest.read_text())
        obj["upgrade_floor"] = "2.0"
        obj["digest"] = manifest_mod.digest_of(obj)
        image.manifest.write_text(json.dumps(obj))
    elif change == "below floor: applied_image rewritten older":
        meta = json.loads((image.state / "state.json").read_text())
        obj = json.loads(image.manifest.read_text())
        obj["upgrade_floor"] = "1.0"
        obj["digest"] = manifest_mod.digest_of(obj)
        image.manifest.write_text(json.dumps(obj))
        assert image.full_run() == 0  # the floor alone is fine: new key
        assert noop.fast_run(image.argv()) == 0
        meta = json.loads((image.state / "state.json").read_text())
        meta["applied_image"] = {"version_id": "0.5"}
        (image.state / "state.json").write_text(json.dumps(meta, sort_keys=True) + "\n")
    elif change == "records decide: state.json removed":
        obj = json.loads(image.manifest.read_text())
        obj["compat_level"] = 0
        for m in obj["migrations"]:
            m.pop("oneway", None)
        obj["digest"] = manifest_mod.digest_of(obj)
        (image.state / "state.json").unlink()
        image.manifest.write_text(json.dumps(obj))
    elif change == "predates: state dir wiped, data left":
        import shutil

        lock_free = image.state.parent / "migration.old"
        os.rename(image.state, lock_free)
        image.state.mkdir()
        shutil.copy(lock_free / noop.KEY_NAME, image.state / noop.KEY_NAME)
        (image.state / "lock").touch()
        (image.root / "var" / "lib" / "data").mkdir(parents=True)
        obj = json.loads(image.manifest.read_text())
        obj["upgrade_floor"] = "1.0"
        obj["data_markers"] = ["/var/lib/data"]
        obj["digest"] = manifest_mod.digest_of(obj)
        image.manifest.write_text(json.dumps(obj))


@pytest.mark.parametrize("change", [
    "downgrade: older image",
    "downgrade: same manifest bytes, lower level in state.json's eyes",
    "below floor: new image with a floor above the applied image",
    "below floor: applied_image rewritten older",
    "records decide: state.json removed",
    "predates: state dir wiped, data left",
])
def test_fast_path_never_answers_0_where_the_full_path_refuses(tmp_path, change):
    from migration.errors import Incompatible

    img = Image(tmp_path)
    # image 1.0 whose 20-b is one-way (level 1)
    obj = json.loads(img.manifest.read_text())
    for m in obj["migrations"]:
        if m["name"] == "20-b":
            m["oneway"] = 1
    obj["compat_level"] = 1
    obj["digest"] = manifest_mod.digest_of(obj)
    img.manifest.write_text(json.dumps(obj))
    assert img.full_run() == 0
    assert noop.fast_run(img.argv()) == 0
    _refuse_by(img, change)
    assert noop.fast_run(img.argv()) is None
    with pytest.raises(Incompatible):
        img.full_run()
