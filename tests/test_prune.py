# SPDX-License-Identifier: MIT
"""Pruning: a run removes the failed records and interrupted notes (and the logs) of content
that no script ships any more (the script was edited or removed), and keeps applied records
forever. Crash-safe, never through a symlink, only under the lock."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from migration import runner
from migration.state import State, now_iso

LIB = str(Path(__file__).resolve().parents[1] / "lib")
A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def _outcome(kind: str, sha: str, name: str, **extra: object) -> Dict[str, object]:
    return {
        "name": name, "sha256": sha, "started_at": now_iso(), "finished_at": now_iso(),
        "duration_s": 0.1, "exit_code": 0 if kind == "applied" else 1, "attempts": 1,
        "image": {}, **({"reason": "exit 1"} if kind == "failed" else {}), **extra,
    }  # fmt: skip


@pytest.fixture
def state(tmp_path: Path) -> State:
    s = State(str(tmp_path / "state"))
    s.lock(0)
    s.prepare()
    yield s
    s.unlock()


def _names(state: State, sub: str) -> List[str]:
    return sorted(os.listdir(os.path.join(state.path, sub)))


def _log(state: State, sha: str) -> Path:
    path = Path(state.log_path(sha))
    path.write_text("output\n")
    return path


def test_prune_removes_failed_and_interrupted_of_unshipped_content_only(state: State) -> None:
    state.record_outcome("applied", _outcome("applied", A, "10-old"))  # the proof: kept
    state.record_outcome("failed", _outcome("failed", B, "20-edited"))
    state.mark_started("30-cut", C, 1, {})  # interrupted, its script since edited
    state.record_outcome("failed", _outcome("failed", D, "40-shipped"))
    logs = {sha: _log(state, sha) for sha in (A, B, C, D)}
    pruned = state.prune({D})
    assert sorted((p.kind, p.sha256, p.name) for p in pruned) == [
        ("failed", B, "20-edited"), ("started", C, "30-cut")]  # fmt: skip
    assert _names(state, "applied") == [A]
    assert _names(state, "failed") == [D]
    assert _names(state, "started") == []
    assert {sha for sha, p in logs.items() if p.exists()} == {A, D}
    assert state.prune({D}) == []  # nothing left to do


def test_prune_keeps_records_that_carry_a_one_way_level(state: State) -> None:
    """Without state.json the records are the only memory of the level (compat.state_facts):
    a one-way script that failed half-way may have converted the data."""
    state.record_outcome("failed", _outcome("failed", B, "20-oneway", oneway=2))
    state.mark_started("30-oneway", C, 1, {}, oneway=3)
    assert state.prune(set()) == []
    assert _names(state, "failed") == [B] and _names(state, "started") == [C]
    assert state.compat_facts(None).level == 3


def test_prune_never_follows_a_symlink_and_leaves_damaged_records(state: State, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.write_text(json.dumps({**_outcome("failed", B, "20-x"), "format": 1, "kind": "failed"}))
    os.symlink(outside, os.path.join(state.path, "failed", B))
    Path(state.path, "failed", C).write_text("{not json")  # damaged: not this path's to judge
    os.symlink(outside, state.log_path(D))  # a "log" that is a symlink: not removed through
    assert state.prune(set()) == []
    assert outside.read_text().startswith("{")
    assert _names(state, "failed") == [B, C]
    assert os.path.islink(state.log_path(D))


def test_an_emptied_interrupted_note_is_pruned(state: State) -> None:
    """A power cut may leave a note without content (see State.mark_started): it carries no
    level, so it is pruned like any note of content no longer shipped."""
    Path(state.path, "started", C).touch()
    assert [p.sha256 for p in state.prune(set())] == [C]


def test_prune_needs_the_lock(tmp_path: Path) -> None:
    s = State(str(tmp_path / "state"))
    s.lock(0)
    s.prepare()
    s.record_outcome("failed", _outcome("failed", B, "20-x"))
    s.unlock()
    with pytest.raises(RuntimeError, match="lock"):
        State(str(tmp_path / "state")).prune(set())
    assert os.listdir(tmp_path / "state" / "failed") == [B]


def test_a_power_cut_mid_prune_leaves_whole_records_and_the_next_run_finishes(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every removal is of a whole file; logs go before their records, so a cut never leaves
    a log without a record that a later prune would not find."""
    for sha, name in ((B, "20-x"), (C, "30-y")):
        state.record_outcome("failed", _outcome("failed", sha, name))
        _log(state, sha)
    real_unlink = os.unlink
    calls: List[str] = []

    def cut(path: str, *args: object, **kw: object) -> None:
        calls.append(os.path.basename(os.path.dirname(path)))
        if len(calls) == 3:
            raise OSError(5, "power cut")  # everything after this never happened
        real_unlink(path, *args, **kw)

    monkeypatch.setattr(os, "unlink", cut)
    with pytest.raises(Exception, match="power cut"):
        state.prune(set())
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert calls[:2] == ["logs", "logs"]
    for sha in (B, C):  # the records are whole, readable, still failed
        assert state.read_record("failed", sha)[0]["reason"] == "exit 1"
    assert sorted(p.sha256 for p in state.prune(set())) == [B, C]
    assert _names(state, "failed") == [] and _names(state, "logs") == []


