# SPDX-License-Identifier: MIT
"""The state dir: atomic records, damaged records moved aside, the lock, stamps, os-release."""

import json
import os
import subprocess
import sys
import time

import pytest

from migration.state import (
    LockBusy,
    State,
    StateError,
    atomic_write,
    now_iso,
    read_os_release,
    validate_record,
)

SHA = "a" * 64
SHA2 = "b" * 64


def _applied(state, sha=SHA, name="10-x"):
    return state.record_outcome(
        "applied",
        {
            "name": name,
            "sha256": sha,
            "started_at": now_iso(),
            "finished_at": now_iso(),
            "duration_s": 0.1,
            "exit_code": 0,
            "attempts": 1,
            "image": {},
        },
    )


@pytest.fixture
def state(tmp_path):
    s = State(str(tmp_path / "state"))
    s.lock(0)
    s.prepare()
    yield s
    s.unlock()


def test_now_iso_is_utc_iso8601():
    assert now_iso(0) == "1970-01-01T00:00:00Z"


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f"
    atomic_write(str(path), b"one")
    atomic_write(str(path), b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def test_record_roundtrip_and_layout(state):
    state.mark_started("10-x", SHA, 1, {"version_id": "1"})
    snap = state.snapshot([SHA])
    assert snap.started[SHA]["attempt"] == 1
    record = _applied(state)
    snap = state.snapshot([SHA])
    assert snap.applied[SHA] == record
    assert not snap.started and not snap.failed
    with open(os.path.join(state.path, "applied", SHA)) as f:
        on_disk = json.load(f)
    assert on_disk["format"] == 1 and on_disk["kind"] == "applied"
    assert sorted(os.listdir(state.path)) == [
        "applied", "done", "failed", "lock", "logs", "started"
    ]


def test_applied_wins_over_stale_started(state):
    state.mark_started("10-x", SHA, 1, {})
    state._write("applied", SHA, {"format": 1, "name": "10-x", "sha256": SHA,
                                  "attempts": 1, "exit_code": 0})
    snap = state.snapshot([SHA])
    assert SHA in snap.applied and SHA not in snap.started


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"format": 1, "name": "10-x", "sha2', "truncated"),
        (b"\x00\x17garbage\xff", "truncated or not JSON"),
        (b"", "empty"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"name": "10-x"}', "format"),
        (b'{"format": "1", "sha256": "' + SHA.encode() + b'"}', "format"),
        (b'{"format": 1, "name": "10-x", "sha256": "' + SHA2.encode() + b'"}', "sha256"),
        (b'{"format": 1, "name": "10-x", "sha256": "' + SHA.encode() + b'", "attempts": true,'
         b' "exit_code": 0}', "attempts"),
    ],
)
def test_damaged_record_is_moved_aside_not_deleted(state, content, reason):
    path = os.path.join(state.path, "applied", SHA)
    with open(path, "wb") as f:
        f.write(content)
    # reading without the lock (status) reports but moves nothing
    snap = state.snapshot([SHA])
    assert not snap.applied and reason in snap.damaged[0].reason
    assert os.path.exists(path)
    snap = state.snapshot([SHA], repair=True)
    assert not snap.applied and not os.path.exists(path)
    (moved,) = os.listdir(os.path.join(state.path, "damaged"))
    assert moved.startswith("applied-" + SHA)
    with open(os.path.join(state.path, "damaged", moved), "rb") as f:
        assert f.read() == content


def test_newer_record_format_is_trusted_not_damaged():
    assert validate_record("applied", SHA, {"format": 7, "sha256": SHA}) is None


def test_newer_state_format_stops_runner(state):
    with open(os.path.join(state.path, "state.json"), "w") as f:
        json.dump({"format": 2}, f)
    with pytest.raises(StateError, match="newer runner"):
        state.check_meta()


def test_meta_written_only_when_changed(state):
    state.update_meta({"version_id": "1"}, None)
    meta_path = os.path.join(state.path, "state.json")
    meta, _ = state.read_meta()
    assert meta["format"] == 1 and meta["image"] == {"version_id": "1"}
    meta["later_key"] = "kept"
    atomic_write(meta_path, json.dumps(meta).encode())
    before = os.stat(meta_path).st_mtime_ns
    state.update_meta({"version_id": "1"}, state.check_meta()[0])
    assert os.stat(meta_path).st_mtime_ns == before
    state.update_meta({"version_id": "2"}, state.check_meta()[0])
    meta, _ = state.read_meta()
    assert meta["image"] == {"version_id": "2"} and meta["later_key"] == "kept"


