# SPDX-License-Identifier: MIT
"""Issue 10, resources: the state dir on a small file system that the runner's own logs (or
anything else) fill. Records must win over logs, a full state fs is said plainly, and the next
run after space is freed recovers. Uses a real tmpfs, so it needs root."""

import os
import subprocess

import pytest

from test_cli import Root, no_traceback


@pytest.fixture
def root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the state dir needs root")
    r = Root(tmp_path)
    r.state.mkdir(parents=True, mode=0o755)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs",
                           str(r.state)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield r
    subprocess.run(["umount", "-l", str(r.state)], check=False)


BIG = "i=0; while [ $i -lt 40 ]; do head -c 65536 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done\n"


def _fill(path):
    """Fill the file system of `path` with the file `path`; returns it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def test_logs_that_fill_the_state_fs_give_way_to_records(root):
    root.add("10-big", BIG)  # 2.6 MB of output: its log (1 MB kept) fills the 1 MB fs
    root.add("20-small", "echo small\n")
    proc = root("run")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "logs" in proc.stderr and "full" in proc.stderr
    rows = root.status()
    assert rows["10-big"]["state"] == "applied" and rows["20-small"]["state"] == "applied"
    assert [n for n in os.listdir(root.state / "started")] == []


def test_a_full_state_fs_is_said_plainly_and_the_next_run_recovers(root):
    root.add("10-a", "true\n")
    assert root("run").returncode == 0
    root.add("20-b", "echo b\n")
    for name in os.listdir(root.state / "logs"):  # no log left to give way
        os.unlink(root.state / "logs" / name)
    ballast = _fill(root.state / "damaged-ballast")  # not ours to delete
    proc = root("run")
    no_traceback(proc)
    assert proc.returncode == 2
    assert "20-b: running" not in proc.stderr  # nothing said to run that could not be noted
    assert "file system is full" in proc.stderr
    for sub in ("started", "applied", "failed"):
        leftovers = [n for n in os.listdir(root.state / sub) if n.startswith(".")]
        assert leftovers == [], (sub, leftovers)
    os.unlink(ballast)
    proc = root("run")
    assert proc.returncode == 0, proc.stderr
    assert root.status()["20-b"]["state"] == "applied"
