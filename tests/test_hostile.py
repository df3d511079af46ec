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

from test_cli import LIB, Root, as_nobody, cli, no_traceback, world  # noqa: F401

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


# -- adversarial review 5, finding 5: refused before read, never read without bound ---------

HUGE = 2 << 40  # a sparse 2 TB file: hours to hash, no disk used


def _sparse(path, size=HUGE, owner=0):
    with open(path, "wb") as f:
        f.truncate(size)
    os.chmod(path, 0o644)
    os.chown(path, owner, owner)
    return path


def _manifest_and_noop_key(root):
    """10-foo-a and 20-foo-b applied from an image manifest: the done stamp and the no-op key
    exist, so the next run takes the no-op fast path (migration.noop)."""
    from test_cli import _manifest_image

    _manifest_image(root, {"10-foo-a": ("foo", "echo a\n"), "20-foo-b": ("foo", "true\n")})
    assert root("manifest").returncode == 0
    assert root("run").returncode == 0
    assert (root.state / "noop-key").is_file() and os.listdir(root.state / "done")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown and the root-only refusals need root")
def test_a_huge_script_is_refused_unread_by_run_status_and_dry_run(root):
    root.add("10-ok", "true\n")
    _sparse(root.scripts / "20-huge")
    proc = root("run", timeout=20)  # hashing it would take hours
    no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    assert "20-huge: refused: is larger than 64 MiB" in proc.stderr, proc.stderr
    rows = root.status()
    assert (rows["20-huge"]["state"], rows["10-ok"]["state"]) == ("refused", "applied")
    assert rows["20-huge"]["sha256"] == ""  # never read: no content, no identity
    assert "would refuse 20-huge: is larger than 64 MiB" in root("run", "--dry-run").stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the root-only refusals need root")
@pytest.mark.parametrize("entry", ["symlink", "user's file in a writable dir", "user's file"])
def test_root_refuses_an_unsafe_entry_before_reading_it(root, tmp_path, entry):
    """A symlink (to /proc/kmsg it would block and eat the kernel log; to a sparse file it never
    ends), or a file a user planted: refused by its lstat, never opened."""
    root.add("10-ok", "true\n")
    if entry == "symlink":
        (root.scripts / "20-x").symlink_to(_sparse(tmp_path / "elsewhere"))
        reason = "is a symlink"
    elif entry == "user's file":
        _sparse(root.scripts / "20-x", owner=65534)
        reason = "is owned by uid 65534, not root"
    else:
        root.scripts.chmod(0o777)
        _sparse(root.scripts / "20-x", owner=65534)
        reason = "is writable by group or others"
    for args in (["run"], ["status"], ["run", "--dry-run"]):
        proc = root(*args, timeout=20)
        no_traceback(proc)
        assert proc.returncode == 1, (args, proc.stderr)
        assert reason in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_the_noop_fast_path_reads_no_huge_or_unsafe_script(root):
    """With the no-op key in place a huge file, or one a user now owns, under a listed name
    must not be hashed by the fast path: the full path refuses it unread."""
    _manifest_and_noop_key(root)
    path = root.scripts / "20-foo-b"
    path.unlink()
    _sparse(path)
    proc = root("run", timeout=20)
    assert proc.returncode == 1 and "20-foo-b: refused: is larger than 64 MiB" in proc.stderr
    path.unlink()
    root.add("20-foo-b", "true\n")
    assert root("run").returncode == 0  # back to applied
    os.chown(path, 65534, 65534)  # the entry, not its content, is judged (as for a symlink)
    proc = root("run", timeout=20)
    assert proc.returncode == 1, proc.stderr
    assert "20-foo-b: refused: is owned by uid 65534, not root" in proc.stderr


def test_an_unprivileged_runner_refuses_a_huge_script_unread(world):  # noqa: F811
    """The size cap holds for every user (the ownership rules are root's only)."""
    base, _ = world
    scripts = os.path.join(base, "huge-scripts")
    os.mkdir(scripts, 0o755)
    with open(os.path.join(scripts, "10-ok"), "w") as f:
        f.write("true\n")
    _sparse(os.path.join(scripts, "20-huge"))
    os.symlink(os.path.join(scripts, "20-huge"), os.path.join(scripts, "30-link"))
    state = os.path.join(base, "huge-state")
    proc = as_nobody(world, "--scripts-dir", scripts, "--state-dir", state, "status", "--json")
    no_traceback(proc)
    assert proc.returncode == 1
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    for name in ("20-huge", "30-link"):
        assert rows[name]["state"] == "refused"
        assert rows[name]["reason"].startswith("is larger than 64 MiB"), rows[name]


def test_the_sealed_copy_never_follows_a_symlink_the_check_did_not_see(tmp_path):
    """What runs is what was hashed: a script swapped for a symlink after the check is not read
    through it (the hash would differ anyway, but a link to a huge file must not be copied)."""
    from migration import execute

    target = tmp_path / "target"
    target.write_text("true\n")
    link = tmp_path / "10-x"
    link.symlink_to(target)
    with pytest.raises(OSError):
        execute.seal(str(link), "10-x", follow=False)
    sealed = execute.seal(str(link), "10-x", follow=True)
    os.close(sealed.fd)
    assert sealed.sha256 == hashlib.sha256(b"true\n").hexdigest()
