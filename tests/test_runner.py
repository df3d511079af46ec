# SPDX-License-Identifier: MIT
"""The plan and the policy, run in-process: order, run-once by content, failures and retries,
interruptions, refusals (the tests run as root, so the root-only safety checks are active),
the manifest, the no-op stamp and dry-run."""

import hashlib
import json
import os

import pytest

from migration import manifest as manifest_mod
from migration import runner
from migration.state import State

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


def _tree(path):
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = b""
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    data = f.read()
            out[p] = (st.st_mode, st.st_mtime_ns, data)
    return out


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
    before = _tree(env.root)
    capsys.readouterr()
    assert runner.dry_run(opts, print) == 1
    assert _tree(env.root) == before
    out = capsys.readouterr().out
    assert out == "would run 20-b (failed before)\nwould run 30-c\n"


def test_state_json_records_image(env):
    (env.root / "etc" / "os-release").write_text('VERSION_ID="2.1"\nBUILD_ID=42\n')
    env.add("10-a")
    assert env.run() == 0
    meta = json.loads((env.state / "state.json").read_text())
    assert meta["format"] == 1 and meta["image"] == {"version_id": "2.1", "build_id": "42"}
    assert env.record("applied", "10-a")["image"] == {"version_id": "2.1", "build_id": "42"}
