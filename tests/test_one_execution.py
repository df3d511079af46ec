# SPDX-License-Identifier: MIT
"""Issue 9: "applied" stays true when the runner is killed and when scripts change under it.

- Two executions of migration scripts never overlap, whatever signal hits the runner: a
  catchable signal that would end it is handled like SIGTERM (the script's group stopped, the
  run recorded as interrupted, exit 130); after a SIGKILL the next runner stops what the
  killed runner's scripts left running (found by the MIGRATION_RUNNER marker in their
  environment) before it runs anything, and a leftover that cleared its environment still holds
  the inherited lock, so the next runner waits for it; a live runner's scripts are never
  touched.
- The bytes that run are the bytes that were hashed (and checked against the manifest): a script
  rewritten after the runner read it (by an earlier script, a package upgrade) does not run in
  that run, and a record's sha256 is always the sha256 of what ran.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from migration import manifest as manifest_mod

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the runner's safety checks need root")


class Device:
    def __init__(self, base):
        self.base = base
        self.scripts = base / "etc" / "migration.d"
        self.scripts.mkdir(parents=True)
        self.scripts.chmod(0o755)
        self.state = base / "state"
        self.events = base / "events.log"
        self.manifest = base / "manifest.json"

    def add(self, name, text):
        path = self.scripts / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def write_manifest(self):
        entries = [{"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                    "package": "p", "version": "1"} for p in sorted(self.scripts.iterdir())]
        self.manifest.write_text(json.dumps({"format": 1, "digest": manifest_mod.digest(entries),
                                             "migrations": entries}))

    def start(self, *extra, manifest=None):
        env = dict(os.environ, PYTHONPATH=LIB)
        argv = [sys.executable, "-m", "migration", "--scripts-dir", str(self.scripts),
                "--state-dir", str(self.state),
                "--manifest", str(manifest or self.base / "none.json"), "run", *extra]
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def lines(self):
        return self.events.read_text().split("\n")[:-1] if self.events.exists() else []

    def wait_for(self, line, timeout=30.0):
        end = time.monotonic() + timeout
        while line not in self.lines():
            assert time.monotonic() < end, f"{line!r} never came: {self.lines()}"
            time.sleep(0.01)

    def kill_first_run(self, also_script=False):
        """Start a run, SIGKILL the runner (and with `also_script` the script's top process)
        once the script has started."""
        first = self.start()
        self.wait_for("start 1")
        victims = [first.pid] + (children(first.pid) if also_script else [])
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        first.communicate(timeout=10)

    def run(self, *extra):
        """A run to its end: (exit code, output)."""
        proc = self.start(*extra)
        out = proc.communicate(timeout=60)[0].decode()
        return proc.returncode, out

    def records(self, kind):
        out = {}
        directory = self.state / kind
        for sha in os.listdir(directory) if directory.exists() else []:
            if not sha.startswith("."):
                out[sha] = json.loads((directory / sha).read_text())
        return out


SLOW = """#!/bin/sh
echo "start $MIGRATION_ATTEMPT" >> {events}
if [ "$MIGRATION_ATTEMPT" = 1 ]; then sleep {seconds}; fi
echo "end $MIGRATION_ATTEMPT" >> {events}
"""


def assert_never_overlapped(lines):
    running = 0
    for line in lines:
        running += 1 if line.startswith("start") else -1 if line.startswith("end") else 0
        assert running <= 1, f"two executions at once: {lines}"


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_sigkill_of_the_runner_the_next_run_stops_the_orphan_first(tmp_path):
    """SIGKILL of the runner alone (an updater's hook killed, an OOM kill): the orphaned script
    goes on; a second runner started at once stops it, then runs attempt 2."""
    dev = Device(tmp_path)
    dev.add("10-slow", SLOW.format(events=dev.events, seconds=3))
    dev.kill_first_run()
    rc, out = dev.run("--lock-wait", "30")
    assert rc == 0, out
    assert "stopped 2 process(es) left running by the scripts of a killed runner" in out
    time.sleep(3.5)  # the orphan would have ended by now
    assert dev.lines() == ["start 1", "start 2", "end 2"]
    [record] = dev.records("applied").values()
    assert record["attempts"] == 2


WORKER = """#!/usr/bin/env python3
import os, subprocess
# the work is done by a child; Python closes every inherited fd >= 3 (close_fds), so the
# worker holds no copy of the runner's lock
subprocess.run(["/bin/sh", "-c", 'echo "start $MIGRATION_ATTEMPT" >> {events}; '
                '[ "$MIGRATION_ATTEMPT" != 1 ] || sleep 3; '
                'echo "end $MIGRATION_ATTEMPT" >> {events}'], check=True)
"""


def test_a_worker_that_dropped_the_lock_is_stopped_when_runner_and_script_are_killed(tmp_path):
    """Found by an adversary: the runner and the script's top process killed (an OOM kill of
    the Python processes), the worker without the lock goes on: the next runner must not start
    the migration beside it."""
    dev = Device(tmp_path)
    dev.add("10-convert", WORKER.format(events=dev.events))
    dev.kill_first_run(also_script=True)
    rc, out = dev.run("--lock-wait", "30")
    assert rc == 0, out
    time.sleep(3.5)  # the worker would have ended by now: it was stopped before attempt 2
    assert dev.lines() == ["start 1", "start 2", "end 2"]


HIDDEN = """#!/bin/sh
# a leftover that clears its environment (no MIGRATION_RUNNER) but keeps its fds
exec env -i PATH=/usr/bin:/bin MIGRATION_ATTEMPT="$MIGRATION_ATTEMPT" sh -c '
echo "start $MIGRATION_ATTEMPT" >> {events}
[ "$MIGRATION_ATTEMPT" != 1 ] || sleep 3
echo "end $MIGRATION_ATTEMPT" >> {events}'
"""


def test_a_leftover_without_the_marker_still_holds_the_lock(tmp_path):
    dev = Device(tmp_path)
    dev.add("10-hidden", HIDDEN.format(events=dev.events))
    dev.kill_first_run()
    rc, out = dev.run("--lock-wait", "0.2")
    assert rc == 75, out
    assert "another migration runner holds" in out
    rc, out = dev.run("--lock-wait", "30")
    assert rc == 0, out
    assert dev.lines() == ["start 1", "end 1", "start 2", "end 2"]


def test_a_live_runners_script_is_never_stopped_by_another_runner(tmp_path):
    dev = Device(tmp_path)
    dev.add("10-slow", SLOW.format(events=dev.events, seconds=2))
    first = dev.start()
    dev.wait_for("start 1")
    second = dev.start("--lock-wait", "0.2")
    out = second.communicate(timeout=30)[0].decode()
    assert second.returncode == 75, out
    out = first.communicate(timeout=30)[0].decode()
    assert first.returncode == 0, out
    assert dev.lines() == ["start 1", "end 1"]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                                 signal.SIGALRM, signal.SIGPWR, signal.SIGTERM, signal.SIGINT],
                         ids=lambda s: s.name)
def test_every_signal_that_would_end_the_runner_stops_the_script_first(tmp_path, sig):
    """An ssh session that drops (SIGHUP), a stray SIGUSR1...: the script's group is stopped,
    the run is recorded as interrupted, the exit code is 130; the next run runs attempt 2."""
    dev = Device(tmp_path)
    dev.add("10-slow", SLOW.format(events=dev.events, seconds=3))
    dev.add("20-after", f"#!/bin/sh\necho after >> {dev.events}\n")
    first = dev.start()
    dev.wait_for("start 1")
    os.kill(first.pid, sig)
    out = first.communicate(timeout=20)[0].decode()
    assert first.returncode == 130, out
    assert f"interrupted ({sig.name})" in out
    # the script was stopped before the runner exited: it never ends, and the next run starts
    # at once (the lock is free) with attempt 2
    assert dev.records("applied") == {} and len(dev.records("started")) == 1
    second = dev.start("--lock-wait", "0")
    out = second.communicate(timeout=30)[0].decode()
    assert second.returncode == 0, out
    assert dev.lines() == ["start 1", "start 2", "end 2", "after"]


REWRITER = """#!/bin/sh
cat > {target} <<'EOF'
#!/bin/sh
echo "new content" >> {events}
EOF
echo rewritten >> {events}
"""


@pytest.mark.parametrize("with_manifest", [False, True], ids=["no-manifest", "manifest"])
def test_a_script_rewritten_after_it_was_read_does_not_run_in_that_run(tmp_path, with_manifest):
    """An earlier script (or a package upgrade during the run) rewrites a later one: the new
    bytes were never hashed nor checked against the manifest, so they do not run now, and
    nothing is recorded under the old hash."""
    dev = Device(tmp_path)
    target = dev.scripts / "20-target"
    dev.add("10-rewriter", REWRITER.format(target=target, events=dev.events))
    dev.add("20-target", f"#!/bin/sh\necho 'old content' >> {dev.events}\n")
    old_sha = hashlib.sha256(target.read_bytes()).hexdigest()
    if with_manifest:
        dev.write_manifest()
    manifest = dev.manifest if with_manifest else None
    proc = dev.start(manifest=manifest)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 1, out
    assert dev.lines() == ["rewritten"]
    assert "20-target: not run: its content changed after it was checked" in out
    assert old_sha not in dev.records("applied")
    assert not list((dev.state / "done").iterdir())
    new_sha = hashlib.sha256(target.read_bytes()).hexdigest()
    proc = dev.start(manifest=manifest)
    out = proc.communicate(timeout=30)[0].decode()
    if with_manifest:  # the new content is not the image's: refused, never run
        assert proc.returncode == 1 and "tampered" in out, out
        assert dev.lines() == ["rewritten"]
    else:  # without a manifest the new content is a new migration: it runs, under its hash
        assert proc.returncode == 0, out
        assert dev.lines() == ["rewritten", "new content"]
        assert dev.records("applied")[new_sha]["name"] == "20-target"


def test_the_record_names_the_sha256_of_the_bytes_that_ran(tmp_path):
    """The script hashes what its interpreter reads ($0): the same sha256 as its record."""
    dev = Device(tmp_path)
    dev.add("10-self", f'#!/bin/sh\nsha256sum < "$0" | cut -d" " -f1 >> {dev.events}\n')
    proc = dev.start()
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    [ran] = dev.lines()
    assert list(dev.records("applied")) == [ran]


def test_a_script_cannot_change_the_bytes_being_run(tmp_path):
    """What the interpreter reads is a sealed private copy: writing to $0 fails, the installed
    file is not what runs (so its later rewrite cannot change a running script)."""
    dev = Device(tmp_path)
    dev.add("10-self", f'#!/bin/sh\nif echo x >> "$0"; then echo wrote >> {dev.events}; '
                       f'else echo sealed >> {dev.events}; fi\n'
                       f'echo "$MIGRATION_SCRIPT" >> {dev.events}\n')
    proc = dev.start()
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert dev.lines() == ["sealed", str(dev.scripts / "10-self")]


SIGNAL_IN_POPEN = """
import os, signal, subprocess, sys
sys.path.insert(0, {lib!r})
from migration import cli, execute
cli.install_signal_handlers()
real = subprocess.Popen._execute_child
def fork_then_signal(self, *args, **kw):
    real(self, *args, **kw)  # the script runs now; Popen has not returned yet
    print("script", self.pid, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: still inside Popen
subprocess.Popen._execute_child = fork_then_signal
try:
    execute.run_script(["/bin/sh", "-c", "exec sleep 30"], "x", dict(os.environ), echo=None)
except BaseException as e:
    print(type(e).__name__, e)
"""


def test_a_signal_while_the_script_starts_still_stops_the_script(tmp_path):
    """Found by an adversary: a signal handled inside subprocess.Popen (after the fork) lost the
    script's pid, so the runner exited 130 and the script ran on with no one to stop it."""
    code = SIGNAL_IN_POPEN.format(lib=LIB)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout.splitlines()
    assert out[1] == "Interrupted SIGTERM", out
    pid = int(out[0].split()[1])
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        state = "gone"
    if state not in ("gone", "Z"):
        os.kill(pid, signal.SIGKILL)
    assert state in ("gone", "Z"), f"the script still runs (state {state})"