# -- through the runner and the command line ----------------------------------------------


def _cli(root: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    argv = [sys.executable, "-m", "migration", "--root", str(root), *args]
    env = dict(os.environ, PYTHONPATH=LIB)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    scripts = tmp_path / "etc/migration.d"
    scripts.mkdir(parents=True)
    scripts.chmod(0o755)
    return tmp_path


def test_a_run_prunes_what_an_edited_script_left_and_status_no_longer_shows_it(
    root: Path,
) -> None:
    scripts, state = root / "etc/migration.d", root / "var/lib/migration"
    old_ok, old_bad, new = "echo v1\n", "echo broken >&2\nexit 1\n", "echo fixed\n"
    (scripts / "10-kept").write_text(old_ok)
    (scripts / "20-fix").write_text(old_bad)
    assert _cli(root, "run").returncode == 1
    assert (state / "failed" / _sha(old_bad)).is_file()
    assert (state / "logs" / f"{_sha(old_bad)}.log").is_file()
    # The next release edits both scripts: the old failure has no script any more.
    (scripts / "10-kept").write_text("echo v2\n")
    (scripts / "20-fix").write_text(new)
    proc = _cli(root, "run")
    assert proc.returncode == 0, proc.stderr
    assert ("pruned the failed record of 20-fix (sha256 " + _sha(old_bad)) in proc.stderr
    assert not (state / "failed" / _sha(old_bad)).exists()
    assert not (state / "logs" / f"{_sha(old_bad)}.log").exists()
    assert (state / "applied" / _sha(old_ok)).is_file()  # applied records are kept forever
    proc = _cli(root, "status", "--json")
    rows = json.loads(proc.stdout)
    assert {r["sha256"] for r in rows} == {_sha("echo v2\n"), _sha(new)}
    assert "failed" not in _cli(root, "status").stdout
    assert "pruned" not in _cli(root, "run").stderr  # nothing left to prune


def test_a_failed_record_of_a_shipped_script_is_kept(root: Path) -> None:
    scripts, state = root / "etc/migration.d", root / "var/lib/migration"
    (scripts / "10-bad").write_text("exit 1\n")
    assert _cli(root, "run").returncode == 1
    assert _cli(root, "run").returncode == 1
    record = json.loads((state / "failed" / _sha("exit 1\n")).read_text())
    assert record["attempts"] == 2


def test_an_update_does_not_prune_the_running_images_records(root: Path, tmp_path: Path) -> None:
    """At update time the scripts dir is the new image's while the old one runs (and the
    updater may still fall back to it): its failures stay until a run of the booted image."""
    scripts, state = root / "etc/migration.d", root / "var/lib/migration"
    (scripts / "10-bad").write_text("exit 1\n")
    assert _cli(root, "run").returncode == 1
    new = tmp_path / "newroot"
    (new / "etc/migration.d").mkdir(parents=True)
    (new / "etc/migration.d" / "20-new").write_text("true\n")
    opts = runner.Options(str(new / "etc/migration.d"), str(state), str(root), None,
                          phase="update", image_root=str(new), lock_wait=1.0)  # fmt: skip
    assert runner.run(opts, say=lambda _m: None) == 0
    assert (state / "failed" / _sha("exit 1\n")).is_file()


# -- adversarial review 5 (findings 4, 6, 7) ----------------------------------------------


def _killed_after_a_successful_retry(state: State, sha: str, name: str) -> Path:
    """A script failed, then its retry succeeded, and the runner was killed (or the power cut)
    before settle(): applied/, failed/ and started/ of the same sha, and the applied run's log."""
    state.mark_started(name, sha, 1, {})
    state.record_outcome("failed", _outcome("failed", sha, name))
    state.mark_started(name, sha, 2, {})
    log = _log(state, sha)
    state.record_outcome("applied", _outcome("applied", sha, name, attempts=2), batch=True)
    return log  # no settle(): killed here


def test_prune_never_removes_the_log_of_an_applied_record(state: State) -> None:
    """Finding 6: a stale failed record next to an applied one, of content no longer shipped:
    the log is the applied record's, kept forever with it."""
    log = _killed_after_a_successful_retry(state, A, "10-x")
    assert [p for p in state.prune(set()) if p.sha256 == A] == []
    assert log.read_text() == "output\n"
    assert _names(state, "applied") == [A]


def test_the_next_run_drops_a_failed_record_left_next_to_an_applied_one(
    state: State, tmp_path: Path
) -> None:
    """Finding 6: prepare() drops the stale failed record (as it drops the started note), so it
    cannot outlive its applied record and its log stays."""
    log = _killed_after_a_successful_retry(state, A, "10-x")
    state.unlock()
    again = State(state.path)
    again.lock(0)
    try:
        again.prepare()
        assert _names(again, "failed") == [] and _names(again, "started") == []
        assert _names(again, "applied") == [A] and log.exists()
        assert again.prune(set()) == []
        assert log.exists()
    finally:
        again.unlock()


def test_prune_moves_damaged_interrupted_notes_aside_and_removes_only_emptied_ones(
    state: State,
) -> None:
    """Finding 7: README "damaged/: moved aside (never deleted)". Only a note whose content a
    power cut lost (empty, or zeros on some file systems) is a power-cut note: pruned."""
    bad = {"format": 1, "kind": "started", "sha256": B, "name": "20-oneway", "attempt": 1,
           "oneway": 3, "image": {}, "pid": -1}  # fmt: skip
    texts = {B: json.dumps(bad).encode(),
             C: b'{"format": 1, "kind": "started", "oneway": 2, "attem'}  # fmt: skip
    for sha, data in texts.items():
        Path(state.path, "started", sha).write_bytes(data)
    Path(state.path, "started", D).write_bytes(b"\0" * 300)  # emptied by a cut (XFS: zeros)
    pruned = state.prune(set())
    assert _names(state, "started") == []
    assert [p.sha256 for p in pruned if not p.moved_to] == [D]
    moved = {p.sha256: p.moved_to for p in pruned if p.moved_to}
    assert sorted(moved) == [B, C]
    for sha, path in moved.items():
        assert os.path.dirname(path) == os.path.join(state.path, "damaged")
        assert Path(path).read_bytes() == texts[sha]  # kept whole


def test_a_run_prunes_against_the_scripts_it_sees_under_the_lock(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 4: a runner that waited for the lock must not judge "shipped" from what it saw
    before the wait: a runner that went first may have run (and failed) a script shipped in
    the meantime, whose failed record and log are the only trace of that failure."""
    scripts, state = root / "etc/migration.d", root / "var/lib/migration"
    (scripts / "10-old").write_text("true\n")
    assert _cli(root, "run").returncode == 0
    new = "echo 'N: cannot convert foo' >&2\nexit 1\n"
    opts = runner.Options(str(scripts), str(state), str(root), None, lock_wait=5.0)
    real_lock = State.lock
    other_ran: List[int] = []

    def lock(self: State, wait: float) -> None:
        if not other_ran:  # while this runner waits, another ships 20-new, runs it first
            other_ran.append(1)
            (scripts / "20-new").write_text(new)
            other_ran.append(runner.run(opts, say=lambda _m: None))
        real_lock(self, wait)

    monkeypatch.setattr(State, "lock", lock)
    said: List[str] = []
    assert runner.run(opts, say=said.append) == 1
    assert other_ran == [1, 1]
    assert not [m for m in said if "pruned" in m], said
    record = json.loads((state / "failed" / _sha(new)).read_text())
    assert record["attempts"] == 2  # this runner saw it under the lock and ran it again
    assert (state / "logs" / f"{_sha(new)}.log").is_file()


def test_a_failed_record_and_an_interrupted_note_of_one_content_are_pruned_together(
    state: State,
) -> None:
    """Attempt 1 failed, attempt 2 was cut, then the script was edited: one log for both, removed
    once (removing it twice failed the whole run with exit 2)."""
    state.mark_started("20-x", B, 1, {})
    state.record_outcome("failed", _outcome("failed", B, "20-x"))
    state.mark_started("20-x", B, 2, {})
    log = _log(state, B)
    assert sorted(p.kind for p in state.prune(set())) == ["failed", "started"]
    assert not log.exists()
    assert _names(state, "failed") == [] and _names(state, "started") == []


def test_a_run_says_where_a_damaged_note_of_unshipped_content_went(root: Path) -> None:
    scripts, state = root / "etc/migration.d", root / "var/lib/migration"
    (scripts / "10-a").write_text("true\n")
    assert _cli(root, "run").returncode == 0
    (state / "started" / C).write_text('{"format": 1, "oneway": 2, "attem')
    proc = _cli(root, "run")
    assert proc.returncode == 0, proc.stderr
    assert f"moved the unreadable interrupted note (sha256 {C})" in proc.stderr, proc.stderr
    moved = os.listdir(state / "damaged")
    assert len(moved) == 1 and moved[0].startswith(f"started-{C}.")
    assert (state / "damaged" / moved[0]).read_text().endswith('"attem')
