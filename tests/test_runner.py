# SPDX-License-Identifier: MIT
"""The plan and the policy, run in-process: order, run-once by content, failures and retries,
interruptions, refusals (the tests run as root, so the root-only safety checks are active),
the manifest, the no-op stamp and dry-run."""

import hashlib
import json
import os

import pytest

from fstree import tree
from migration import manifest as manifest_mod
from migration import runner
from migration.state import LockBusy, State

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="safety checks apply to root only")


class Env:
    """A scripts dir, a state dir and a log of real executions."""

    def __init__(self, tmp_path):
        self.root = tmp_path
        self.scripts = tmp_path / "etc" / "migration.d"
        self.scripts.mkdir(parents=True)
        self.scripts.chmod(0o755)
        self.state = tmp_path / "var" / "lib" / "migration"
        self.ran = tmp_path / "ran.log"
        self.manifest = tmp_path / "manifest.json"
        self.messages = []

    def add(self, name, body="", mode=0o644):
        path = self.scripts / name
        path.write_text(f"echo {name} >> {self.ran}\n{body}\n")
        path.chmod(mode)
        return path

    def sha(self, name):
        return hashlib.sha256((self.scripts / name).read_bytes()).hexdigest()

    def opts(self, **kw):
        kw.setdefault("manifest_path", str(self.manifest))
        kw.setdefault("lock_wait", 1.0)
        return runner.Options(str(self.scripts), str(self.state), str(self.root), **kw)

    def run(self, **kw):
        self.messages.clear()
        return runner.run(self.opts(**kw), say=self.messages.append)

    def executions(self):
        return self.ran.read_text().split() if self.ran.exists() else []

    def states(self):
        items, _ = runner.inspect(self.opts(), State(str(self.state)))
        return {i.name: i.state for i in items}

    def record(self, kind, name):
        with open(self.state / kind / self.sha(name)) as f:
            return json.load(f)

    def write_manifest(self, entries=None):
        if entries is None:
            entries = [(p.name, self.sha(p.name)) for p in sorted(self.scripts.iterdir())]
        migrations = [{"name": n, "sha256": s, "package": "pkg", "version": "1.0-r0"}
                      for n, s in entries]
        obj = {"format": 1, "digest": manifest_mod.digest(migrations), "migrations": migrations}
        self.manifest.write_text(json.dumps(obj))
        return obj["digest"]


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_runs_in_bytewise_order_once(env):
    for name in ["b", "B", "10-x", "9-y", "a"]:
        env.add(name)
    assert env.run() == 0
    assert env.executions() == ["10-x", "9-y", "B", "a", "b"]
    assert env.run() == 0
    assert env.executions() == ["10-x", "9-y", "B", "a", "b"]
    assert set(env.states().values()) == {"applied"}


def test_environment_names_the_script_and_root(env):
    out = env.root / "env.txt"
    env.add("10-x", f'echo "$MIGRATION_NAME $MIGRATION_SHA256 $MIGRATION_ROOT '
                    f'$MIGRATION_ATTEMPT $(pwd)" > {out}')
    assert env.run() == 0
    assert out.read_text().split() == ["10-x", env.sha("10-x"), str(env.root), "1", str(env.root)]


def test_continue_policy_runs_the_rest_and_retries_failures(env):
    flag = env.root / "flag"
    env.add("10-a")
    env.add("20-b", f"test -e {flag}")
    env.add("30-c")
    assert env.run() == 1
    assert env.states() == {"10-a": "applied", "20-b": "failed", "30-c": "applied"}
    rec = env.record("failed", "20-b")
    assert rec["attempts"] == 1 and rec["exit_code"] == 1 and rec["reason"] == "exit 1"
    assert env.run() == 1
    assert env.record("failed", "20-b")["attempts"] == 2
    flag.touch()
    assert env.run() == 0
    rec = env.record("applied", "20-b")
    assert rec["attempts"] == 3 and rec["exit_code"] == 0
    assert not (env.state / "failed" / env.sha("20-b")).exists()
    assert env.executions() == ["10-a", "20-b", "30-c", "20-b", "20-b"]


def test_stop_policy_leaves_the_rest_pending(env):
    env.add("10-a")
    env.add("20-b", "exit 3")
    env.add("30-c")
    assert env.run(policy="stop") == 1
    assert env.states() == {"10-a": "applied", "20-b": "failed", "30-c": "pending"}
    assert env.record("failed", "20-b")["exit_code"] == 3
    assert env.executions() == ["10-a", "20-b"]
    assert any("30-c: not run: --policy stop after 20-b" in m for m in env.messages)


