# SPDX-License-Identifier: MIT
"""Running one script: errexit, stdin, output to console and bounded log, process group, timeout."""

import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from migration import execute
from migration.scripts import interpreter

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive (reparented to init or a subreaper, not reaped yet)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, within: float = 2.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not _pid_alive(pid):
            return True
        time.sleep(0.02)
    return False


class Run:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.echo = io.BytesIO()
        self.log = str(tmp_path / "out.log")

    def __call__(self, text: str, **kw):
        path = self.tmp / "script"
        path.write_text(text)
        argv = interpreter(str(path)).argv(str(path))
        env = {"PATH": os.environ["PATH"], "MIGRATION_NAME": "10-x"}
        return execute.run_script(argv, "10-x", env, str(self.tmp), self.log, echo=self.echo, **kw)

    @property
    def output(self) -> str:
        return self.echo.getvalue().decode()

    @property
    def logged(self) -> bytes:
        with open(self.log, "rb") as f:
            return f.read()


@pytest.fixture
def run(tmp_path):
    return Run(tmp_path)


def test_success_output_prefixed_and_logged(run):
    res = run("echo one\necho two >&2\nprintf 'no newline'\n")
    assert res.ok and res.exit_code == 0 and res.reason == ""
    assert run.output == "10-x: one\n10-x: two\n10-x: no newline\n"
    assert b"one\ntwo\nno newline" in run.logged
    assert run.logged.endswith(b"[migration: exit 0]\n")


@pytest.mark.parametrize("shebang", ["", "#!/bin/sh\n", "#!/bin/sh +e\n", "#!/usr/bin/env bash\n"])
def test_shell_scripts_always_start_with_errexit(run, shebang):
    res = run(shebang + "false\necho reached\n")
    assert not res.ok and res.exit_code == 1 and res.reason == "exit 1"
    assert "reached" not in run.output


def test_set_plus_e_inside_is_the_authors_choice(run):
    res = run("set +e\nfalse\necho reached\n")
    assert res.ok and "reached" in run.output


def test_stdin_is_dev_null(run):
    res = run('readlink /proc/self/fd/0\nif read -r x; then echo "read:$x"; else echo eof; fi\n')
    assert res.ok
    assert run.output == "10-x: /dev/null\n10-x: eof\n"


def test_own_session_and_group(run):
    res = run(
        'read -r _ _ _ _ g _ _ < /proc/$$/stat; read -r _ _ _ _ pg _ _ < /proc/$PPID/stat\n'
        'echo "$g $pg $$"\n'
    )
    assert res.ok
    group, parent_group, pid = run.output.split(": ")[1].split()
    assert group == pid  # leader of a new group (new session)
    assert parent_group == str(os.getpgrp()) != group


@pytest.mark.parametrize("kill", ["kill 0", "kill -KILL 0", "kill -TERM -$$"])
def test_script_killing_its_group_does_not_kill_the_runner(run, kill):
    res = run(f"sleep 30 &\necho started\n{kill}\nsleep 30\n")
    assert not res.ok  # and we are still here to check it
    assert res.exit_code in (128 + 9, 128 + 15)
    assert "killed by signal" in res.reason


