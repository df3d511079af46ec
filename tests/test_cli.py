# SPDX-License-Identifier: MIT
"""The `migration` command as users and units call it: a subprocess, its exit codes, its output.

Exit codes: 0 ok, 1 failed/refused/pending, 2 usage or configuration, 3 refused, 70 internal
error, 75 lock busy, 130 interrupted. Runs as root here; the non-root cases drop to uid 65534 in
the child (the root-only safety checks are skipped for other users by design, see
runner.script_refusal).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
NOBODY = 65534


def cli(*args, python=sys.executable, lib=LIB, timeout=30, **kw):
    env = dict(os.environ, PYTHONPATH=lib)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if "stdout" not in kw and "stderr" not in kw:
        kw["capture_output"] = True
    return subprocess.run(
        [python, "-m", "migration", *args], text=True, env=env, timeout=timeout, **kw
    )


def spawn(*args, **kw):
    env = dict(os.environ, PYTHONPATH=LIB)
    return subprocess.Popen(
        [sys.executable, "-m", "migration", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True, **kw,
    )


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr


class Root:
    def __init__(self, path):
        self.path = path
        self.scripts = path / "etc" / "migration.d"
        self.scripts.mkdir(parents=True)
        self.scripts.chmod(0o755)
        self.state = path / "var" / "lib" / "migration"

    def add(self, name, text, mode=0o644):
        p = self.scripts / name
        p.write_text(text)
        p.chmod(mode)
        return p

    def __call__(self, *args, **kw):
        return cli("--root", str(self.path), *args, **kw)

    def status(self):
        proc = self("status", "--json")
        no_traceback(proc)
        return {row["name"]: row for row in json.loads(proc.stdout)}


@pytest.fixture
def root(tmp_path):
    return Root(tmp_path)


def wait_for(path, within=10.0):
    end = time.monotonic() + within
    while not os.path.exists(path):
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.01)


def test_version_help_and_usage_errors(root):
    assert cli("--version").returncode == 0
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("run", "status", "forget", "check", "manifest"):
        assert command in proc.stdout
    proc = cli("--root", "/x", "run", "--help")
    assert proc.returncode == 0 and "--policy {continue,stop}" in proc.stdout
    for args in (["frobnicate"], [], ["run", "--policy", "maybe"], ["run", "--timeout", "-1"],
                 ["run", "--timeout", "soon"], ["forget"], ["check"]):
        proc = root(*args)
        assert proc.returncode == 2, args
        assert "usage:" in proc.stderr
        no_traceback(proc)


def test_missing_scripts_dir_is_a_clear_config_error(tmp_path):
    for command in (["run"], ["status"], ["run", "--dry-run"]):
        proc = cli("--root", str(tmp_path), *command)
        assert proc.returncode == 2
        assert proc.stderr == (
            f"migration: error: scripts dir {tmp_path}/etc/migration.d does not exist\n"
        )
    assert not (tmp_path / "var").exists()


ISO = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


def test_run_and_status_json_contract(root):
    root.add("10-ok", "echo fine\n")
    root.add("20-bad", "echo broken >&2\nexit 4\n")
    root.add("30-ok", "true\n")
    proc = root("run")
    assert proc.returncode == 1
    assert "20-bad: broken\n" in proc.stderr and "10-ok: fine\n" in proc.stderr
    assert proc.stdout == ""
    rows = root.status()
    assert list(rows) == ["10-ok", "20-bad", "30-ok"]
    for row in rows.values():
        assert re.fullmatch(r"[0-9a-f]{64}", row["sha256"])
    ok, bad = rows["10-ok"], rows["20-bad"]
    assert ok["state"] == "applied" and bad["state"] == "failed"
    for row in (ok, bad):
        assert ISO.match(row["finished_at"])
        assert isinstance(row["duration_s"], float) and row["duration_s"] >= 0
        assert row["attempts"] == 1
    assert ok["exit_code"] == 0 and bad["exit_code"] == 4
    assert bad["reason"] == "exit 4" and bad["log"].startswith(str(root.state / "logs"))
    with open(bad["log"]) as f:
        assert "broken" in f.read()
    assert root("status").returncode == 1
    proc = root("status")
    assert re.search(r"^failed +20-bad +exit 4", proc.stdout, re.M), proc.stdout
    root.add("20-bad", "true\n")  # new content: a new migration (the old one is gone)
    assert root("run").returncode == 0
    assert root("status").returncode == 0


def test_relative_paths_are_resolved_before_scripts_run(root):
    root.add("10-a", "echo ran\n")
    proc = cli("--scripts-dir", "etc/migration.d", "--state-dir", "st", "--manifest", "none",
               "run", cwd=str(root.path))
    assert proc.returncode == 0 and "10-a: ran" in proc.stderr
    assert os.listdir(root.path / "st" / "applied")


def test_lost_console_does_not_stop_the_run(root):
    root.add("10-a", "echo hi\n")
    root.add("20-b", "echo there >&2\n")
    r, w = os.pipe()
    os.close(r)  # every write to stdout/stderr now fails with EPIPE
    try:
        proc = cli("--root", str(root.path), "run", stdout=w, stderr=w)
    finally:
        os.close(w)
    assert proc.returncode == 0
    assert {row["state"] for row in root.status().values()} == {"applied"}


def test_stop_policy_exit_1_with_pending(root):
    root.add("10-bad", "exit 1\n")
    root.add("20-later", "true\n")
    assert root("run", "--policy", "stop").returncode == 1
    assert root.status()["20-later"]["state"] == "pending"


def test_timeout(root):
    root.add("10-hang", "sleep 60\n")
    t0 = time.monotonic()
    proc = root("run", "--timeout", "0.3")
    assert proc.returncode == 1 and time.monotonic() - t0 < 10
    row = root.status()["10-hang"]
    assert row["state"] == "failed" and row["reason"].startswith("timed out after 0.3 s")


HOLD = """touch {ready}
i=0
while [ ! -e {go} ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
"""


def test_lock_busy_is_75_and_status_does_not_block(root, tmp_path):
    ready, go = tmp_path / "ready", tmp_path / "go"
    root.add("10-hold", HOLD.format(ready=ready, go=go))
    root.add("20-next", "true\n")
    first = spawn("--root", str(root.path), "run")
    try:
        wait_for(ready)
        t0 = time.monotonic()
        second = root("run", "--lock-wait", "0.3")
        assert second.returncode == 75
        assert "another migration runner holds" in second.stderr
        assert 0.3 <= time.monotonic() - t0 < 5
        assert root("forget", "20-next", "--lock-wait", "0.2").returncode == 75
        t0 = time.monotonic()
        rows = root.status()
        assert time.monotonic() - t0 < 5
        assert rows["10-hold"]["state"] == "pending" and rows["10-hold"]["running"] is True
        assert rows["20-next"]["state"] == "pending"
        go.touch()
        assert first.wait(10) == 0
    finally:
        first.kill()
        first.communicate()
    assert {r["state"] for r in root.status().values()} == {"applied"}


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_runner_stops_script_and_exits_130(root, tmp_path, sig):
    ready, flag, bg = tmp_path / "ready", tmp_path / "flag", tmp_path / "bg"
    root.add("10-slow", f"test -e {flag} && exit 0\nsleep 60 &\necho $! > {bg}\n"
                        f"touch {ready}\nsleep 60\n")
    runner = spawn("--root", str(root.path), "run")
    try:
        wait_for(ready)
        runner.send_signal(sig)
        assert runner.wait(10) == 130
        _, err = runner.communicate()
    finally:
        runner.kill()
    assert "interrupted" in err
    pid = int(bg.read_text())
    end = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.02)
    assert not _alive(pid)
    row = root.status()["10-slow"]
    assert row["state"] == "interrupted" and row["attempts"] == 1
    flag.touch()
    assert root("run").returncode == 0
    row = root.status()["10-slow"]
    assert row["state"] == "applied" and row["attempts"] == 2


def test_script_killing_its_process_group_does_not_kill_the_runner(root):
    root.add("10-kill", "kill -KILL 0\n")
    root.add("20-kill", "kill -TERM -$$\n")
    root.add("30-after", "echo still here\n")
    proc = root("run")
    assert proc.returncode == 1
    assert "30-after: still here" in proc.stderr
    rows = root.status()
    assert rows["10-kill"]["exit_code"] == 137 and rows["20-kill"]["exit_code"] == 143
    assert rows["30-after"]["state"] == "applied"


def test_forget(root):
    ran = root.path / "ran"
    root.add("10-a", f"echo x >> {ran}\n")
    assert root("run").returncode == 0
    proc = root("forget", "10-a")
    assert proc.returncode == 0 and "forgot 10-a" in proc.stdout
    assert root.status()["10-a"]["state"] == "pending"
    assert root("run").returncode == 0
    assert ran.read_text() == "x\nx\n"
    os.rename(root.scripts / "10-a", root.scripts / "20-renamed")
    assert root("forget", "10-a").returncode == 0  # by the name in its record
    assert root.status()["20-renamed"]["state"] == "pending"
    proc = root("forget", "99-unknown")
    assert proc.returncode == 2 and "nothing matches '99-unknown'" in proc.stderr


def _manifest_image(root, scripts):
    frags = root.path / "usr/share/migration/packages"
    frags.mkdir(parents=True, exist_ok=True)
    by_pkg = {}
    for name, (pkg, text) in scripts.items():
        p = root.add(name, text)
        by_pkg.setdefault(pkg, []).append((name, hashlib.sha256(p.read_bytes()).hexdigest()))
    for pkg, entries in by_pkg.items():
        frag = {"format": 1, "package": pkg, "version": "1.0-r0",
                "migrations": [{"name": n, "sha256": s} for n, s in entries]}
        (frags / f"{pkg}.json").write_text(json.dumps(frag))


def test_manifest_check_and_done_link(root):
    flag = root.path / "flag"
    _manifest_image(root, {"10-foo-a": ("foo", "true\n"), "20-bar-b": ("bar", f"test -e {flag}\n")})
    proc = root("manifest")
    assert proc.returncode == 0 and "2 migrations, digest" in proc.stdout
    link = root.path / "usr/share/migration/done"
    digest = os.readlink(link).rsplit("/", 1)[1]
    assert root("check", "--package", "foo").returncode == 1  # nothing ran yet
    assert root("run").returncode == 1
    assert root("check", "--package", "foo").returncode == 0
    proc = root("check", "--package", "bar")
    assert proc.returncode == 1 and "not applied: 20-bar-b" in proc.stderr
    assert root("check", "--package", "nothing-here").returncode == 0
    assert not (root.state / "done" / digest).exists()
    flag.touch()
    assert root("run").returncode == 0
    assert os.listdir(root.state / "done") == [digest]  # what the done link points to
    assert root("check", "--package", "bar").returncode == 0
    assert root("forget", "10-foo-a").returncode == 0
    assert os.listdir(root.state / "done") == []
    (root.scripts / "20-bar-b").write_text("echo tampered\n")
    proc = root("run")
    assert proc.returncode == 1 and "tampered" in proc.stderr
    assert root.status()["20-bar-b"]["state"] == "refused"


def test_manifest_conflict_exit_2_names_both_packages(root):
    _manifest_image(root, {"10-x": ("foo", "true\n")})
    frag = json.loads((root.path / "usr/share/migration/packages/foo.json").read_text())
    frag["package"] = "bar"
    (root.path / "usr/share/migration/packages/bar.json").write_text(json.dumps(frag))
    proc = root("manifest")
    assert proc.returncode == 2
    assert "10-x is shipped by two packages: bar and foo" in proc.stderr
    no_traceback(proc)


def test_check_without_manifest_is_config_error(root):
    proc = root("check", "--package", "foo")
    assert proc.returncode == 2 and "no image manifest" in proc.stderr


def test_damaged_state_never_tracebacks(root):
    root.add("10-a", "true\n")
    assert root("run").returncode == 0
    (sha,) = os.listdir(root.state / "applied")
    (root.state / "applied" / sha).write_bytes(b"\x00garbage")
    (root.state / "state.json").write_text("{trunc")
    proc = root("status")
    no_traceback(proc)
    assert "damaged state record found" in proc.stderr and proc.returncode == 1
    proc = root("run")
    no_traceback(proc)
    assert proc.returncode == 0 and "moved aside" in proc.stderr
    moved = sorted(os.listdir(root.state / "damaged"))
    assert len(moved) == 2
    assert moved[0].startswith(f"applied-{sha}.") and moved[1].startswith("state.json.")
    assert (root.state / "damaged" / moved[0]).read_bytes() == b"\x00garbage"
    assert json.loads((root.state / "state.json").read_text())["format"] == 1


def test_dry_run_via_cli(root):
    root.add("10-a", "true\n")
    proc = root("run", "--dry-run")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "fresh device (no migration state): this image runs every migration",
        "would run 10-a",
    ]
    assert not root.state.exists()


def test_full_file_system_is_reported_cleanly(root):
    root.add("10-a", "true\n")

    def no_space():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    proc = root("run", preexec_fn=no_space)
    no_traceback(proc)
    assert proc.returncode == 2
    # the first write before a script starts: state.json notes the image (issue 5)
    assert "cannot write state.json in state dir" in proc.stderr
    assert "(file system full?)" in proc.stderr
    assert root.status()["10-a"]["state"] == "pending"


# -- as another user ---------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path_factory):
    """A directory tree every user can read, with a copy of lib/ and a python nobody can run."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to uid 65534")
    base = tempfile.mkdtemp(prefix="migration-world-")
    os.chmod(base, 0o755)
    shutil.copytree(LIB, os.path.join(base, "lib"), ignore=shutil.ignore_patterns("__pycache__"))
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            subprocess.run([python, "-c", "pass"], preexec_fn=lambda: os.setuid(NOBODY),
                           capture_output=True, check=True)
            break
        except (OSError, subprocess.CalledProcessError):
            continue
    else:
        shutil.rmtree(base)
        pytest.skip("no python3 that uid 65534 can run")
    yield base, python
    shutil.rmtree(base)