def test_renamed_script_with_recorded_hash_does_not_rerun(env):
    env.add("10-old-name")
    assert env.run() == 0
    os.rename(env.scripts / "10-old-name", env.scripts / "20-new-name")
    assert env.run() == 0
    assert env.executions() == ["10-old-name"]
    assert env.states() == {"20-new-name": "applied"}


def test_same_content_under_two_names_runs_once(env):
    (env.scripts / "10-a").write_text(f"echo x >> {env.ran}\n")
    (env.scripts / "20-b").write_text(f"echo x >> {env.ran}\n")
    assert env.run() == 0
    assert env.executions() == ["x"]
    assert env.states() == {"10-a": "applied", "20-b": "applied"}


def test_interrupted_script_runs_again_with_attempt_counted(env):
    env.add("10-a")
    state = State(str(env.state))
    state.lock(0)
    state.prepare()
    state.mark_started("10-a", env.sha("10-a"), 1, {})
    state.unlock()
    assert env.states() == {"10-a": "interrupted"}
    assert env.run() == 0
    assert env.record("applied", "10-a")["attempts"] == 2
    assert not os.listdir(env.state / "started")


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda p: (p.unlink(), os.symlink("/bin/true", p)), "is a symlink"),
        (lambda p: os.chown(p, 1234, 0), "is owned by uid 1234, not root"),
        (lambda p: p.chmod(0o664), "is writable by group or others (mode 0664)"),
        (lambda p: p.chmod(0o646), "is writable by group or others (mode 0646)"),
    ],
)
def test_unsafe_scripts_are_refused_as_root(env, setup, reason):
    env.add("10-ok")
    setup(env.add("20-bad"))
    env.add("30-ok")
    assert env.run() == 1
    assert env.executions() == ["10-ok", "30-ok"]
    assert env.states()["20-bad"] == "refused"
    assert any(f"20-bad: refused: {reason}" in m for m in env.messages), env.messages
    assert env.run(policy="stop") == 1  # refusal stops the rest under stop too


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda d: d.chmod(0o775), "is writable by group or others (mode 0775)"),
        (lambda d: d.chmod(0o757), "is writable by group or others (mode 0757)"),
        (lambda d: os.chown(d, 4321, 0), "is owned by uid 4321, not root"),
    ],
)
def test_unsafe_scripts_dir_refuses_everything(env, setup, reason):
    env.add("10-a")
    setup(env.scripts)
    assert env.run() == 1
    assert env.executions() == []
    assert any(reason in m for m in env.messages), env.messages


def test_manifest_refuses_tampered_and_unlisted_and_reports_missing(env):
    env.add("10-a")
    env.add("20-b")
    env.add("40-gone")
    env.write_manifest()
    (env.scripts / "40-gone").unlink()
    (env.scripts / "20-b").write_text("echo evil\n")
    env.add("30-unlisted")
    assert env.run() == 1
    assert env.executions() == ["10-a"]
    assert env.states() == {"10-a": "applied", "20-b": "refused", "30-unlisted": "refused",
                            "40-gone": "refused"}
    text = "\n".join(env.messages)
    assert "20-b: refused: content differs from the image manifest" in text
    assert "tampered" in text
    assert "30-unlisted: refused: not listed in the image manifest" in text
    assert "40-gone: refused: listed in the image manifest (package pkg) but missing" in text
    assert not os.listdir(env.state / "done")


def test_done_stamp_written_when_all_applied_and_used_as_fast_path(env):
    env.add("10-a")
    env.add("20-b")
    digest = env.write_manifest()
    assert env.run() == 0
    assert os.listdir(env.state / "done") == [digest]
    # fast path: records are not even read while the stamp and the scripts match the manifest
    for name in os.listdir(env.state / "applied"):
        (env.state / "applied" / name).write_text("garbage")
    assert env.run() == 0
    assert not (env.state / "damaged").exists()
    # a new script (new manifest digest) makes the runner look at the state again
    env.add("30-c")
    digest2 = env.write_manifest()
    assert env.run() == 0
    assert os.listdir(env.state / "done") == [digest2]
    assert env.executions() == ["10-a", "20-b", "10-a", "20-b", "30-c"]  # damaged: ran again
    assert len(os.listdir(env.state / "damaged")) == 2


