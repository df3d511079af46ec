# SPDX-License-Identifier: MIT
"""Power cuts: SIGKILL the real runner, and every process it started, at many points of a run,
run again, and check that every script ends up applied exactly once in the records, that no
record is lost, duplicated or damaged, and that a script ran again only when the run that was
running it was cut before its success was recorded.

A SIGKILL keeps what the kernel already has (it does not drop unsynced page cache like a real
power cut), so this checks the ordering and atomicity of the state writes (no half record is ever
visible, started notes come before the script, outcomes before the note is dropped); the fsync
calls that make the same hold for a real power cut are in state.atomic_write.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
N_SCRIPTS = 20
SCENARIOS = 12

# Idempotent scripts that log every real execution (begin/end with the runner's pid) and do a
# little real work; every fourth one runs an external program so kills also land in children.
SCRIPT = """# step {i} (distinct content: identity is the sha256 of the content)
echo "begin $MIGRATION_NAME $PPID" >> {log}
mkdir -p {work}/$MIGRATION_NAME
{extra}
echo "end $MIGRATION_NAME $PPID" >> {log}
"""


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _wait_stopped(pid):
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "TtZX":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.0005)


def power_cut(proc):
    """Freeze the runner and everything under it, then SIGKILL them all at once. Scripts run in
    their own sessions, so killing the runner's process group alone would leave them running."""
    frozen, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        _wait_stopped(pid)  # SIGSTOP is asynchronous: it could still fork for a moment
        frozen.append(pid)
        todo += [k for k in _children(pid) if k not in frozen]
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


class Device:
    def __init__(self, base):
        self.base = base
        self.scripts = base / "migration.d"
        self.state = base / "state"
        self.log = base / "executions.log"
        self.scripts.mkdir(parents=True)
        self.scripts.chmod(0o755)
        for i in range(N_SCRIPTS):
            extra = "sleep 0.01" if i % 4 == 3 else ": $((i = 1))"
            path = self.scripts / f"{i:02d}-pkg{i % 3}-step.sh"
            path.write_text(SCRIPT.format(i=i, log=self.log, work=base / "work", extra=extra))
            path.chmod(0o644)
        self.names = sorted(p.name for p in self.scripts.iterdir())
        self.invocations = []  # (runner pid, applied-before set, killed?)

    def applied_names(self):
        names = set()
        for sha in os.listdir(self.state / "applied") if (self.state / "applied").exists() else []:
            if sha.startswith("."):
                continue
            with open(self.state / "applied" / sha) as f:
                names.add(json.load(f)["name"])
        return names

    def start(self):
        env = dict(os.environ, PYTHONPATH=LIB)
        argv = [sys.executable, "-S", "-m", "migration", "--scripts-dir", str(self.scripts),
                "--state-dir", str(self.state), "--manifest", str(self.base / "none.json"),
                "run", "--lock-wait", "5"]
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def run(self, kill_after=None):
        before = self.applied_names()
        proc = self.start()
        killed = False
        if kill_after is not None:
            try:
                proc.wait(kill_after)
            except subprocess.TimeoutExpired:
                power_cut(proc)
                killed = True
        rc = proc.wait(60)
        self.invocations.append((proc.pid, before, killed))
        return rc

    def executions(self):
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line.split() for line in lines]


def check(device):
    state = device.state
    # 1. every script applied exactly once; records whole and right; nothing half-done left
    applied = sorted(os.listdir(state / "applied"))
    assert len(applied) == N_SCRIPTS, applied
    by_name = {}
    for sha in applied:
        with open(state / "applied" / sha) as f:
            record = json.load(f)
        assert record["format"] == 1 and record["sha256"] == sha and record["exit_code"] == 0
        by_name[record["name"]] = record
    assert sorted(by_name) == device.names
    assert os.listdir(state / "started") == [] and os.listdir(state / "failed") == []
    assert not (state / "damaged").exists()
    # 2. real executions
    begins = {name: [] for name in device.names}
    ends = {name: [] for name in device.names}
    for event, name, pid in device.executions():
        (begins if event == "begin" else ends)[name].append(int(pid))
    order = {pid: i for i, (pid, _, _) in enumerate(device.invocations)}
    for name in device.names:
        pids = begins[name]
        assert pids, f"{name} never ran"
        assert len(set(pids)) == len(pids), f"{name} ran twice in one run"
        assert pids[-1] in ends[name], f"{name}: its last execution did not finish"
        # attempts are noted durably before each start, so they never under-count
        assert by_name[name]["attempts"] >= len(pids)
        for pid in pids:
            _, applied_before, _ = device.invocations[order[pid]]
            assert name not in applied_before, f"{name} ran again after its success was recorded"
        for pid in pids[:-1]:
            assert device.invocations[order[pid]][2], f"{name} re-ran after an uncut run"
    # 3. within each run, scripts started in name order
    for pid, _, _ in device.invocations:
        ran = [name for event, name, p in device.executions() if event == "begin" and int(p) == pid]
        assert ran == sorted(ran)


def test_power_cuts_at_many_points(tmp_path):
    # Calibrate: how long does a whole run take here (interpreter start included)?
    calib = Device(tmp_path / "calibration")
    t0 = time.monotonic()
    assert calib.run() == 0
    full = time.monotonic() - t0
    check(calib)
    cuts = 0
    for i in range(SCENARIOS):
        device = Device(tmp_path / f"device{i}")
        first = full * (i + 0.5) / SCENARIOS  # spread over the whole run
        second = full * ((i * 7) % SCENARIOS + 0.5) / SCENARIOS
        for delay in (first, second):
            device.run(kill_after=delay)
        assert device.run() == 0  # the run after the cuts completes
        cuts += sum(killed for _, _, killed in device.invocations)
        check(device)
        before = len(device.executions())
        assert device.run() == 0  # and then there is nothing left to do
        assert len(device.executions()) == before
    assert cuts >= SCENARIOS  # most cuts really interrupted a run


@pytest.mark.parametrize("victim", [0, 9, 19])
def test_script_that_kills_the_runner_runs_again_and_is_recorded_once(tmp_path, victim):
    """A cut at a script-controlled point: the first time, the script SIGKILLs the runner (its
    parent) and then itself, as a power cut in the middle of the script would stop both."""
    device = Device(tmp_path)
    name = device.names[victim]
    flag = tmp_path / "cut-done"
    path = device.scripts / name
    path.write_text(path.read_text().replace(
        "mkdir -p", f"if [ ! -e {flag} ]; then touch {flag}; kill -KILL $PPID $$; fi\nmkdir -p"
    ))
    proc = device.start()
    assert proc.wait(60) == -signal.SIGKILL
    device.invocations.append((proc.pid, set(), True))
    assert device.run() == 0
    check(device)
    assert [e[1] for e in device.executions() if e[0] == "begin"].count(name) == 2
