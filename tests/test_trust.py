# SPDX-License-Identifier: MIT
"""Issue 10, state dir trust: what a local unprivileged user (uid 65534 here) can and cannot do
to the runner through the state dir (see SECURITY.md). Runs as root: the files of "another user"
are made with os.chown, and that user's own attempts run in a child after os.setuid."""

import contextlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile

import pytest

from test_cli import NOBODY, Root, no_traceback

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the trust checks apply to root only")


@pytest.fixture
def root():
    """A root that uid 65534 can traverse (pytest's tmp_path is below a 0700 directory)."""
    base = tempfile.mkdtemp(prefix="migration-trust-")
    os.chmod(base, 0o755)
    yield Root(pathlib.Path(base))
    shutil.rmtree(base)


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _as_nobody(fn):
    """Run fn() in a child as uid 65534; its return value (an int) is the child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_umask_000_does_not_leak_into_what_the_runner_creates(root):
    root.add("10-a", "echo hi\n")
    proc = root("run", preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stderr
    for path in (root.path / "var", root.path / "var" / "lib", root.state):
        assert _mode(path) & 0o022 == 0, (path, oct(_mode(path)))
    for dirpath, dirs, files in os.walk(root.state):
        for name in dirs:
            assert _mode(os.path.join(dirpath, name)) & 0o022 == 0, name
        for name in files:
            assert _mode(os.path.join(dirpath, name)) & 0o022 == 0, name
    assert _mode(root.state / "lock") == 0o600


@pytest.mark.parametrize("where", ["", "applied", "done", "logs"])
@pytest.mark.parametrize("how", ["owner", "mode"])
def test_untrusted_state_dir_or_subdir_is_refused_by_run_and_status(root, where, how):
    root.add("10-a", "true\n")
    assert root("run").returncode == 0
    root.add("20-b", "true\n")
    target = root.state / where if where else root.state
    if how == "owner":
        os.chown(target, NOBODY, NOBODY)
    else:
        os.chmod(target, 0o777)
    for args in (["run"], ["status"], ["forget", "10-a"]):
        proc = root(*args)
        no_traceback(proc)
        assert proc.returncode == 2, (args, proc.stderr)
        assert str(target) in proc.stderr and "refus" in proc.stderr, proc.stderr
        assert ("uid 65534" if how == "owner" else "writable by group or others") in proc.stderr
    assert len(os.listdir(root.state / "applied")) == 1  # 20-b did not run


def test_forged_record_in_a_user_writable_state_dir_is_not_trusted(root):
    """The attack of the issue: with a world-writable state dir a user forges applied/<sha> so a
    new migration is skipped. The runner now refuses that state dir instead."""
    root.add("10-a", "true\n")
    assert root("run").returncode == 0
    script = root.add("20-new", "echo important\n")
    import hashlib

    sha = hashlib.sha256(script.read_bytes()).hexdigest()
    os.chmod(root.state / "applied", 0o777)

    def forge():
        with open(root.state / "applied" / sha, "w") as f:
            f.write(json.dumps({"format": 1, "sha256": sha, "name": "20-new", "attempts": 1,
                                "exit_code": 0}))
        return 0

    assert _as_nobody(forge) == 0  # possible: the dir is 0777
    proc = root("run")
    assert proc.returncode == 2 and "important" not in proc.stderr
    assert "applied" in proc.stderr and "writable by group or others" in proc.stderr


def test_lock_is_0600_so_no_other_user_can_take_it(root):
    root.add("10-a", "true\n")
    assert root("run").returncode == 0
    lock = root.state / "lock"
    assert _mode(lock) == 0o600 and os.lstat(lock).st_uid == 0

    def take():
        try:
            os.open(lock, os.O_RDONLY)
        except PermissionError:
            return 0
        return 1

    assert _as_nobody(take) == 0


@contextlib.contextmanager
def legacy_lock_held(root, flock, as_user=True):
    """Runner 0.1.0's 0644 lock in a fresh state dir, opened (and with `flock`, locked) by a
    process of a local user (or of root); yields the lock's path."""
    root.add("10-a", "true\n")
    root.state.mkdir(parents=True, mode=0o755)
    lock = root.state / "lock"
    lock.touch(mode=0o644)
    os.chmod(lock, 0o644)
    take = "fcntl.flock(fd, fcntl.LOCK_EX); " if flock else ""
    r, w = os.pipe()
    holder = subprocess.Popen(
        ["python3", "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
         f"{take}os.write(1, b'x'); time.sleep(30)", str(lock)],
        stdout=w, preexec_fn=(lambda: (os.setgid(NOBODY), os.setuid(NOBODY))) if as_user else None)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        yield lock
    finally:
        holder.kill()
        holder.wait()
        os.close(r)