def test_stamp_removed_when_something_is_not_applied(env):
    env.add("10-a")
    env.write_manifest()
    assert env.run() == 0
    State(str(env.state)).forget(env.sha("10-a"))
    env.add("10-a", "exit 1")
    env.write_manifest()
    assert env.run() == 1
    assert os.listdir(env.state / "done") == []


def test_damaged_record_moved_aside_and_script_reruns(env):
    env.add("10-a")
    assert env.run() == 0
    path = env.state / "applied" / env.sha("10-a")
    path.write_bytes(b'{"format": 1, "na')
    assert env.run() == 0
    assert env.executions() == ["10-a", "10-a"]
    (moved,) = os.listdir(env.state / "damaged")
    assert (env.state / "damaged" / moved).read_bytes() == b'{"format": 1, "na'
    assert any("damaged state record moved aside" in m for m in env.messages)


def test_dry_run_changes_nothing(env, capsys):
    env.add("10-a")
    env.add("20-b", "exit 1")
    opts = env.opts()
    assert runner.dry_run(opts, print) == 1
    assert not env.state.exists()
    assert env.executions() == []
    assert env.run() == 1
    (env.state / "applied" / ("f" * 64)).write_text("garbage")
    env.add("30-c")
    before = tree(env.root)
    capsys.readouterr()
    assert runner.dry_run(opts, print) == 1
    assert tree(env.root) == before
    out = capsys.readouterr().out
    assert out == "would run 20-b (failed before)\nwould run 30-c\n"


def test_state_json_records_image(env):
    (env.root / "etc" / "os-release").write_text('VERSION_ID="2.1"\nBUILD_ID=42\n')
    env.add("10-a")
    assert env.run() == 0
    meta = json.loads((env.state / "state.json").read_text())
    assert meta["format"] == 1 and meta["image"] == {"version_id": "2.1", "build_id": "42"}
    assert env.record("applied", "10-a")["image"] == {"version_id": "2.1", "build_id": "42"}


# -- issue 5: the compatibility check, one-way levels, hooks ---------------------------------

from migration import compat  # noqa: E402
from migration.errors import Incompatible  # noqa: E402


def write_manifest5(env, oneway=None, compat_level=0, floor="", markers=()):
    """A manifest of every script in the dir with the issue 5 fields."""
    oneway = oneway or {}
    migrations = []
    for p in sorted(env.scripts.iterdir()):
        m = {"name": p.name, "sha256": env.sha(p.name), "package": "pkg", "version": "1"}
        if p.name in oneway:
            m["oneway"] = oneway[p.name]
        migrations.append(m)
    obj = {"format": 1, "compat_level": max([compat_level, *oneway.values()]),
           "migrations": migrations}
    if floor:
        obj["upgrade_floor"] = floor
    if markers:
        obj["data_markers"] = list(markers)
    obj["digest"] = manifest_mod.digest_of(obj)
    env.manifest.write_text(json.dumps(obj))
    return obj["digest"]


def os_release(env, version):
    (env.root / "etc" / "os-release").write_text(f'VERSION_ID="{version}"\nBUILD_ID=b{version}\n')


def meta(env):
    return json.loads((env.state / "state.json").read_text())


def refused(env, **kw):
    with pytest.raises(Incompatible) as exc:
        env.run(**kw)
    assert exc.value.exit_code == 3
    return exc.value


def test_applied_image_is_written_with_the_done_stamp_only(env):
    os_release(env, "1.0")
    env.add("10-a")
    digest = write_manifest5(env)
    assert env.run() == 0
    m = meta(env)
    assert m["applied_image"] == {"version_id": "1.0", "build_id": "b1.0"}
    assert m["compat_level"] == 0 and os.listdir(env.state / "done") == [digest]
    # image 2.0 with a failing script: image changes, applied_image does not
    os_release(env, "2.0")
    env.add("20-b", "exit 1")
    write_manifest5(env)
    assert env.run() == 1
    m = meta(env)
    assert m["image"]["version_id"] == "2.0" and m["applied_image"]["version_id"] == "1.0"
    assert os.listdir(env.state / "done") == []


