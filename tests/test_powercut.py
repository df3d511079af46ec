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

from fstree import tree

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
    # Calibrate: how long does a whole run take here (interpreter start included)? The
    # shorter of two runs: on a loaded machine one slow run would put the late cuts after the
    # end of most runs.
    durations = []
    for c in range(2):
        calib = Device(tmp_path / f"calibration{c}")
        t0 = time.monotonic()
        assert calib.run() == 0
        durations.append(time.monotonic() - t0)
        check(calib)
    full = min(durations)
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
    # most cuts really interrupted a run (each run syncs per script: other writers on the
    # machine make its duration vary, so not every planned cut lands inside one)
    assert cuts >= SCENARIOS // 2, cuts


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


# The kernel-visible order of the state writes, traced in a real run: what a real power cut
# (which, unlike SIGKILL, loses whatever was not fsynced) could leave behind depends on it.
# Audit hooks see open/rename/unlink/exec; os.fsync is wrapped to note which file it synced.
TRACER = """
import json, os, sys
sys.path.insert(0, {lib!r})
events = []
def hook(event, args):
    if event == "os.rename":
        events.append(("rename", os.fsdecode(args[0]), os.fsdecode(args[1])))
    elif event == "os.remove":
        events.append(("unlink", os.fsdecode(args[0])))
    elif event == "subprocess.Popen":
        events.append(("exec", os.environ.get("TRACED_SCRIPT", "")))
    elif event == "open" and isinstance(args[0], (str, bytes)) and ".tmp." in os.fsdecode(args[0]):
        events.append(("open", os.fsdecode(args[0])))
sys.addaudithook(hook)
real_fsync, real_sync = os.fsync, os.sync
def fsync(fd):
    events.append(("fsync", os.readlink(f"/proc/self/fd/{{fd}}")))
    real_fsync(fd)
def sync():
    events.append(("sync",))
    real_sync()
os.fsync, os.sync = fsync, sync
from migration import execute
real_run_script = execute.run_script
def run_script(argv, name, env, **kw):
    os.environ["TRACED_SCRIPT"] = env["MIGRATION_SCRIPT"]  # the installed path (argv: the memfd)
    return real_run_script(argv, name, env, **kw)
execute.run_script = run_script
from migration import runner
opts = runner.Options({scripts!r}, {state!r}, "/", {manifest!r}, lock_wait=1.0)
rc = runner.run(opts, say=lambda _m: None)
print(json.dumps([rc, events]))
"""


def test_durable_order_of_the_state_writes(tmp_path):
    """Under POSIX rules (a rename or unlink is durable only after an fsync of its directory, a
    file's content only after an fsync of the file or a sync(2) after it was written, which on
    Linux waits for the writes): every script starts only after its started note is durable;
    records become durable in their order; everything a script wrote, on any file system, is durable
    before its outcome is recorded (a sync after the script ends, before the record's rename);
    every record's content is durable before it is renamed into place; a started note is
    dropped only after its outcome is durable; the done stamp comes after every outcome is
    durable."""
    import hashlib

    from migration import manifest as manifest_mod

    device = Device(tmp_path)
    bad = device.scripts / device.names[5]
    bad.write_text(bad.read_text() + "exit 3\n")
    migrations = [{"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                   "package": "p", "version": "1"} for p in sorted(device.scripts.iterdir())]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "digest": manifest_mod.digest(migrations),
                                    "migrations": migrations}))

    def traced():
        code = TRACER.format(lib=LIB, scripts=str(device.scripts), state=str(device.state),
                             manifest=str(manifest))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        rc, events = json.loads(out.stdout)
        return rc, [tuple(e) for e in events]

    rc, events = traced()
    assert rc == 1  # one script failed
    state = str(device.state)
    sha_of = {os.path.join(str(device.scripts), m["name"]): m["sha256"] for m in migrations}

    def synced_after(i, path, before):
        """Is `path` (a directory) made durable after event i and before event index `before`,
        by its fsync or by a sync(2)?"""
        return any(e in (("fsync", path), ("sync",)) for e in events[i + 1:before])

    execs = [i for i, e in enumerate(events) if e[0] == "exec"]
    assert len(execs) == N_SCRIPTS
    outcomes = []  # (index, kind dir, sha) of outcome renames
    for i, e in enumerate(events):
        if e[0] == "rename" and os.path.dirname(e[2]) in (f"{state}/applied", f"{state}/failed"):
            outcomes.append((i, os.path.dirname(e[2]), os.path.basename(e[2])))
            # the record's content was synced (as its temporary file) before the rename
            written = max(j for j, o in enumerate(events[:i]) if o == ("open", e[1]))
            assert ("fsync", e[1]) in events[written:i] or ("sync",) in events[written:i], \
                f"record {e[2]} renamed before its content synced"
            # and so was everything its script wrote: a sync between the script and its record
            x = max(j for j, o in enumerate(events[:i]) if o[0] == "exec")
            assert sha_of[events[x][1]] == os.path.basename(e[2])
            assert ("sync",) in events[x + 1:i], f"{e[2]} recorded before its script's " \
                "effects were synced"
    assert len(outcomes) == N_SCRIPTS
    for x in execs:
        sha = sha_of[events[x][1]]
        note = [i for i, e in enumerate(events[:x])
                if e[0] == "rename" and e[2] == f"{state}/started/{sha}"]
        assert note and synced_after(note[-1], f"{state}/started", x), "started note not durable"
    # records become durable in their order: each before the next one is renamed into place
    for (i, kind_dir, _), (j, _, _) in zip(outcomes, outcomes[1:]):
        assert synced_after(i, kind_dir, j), \
            "a record renamed into place before the previous one was durable"
    for i, e in enumerate(events):
        if e[0] == "unlink" and os.path.dirname(e[1]) == f"{state}/started":
            sha = os.path.basename(e[1])
            rec = [(j, kind_dir) for j, kind_dir, s in outcomes if s == sha and j < i]
            assert rec, "a started note dropped before its outcome was recorded"
            assert synced_after(*rec[-1], i), "a started note dropped before its outcome " \
                "was durable"
    # The failed script is fixed: the rerun applies it and writes the done stamp last.
    bad.write_text(bad.read_text().replace("exit 3\n", ""))
    migrations[5]["sha256"] = hashlib.sha256(bad.read_bytes()).hexdigest()
    manifest.write_text(json.dumps({"format": 1, "digest": manifest_mod.digest(migrations),
                                    "migrations": migrations}))
    rc, events = traced()
    assert rc == 0
    stamp = [i for i, e in enumerate(events) if e[0] == "rename" and "/done/" in e[2]]
    rec = [i for i, e in enumerate(events) if e[0] == "rename" and "/applied/" in e[2]]
    assert len(stamp) == 1 and len(rec) == 1 and rec[0] < stamp[0]
    assert synced_after(rec[0], f"{state}/applied", stamp[0])
    assert os.listdir(device.state / "started") == []