def as_nobody(world, *args):
    base, python = world
    return cli(*args, python=python, lib=os.path.join(base, "lib"),
               preexec_fn=lambda: os.setuid(NOBODY))


def test_unwritable_state_dir_as_non_root(world):
    base, _ = world
    scripts = os.path.join(base, "scripts")
    os.mkdir(scripts, 0o755)
    with open(os.path.join(scripts, "10-a"), "w") as f:
        f.write("true\n")
    state = os.path.join(base, "state")
    os.mkdir(state, 0o755)  # owned by root: not writable for nobody
    proc = as_nobody(world, "--scripts-dir", scripts, "--state-dir", state, "run")
    no_traceback(proc)
    assert proc.returncode == 2
    assert "(state dir not writable)" in proc.stderr and state in proc.stderr


def test_non_root_runs_without_root_only_refusals(world):
    """By design an unprivileged runner does not refuse scripts for ownership or mode: it can
    only do what its user can do anyway (documented in runner.script_refusal)."""
    base, _ = world
    scripts = os.path.join(base, "scripts")
    os.mkdir(scripts, 0o777)
    os.chmod(scripts, 0o777)
    path = os.path.join(scripts, "10-a")
    with open(path, "w") as f:
        f.write("id -u\n")
    os.chmod(path, 0o666)
    state = os.path.join(base, "state")
    os.mkdir(state, 0o755)
    os.chown(state, NOBODY, NOBODY)
    proc = as_nobody(world, "--scripts-dir", scripts, "--state-dir", state, "run")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert f"10-a: {NOBODY}\n" in proc.stderr
    # the same tree as root: refused (group/world writable)
    proc = cli("--scripts-dir", scripts, "--state-dir", os.path.join(base, "rootstate"), "run")
    assert proc.returncode == 1 and "refused" in proc.stderr