def release_1_0_applied_then_3_0_with_floor_2_0(env):
    """A device whose last complete release is 1.0, now given image 3.0 with floor 2.0."""
    os_release(env, "1.0")
    env.add("10-a")
    write_manifest5(env)
    assert env.run() == 0
    os_release(env, "3.0")
    env.add("20-b")
    write_manifest5(env, floor="2.0")


def test_below_floor_is_refused_before_anything_is_written(env):
    release_1_0_applied_then_3_0_with_floor_2_0(env)
    before = tree(env.state)
    exc = refused(env)
    assert exc.verdict.kind == compat.BELOW_FLOOR
    assert "release 1.0 (applied_image in state.json)" in str(exc)
    assert "Install release 2.0" in str(exc)
    assert tree(env.state) == before
    assert env.executions() == ["10-a"]
    # at the floor: fine
    write_manifest5(env, floor="1.0")
    assert env.run() == 0
    assert env.executions() == ["10-a", "20-b"]


def test_a_floor_above_a_release_that_did_not_finish_says_which_migrations_it_lacks(env):
    """Issue 16: 2.0 ran but one of its migrations failed; 3.0 (floor 2.0) must not just say
    "install release 2.0 first" (it is installed): it names 2.0's failed migration and says to
    boot 2.0 again to finish it."""
    os_release(env, "1.0")
    env.add("10-a")
    write_manifest5(env)
    assert env.run() == 0
    os_release(env, "2.0")
    env.add("20-b", "exit 4")
    write_manifest5(env)
    assert env.run() == 1
    os_release(env, "3.0")
    (env.scripts / "20-b").unlink()
    env.add("30-c")
    write_manifest5(env, floor="2.0")
    message = str(refused(env))
    assert "last fully migrated by release 1.0" in message
    assert "release 2.0 ran after it but did not apply all its migrations (failed: 20-b)" in message
    assert "Boot release 2.0 again to finish them" in message


def test_a_busy_lock_does_not_hide_the_refusal(env):
    """The verdict comes before the wait for the lock: exit 3, not 75 (which the update hooks
    take for "the boot retries"); the state is left as it was."""
    release_1_0_applied_then_3_0_with_floor_2_0(env)
    other = State(str(env.state))
    other.lock(0)
    try:
        before = tree(env.state)
        assert refused(env, lock_wait=0.1).verdict.kind == compat.BELOW_FLOOR
        assert tree(env.state) == before
        # an allowed image still waits for the lock (and gives up: 75)
        write_manifest5(env, floor="1.0")
        with pytest.raises(LockBusy):
            env.run(lock_wait=0.1)
    finally:
        other.unlock()
    assert env.executions() == ["10-a"]


def test_state_of_a_1_0_runner_is_judged_by_its_image(env):
    os_release(env, "1.0")
    env.add("10-a")
    write_manifest5(env)
    assert env.run() == 0
    m = meta(env)
    del m["applied_image"], m["compat_level"]  # what a 0.1.0 runner wrote
    m["runner_version"] = "0.1.0"
    (env.state / "state.json").write_text(json.dumps(m))
    os_release(env, "2.0")
    env.add("20-b")
    write_manifest5(env, floor="1.5")
    assert refused(env).verdict.kind == compat.BELOW_FLOOR
    write_manifest5(env, floor="1.0")
    assert env.run() == 0 and meta(env)["applied_image"]["version_id"] == "2.0"


def test_fresh_device_runs_everything_and_predates_needs_floor_and_marker(env):
    os_release(env, "2.0")
    env.add("10-a")
    (env.root / "var" / "lib" / "foo").mkdir(parents=True)
    write_manifest5(env, floor="1.5", markers=["/var/lib/foo"])
    exc = refused(env)
    assert exc.verdict.kind == compat.PREDATES and "/var/lib/foo" in str(exc)
    assert not env.state.exists()  # refused before the lock: not even the state dir
    assert env.executions() == []
    # no floor: the marker alone refuses nothing (fresh)
    write_manifest5(env, markers=["/var/lib/foo"])
    assert env.run() == 0
    assert any("fresh device" in m for m in env.messages)


def test_fresh_device_without_markers_present(env):
    os_release(env, "2.0")
    env.add("10-a")
    write_manifest5(env, floor="1.5", markers=["/var/lib/foo"])
    assert env.run() == 0 and env.executions() == ["10-a"]
    # from now on the state exists and the floor is checked against it
    assert meta(env)["applied_image"]["version_id"] == "2.0"


