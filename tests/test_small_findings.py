# SPDX-License-Identifier: MIT
"""Issue 10, the smaller findings: each once gave a wrong message, a wrong exit code or a state
change that nobody asked for. ("X: running" before a failed started note: test_full_fs.py.)"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_cli import LIB, Root, no_traceback, wait_for


@pytest.fixture
def root(tmp_path):
    return Root(tmp_path)


def test_sigint_names_the_signal(root, tmp_path):
    ready = tmp_path / "ready"
    root.add("10-wait", f"touch {ready}\nsleep 30\n")
    env = dict(os.environ, PYTHONPATH=LIB)
    proc = subprocess.Popen([sys.executable, "-m", "migration", "--root", str(root.path), "run"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(ready)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted ()" not in err and "interrupted (SIGINT)" in err, err


def test_a_file_named_damaged_is_moved_into_the_damaged_dir(root):
    root.add("10-a", "true\n")
    assert root("run").returncode == 0
    (root.state / "damaged").write_text("someone's file")
    (sha,) = os.listdir(root.state / "applied")
    (root.state / "applied" / sha).write_text("{trunc")
    for _ in range(2):
        proc = root("run")
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
    moved = sorted(os.listdir(root.state / "damaged"))
    assert len(moved) == 2 and moved[1].startswith("damaged.")
    assert (root.state / "damaged" / moved[1]).read_text() == "someone's file"


def test_a_name_with_a_newline_is_escaped_in_every_message(root):
    (root.scripts / "10-a\nmigration: 20-forged: done").write_text("true\n")
    root.add("20-ok", "true\n")
    for args in (["run"], ["status"], ["run", "--dry-run"]):
        proc = root(*args)
        no_traceback(proc)
        lines = (proc.stderr + proc.stdout).splitlines()
        assert not any(line.startswith("migration: 20-forged") for line in lines), lines
        assert any("10-a\\x0amigration: 20-forged: done" in line for line in lines), lines


def test_status_into_a_closed_pipe_exits_quietly(root):
    for i in range(200):
        root.add(f"{i:03d}-a", f"# {i}\ntrue\n")
    assert root("run").returncode == 0
    env = dict(os.environ, PYTHONPATH=LIB)
    proc = subprocess.run(f"{sys.executable} -m migration --root {root.path} status | true",
                          shell=True, capture_output=True, text=True, env=env,
                          executable="/bin/bash")
    assert proc.stderr == ""
    sub = subprocess.run(["bash", "-c", f"{sys.executable} -m migration --root {root.path} "
                          "status | true; echo ${PIPESTATUS[0]}"], capture_output=True,
                         text=True, env=env)
    assert sub.stdout.strip() == "0", sub  # what status says, not an error
    assert sub.stderr == ""


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e999", "NaN"])
@pytest.mark.parametrize("command", [["forget", "10-a"], ["run"], ["update", "/"]])
def test_numeric_options_reject_non_finite_values(root, command, value):
    root.add("10-a", "true\n")
    proc = root(*command, "--lock-wait", value, timeout=10)
    no_traceback(proc)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_forget_of_an_unknown_sha256_changes_nothing(root):
    root.add("10-a", "true\n")
    from migration import manifest as manifest_mod

    assert root("run").returncode == 0
    done = root.state / "done"
    done.mkdir(exist_ok=True)
    (done / ("d" * 64)).touch()
    before = sorted(os.listdir(done))
    proc = root("forget", "f" * 64)
    no_traceback(proc)
    assert proc.returncode == 2 and "nothing" in proc.stderr, proc.stderr
    assert sorted(os.listdir(done)) == before
    assert manifest_mod  # the stamp is only a file here
    # a known one still works
    (sha,) = os.listdir(root.state / "applied")
    proc = root("forget", sha)
    assert proc.returncode == 0 and json.dumps(sha)[1:13] in proc.stdout
