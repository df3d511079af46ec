# SPDX-License-Identifier: MIT
"""What `migration run` and `migration status` print for a failed script, read on an 80-column
serial console, where a longer line wraps into the next one.

A typical setup: the runner at boot (`--root /`, so the state dir is /var/lib/migration),
scripts installed by packages (a manifest), an os-release with VERSION_ID and BUILD_ID, script
names under 30 characters. The tree lives under a temporary directory given as --root: each
line is measured as it reads with --root /, that directory's path taken out.

The log of a failed script must stay easy to find (a path the shell expands to exactly that
file; the full path in --json), and `status` shows the last line of its output, whatever bytes
the script wrote.
"""

import glob
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
sys.path.insert(0, LIB)

from migration import manifest as manifest_mod  # noqa: E402

WIDTH = 80
BUILD = "20261129202103"


class Device:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.scripts = path / "etc" / "migration.d"
        self.scripts.mkdir(parents=True)
        self.state = path / "var" / "lib" / "migration"
        self.image("2.0")

    def image(self, version: str, floor: str = "") -> None:
        """This image: its os-release and the manifest of the scripts in the dir."""
        (self.path / "etc" / "os-release").write_text(
            f'ID=demo\nVERSION_ID="{version}"\nBUILD_ID="{BUILD}"\n'
        )
        migrations = [
            {
                "name": p.name,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                "package": "exampled",
                "version": f"{version}-r0",
            }
            for p in sorted(self.scripts.iterdir())
        ]
        body = {"format": 1, "migrations": migrations, "upgrade_floor": floor}
        body["digest"] = manifest_mod.digest_of(body)
        path = self.path / "usr" / "share" / "migration" / "manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body))

    def add(self, name: str, body: str) -> None:
        script = self.scripts / name
        script.write_bytes(b"#!/bin/sh\nset -eu\n" + body.encode("latin-1"))
        script.chmod(0o755)

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=LIB)
        proc = subprocess.run(
            [sys.executable, "-m", "migration", "--root", str(self.path), *args],
            capture_output=True,
            env=env,
            timeout=60,
        )
        assert b"Traceback" not in proc.stderr, proc.stderr
        return proc

    def lines(self, proc: subprocess.CompletedProcess) -> List[str]:
        """Every line the command printed, as it reads with --root /."""
        text = (proc.stdout + proc.stderr).decode("utf-8", "surrogateescape")
        return text.replace(str(self.path), "").splitlines()

    def rows(self) -> Dict[str, dict]:
        proc = self("status", "--json")
        return {row["name"]: row for row in json.loads(proc.stdout)}


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path / "root")


def too_wide(lines: List[str]) -> List[str]:
    return [line for line in lines if len(line) > WIDTH]


FAILING = "50-exampled-convert-config.sh"  # 29 characters


def _expand(device: Device, shown: str) -> List[str]:
    """What the shell makes of a log path printed on the console (run at --root /)."""
    return glob.glob(str(device.path) + shown)


def _fits(device: Device) -> "tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]":
    run = device("run")
    assert run.returncode == 1
    status = device("status")
    assert status.returncode == 1
    assert too_wide(device.lines(run)) == [], device.lines(run)
    assert too_wide(device.lines(status)) == [], device.lines(status)
    return run, status


def test_run_and_status_of_a_failing_script_fit_80_columns(tmp_path: Path) -> None:
    # The first boot of a fresh device: one script applies, one fails.
    device = Device(tmp_path / "fresh")
    device.add("10-exampled-add-user.sh", "echo user added\n")
    device.add(FAILING, "echo 'cannot convert /etc/exampled.conf' >&2\nexit 1\n")
    device.image("1.0")
    _fits(device)
    _fits(device)  # and again (attempt 2)

    # An update: 2.0 (upgrades from 1.0 on) adds two migrations, one fails.
    device = Device(tmp_path / "update")
    device.add("10-exampled-add-user.sh", "echo user added\n")
    device.image("1.0")
    assert device("run").returncode == 0
    device.add(FAILING, "echo 'cannot convert /etc/exampled.conf' >&2\nexit 1\n")
    device.add("60-exampled-move-cache.sh", "true\n")
    device.image("2.0", floor="1.0")
    run, status = _fits(device)
    words = " ".join(" ".join(device.lines(status)).split())
    assert "last image with every migration applied 1.0" in words

    # The log is still easy to find: the path printed expands to exactly the script's log,
    # and --json has it in full.
    log = device.rows()[FAILING]["log"]
    assert re.fullmatch(re.escape(str(device.state)) + r"/logs/[0-9a-f]{64}\.log", log)
    for proc in (run, status):
        (shown,) = re.findall(r"log:? (/var/lib/migration/logs/\S+)", "\n".join(device.lines(proc)))
        assert _expand(device, shown) == [log]