def test_power_cut_in_the_first_run_of_a_fresh_device_is_not_refused(env):
    """The image is noted in state.json before the first script starts, so a cut during the
    first run of a fresh device leaves state that proves the version (not 'cannot prove')."""
    os_release(env, "2.0")
    env.add("10-a", f"test -e {env.root}/go")
    write_manifest5(env, floor="1.5")
    assert env.run() == 1
    assert meta(env)["applied_image"] is None
    assert meta(env)["image"]["version_id"] == "2.0"
    (env.root / "go").touch()
    assert env.run() == 0


def test_an_unfinished_run_does_not_count_as_the_last_release(env):
    """On a fresh device, the first run (of 2.0) fails: 2.0 never completed, so 3.0 with the
    floor 2.0 is refused (it would count 2.0 as applied); 2.0 itself resumes."""
    os_release(env, "2.0")
    env.add("10-a", f"test -e {env.root}/go")
    write_manifest5(env)
    assert env.run() == 1
    os_release(env, "3.0")
    env.add("30-c")
    write_manifest5(env, floor="2.0")
    exc = refused(env)
    assert exc.verdict.kind == compat.BELOW_FLOOR
    assert "the last one, of release 2.0, failed or was cut" in str(exc)
    assert "Boot release 2.0 again" in str(exc)
    (env.scripts / "30-c").unlink()
    os_release(env, "2.0")
    (env.root / "go").touch()
    write_manifest5(env, floor="1.0")
    assert env.run() == 0
    os_release(env, "3.0")
    env.add("30-c")
    write_manifest5(env, floor="2.0")
    assert env.run() == 0


def test_a_failed_first_run_on_0_1_0_state_keeps_its_release(env):
    """State of runner 0.1.0 at 1.0; this runner's first run (2.0) fails: the device's release
    is still 1.0, so 3.0 with the floor 2.0 is refused."""
    os_release(env, "2.0")
    env.state.mkdir(parents=True)
    (env.state / "state.json").write_text(json.dumps(
        {"format": 1, "runner_version": "0.1.0", "image": {"version_id": "1.0"}}))
    env.add("10-a", "exit 1")
    write_manifest5(env, floor="1.0")
    assert env.run() == 1
    assert meta(env)["applied_image"] == {"version_id": "1.0"}
    os_release(env, "3.0")
    write_manifest5(env, floor="2.0")
    exc = refused(env)
    assert "release 1.0 (applied_image in state.json)" in str(exc)


def test_one_way_raises_the_level_durably_before_the_script_starts(env):
    os_release(env, "2.0")
    seen = env.root / "seen.json"
    env.add("10-a")
    env.add("20-oneway", f"cat {env.state}/state.json > {seen}; ls {env.state}/done > "
                         f"{env.root}/done.txt")
    env.add("30-c")
    write_manifest5(env, oneway={"20-oneway": 2}, compat_level=1)
    assert env.run() == 0
    assert json.loads(seen.read_text())["compat_level"] == 2
    assert (env.root / "done.txt").read_text() == ""  # stamps cleared before the first script
    assert meta(env)["compat_level"] == 2
    assert env.record("applied", "20-oneway")["oneway"] == 2
    assert "oneway" not in env.record("applied", "10-a")
    assert any("compatibility level of the state raised to 2" in m for m in env.messages)