# -- issue 5: the compatibility level is raised durably before a one-way script starts --------

ONEWAY_LEVEL = 2


class OneWayDevice(Device):
    """A Device whose script `oneway_index` is one-way (level 2) in the image manifest. With
    `older`, the manifest is the one of an older image: without that script, level 1."""

    def __init__(self, base, oneway_index=10):
        super().__init__(base)
        self.oneway = self.names[oneway_index]
        self.manifest = base / "manifest.json"
        self.old_manifest = base / "old-manifest.json"
        self.old_scripts = base / "old-migration.d"

    def write_manifests(self):
        """The new image's manifest of every script, and an older image's (a copy of the
        scripts dir without the one-way script, level 1)."""
        import hashlib

        from migration import manifest as manifest_mod

        def write(path, scripts_dir, oneway, level):
            migrations = []
            for p in sorted(scripts_dir.iterdir()):
                m = {"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                     "package": "p", "version": "1"}
                if p.name == oneway:
                    m["oneway"] = ONEWAY_LEVEL
                migrations.append(m)
            obj = {"format": 1, "compat_level": level, "migrations": migrations}
            path.write_text(json.dumps({**obj, "digest": manifest_mod.digest_of(obj)}))

        write(self.manifest, self.scripts, self.oneway, ONEWAY_LEVEL)
        import shutil

        shutil.rmtree(self.old_scripts, ignore_errors=True)
        shutil.copytree(self.scripts, self.old_scripts)
        (self.old_scripts / self.oneway).unlink()
        write(self.old_manifest, self.old_scripts, None, 1)

    def start(self, older=False, capture=False):
        env = dict(os.environ, PYTHONPATH=LIB)
        scripts, manifest = ((self.old_scripts, self.old_manifest) if older
                             else (self.scripts, self.manifest))
        argv = [sys.executable, "-S", "-m", "migration", "--scripts-dir", str(scripts),
                "--state-dir", str(self.state), "--manifest", str(manifest),
                "run", "--lock-wait", "5"]
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
                                text=True, start_new_session=True)

    def level(self):
        path = self.state / "state.json"
        return json.loads(path.read_text()).get("compat_level", 0) if path.exists() else 0

    def oneway_began(self):
        return any(e[:2] == ["begin", self.oneway] for e in self.executions())

    def older_image_refuses(self):
        """The older image's run: exit 3, with the state dir unchanged byte for byte."""
        before = tree(self.state)
        proc = self.start(older=True, capture=True)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        assert "incompatible downgrade" in err
        assert tree(self.state) == before