def test_done_stamp_is_exclusive(state):
    state.write_done("d1")
    state.write_done("d2")
    assert state.done_stamps() == ["d2"]
    assert state.has_done("d2") and not state.has_done("d1")
    assert state.clear_done() == ["d2"]
    assert state.done_stamps() == []


def test_forget_removes_records(state):
    _applied(state)
    assert state.forget(SHA) == ["applied"]
    assert state.snapshot([SHA]).applied == {}
    assert state.forget(SHA) == []


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(30)
"""


def test_lock_waits_bounded_then_busy(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path / "lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        s = State(str(path))
        assert s.lock_held_elsewhere()
        t0 = time.monotonic()
        with pytest.raises(LockBusy) as exc:
            s.lock(0.3)
        assert 0.3 <= time.monotonic() - t0 < 2
        assert exc.value.exit_code == 75
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    s.lock(0.3)  # released by the holder's death
    assert State(str(path)).lock_held_elsewhere()  # flock: per open file, so seen here too
    s.unlock()
    assert not State(str(path)).lock_held_elsewhere()


def test_state_dir_is_a_file(tmp_path):
    (tmp_path / "state").write_text("")
    with pytest.raises(StateError, match=r"not a directory|cannot create"):
        State(str(tmp_path / "state")).lock(0)


def test_os_release(tmp_path):
    assert read_os_release(str(tmp_path)) == {}
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text('ID=poky\nVERSION_ID="5.3"\n')
    assert read_os_release(str(tmp_path)) == {"version_id": "5.3"}
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("VERSION_ID='6.0'\nBUILD_ID=20261125\n# x\n")
    assert read_os_release(str(tmp_path)) == {"version_id": "6.0", "build_id": "20261125"}


def test_os_release_absolute_symlink_resolves_inside_the_root(tmp_path):
    """An updater reads the NEW image's os-release: /etc/os-release -> /usr/lib/os-release
    (absolute, common in images) must not read the running system's file."""
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text("VERSION_ID=9.9~test\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").symlink_to("/usr/lib/os-release")
    assert read_os_release(str(tmp_path)) == {"version_id": "9.9~test"}
    (tmp_path / "etc/os-release").unlink()
    (tmp_path / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert read_os_release(str(tmp_path)) == {"version_id": "9.9~test"}


def test_started_note_that_lost_its_content_still_means_interrupted(state):
    with open(os.path.join(state.path, "started", SHA), "w"):
        pass  # a power cut took the content of the note, not the note
    snap = state.snapshot([SHA], repair=True)
    assert snap.started[SHA]["attempt"] == 0 and not snap.damaged
    assert os.path.exists(os.path.join(state.path, "started", SHA))


def _failed(state, attempts, batch):
    return state.record_outcome("failed", {
        "name": "10-x", "sha256": SHA, "exit_code": 3, "attempts": attempts, "reason": "exit 3",
    }, batch=batch)


def test_batched_outcome_keeps_its_note_until_settle_and_reads_as_failed(state):
    state.mark_started("10-x", SHA, 2, {})
    _failed(state, 2, batch=True)
    assert os.path.exists(os.path.join(state.path, "started", SHA))  # dropped by settle()
    snap = state.snapshot([SHA])
    assert SHA in snap.failed and SHA not in snap.started  # failed, not interrupted
    state.settle()
    assert os.listdir(os.path.join(state.path, "started")) == []
    assert state.snapshot([SHA]).failed[SHA]["attempts"] == 2


def test_a_later_or_emptied_note_than_the_failure_is_still_interrupted(state):
    _failed(state, 1, batch=False)
    state.mark_started("10-x", SHA, 2, {})  # the retry started, its outcome was never recorded
    assert state.snapshot([SHA]).started[SHA]["attempt"] == 2
    with open(os.path.join(state.path, "started", SHA), "w"):
        pass  # a power cut emptied the note: it may be a later attempt, so it still counts
    assert SHA in state.snapshot([SHA]).started


# -- issue 5: what the state says about compatibility -----------------------------------------


def test_has_state(tmp_path):
    s = State(str(tmp_path / "state"))
    assert not s.has_state()  # no dir at all
    s.lock(0)
    s.prepare()
    assert not s.has_state()  # empty dirs, the lock: no state
    s.write_done("d" * 64)
    (tmp_path / "state" / "logs" / (SHA + ".log")).write_text("x")
    (tmp_path / "state" / "applied" / ".tmp-leftover").write_text("x")
    assert not s.has_state()  # stamps, logs, temporary files do not count
    (tmp_path / "state" / "started" / SHA).write_text("")  # even an emptied note counts
    assert s.has_state()
    os.unlink(tmp_path / "state" / "started" / SHA)
    (tmp_path / "state" / "state.json").write_text("{garbage")  # even a damaged state.json
    assert s.has_state()
    s.unlock()


def test_compat_facts_from_state_json_or_records(state):
    rec = _applied(state)
    assert state.compat_facts(None) == (0, "", "")  # a record without oneway or version
    state.record_outcome("failed", {**rec, "sha256": SHA2, "name": "20-y", "oneway": 3,
                                    "image": {"version_id": "2.0"}, "reason": "exit 1"})
    assert state.compat_facts(None) == (3, "", "")  # a failure names no release
    state.record_outcome("applied", {**rec, "sha256": SHA2, "name": "20-y", "oneway": 3,
                                     "image": {"version_id": "2.0"}})
    assert state.compat_facts(None) == (3, "2.0", "applied records")
    meta = {"format": 1, "runner_version": "0.1.0", "image": {"version_id": "2.1"}}
    assert state.compat_facts(meta) == (0, "2.1", "image in state.json")
    # this runner's state.json before any run completed: `image` proves nothing
    meta = {"format": 1, "runner_version": "0.2.0", "compat_level": 1,
            "image": {"version_id": "2.1"}}
    assert state.compat_facts(meta) == (1, "", "")


def test_update_meta_levels_and_applied_image(state):
    path = os.path.join(state.path, "state.json")

    def read(path):
        with open(path) as f:
            return f.read()

    meta = state.update_meta({"version_id": "1"}, None, compat_level=0)
    assert meta["compat_level"] == 0 and meta["applied_image"] is None  # always written
    assert json.loads(read(path)) == meta
    meta = state.update_meta({"version_id": "1"}, meta, compat_level=2, applied=True)
    on_disk = json.loads(read(path))
    assert on_disk["compat_level"] == 2 and on_disk["applied_image"] == {"version_id": "1"}
    before = os.stat(path).st_mtime_ns
    assert state.update_meta({"version_id": "1"}, on_disk, compat_level=2, applied=True) == on_disk
    assert os.stat(path).st_mtime_ns == before  # unchanged: not rewritten
    # a later image that has not completed keeps the earlier applied_image
    state.update_meta({"version_id": "2"}, on_disk, compat_level=2)
    on_disk = json.loads(read(path))
    assert on_disk["image"] == {"version_id": "2"}
    assert on_disk["applied_image"] == {"version_id": "1"}


def test_update_meta_keeps_what_a_0_1_0_state_json_meant(state):
    """Runner 0.1.0's `image` is its last release: on the first write of this runner (before
    its first script) it becomes applied_image, so a run that then fails or is cut does not
    make the new image count as applied."""
    old = {"format": 1, "runner_version": "0.1.0", "image": {"version_id": "1.0"}}
    meta = state.update_meta({"version_id": "2.0"}, old, compat_level=0)
    assert meta["image"] == {"version_id": "2.0"}
    assert meta["applied_image"] == {"version_id": "1.0"}
    assert state.compat_facts(meta) == (0, "1.0", "applied_image in state.json")


def test_check_meta_writes_nothing_and_repair_moves_aside(state):
    path = os.path.join(state.path, "state.json")
    with open(path, "w") as f:
        f.write("{garbage")
    assert state.check_meta() == (None, "truncated or not JSON")
    assert os.path.exists(path)  # the verdict must come before any write
    state.repair_meta()
    assert not os.path.exists(path)
    assert len(os.listdir(os.path.join(state.path, "damaged"))) == 1


def test_started_note_carries_the_one_way_level(state):
    state.mark_started("10-x", SHA, 1, {}, oneway=2)
    state.mark_started("20-y", SHA2, 1, {})
    snap = state.snapshot([SHA, SHA2])
    assert snap.started[SHA]["oneway"] == 2 and "oneway" not in snap.started[SHA2]
