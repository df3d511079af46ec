# SPDX-License-Identifier: MIT
"""Structured journal entries (migration.journal): a test journal socket, bound in a tmp dir,
receives one entry per run and per script outcome with the fields an operator selects on, in
systemd's native protocol (values with a newline in its binary form), and the console lines
stay as they were."""

import hashlib
import json
import socket

import pytest

from migration import cli, journal, runner
from migration import manifest as manifest_mod


def parse(datagram: bytes) -> dict:
    """A strict reader of the native journal protocol (systemd's journald-native.c): every
    field is KEY=VALUE\\n, or KEY\\n, a 64-bit little-endian length, the value and \\n."""
    fields = {}
    rest = datagram
    while rest:
        line_end = rest.index(b"\n")
        line = rest[:line_end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            rest = rest[line_end + 1 :]
        else:
            key = line
            size = int.from_bytes(rest[line_end + 1 : line_end + 9], "little")
            value = rest[line_end + 9 : line_end + 9 + size]
            end = line_end + 9 + size
            assert rest[end : end + 1] == b"\n", "binary value unterminated"
            rest = rest[line_end + 10 + size :]
        name = key.decode("ascii")
        assert (
            name and name[0] != "_" and all(c.isupper() or c.isdigit() or c == "_" for c in name)
        ), f"bad field name {name!r}"
        assert name not in fields, f"field {name} twice: a forged field?"
        fields[name] = value.decode("utf-8", "surrogateescape")
    return fields


class Journal:
    """A datagram socket standing in for journald's."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def entries(self) -> list:
        out = []
        while True:
            try:
                out.append(parse(self.sock.recv(1 << 20)))
            except BlockingIOError:
                return out

    def by_id(self, message_id: str) -> list:
        return [e for e in self.entries() if e["MESSAGE_ID"] == message_id]


@pytest.fixture
def jsock(tmp_path):
    j = Journal(tmp_path / "journal.sock")
    yield j
    j.sock.close()


class Env:
    def __init__(self, tmp_path, state="state"):
        self.root = tmp_path
        self.scripts = tmp_path / "migration.d"
        self.scripts.mkdir()
        self.scripts.chmod(0o755)
        self.state = tmp_path / state
        self.manifest = tmp_path / "manifest.json"
        self.messages = []

    def add(self, name, body="true"):
        path = self.scripts / name
        path.write_text(f"{body}\n")
        path.chmod(0o755)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def write_manifest(self, names):
        migrations = [
            {
                "name": n,
                "sha256": hashlib.sha256((self.scripts / n).read_bytes()).hexdigest(),
                "package": "pkg",
                "version": "1.0-r0",
            }
            for n in names
        ]
        obj = {"format": 1, "digest": manifest_mod.digest(migrations), "migrations": migrations}
        self.manifest.write_text(json.dumps(obj))

    def run(self, journal_path, **kw):
        kw.setdefault("manifest_path", str(self.manifest) if self.manifest.exists() else None)
        opts = runner.Options(
            str(self.scripts),
            str(self.state),
            str(self.root),
            lock_wait=1.0,
            journal=journal_path,
            **kw,
        )
        self.messages.clear()
        return runner.run(opts, say=self.messages.append)


def test_applied_script_and_the_run_leave_structured_entries(tmp_path, jsock):
    env = Env(tmp_path)
    sha = env.add("10-first")
    assert env.run(jsock.path) == 0
    entries = jsock.entries()
    ids = [e["MESSAGE_ID"] for e in entries]
    assert ids == [journal.RUN_STARTED, journal.SCRIPT_APPLIED, journal.RUN_FINISHED]
    started, applied, finished = entries
    assert applied["MIGRATION_NAME"] == "10-first"
    assert applied["MIGRATION_SHA256"] == sha
    assert applied["MIGRATION_RESULT"] == "applied"
    assert applied["MIGRATION_PHASE"] == "boot"
    assert applied["PRIORITY"] == "6"
    assert applied["SYSLOG_IDENTIFIER"] == "migration"
    assert applied["MIGRATION_EXIT_CODE"] == "0"
    # the very text of the console line: the journal never holds two differing lines
    console = [f"migration: {m}" for m in env.messages]
    assert applied["MESSAGE"] in console
    assert applied["MESSAGE"].startswith("migration: 10-first: done")
    assert finished["MESSAGE"] in console
    assert finished["MIGRATION_RESULT"] == "success"
    assert finished["MIGRATION_APPLIED"] == "1" and finished["MIGRATION_FAILED"] == "0"
    assert started["MIGRATION_RESULT"] == "started" and started["MIGRATION_PHASE"] == "boot"
    # a second run with nothing to do says nothing more
    assert env.run(jsock.path) == 0
    assert jsock.entries() == []


def test_failed_script_entry_is_an_error_with_its_exit_code_and_log(tmp_path, jsock):
    env = Env(tmp_path)
    sha = env.add("20-bad", "exit 7")
    assert env.run(jsock.path) == 1
    (failed,) = jsock.by_id(journal.SCRIPT_FAILED)
    assert failed["MIGRATION_RESULT"] == "failed"
    assert failed["PRIORITY"] == "3"
    assert failed["MIGRATION_EXIT_CODE"] == "7"
    assert failed["MIGRATION_SHA256"] == sha
    assert failed["MIGRATION_LOG"] == str(env.state / "logs" / f"{sha}.log")
    assert "exit" in failed["MIGRATION_REASON"]
    assert failed["MESSAGE"] in [f"migration: {m}" for m in env.messages]


def test_failed_run_finishes_with_failure(tmp_path, jsock):
    env = Env(tmp_path)
    env.add("20-bad", "exit 1")
    env.run(jsock.path)
    (finished,) = jsock.by_id(journal.RUN_FINISHED)
    assert finished["MIGRATION_RESULT"] == "failure"
    assert finished["PRIORITY"] == "3"
    assert finished["MIGRATION_FAILED"] == "1"


def test_refused_script_entry(tmp_path, jsock):
    env = Env(tmp_path)
    env.add("10-listed")
    sha = env.add("20-unlisted")
    env.write_manifest(["10-listed"])
    assert env.run(jsock.path) == 1
    (refused,) = jsock.by_id(journal.SCRIPT_REFUSED)
    assert refused["MIGRATION_NAME"] == "20-unlisted"
    assert refused["MIGRATION_SHA256"] == sha
    assert refused["MIGRATION_RESULT"] == "refused"
    assert "not listed in the image manifest" in refused["MIGRATION_REASON"]
    assert refused["MESSAGE"] in [f"migration: {m}" for m in env.messages]


def test_refused_image_entry(tmp_path, jsock):
    env = Env(tmp_path)
    env.add("10-a")
    env.state.mkdir(mode=0o755)
    (env.state / "state.json").write_text(
        json.dumps(
            {"format": 1, "compat_level": 5, "image": {"version_id": "9"}, "applied_image": None}
        )
    )
    with pytest.raises(runner.Incompatible):
        env.run(jsock.path)
    (refused,) = jsock.by_id(journal.IMAGE_REFUSED)
    assert refused["MIGRATION_RESULT"] == "refused"
    assert refused["MIGRATION_VERDICT"] == "downgrade"
    assert refused["PRIORITY"] == "3"


def test_hostile_values_use_the_binary_form_and_forge_no_field(tmp_path, jsock):
    # The state dir's path is in MIGRATION_LOG: a newline there must not start a field.
    env = Env(tmp_path, state="state\nMESSAGE_ID=forged\nPRIORITY=0")
    env.add("20-bad", "echo 'MESSAGE_ID=0\nPRIORITY=0'; printf '\\377\\n'; exit 1")
    assert env.run(jsock.path) == 1
    (failed,) = jsock.by_id(journal.SCRIPT_FAILED)
    assert failed["MIGRATION_LOG"].startswith(str(tmp_path / "state\nMESSAGE_ID=forged"))
    assert failed["PRIORITY"] == "3"
    assert all(e["MESSAGE_ID"] != "forged" for e in jsock.entries())


def test_encode_binary_form_round_trips():
    value = "a\nb=c\n\x00\udcff"
    data = journal.encode({"MESSAGE": value, "PLAIN": "x=y"})
    assert data.startswith(
        b"MESSAGE\n" + (len(value.encode("utf-8", "surrogateescape"))).to_bytes(8, "little")
    )
    assert parse(data) == {"MESSAGE": value, "PLAIN": "x=y"}


def test_no_journal_socket_changes_nothing(tmp_path):
    env = Env(tmp_path)
    env.add("10-first")
    assert env.run(str(tmp_path / "no-such.sock")) == 0
    assert any("10-first: done" in m for m in env.messages)


def test_the_command_sends_on_this_root_only(tmp_path, jsock, monkeypatch):
    monkeypatch.setattr(journal, "SOCKET", jsock.path)
    env = Env(tmp_path)
    env.add("10-first")
    paths = [
        "--scripts-dir",
        str(env.scripts),
        "--state-dir",
        str(env.state),
        "--manifest",
        str(env.manifest),
    ]
    assert cli.main(["--root", str(tmp_path), *paths, "run"]) == 0
    assert jsock.entries() == []  # --root: another system's state
    env.add("20-second", "true second")
    assert cli.main([*paths, "run"]) == 0
    assert [e["MIGRATION_NAME"] for e in jsock.by_id(journal.SCRIPT_APPLIED)] == ["20-second"]
    assert journal.socket_for("/") == jsock.path
    assert journal.socket_for(str(tmp_path)) is None


def test_interrupted_script_entry(tmp_path, jsock, monkeypatch):
    from migration import execute
    from migration.errors import Interrupted

    def interrupted(*_args, **_kw):
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(execute, "run_script", interrupted)
    env = Env(tmp_path)
    sha = env.add("10-cut")
    with pytest.raises(Interrupted):
        env.run(jsock.path)
    (cut,) = jsock.by_id(journal.SCRIPT_INTERRUPTED)
    assert (cut["MIGRATION_NAME"], cut["MIGRATION_SHA256"]) == ("10-cut", sha)
    assert (cut["MIGRATION_RESULT"], cut["PRIORITY"], cut["MIGRATION_ATTEMPT"]) == (
        "interrupted",
        "4",
        "1",
    )
    assert (
        cut["MESSAGE"] == "migration: 10-cut: interrupted (SIGTERM); it runs again at the next run"
    )
    assert jsock.by_id(journal.RUN_FINISHED) == []
