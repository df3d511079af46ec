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
