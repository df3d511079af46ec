# SPDX-License-Identifier: MIT
"""Issue 10, bytes that are not what they should be: every one of these once gave a traceback
or a boot that never finished. Each must now give a clear line, an exit code of the documented
set, damaged state moved aside, and the other scripts applied."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from test_cli import LIB, Root, cli, no_traceback

DEEP = b"[" * 200000 + b"]" * 200000


@pytest.fixture
def root(tmp_path):
    return Root(tmp_path)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_manifest(root, migrations, **top):
    from migration import manifest as manifest_mod

    path = root.path / "usr" / "share" / "migration" / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": 1, "digest": manifest_mod.digest(migrations), "migrations": migrations,
            **top}
    path.write_text(json.dumps(body))
    return path


def test_non_utf8_shebang_is_recorded_and_the_rest_still_runs(root):
    bad = root.scripts / "10-bad"
    bad.write_bytes(b"#!/bin/sh -e\xff\xfe\ntrue\n")
    bad.chmod(0o644)
    root.add("20-ok", "echo ok\n")
    for _ in range(2):
        proc = root("run", errors="surrogateescape")  # the script's own output is raw bytes
        no_traceback(proc)
        assert proc.returncode in (0, 1), proc.stderr
        assert ": /bin/sh -e\\xff\\xfe -e\n" in proc.stderr  # "10-bad: running": escaped
    rows = root.status()
    assert rows["10-bad"]["state"] in ("applied", "failed")  # not interrupted forever
    assert rows["20-ok"]["state"] == "applied"
    assert root("status").returncode in (0, 1)


@pytest.mark.parametrize("what", ["state.json", "applied", "failed", "started"])
def test_deeply_nested_json_state_is_moved_aside(root, what):
    script = root.add("10-a", "echo a\n")
    root.add("20-b", "true\n")
    assert root("run").returncode == 0
    sha = _sha(script)
    if what == "state.json":
        target = root.state / "state.json"
    else:
        (root.state / "applied" / sha).unlink()
        target = root.state / what / sha
    target.write_bytes(DEEP)
    proc = root("status")
    no_traceback(proc)
    proc = root("run")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    if what == "started":  # a note whose content is lost still means "interrupted": runs again
        assert "a: a" in proc.stderr
    else:
        assert "moved aside" in proc.stderr
        assert any(n.startswith(what) for n in os.listdir(root.state / "damaged"))
    assert {r["state"] for r in root.status().values()} == {"applied"}


def test_deeply_nested_manifest_and_fragment_are_clear_errors(root):
    root.add("10-a", "true\n")
    path = _write_manifest(root, [])
    path.write_bytes(DEEP)
    for args in (["run"], ["status"], ["check", "--package", "p"]):
        proc = root(*args)
        no_traceback(proc)
        assert proc.returncode == 2 and "not valid JSON" in proc.stderr, proc.stderr
    frag = root.path / "usr" / "share" / "migration" / "packages" / "p.json"
    frag.parent.mkdir(parents=True)
    frag.write_bytes(DEEP)
    proc = root("manifest")
    no_traceback(proc)
    assert proc.returncode == 2 and "p.json" in proc.stderr


@pytest.mark.parametrize("field, value", [
    ("attempts", "abc"), ("attempts", [1]), ("attempts", 1.5e999), ("attempts", -3),
    ("attempts", 10**30), ("exit_code", None), ("duration_s", "fast"), ("image", [1]),
    ("reason", 5), ("name", ["x"]), ("started_at", 7), ("oneway", "2"), ("kind", "applied"),
])
@pytest.mark.parametrize("fmt", [1, 2])  # a newer runner's record is trusted, its fields not
def test_failed_record_with_a_bad_field_is_moved_aside_and_the_script_runs(root, field, value,
                                                                            fmt):
    script = root.add("10-a", "exit 3\n")
    root.add("20-b", "true\n")
    assert root("run").returncode == 1
    sha = _sha(script)
    path = root.state / "failed" / sha
    record = json.loads(path.read_text())
    record[field] = value
    record["format"] = fmt
    path.write_text(json.dumps(record))  # 1.5e999 is written as Infinity
    proc = root("status")
    no_traceback(proc)
    proc = root("run")
    no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    assert "damaged state record moved aside" in proc.stderr
    assert "10-a: FAILED: exit 3 (attempt 1)" in proc.stderr  # the count starts again
    assert root.status()["20-b"]["state"] == "applied"


def test_lone_surrogate_in_the_manifest_is_a_clear_error(root):
    script = root.add("10-a", "true\n")
    migrations = [{"name": "10-a", "sha256": _sha(script), "package": "p\ud800",
                   "version": "1\n2"}]
    _write_manifest(root, migrations)  # json.dumps writes the lone surrogate as \ud800
    for args in (["status"], ["run"], ["status", "--json"]):
        proc = root(*args)
        no_traceback(proc)
        assert proc.returncode == 2, proc.stderr
        assert "package" in proc.stderr


def test_surrogates_and_newlines_in_records_are_printed_escaped(root):
    script = root.add("10-a", "exit 3\n")
    assert root("run").returncode == 1
    path = root.state / "failed" / _sha(script)
    record = json.loads(path.read_text())
    record["reason"] = "bad\ud800\nforged line"
    path.write_text(json.dumps(record))
    env = dict(os.environ, PYTHONPATH=LIB, LC_ALL="C.UTF-8", PYTHONUTF8="0")
    proc = subprocess.run([sys.executable, "-X", "utf8=0", "-m", "migration", "--root",
                           str(root.path), "status"], capture_output=True, env=env)
    assert b"Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1
    line = [x for x in proc.stdout.splitlines() if b"10-a" in x]
    assert len(line) == 1 and b"bad\\ud800\\x0aforged line" in line[0]


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_manifest_that_is_not_a_bounded_regular_file(root, kind):
    root.add("10-a", "true\n")
    manifest = root.path / "m.json"
    if kind == "dev-zero":
        manifest = "/dev/zero"
    elif kind == "fifo":
        os.mkfifo(manifest)
    else:
        with open(manifest, "wb") as f:
            f.truncate(64 << 20)  # sparse: costs no disk
    for args in (["run"], ["status"], ["run", "--dry-run"]):
        proc = root("--manifest", str(manifest), *args, timeout=20)
        no_traceback(proc)
        assert proc.returncode == 2, proc.stderr
        assert ("not a regular file" if kind != "huge" else "larger than") in proc.stderr


def test_deleted_working_directory_is_a_clear_error(root, tmp_path):
    root.add("10-a", "true\n")
    gone = tmp_path / "gone"
    gone.mkdir()
    for args in (["--root", ".", "run"], ["--root", ".", "status"], ["--state-dir", "s", "run"]):
        proc = cli(*args, preexec_fn=lambda: (os.chdir(gone), os.rmdir(gone)))
        no_traceback(proc)
        assert proc.returncode == 2, proc.stderr
        assert "working directory" in proc.stderr
        gone.mkdir()


def test_noop_fast_path_never_raises_from_a_deleted_cwd(tmp_path):
    from migration import noop

    gone = tmp_path / "gone"
    gone.mkdir()
    here = os.getcwd()
    os.chdir(gone)
    os.rmdir(gone)
    try:
        assert noop.fast_run(["--root", "rel", "run"]) is None
    finally:
        os.chdir(here)