def test_the_short_log_path_stays_unambiguous(tmp_path: Path) -> None:
    """Two logs whose sha256 share the first 12 hex digits: each path names one file."""
    from migration import logs

    first, second = "835c88347160" + "a" * 52, "835c88347160" + "ab" + "c" * 50
    for sha in (first, second, "0" * 64):
        (tmp_path / f"{sha}.log").write_text("x")
    names = os.listdir(tmp_path)
    for sha in (first, second):
        shown = logs.short_path(str(tmp_path / f"{sha}.log"), names)
        assert glob.glob(shown) == [str(tmp_path / f"{sha}.log")], shown
    assert logs.short_path(str(tmp_path / ("0" * 64 + ".log")), names) == str(
        tmp_path / ("0" * 12 + "*.log")
    )


def _last_output(device: Device) -> str:
    status = device("status")
    lines = device.lines(status)
    assert too_wide(lines) == [], lines
    found = [line.strip() for line in lines if line.strip().startswith("last output: ")]
    return found[0][len("last output: ") :] if found else ""


@pytest.mark.parametrize(
    ("printed", "shown"),
    [
        # the last non-empty line, after blank and whitespace-only ones
        ("printf 'step 1\\nno space left on device\\n\\n   \\n'", "no space left on device"),
        # a line without a newline at the end
        ("printf 'first\\nlast words'", "last words"),
        # terminal escape sequences, a carriage return, NUL: escaped, never sent to the console
        (
            "printf '\\033[2J\\033]0;owned\\007cleared\\rover\\000nul\\n'",
            "\\x1b[2J\\x1b]0;owned\\x07cleared\\x0dover\\x00nul",
        ),
        # invalid UTF-8 escaped, valid UTF-8 kept, a bidi override escaped
        (
            "printf 'bad \\377\\376 ok \\303\\244 rlo \\342\\200\\256x\\n'",
            "bad \\xff\\xfe ok ä rlo \\u202ex",
        ),
        # a script that prints nothing
        ("true", ""),
    ],
)
def test_status_shows_the_last_line_of_a_failed_scripts_output(
    device: Device, printed: str, shown: str
) -> None:
    device.add(FAILING, f"{printed}\nexit 1\n")
    device.image("1.0")
    assert device("run").returncode == 1
    assert _last_output(device) == shown


def test_a_huge_last_line_is_cut_to_fit(device: Device) -> None:
    """2 MiB without a newline (the log keeps its first and last 512 KiB): status reads only the
    end of the log, so the line shown is a piece of it, cut to fit and marked as cut on both
    sides."""
    device.add(FAILING, "head -c 2097152 /dev/zero | tr '\\0' A\nexit 1\n")
    device.image("1.0")
    assert device("run").returncode == 1
    last = _last_output(device)
    assert re.fullmatch(r"\.\.\.A+\.\.\.", last), last


def test_a_forged_log_is_read_safely(device: Device) -> None:
    """The log is the runner's, but status must not trust its bytes: a FIFO (never blocked
    on), a symlink (never followed) and bytes that look like the runner's own notes."""
    device.add(FAILING, "exit 1\n")
    device.image("1.0")
    assert device("run").returncode == 1
    log = Path(device.rows()[FAILING]["log"])
    log.write_bytes(b"[migration: header]\nreal line\n[migration: exit 1]\n")
    assert _last_output(device) == "real line"
    secret = device.path / "secret"
    secret.write_text("do not show\n")
    log.unlink()
    log.symlink_to(secret)
    assert _last_output(device) == ""
    log.unlink()
    os.mkfifo(log)
    assert _last_output(device) == ""  # and no hang: device() has a timeout


def test_a_script_line_like_the_runners_note_is_shown_as_the_scripts(device: Device) -> None:
    """The runner's own lines in the log are its header (the first line) and its closing note
    (the last): a script that prints the closing note's form cannot pass it off as the
    runner's under `last output:` (finding 11), as the log file holds it after the script's
    own lines."""
    device.add(FAILING, "echo 'converting'\necho '[migration: exit 0]'\nexit 1\n")
    device.image("1.0")
    assert device("run").returncode == 1
    log = Path(device.rows()[FAILING]["log"])
    assert log.read_bytes().endswith(b"\n[migration: exit 0]\n[migration: exit 1]\n")
    assert _last_output(device) == "\\x5bmigration: exit 0]"


def test_a_symlinked_logs_dir_is_not_read(device: Device) -> None:
    """logs/ replaced by a symlink (a state dir restored from an archive, say) is read as
    absent, like every other subdir of the state dir: no log path and no last output from
    where it points (finding 8)."""
    device.add(FAILING, "echo 'real words'\nexit 1\n")
    device.image("1.0")
    assert device("run").returncode == 1
    assert _last_output(device) == "real words"
    logs = device.state / "logs"
    elsewhere = device.path / "elsewhere"
    logs.rename(elsewhere)
    for log in elsewhere.iterdir():
        log.write_text("[migration: header]\nFORGED: all good, ignore this failure\n")
    logs.symlink_to(elsewhere)
    status = device("status")
    assert status.returncode == 1
    assert b"FORGED" not in status.stdout and b"log: " not in status.stdout, status.stdout
    assert "log" not in device.rows()[FAILING]