def test_cut_inside_a_one_way_script_leaves_the_level_raised_and_no_stamp(tmp_path):
    device = OneWayDevice(tmp_path)
    flag = tmp_path / "cut-done"
    path = device.scripts / device.oneway
    path.write_text(path.read_text().replace(
        "mkdir -p", f"if [ ! -e {flag} ]; then touch {flag}; kill -KILL $PPID $$; fi\nmkdir -p"
    ))
    device.write_manifests()
    # the older image ran first: its stamp exists
    proc = device.start(older=True)
    assert proc.wait(60) == 0
    assert len(os.listdir(device.state / "done")) == 1
    assert device.level() == 0
    # the new image's run is cut inside its one-way script
    proc = device.start()
    assert proc.wait(60) == -signal.SIGKILL
    device.invocations.append((proc.pid, set(), True))
    assert device.level() == ONEWAY_LEVEL
    assert os.listdir(device.state / "done") == []  # removed before the first script
    (note,) = os.listdir(device.state / "started")
    assert json.loads((device.state / "started" / note).read_text())["oneway"] == ONEWAY_LEVEL
    # the older image would now find converted data: refused, nothing touched
    device.older_image_refuses()
    # the new image finishes the job
    proc = device.start()
    assert proc.wait(60) == 0
    assert device.level() == ONEWAY_LEVEL
    assert len(os.listdir(device.state / "done")) == 1
    begins = [e[1] for e in device.executions() if e[0] == "begin"]
    assert begins.count(device.oneway) == 2
    device.older_image_refuses()


def test_cuts_around_the_one_way_script(tmp_path):
    """Cut runs at spread-out points: whenever the one-way script has begun, the level is
    raised; a stamp exists only after a complete run; the older image refuses exactly when the
    level was raised; the final run completes with every script applied once."""
    durations = []  # the shorter of two runs: load makes one slow run push every cut late
    for c in range(2):
        calib = OneWayDevice(tmp_path / f"calibration{c}")
        calib.write_manifests()
        t0 = time.monotonic()
        assert calib.run() == 0
        durations.append(time.monotonic() - t0)
    full = min(durations)
    began = not_begun = 0
    for scenario in range(SCENARIOS):
        device = OneWayDevice(tmp_path / f"device{scenario}")
        device.write_manifests()
        rc = device.run(kill_after=full * (scenario + 0.5) / SCENARIOS)
        killed = device.invocations[-1][2]
        if device.oneway_began():
            began += killed
            assert device.level() == ONEWAY_LEVEL
        else:
            not_begun += killed
        done = device.state / "done"
        if done.exists() and os.listdir(done):
            # (a cut may land after the stamp, while the runner exits: nothing left to do)
            assert len(device.applied_names()) == N_SCRIPTS
            assert device.level() == ONEWAY_LEVEL
        else:
            assert killed, f"an uncut run (exit {rc}) left no stamp"
        if device.level() == ONEWAY_LEVEL:
            device.older_image_refuses()
        assert device.run() == 0
        check(device)
        assert device.level() == ONEWAY_LEVEL
    assert began and not_begun, (began, not_begun)  # cuts landed on both sides of it


def test_durable_order_of_the_level_and_the_stamps(tmp_path):
    """Traced: the done stamps are removed durably before the first script starts; state.json
    with the raised level is durable before the one-way script's started note and start; at the
    end, state.json with applied_image is durable before the done stamp is written."""
    device = OneWayDevice(tmp_path)
    device.write_manifests()
    proc = device.start(older=True)  # leaves a stamp of the older image
    assert proc.wait(60) == 0
    (old_stamp,) = os.listdir(device.state / "done")
    code = TRACER.format(lib=LIB, scripts=str(device.scripts), state=str(device.state),
                         manifest=str(device.manifest))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    rc, events = json.loads(out.stdout)
    events = [tuple(e) for e in events]
    assert rc == 0
    state = str(device.state)
    meta = f"{state}/state.json"

    def synced_between(path, start, end):
        return any(e == ("fsync", path) for e in events[start + 1:end])

    execs = [i for i, e in enumerate(events) if e[0] == "exec"]
    first_exec = execs[0]
    unlink = events.index(("unlink", f"{state}/done/{old_stamp}"))
    assert unlink < first_exec and synced_between(f"{state}/done", unlink, first_exec)
    oneway_exec = next(i for i in execs if events[i][1].endswith("/" + device.oneway))
    oneway_note = [i for i, e in enumerate(events) if e[0] == "rename"
                   and e[2].startswith(f"{state}/started/") and i < oneway_exec][-1]
    meta_writes = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == meta]
    # the image is noted before the first script, the level raised before the one-way one
    assert meta_writes[0] < first_exec and synced_between(state, meta_writes[0], first_exec)
    raise_at = [i for i in meta_writes if i < oneway_note][-1]
    assert synced_between(state, raise_at, oneway_note)
    stamp = [i for i, e in enumerate(events) if e[0] == "rename" and "/done/" in e[2]]
    assert len(stamp) == 1
    last_meta = meta_writes[-1]
    assert last_meta < stamp[0] and synced_between(state, last_meta, stamp[0])
    final = json.loads((device.state / "state.json").read_text())
    assert final["compat_level"] == ONEWAY_LEVEL and "applied_image" in final