def test_failed_one_way_script_still_raises_the_level_and_older_images_refuse(env, tmp_path):
    os_release(env, "2.0")
    env.add("10-oneway", "exit 1")
    write_manifest5(env, oneway={"10-oneway": 1})
    assert env.run() == 1
    assert meta(env)["compat_level"] == 1
    assert env.record("failed", "10-oneway")["oneway"] == 1
    # image 1.0 (level 0, no one-way script) on that state: refused, hooks run
    os_release(env, "1.0")
    (env.scripts / "10-oneway").unlink()
    env.add("05-old")
    write_manifest5(env)
    hooks = env.root / "etc" / "migration" / "incompatible.d"
    hooks.mkdir(parents=True)
    out = env.root / "hook.txt"
    (hooks / "50-note").write_text(
        "#!/bin/sh\n"
        f'echo "$MIGRATION_VERDICT|$MIGRATION_PHASE|$MIGRATION_STATE_DIR|$(pwd)" >> {out}\n'
        f'echo "$MIGRATION_MESSAGE" >> {out}\n'
        "echo hook-output\n"
    )
    (hooks / "50-note").chmod(0o755)
    (hooks / "40-fails").write_text("#!/bin/sh\nfalse\necho not-reached\n")  # errexit
    (hooks / "40-fails").chmod(0o755)
    (hooks / "60-not-executable").write_text(f"#!/bin/sh\necho x >> {out}\n")
    (hooks / "70-group-writable").write_text(f"#!/bin/sh\necho bad >> {out}\n")
    (hooks / "70-group-writable").chmod(0o775)
    (hooks / "README~").write_text("ignored\n")
    before = tree(env.state)
    exc = refused(env)
    assert exc.verdict.kind == compat.DOWNGRADE
    assert "level 1" in str(exc) and "level 0" in str(exc)
    assert tree(env.state) == before
    assert env.executions() == ["10-oneway"]  # the first run only; 05-old never ran
    lines = out.read_text().splitlines()
    assert lines[0] == f"downgrade|boot|{env.state}|{env.root}"
    assert lines[1] == str(exc)
    assert len(lines) == 2
    text = "\n".join(env.messages)
    assert "hook 40-fails: FAILED: exit 1" in text
    assert "hook 50-note: done" in text
    assert "70-group-writable: refused: is writable by group or others (mode 0775)" in text
    assert "60-not-executable" not in text
    assert text.index("40-fails") < text.index("50-note")
    # --hooks-dir elsewhere: the default dir is not used
    other = tmp_path / "other-hooks"
    other.mkdir()
    out.unlink()
    refused(env, hooks_dir=str(other))
    assert not out.exists()


def test_hooks_are_bounded_by_the_timeout(env):
    env.add("10-oneway")
    write_manifest5(env, oneway={"10-oneway": 1})
    assert env.run() == 0
    (env.scripts / "10-oneway").unlink()
    write_manifest5(env)
    hooks = env.root / "etc" / "migration" / "incompatible.d"
    hooks.mkdir(parents=True)
    (hooks / "10-hang").write_text("#!/bin/sh\nsleep 30\n")
    (hooks / "10-hang").chmod(0o755)
    exc = refused(env, timeout=0.5, kill_grace=0.2)
    assert exc.verdict.kind == compat.DOWNGRADE
    assert any("hook 10-hang: FAILED: timed out after 0.5 s" in m for m in env.messages)


def test_downgrade_within_a_compatible_level_runs_nothing_again(env):
    os_release(env, "1.0")
    env.add("10-a")
    v1 = write_manifest5(env, oneway={"10-a": 1})
    assert env.run() == 0
    os_release(env, "2.0")
    env.add("20-b")
    write_manifest5(env, oneway={"10-a": 1}, compat_level=1)
    assert env.run() == 0
    (env.scripts / "20-b").unlink()
    os_release(env, "1.0")
    assert write_manifest5(env, oneway={"10-a": 1}) == v1
    assert env.run() == 0
    assert env.executions() == ["10-a", "20-b"]
    assert os.listdir(env.state / "done") == [v1]
    assert meta(env)["applied_image"]["version_id"] == "1.0"
    assert meta(env)["compat_level"] == 1


def test_damaged_state_json_takes_level_and_version_from_the_records(env):
    os_release(env, "2.0")
    env.add("10-oneway")
    write_manifest5(env, oneway={"10-oneway": 2})
    assert env.run() == 0
    (env.state / "state.json").write_text("{garbage")
    (env.scripts / "10-oneway").unlink()
    env.add("05-x")
    write_manifest5(env, compat_level=1)
    before = tree(env.state)
    assert refused(env).verdict.kind == compat.DOWNGRADE
    assert tree(env.state) == before  # not even moved aside
    # an image of level 2 with a floor the records prove: runs, moves state.json aside
    write_manifest5(env, compat_level=2, floor="2.0")
    assert env.run() == 0
    assert any("damaged state.json" in m for m in env.messages)
    assert meta(env)["compat_level"] == 2
    assert len(os.listdir(env.state / "damaged")) == 1


def test_scripts_see_the_phase_and_the_image_root(env):
    out = env.root / "env.txt"
    env.add("10-x", f'echo "$MIGRATION_PHASE $MIGRATION_ROOT $MIGRATION_IMAGE_ROOT" > {out}')
    assert env.run() == 0
    assert out.read_text().split() == ["boot", str(env.root), str(env.root)]