def test_help_documents_exit_3_and_update(root):
    proc = root("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "3 this image cannot use the device's data" in text
    assert "update" in text
    proc = root("run", "--help")
    assert "--hooks-dir" in proc.stdout and "incompatible.d" in proc.stdout
    proc = root("update", "--help")
    assert "--defer-oneway" in proc.stdout and "MIGRATION_PHASE=update" in proc.stdout


def test_status_of_a_newer_runners_state_still_lists_the_scripts(root):
    root.add("10-a", "true\n")
    assert root("run").returncode == 0
    meta = json.loads((root.state / "state.json").read_text())
    meta["format"] = 9
    (root.state / "state.json").write_text(json.dumps(meta))
    proc = root("status")
    no_traceback(proc)
    assert proc.returncode == 1
    assert "newer runner" in proc.stdout and "applied      10-a" in proc.stdout


def test_an_internal_error_is_70_not_1(root, monkeypatch, capsys):
    """1 means "a script failed" (an updater goes on, the boot retries); a bug must not look
    like that."""
    from migration import cli as cli_mod
    from migration import runner

    def bug(*_args, **_kw):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner, "run", bug)
    assert cli_mod.main(["--root", str(root.path), "run"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "migration: error: internal error (a bug" in err


def test_a_python3_without_json_is_70_and_named(root, tmp_path):
    """OE splits python3: an old system's python3 may lack python3-json. That is the internal
    error exit (the update hooks abort the install), with the package to install, no traceback."""
    blocked = tmp_path / "no-json"
    blocked.mkdir()
    (blocked / "json.py").write_text(
        'raise ModuleNotFoundError("No module named \'json\'", name="json")\n')
    root.add("10-a", "true\n")
    for args in (["run"], ["status"], ["update", str(root.path)]):
        proc = root(*args, lib=f"{blocked}{os.pathsep}{LIB}")
        no_traceback(proc)
        assert proc.returncode == 70, (args, proc.stderr)
        assert "lacks module json (OE-core package python3-json" in proc.stderr
    assert not root.state.exists()


def test_help_documents_exit_70(root):
    text = " ".join(root("--help").stdout.split())
    assert "70 internal error" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="symlinks are refused by root only")
@pytest.mark.parametrize("with_manifest", [False, True])
def test_a_symlink_to_applied_content_is_refused_by_run_and_status_alike(root, with_manifest):
    """Identity is content, so a symlink to bytes that ran once read as `applied` in status,
    while the same symlink to new bytes was refused: the entry is the problem, whatever its
    content. With a manifest and a done stamp (the full path's cheap test) too."""
    text = "echo ran\n"
    if with_manifest:
        _manifest_image(root, {"10-foo-a": ("foo", text)})
        assert root("manifest").returncode == 0
    else:
        root.add("10-foo-a", text)
    assert root("run").returncode == 0
    if with_manifest:
        assert os.listdir(root.state / "done")
    elsewhere = root.path / "elsewhere"
    elsewhere.write_text(text)
    (root.scripts / "10-foo-a").unlink()
    (root.scripts / "10-foo-a").symlink_to(elsewhere)
    proc = root("run")
    assert proc.returncode == 1, proc.stderr
    assert "10-foo-a: refused: is a symlink" in proc.stderr
    assert "ran" not in proc.stderr.replace("refused", "")  # not run again
    row = root.status()["10-foo-a"]
    assert (row["state"], row["reason"]) == ("refused", "is a symlink")
    proc = root("status")
    assert proc.returncode == 1
    assert re.search(r"^refused +10-foo-a +is a symlink", proc.stdout, re.M), proc.stdout
    proc = root("run", "--dry-run")
    assert "would refuse 10-foo-a: is a symlink" in proc.stdout, proc.stdout
    # The file back in place: applied again, nothing runs.
    (root.scripts / "10-foo-a").unlink()
    root.add("10-foo-a", text)
    proc = root("run")
    assert proc.returncode == 0 and "ran" not in proc.stderr, proc.stderr
    assert root.status()["10-foo-a"]["state"] == "applied"


@pytest.mark.skipif(os.geteuid() != 0, reason="symlinks are refused by root only")
@pytest.mark.parametrize("entry", ["symlink", "user's file"])
def test_the_gate_fails_on_an_entry_that_run_and_status_refuse(root, entry):
    """adv5 finding 10: a symlinked (or user-owned) script of an applied package is refused by
    run and status; the gate must not say the opposite, also with the done stamp in place."""
    text = "echo ran\n"
    _manifest_image(root, {"10-foo-a": ("foo", text), "20-bar-b": ("bar", "true\n")})
    assert root("manifest").returncode == 0
    assert root("run").returncode == 0
    assert root("check", "--package", "foo").returncode == 0
    path = root.scripts / "10-foo-a"
    if entry == "symlink":
        elsewhere = root.path / "elsewhere"
        elsewhere.write_text(text)
        path.unlink()
        path.symlink_to(elsewhere)
        reason = "is a symlink"
    else:
        os.chown(path, NOBODY, NOBODY)
        reason = f"is owned by uid {NOBODY}, not root"
    assert root("run").returncode == 1
    proc = root("check", "--package", "foo")
    no_traceback(proc)
    assert proc.returncode == 1
    assert f"10-foo-a: refused: {reason}" in proc.stderr, proc.stderr
    assert root("check", "--package", "bar").returncode == 0  # another package's gate passes