def test_timeout_kills_the_whole_group(run, tmp_path):
    t0 = time.monotonic()
    res = run(f"sleep 60 &\necho $! > {tmp_path}/bg\nsleep 60\n", timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert not res.ok and "timed out after 0.3 s" in res.reason
    assert _wait_dead(int((tmp_path / "bg").read_text()))


def test_timeout_escalates_to_sigkill(run):
    t0 = time.monotonic()
    res = run("trap '' TERM\necho ignoring\nsleep 60\n", timeout=0.2, kill_grace=0.3)
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 3
    assert not res.ok and res.exit_code == 137


@pytest.mark.parametrize(("sig", "trapped"), [(signal.SIGTERM, True), (signal.SIGKILL, False)])
def test_timeout_signal_sigkill_leaves_no_time_for_a_trap(run, tmp_path, sig, trapped):
    """`migration test --cut` kills as a power cut would: no TERM trap gets to clean up."""
    flag = tmp_path / "trap-ran"
    res = run(f"trap 'echo > {flag}' TERM\nsleep 60\n", timeout=0.3, kill_grace=2,
              timeout_signal=sig)
    assert not res.ok and "timed out after 0.3 s" in res.reason
    assert flag.exists() is trapped


def test_leftover_background_processes_are_killed(run, tmp_path):
    t0 = time.monotonic()
    res = run(
        f"sleep 60 > /dev/null 2>&1 &\necho $! > {tmp_path}/quiet\n"
        f"sleep 60 &\necho $! > {tmp_path}/holder\necho done\n"
    )
    assert res.ok
    assert time.monotonic() - t0 < execute.LEFTOVER_GRACE + 2
    assert _wait_dead(int((tmp_path / "quiet").read_text()))
    assert _wait_dead(int((tmp_path / "holder").read_text()))


def test_megabytes_of_output_neither_block_nor_fill_the_log(run):
    t0 = time.monotonic()
    res = run("yes 'a line of output' | head -n 400000\nhead -c 3000000 /dev/zero | tr '\\0' x\n"
              "echo LAST LINE\n")
    assert res.ok and time.monotonic() - t0 < 10
    total = 400000 * len("a line of output\n") + 3000000 + len("LAST LINE\n")
    assert res.output_bytes == total
    log = run.logged
    assert len(log) < execute.LOG_HEAD + execute.LOG_TAIL + 1024
    assert b"bytes of output dropped here" in log
    assert log.split(b"\n", 2)[1] == b"a line of output"  # head kept (after the header)
    assert b"LAST LINE\n[migration: exit 0]\n" in log  # tail kept
    assert len(run.echo.getvalue()) < execute.ECHO_CAP + 2 * execute.LINE_MAX + 1024
    assert "[more output only in the log]" in run.output


def test_missing_interpreter_is_exit_127(run):
    res = run("#!/nonexistent/interpreter\necho hi\n")
    assert not res.ok and res.exit_code == 127
    assert res.reason == (
        "interpreter not found: /nonexistent/interpreter (No such file or directory)"
    )
    assert b"interpreter not found" in run.logged


def test_missing_program_behind_env_is_exit_127(run):
    res = run("#!/usr/bin/env no-such-interpreter-here\necho hi\n")
    assert not res.ok and res.exit_code == 127
    assert "command not found" in res.reason


def test_unwritable_log_does_not_fail_the_script(tmp_path):
    script = tmp_path / "s"
    script.write_text("echo fine\n")
    res = execute.run_script(["/bin/sh", "-e", str(script)], "s", {}, str(tmp_path),
                             str(tmp_path / "no" / "dir" / "x.log"), echo=io.BytesIO())
    assert res.ok and "cannot write log" in res.log_error


def test_script_that_closes_its_output_is_still_waited_for(run):
    res = run("echo before\nexec >/dev/null 2>&1\nsleep 0.3\nexit 5\n")
    assert res.exit_code == 5 and res.duration_s >= 0.3
    assert run.output == "10-x: before\n"


def test_timeout_applies_after_the_output_is_closed(run):
    t0 = time.monotonic()
    res = run("exec >/dev/null 2>&1\nsleep 30\n", timeout=0.3)
    assert not res.ok and "timed out" in res.reason and time.monotonic() - t0 < 5


def test_log_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log = tmp_path / "x.log"
    os.symlink(victim, log)
    script = tmp_path / "s"
    script.write_text("echo output\n")
    res = execute.run_script(["/bin/sh", "-e", str(script)], "s", {}, str(tmp_path), str(log),
                             echo=io.BytesIO())
    assert res.ok and "cannot write log" in res.log_error
    assert victim.read_text() == "precious\n"


# --- A console that does not keep up (issue 10): a serial console stopped by XOFF under sysvinit,
# a full pipe, a stuck journald. The runner must never wait for it.

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the runner's safety checks need root")


class Runner:
    """`python -m migration run` in a subprocess, its stderr wherever the test says."""

    def __init__(self, base):
        self.base = base
        self.scripts = base / "migration.d"
        self.scripts.mkdir()
        self.scripts.chmod(0o755)
        self.state = base / "state"

    def add(self, name, text):
        path = self.scripts / name
        path.write_text(text)
        path.chmod(0o644)

    def start(self, *extra, stderr):
        argv = [sys.executable, "-m", "migration", "--scripts-dir", str(self.scripts),
                "--state-dir", str(self.state), "--manifest", str(self.base / "none.json"),
                "run", *extra]
        return subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=LIB),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)

    def records(self, kind):
        directory = self.state / kind
        records = [json.loads((directory / sha).read_text())
                   for sha in os.listdir(directory) if not sha.startswith(".")]
        return {record["name"]: record for record in records}


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@needs_root
def test_the_timeout_fires_on_time_while_nobody_reads_the_console(tmp_path):
    """A script floods the console while the runner's stderr is a pipe nobody reads for 6 s:
    it is killed at its 2 s timeout all the same, the later scripts run, its log has its
    output, and once the console is read again it gets a note of what it missed and the
    output of the script running then."""
    dev = Runner(tmp_path)
    dev.add("10-flood", "while :; do echo 'flood line, padded to fill a console quickly'; done\n")
    for name in ("20-a", "30-b", "40-c", "50-d"):
        dev.add(name, f"sleep 1.5\necho 'later output of {name}'\n")
    t0 = time.monotonic()
    proc = dev.start("--timeout", "2", stderr=subprocess.PIPE)
    try:
        time.sleep(6)  # the console is stuck: the pipe fills and nobody drains it
        err = proc.communicate(timeout=30)[1].decode()
    finally:
        _stop(proc)
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 1
    flood = dev.records("failed")["10-flood"]
    assert flood["duration_s"] < 4, flood
    assert flood["reason"].startswith("timed out after 2 s")
    assert sorted(dev.records("applied")) == ["20-a", "30-b", "40-c", "50-d"]
    with open(dev.state / "logs" / f"{flood['sha256']}.log", "rb") as f:
        log = f.read()
    assert log.split(b"\n")[1] == b"flood line, padded to fill a console quickly"
    assert log.endswith(b"[migration: timed out after 2 s: process group killed]\n")
    assert "bytes of output not shown on the console" in err
    assert "50-d: later output of 50-d" in err  # the console is back: it gets the later output
    assert "5 run, 4 applied, 1 failed" in err


