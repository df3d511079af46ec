# SPDX-License-Identifier: MIT
"""`migration test SCRIPT... --root OLDROOT`: a recipe author proves a migration idempotent (and,
with --cut, power-cut safe) on a copy-on-write view of the old release's tree, without root and
without touching that tree.

OLDROOT here is a tiny rootfs: a static busybox as /bin/sh and its applets, an /etc and some data
(what an unpacked rootfs or the previous image's IMAGE_ROOTFS holds). The tests run as root; one
runs the command as an unprivileged uid (setpriv), as an author on a build host would.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tools import tool

LIB = Path(__file__).resolve().parent.parent / "lib"
APPLETS = (
    "sh",
    "cat",
    "echo",
    "sleep",
    "mv",
    "rm",
    "mkdir",
    "chmod",
    "chown",
    "grep",
    "printf",
    "touch",
    "ln",
)
NOBODY = 65534


def make_oldroot(root: Path) -> Path:
    busybox = tool("busybox", "apt-get install busybox-static")
    for d in ("bin", "etc", "proc", "dev", "run", "sys", "tmp", "var/lib/app"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "app.conf").write_text("mode=old\n")
    (root / "var" / "lib" / "app" / "data").write_text("v1\n")
    (root / "var" / "lib" / "foo" / "sub").mkdir(parents=True)
    (root / "var" / "lib" / "foo" / "sub" / "state").write_text("s\n")
    return root


def snapshot(root: Path) -> Dict[str, Tuple[int, int, int, int, bytes]]:
    """Every entry: mode, owner, group, mtime and content (or link target): byte for byte."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                data = os.readlink(p).encode()
            elif os.path.isfile(p):
                data = Path(p).read_bytes()
            else:
                data = b""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, data)
    return out


def script(dirpath: Path, name: str, body: str) -> str:
    path = dirpath / name
    path.write_text("#!/bin/sh\nset -eu\n" + body)
    path.chmod(0o755)
    return str(path)