def test_legacy_0644_lock_is_replaced_by_a_private_one(root):
    """A lock left by an older runner (0644: any user could open and flock it) is replaced, so a
    user holding the old file's lock no longer blocks the runner."""
    with legacy_lock_held(root, flock=False) as lock:
        old_ino = os.stat(lock).st_ino
        proc = root("run", "--lock-wait", "1")
        assert proc.returncode == 0, proc.stderr
        assert os.stat(lock).st_ino != old_ino and _mode(lock) == 0o600


def test_a_user_who_flocks_the_legacy_lock_first_does_not_block_the_runner(root):
    """Found by an adversary: a user who takes the flock of runner 0.1.0's 0644 lock before any
    new runner held it blocked every run (exit 75). A lock held only by other users' processes
    is replaced at once; one held by root (a runner) is waited for."""
    with legacy_lock_held(root, flock=True) as lock:
        old_ino = os.stat(lock).st_ino
        proc = root("run", "--lock-wait", "5")
        assert proc.returncode == 0, proc.stderr
        assert os.stat(lock).st_ino != old_ino and _mode(lock) == 0o600


def test_a_legacy_lock_held_by_root_is_waited_for(root):
    with legacy_lock_held(root, flock=True, as_user=False):
        proc = root("run", "--lock-wait", "0.5")
        assert proc.returncode == 75, proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "dangling", "symlink", "other-owner", "directory"])
def test_a_lock_that_is_not_a_root_private_file_is_refused_not_followed(root, tmp_path, kind):
    root.add("10-a", "true\n")
    root.state.mkdir(parents=True, mode=0o755)
    lock = root.state / "lock"
    outside = tmp_path / "outside"
    if kind == "fifo":
        os.mkfifo(lock, 0o600)
    elif kind == "dangling":
        os.symlink(outside, lock)
    elif kind == "symlink":
        outside.touch(mode=0o600)
        os.symlink(outside, lock)
    elif kind == "other-owner":
        lock.touch(mode=0o600)
        os.chown(lock, NOBODY, NOBODY)
    else:
        lock.mkdir()
    for args in (["run"], ["run", "--lock-wait", "0"], ["forget", "10-a"]):
        proc = root(*args, timeout=20)
        no_traceback(proc)
        assert proc.returncode == 2, (args, proc.stderr)
        assert str(lock) in proc.stderr, proc.stderr
    proc = root("status", timeout=20)  # read-only: it may report, never hang
    no_traceback(proc)
    assert proc.returncode in (1, 2)
    assert os.path.lexists(outside) == (kind == "symlink")
    assert not (root.state / "applied").exists()


def test_records_that_are_fifos_or_symlinks_are_moved_aside_never_opened(root, tmp_path):
    root.add("10-a", "echo a\n")
    root.add("20-b", "echo b\n")
    rows = root.status()
    sha_a, sha_b = rows["10-a"]["sha256"], rows["20-b"]["sha256"]
    root.state.mkdir(parents=True, mode=0o755)
    for sub in ("applied", "failed", "started"):
        (root.state / sub).mkdir(mode=0o755)
    os.mkfifo(root.state / "applied" / sha_a, 0o600)
    forged = tmp_path / "forged"
    forged.write_text(json.dumps({"format": 1, "sha256": sha_b, "name": "20-b", "attempts": 1,
                                  "exit_code": 0}))
    os.symlink(forged, root.state / "applied" / sha_b)
    os.mkfifo(root.state / "started" / sha_b, 0o600)
    proc = root("status", timeout=20)
    no_traceback(proc)
    assert proc.returncode == 1
    proc = root("run", timeout=20)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "a: a" in proc.stderr and "b: b" in proc.stderr
    assert len(os.listdir(root.state / "damaged")) == 3
    assert {r["state"] for r in root.status().values()} == {"applied"}


@pytest.mark.parametrize("sub", ["logs", "applied", "done", "started", "damaged"])
def test_a_subdir_that_is_a_symlink_is_moved_aside_not_followed(root, tmp_path, sub):
    root.add("10-a", "echo a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    root.state.mkdir(parents=True, mode=0o755)
    os.symlink(elsewhere, root.state / sub)
    proc = root("run")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(elsewhere) == []
    assert (root.state / sub).is_dir() and not (root.state / sub).is_symlink()
    assert {r["state"] for r in root.status().values()} == {"applied"}


def test_noop_fast_path_does_not_trust_an_untrusted_state_dir(root):
    """The fast path (no argparse, no json) checks the same: it never answers 0 from a state dir
    a user could have written, and never blocks on a FIFO."""
    root.add("10-a", "true\n")
    assert root("run").returncode == 0
    os.chmod(root.state, 0o777)
    proc = root("run")
    assert proc.returncode == 2 and "writable by group or others" in proc.stderr
    os.chmod(root.state, 0o755)
    os.unlink(root.state / "lock")
    os.mkfifo(root.state / "lock", 0o600)
    proc = root("run", timeout=20)
    assert proc.returncode == 2