def test_dry_run_shows_the_refusal_and_exits_3(env, capsys):
    env.add("10-oneway")
    write_manifest5(env, oneway={"10-oneway": 1})
    assert env.run() == 0
    (env.scripts / "10-oneway").unlink()
    write_manifest5(env)
    before = tree(env.root)
    capsys.readouterr()
    assert runner.dry_run(env.opts(), print) == 3
    out = capsys.readouterr().out
    assert out.startswith("would refuse (downgrade): incompatible downgrade")
    assert "would run the hooks in" in out
    assert tree(env.root) == before


def test_status_and_check_report_the_refusal(env, capsys):
    from migration import cli

    os_release(env, "1.0")
    env.add("10-a")
    write_manifest5(env)
    assert env.run() == 0
    base = ["--root", str(env.root), "--scripts-dir", str(env.scripts), "--manifest",
            str(env.manifest), "--state-dir", str(env.state)]
    capsys.readouterr()
    assert cli.main([*base, "status"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # lines wrap at 80 columns
    assert ("state: compatibility level 0, last image 1.0 (build b1.0), last image with every "
            "migration applied 1.0 (build b1.0)") in out
    assert "image: 1.0 (build b1.0), compatibility level 0" in out
    assert cli.main([*base, "check", "--package", "pkg"]) == 0
    os_release(env, "3.0")
    write_manifest5(env, floor="2.0")
    assert cli.main([*base, "status"]) == 3
    out = " ".join(capsys.readouterr().out.split())
    assert "upgrades from 2.0 or newer" in out and "REFUSED (below-floor):" in out
    assert cli.main([*base, "status", "--json"]) == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["state"] == "applied"
    assert "refused (below-floor)" in captured.err
    assert cli.main([*base, "check", "--package", "pkg"]) == 1
    assert "cannot use the device's data (below-floor)" in capsys.readouterr().err
    assert cli.main([*base, "run"]) == 3
    assert "upgrade from a too old release" in capsys.readouterr().err


def test_a_run_without_image_manifest_says_how_to_get_one(env):
    """Without a manifest (scripts installed by hand, not by migration packages) the scripts are
    not checked against the image and no boot is free: every run says so, naming the fix; with
    a manifest it is not said."""
    env.add("50-a")
    assert env.run() == 0
    hint = [m for m in env.messages if "no image manifest" in m]
    assert len(hint) == 1 and "inherit migration (their postinst writes it)" in hint[0]
    assert "`migration manifest --root IMAGE_ROOT`" in hint[0]
    assert env.run() == 0  # nothing to do, still no manifest: still said
    assert any("no image manifest" in m for m in env.messages)
    env.write_manifest()
    assert env.run() == 0
    assert not any("no image manifest" in m for m in env.messages)


# -- judged per manifest entry (issue 14: OpenBMC's /etc overlay keeps copies across updates) ---


def test_a_stale_copy_of_an_applied_version_does_not_hide_the_images_changed_script(env):
    """v1's script B ran; the device's /etc overlay keeps a copy of it (copy-up); v2 ships B'
    under the same name. The dir shows v1's bytes, which have a record: B must not read as
    applied, the done stamp must not be written, and status must say why."""
    env.add("10-a")
    env.add("20-b", "echo v1")
    env.write_manifest()
    assert env.run() == 0
    v2_b = f"echo 20-b >> {env.ran}\necho v2\n"
    v2_sha = hashlib.sha256(v2_b.encode()).hexdigest()
    digest = env.write_manifest([("10-a", env.sha("10-a")), ("20-b", v2_sha)])
    assert env.run() == 1
    assert env.states() == {"10-a": "applied", "20-b": "refused"}
    assert any("20-b: refused: content differs from the image manifest" in m
               and "overlay's upper dir" in m for m in env.messages)
    assert not (env.state / "done" / digest).exists()
    assert env.executions() == ["10-a", "20-b"]  # v1's B did not run again either


def test_a_deleted_applied_script_is_reported(env):
    env.add("10-a")
    env.add("20-b")
    env.write_manifest()
    assert env.run() == 0
    (env.scripts / "20-b").unlink()  # deleted on the device (an overlay whiteout)
    assert env.run() == 0
    assert any(m.startswith("20-b: applied, but missing from") for m in env.messages)
    items, _ = runner.inspect(env.opts(), State(str(env.state)))
    assert {i.name: i.reason != "" for i in items} == {"10-a": False, "20-b": True}