def migration_test(
    *args: str, user: Optional[int] = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(LIB), LC_ALL="C.UTF-8")
    python = sys.executable
    prefix: List[str] = []
    if user is not None:
        # the venv's python lives under /root: an unprivileged user runs the system's
        python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        env["HOME"] = "/"
    return subprocess.run(
        [*prefix, python, "-m", "migration", "test", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def old(tmp_path: Path) -> Path:
    return make_oldroot(tmp_path / "old")


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    d = tmp_path / "scripts"
    d.mkdir()
    return d


def test_idempotent_script_passes_and_lists_what_it_changed(old, scripts):
    before = snapshot(old)
    s = script(
        scripts,
        "50-app-upgrade.sh",
        """\
grep -q '^app:' /etc/passwd || echo 'app:x:999:999::/var/lib/app:/bin/false' >> /etc/passwd
mkdir -p /var/lib/app/new
if [ -e /etc/app.conf ]; then mv -f /etc/app.conf /var/lib/app/new/app.conf; fi
chmod 0600 /var/lib/app/data
test "$MIGRATION_NAME" = 50-app-upgrade.sh
test "$MIGRATION_ROOT" = / && test "$(pwd)" = /
test -d "$TMPDIR"
test "$(cat /proc/self/net/dev | grep -c :)" = 1  # only lo: no network, as at boot
""",
    )
    r = migration_test(s, "--root", str(old))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "changed /etc/passwd: content" in out
    assert "removed /etc/app.conf" in out
    assert "added /var/lib/app/new/app.conf" in out
    assert "changed /var/lib/app/data: mode 0644 -> 0600" in out
    assert out.splitlines()[-1] == "verdict: idempotent"
    assert snapshot(old) == before


def test_directories_of_oldroot_can_be_moved_and_removed(old, scripts):
    """The usual migration: move a package's data dir (a rename of a lower dir: overlayfs
    copies it up, then whites it out)."""
    before = snapshot(old)
    s = script(
        scripts,
        "50-foo-move.sh",
        "if [ -d /var/lib/foo ]; then mv /var/lib/foo /var/lib/bar; fi\n"
        "rm -rf /var/lib/app\nmkdir -p /var/lib/app\n",
    )
    r = migration_test(s, "--root", str(old))
    assert r.returncode == 0, r.stdout + r.stderr
    for line in (
        "removed /var/lib/foo",
        "removed /var/lib/foo/sub/state",
        "added /var/lib/bar/sub/state",
        "removed /var/lib/app/data",
    ):
        assert line in r.stdout
    assert snapshot(old) == before


def test_json_report(old, scripts):
    before = snapshot(old)
    s = script(scripts, "10-a.sh", "echo new > /etc/new.conf\n")
    r = migration_test(s, "--root", str(old), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["verdict"] == "idempotent"
    [step] = report["first_run"]
    assert step["name"] == "10-a.sh" and step["ok"]
    [change] = step["changes"]
    assert change["path"] == "/etc/new.conf" and change["change"] == "added"
    assert change["after"]["type"] == "file" and change["after"]["mode"] == "0644"
    assert report["second_run"][0]["changes"] == []
    assert snapshot(old) == before


def test_non_idempotent_script_is_named_with_the_path(old, scripts):
    before = snapshot(old)
    ok = script(scripts, "10-fine.sh", "mkdir -p /var/lib/app/cache\n")
    bad = script(scripts, "20-app-append.sh", "echo 'extra=1' >> /etc/app.conf\n")
    r = migration_test(bad, ok, "--root", str(old))  # order: the runner's, not the command line's
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not idempotent: 20-app-append.sh changed /etc/app.conf again" in r.stdout
    assert "10-fine.sh changed" not in r.stdout
    assert r.stdout.index("10-fine.sh") < r.stdout.index("20-app-append.sh")
    assert snapshot(old) == before


def test_failing_script_fails_with_its_output(old, scripts):
    before = snapshot(old)
    s = script(scripts, "30-broken.sh", "echo 'about to fail' >&2\ncat /etc/missing.conf\n")
    r = migration_test(s, "--root", str(old))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "30-broken.sh: FAILED" in r.stdout
    assert "about to fail" in r.stdout
    assert "/etc/missing.conf" in r.stdout
    assert snapshot(old) == before


def test_oldroot_without_sh_is_a_plain_error(old, scripts):
    (old / "bin" / "sh").unlink()
    before = snapshot(old)
    s = script(scripts, "10-a.sh", "true\n")
    r = migration_test(s, "--root", str(old))
    assert r.returncode == 2
    assert "/bin/sh" in r.stderr and "OLDROOT" in r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(old) == before


def test_cut_finds_a_script_that_is_not_power_cut_safe(old, scripts):
    before = snapshot(old)
    # writes the new file in two steps, in place: a kill between them leaves half of it, and the
    # run after the cut appends to that half
    s = script(
        scripts,
        "40-app-conf.sh",
        """\
if ! grep -q '^version=2' /etc/app.conf; then
  echo 'version=2' >> /etc/app.conf
  sleep 1
  echo 'feature=on' >> /etc/app.conf
fi
""",
    )
    r = migration_test(s, "--root", str(old), "--cut-at", "500")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not power-cut safe: 40-app-conf.sh killed after 500 ms" in r.stdout
    assert "/etc/app.conf" in r.stdout
    assert snapshot(old) == before


def test_cut_passes_a_script_that_is_power_cut_safe(old, scripts):
    before = snapshot(old)
    s = script(
        scripts,
        "40-app-conf.sh",
        """\
if ! grep -q '^version=2' /etc/app.conf; then
  cat /etc/app.conf > /etc/app.conf.tmp
  echo 'version=2' >> /etc/app.conf.tmp
  sleep 1
  echo 'feature=on' >> /etc/app.conf.tmp
  mv -f /etc/app.conf.tmp /etc/app.conf
fi
""",
    )
    r = migration_test(s, "--root", str(old), "--cut")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "killed after" in r.stdout  # the default cut points fell inside the script's run
    assert snapshot(old) == before


def test_no_user_namespaces_is_a_plain_error(old, scripts):
    """Where user namespaces are not allowed: exit 2 with the reason, nothing run. Made here with
    a user namespace whose user.max_user_namespaces is 0 (the limit is per namespace)."""
    before = snapshot(old)
    s = script(scripts, "10-a.sh", "echo x > /etc/x\n")
    env = dict(os.environ, PYTHONPATH=str(LIB))
    inner = (
        f'echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -m migration "$@"'
    )
    r = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            inner,
            "sh",
            "test",
            s,
            "--root",
            str(old),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot create user, mount, pid and network namespaces" in r.stderr
    assert "max_user_namespaces" in r.stderr and "Linux >= 5.11" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert snapshot(old) == before


def _unprivileged_userns_allowed() -> Optional[str]:
    r = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "true",
        ],
        capture_output=True,
        text=True,
    )
    return None if r.returncode == 0 else r.stderr.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another uid with setpriv: needs root")
def test_runs_as_an_unprivileged_user():
    why = _unprivileged_userns_allowed()
    if why is not None:
        pytest.skip(f"this host forbids unprivileged user namespaces: {why}")
    base = Path(tempfile.mkdtemp(prefix="mtest-nobody-"))
    try:
        base.chmod(0o755)
        old = make_oldroot(base / "old")
        scripts = base / "scripts"
        scripts.mkdir()
        good = script(scripts, "10-good.sh", 'mkdir -p /var/lib/app/v2\ntest "$(id -u)" = 0\n')
        bad = script(scripts, "20-bad.sh", "echo x >> /var/lib/app/data\n")
        for dirpath, dirnames, filenames in os.walk(base):
            for name in [".", *dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), NOBODY, NOBODY)
        before = snapshot(old)
        r = migration_test(good, "--root", str(old), user=NOBODY)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "added /var/lib/app/v2" in r.stdout
        r = migration_test(good, bad, "--root", str(old), user=NOBODY)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "not idempotent: 20-bad.sh changed /var/lib/app/data again" in r.stdout
        assert snapshot(old) == before
        assert sorted(os.listdir(base)) == ["old", "scripts"]
    finally:
        shutil.rmtree(base)


def test_help_names_the_kernel_and_the_limits():
    r = subprocess.run(
        [sys.executable, "-m", "migration", "test", "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(LIB)),
    )
    assert r.returncode == 0
    assert "5.11" in r.stdout and "--cut" in r.stdout and "--root OLDROOT" in r.stdout
    assert "``" not in r.stdout  # plain text, no reST


def _pids_with_env(entry: bytes) -> List[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if entry in f.read().split(b"\0"):
                        pids.append(int(name))
            except OSError:
                continue
    return pids


def test_a_runner_on_the_same_host_leaves_the_scripts_alone(old, scripts):
    """A runner that stops a dead runner's leftovers (migration.leftovers) must not take the
    sandbox's scripts for them: they carry the identity of the live `migration test`."""
    from migration import leftovers

    s = script(scripts, "10-slow.sh", "sleep 3\necho done > /etc/slow\n")
    env = dict(os.environ, PYTHONPATH=str(LIB))
    cmd = [sys.executable, "-m", "migration", "test", s, "--root", str(old)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        deadline = time.monotonic() + 20
        while not (ours := _pids_with_env(b"MIGRATION_NAME=10-slow.sh")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        orphans = {pid for pids in leftovers.orphans().values() for pid in pids}
        assert not orphans & set(ours)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "added /etc/slow" in out