@needs_root
def test_the_runners_own_messages_never_hang_on_a_full_console(tmp_path):
    """stderr is a pipe that is already full and never read: the runner's messages between
    scripts ("running", "done") must not stop the boot."""
    dev = Runner(tmp_path)
    for i in range(30):
        dev.add(f"{i:02d}-quiet", f": {i}\n")
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
        os.write(w, b"x" * fcntl.fcntl(w, fcntl.F_GETPIPE_SZ))  # full
        t0 = time.monotonic()
        proc = dev.start(stderr=w)
        os.close(w)
        w = -1
        try:
            proc.wait(timeout=15)
        finally:
            _stop(proc)
        assert proc.returncode == 0
        assert time.monotonic() - t0 < 10
        assert len(dev.records("applied")) == 30
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_console_that_stops_taking_bytes_never_blocks_a_write():
    """migration.console itself: writes to a full pipe return at once; what did not fit is
    dropped whole and counted in one note; a console that comes back gets what came later."""
    from migration import console

    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
        con = console.Console(w)
        lines = [b"line %05d of the console test\n" % i for i in range(10000)]
        t0 = time.monotonic()
        for line in lines:
            con.write(line)
        assert time.monotonic() - t0 < 1
        assert not con.drain(stall=0.2)  # gives up on a console that takes nothing
        os.set_blocking(r, False)  # the test's own end of the pipe
        got = b""
        back = False
        end = time.monotonic() + 10
        while not got.endswith(b"back\n"):
            assert time.monotonic() < end, got[-300:]
            try:
                got += os.read(r, 65536)
            except BlockingIOError:
                time.sleep(0.01)
            if not back and b"not shown on the console" in got:
                con.write(b"back\n")
                back = True
        assert con.drain()
        end = time.monotonic() + 5
        while any(t.name == "migration-console" for t in threading.enumerate()):
            assert time.monotonic() < end, "an idle console keeps its thread"
            time.sleep(0.01)
        text = got.decode()
        before, sep, rest = text.partition("migration: [")
        assert sep and rest.endswith("`migration status`]\nback\n")  # the note, then the rest
        assert rest.count("\n") == 2  # one note
        assert before == b"".join(lines[: before.count("\n")]).decode()  # whole lines, in order
        dropped = int(rest.split(" ", 1)[0])
        assert dropped == sum(map(len, lines)) - len(before)
    finally:
        os.close(r)
        os.close(w)
