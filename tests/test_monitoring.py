# SPDX-License-Identifier: MIT
"""Fleet monitoring (migration.monitoring): `status --format prometheus` parses as the
Prometheus text exposition format and says what the state says, `run --prometheus-textfile`
writes it atomically after each run, `status --format mender-inventory` and the Mender
inventory script report counts, levels and the names that need attention."""

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from migration import cli
from migration import manifest as manifest_mod

FILES = Path(__file__).resolve().parent.parent / "recipes-core" / "migration" / "files"
LIB = Path(__file__).resolve().parent.parent / "lib"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the state dir's trust checks: root")

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"^({_NAME})(\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})? "
    r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+|NaN|Inf)|[-+]Inf)( -?\d+)?$"
)


def parse_prometheus(text: str) -> dict:
    """A strict reader of the text exposition format 0.0.4: HELP and TYPE once per family and
    before its samples, a family's samples together, no sample twice, a newline at the end.
    Returns {(name, labels): value}."""
    assert text.endswith("\n") and not text.endswith("\n\n")
    helps, types, samples = {}, {}, {}
    done, current = set(), None
    for line in text[:-1].split("\n"):
        m = re.match(rf"^# (HELP|TYPE) ({_NAME}) (.*)$", line)
        if m:
            kind, name, rest = m.groups()
            table = helps if kind == "HELP" else types
            assert name not in table, f"{kind} of {name} twice"
            assert name not in done, f"{kind} of {name} after its samples"
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped")
            table[name] = rest
            continue
        assert not line.startswith("#"), f"not HELP or TYPE: {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        assert name in types and name in helps, f"{name}: sample before its HELP and TYPE"
        if name != current:
            assert name not in done, f"samples of {name} not together"
            if current:
                done.add(current)
            current = name
        assert (name, labels) not in samples, f"{name}{labels} twice"
        samples[(name, labels)] = float(value)
    return samples


class Device:
    """Scripts, a manifest and a state dir, driven through the command line."""

    def __init__(self, tmp_path):
        self.root = tmp_path
        self.scripts = tmp_path / "migration.d"
        self.scripts.mkdir(mode=0o755)
        self.state = tmp_path / "state"
        self.manifest = tmp_path / "manifest.json"

    def add(self, name, body):
        path = self.scripts / name
        path.write_text(body + "\n")
        path.chmod(0o755)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def write_manifest(self, names, compat_level=0):
        migrations = [
            {"name": n, "sha256": hashlib.sha256((self.scripts / n).read_bytes()).hexdigest(),
             "package": "pkg", "version": "1.0-r0"} for n in names]  # fmt: skip
        obj = {"format": 1, "digest": manifest_mod.digest(migrations), "migrations": migrations}
        if compat_level:
            obj["compat_level"] = compat_level
        self.manifest.write_text(json.dumps(obj))

    def argv(self, *args):
        return ["--root", str(self.root), "--scripts-dir", str(self.scripts), "--state-dir",
                str(self.state), "--manifest", str(self.manifest), *args]  # fmt: skip

    def main(self, capsys, *args):
        capsys.readouterr()
        code = cli.main(self.argv(*args))
        return code, capsys.readouterr().out


def every_state(d: "Device", oneway: bool = False) -> "Device":
    """One script in each state: applied, failed, refused (not in the manifest), pending
    (after --policy stop) and interrupted (a started note without an outcome); with `oneway`,
    the pending one is a one-way migration of level 1."""
    d.add("10-ok", "true")
    d.add("20-bad", "exit 1")
    d.add("30-unlisted", "true unlisted")
    d.add("40-later", "true later")
    cut = d.add("50-cut", "true cut")
    d.write_manifest(["10-ok", "20-bad", "40-later", "50-cut"])
    if oneway:
        manifest = json.loads(d.manifest.read_text())
        manifest["migrations"][2]["oneway"] = 1  # 40-later: one-way
        manifest["compat_level"] = 1
        manifest["digest"] = manifest_mod.digest(manifest["migrations"])
        d.manifest.write_text(json.dumps(manifest))
    assert cli.main(d.argv("run", "--policy", "stop")) == 1
    (d.state / "started" / cut).write_text("")  # found without an outcome: interrupted
    return d


@pytest.fixture
def device(tmp_path):
    return every_state(Device(tmp_path))


def test_prometheus_format_parses_and_matches_the_state(device, capsys):
    code, out = device.main(capsys, "status", "--format", "prometheus")
    assert code == 1
    samples = parse_prometheus(out)
    counts = {
        s: samples[("migration_scripts", f'{{state="{s}"}}')]
        for s in ("applied", "pending", "failed", "refused", "interrupted")
    }
    assert counts == {"applied": 1, "pending": 1, "failed": 1, "refused": 1, "interrupted": 1}
    assert samples[("migration_image_refused", "")] == 0
    assert samples[("migration_state_compat_level", "")] == 0
    assert samples[("migration_image_compat_level", "")] == 0
    meta = json.loads((device.state / "state.json").read_text())
    last = meta["last_run"]
    assert samples[("migration_last_run_finish_time_seconds", "")] == last["finished_unix"]
    assert samples[("migration_last_run_duration_seconds", "")] == last["duration_s"]
    assert samples[("migration_last_run_success", "")] == 0
    assert last["result"] == "failure" and last["phase"] == "boot"
    assert abs(last["finished_unix"] - os.path.getmtime(device.state / "state.json")) < 5


def test_prometheus_says_when_the_image_is_refused(tmp_path, capsys):
    d = Device(tmp_path)
    d.add("10-ok", "true")
    d.write_manifest(["10-ok"])
    assert cli.main(d.argv("run")) == 0
    meta = json.loads((d.state / "state.json").read_text())
    meta["compat_level"] = 2  # a one-way migration of a later image ran on this data
    (d.state / "state.json").write_text(json.dumps(meta))
    code, out = d.main(capsys, "status", "--format", "prometheus")
    assert code == 3
    samples = parse_prometheus(out)
    assert samples[("migration_image_refused", "")] == 1
    assert samples[("migration_state_compat_level", "")] == 2
    assert samples[("migration_last_run_success", "")] == 1


def test_run_writes_the_textfile_atomically(tmp_path, capsys, monkeypatch):
    d = Device(tmp_path)
    d.add("10-ok", "true")
    d.write_manifest(["10-ok"])
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    target = textdir / "migration.prom"
    target.write_text("stale\n")
    renames = []
    real_rename = os.rename

    def spy(src, dst, *a, **kw):
        where = os.readlink(f"/proc/self/fd/{kw['dst_dir_fd']}") if "dst_dir_fd" in kw else ""
        renames.append((os.path.join(where, src), os.path.join(where, dst)))
        return real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", spy)
    assert cli.main(d.argv("run", "--prometheus-textfile", str(target))) == 0
    ((src, _dst),) = [r for r in renames if r[1] == str(target)]
    # written beside it under a hidden name node_exporter does not read, then renamed over it
    assert os.path.dirname(src) == str(textdir)
    assert os.path.basename(src).startswith(".") and not src.endswith(".prom")
    assert sorted(os.listdir(textdir)) == ["migration.prom"]
    assert target.stat().st_mode & 0o777 == 0o644
    code, out = d.main(capsys, "status", "--format", "prometheus")
    assert code == 0 and target.read_text() == out
    samples = parse_prometheus(out)
    assert samples[("migration_scripts", '{state="applied"}')] == 1
    assert samples[("migration_last_run_success", "")] == 1


def test_textfile_is_written_when_the_image_is_refused_and_a_bad_path_only_warns(
        tmp_path, capsys):  # fmt: skip
    d = Device(tmp_path)
    d.add("10-ok", "true")
    d.write_manifest(["10-ok"])
    assert cli.main(d.argv("run")) == 0
    meta = json.loads((d.state / "state.json").read_text())
    meta["compat_level"] = 2
    (d.state / "state.json").write_text(json.dumps(meta))
    target = tmp_path / "migration.prom"
    assert cli.main(d.argv("run", "--prometheus-textfile", str(target))) == 3
    assert parse_prometheus(target.read_text())[("migration_image_refused", "")] == 1
    meta["compat_level"] = 0
    (d.state / "state.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert cli.main(d.argv("run", "--prometheus-textfile", str(tmp_path / "no" / "x.prom"))) == 0
    assert "cannot write the Prometheus textfile" in capsys.readouterr().err


def _inventory(text):
    out = {}
    for line in text.splitlines():
        assert re.match(r"^[a-z_]+=[^\n]*$", line), line
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_mender_inventory_format(device, capsys):
    code, out = device.main(capsys, "status", "--format", "mender-inventory")
    assert code == 1
    inv = _inventory(out)
    assert {k: inv[f"migration_{k}"] for k in ("applied", "pending", "failed", "refused",
                                               "interrupted")} == {
        "applied": ["1"], "pending": ["1"], "failed": ["1"], "refused": ["1"],
        "interrupted": ["1"]}  # fmt: skip
    assert inv["migration_compat_level"] == ["0"]
    assert inv["migration_image_compat_level"] == ["0"]
    assert inv["migration_image_refused"] == ["no"]
    assert inv["migration_failed_name"] == ["20-bad"]
    assert inv["migration_refused_name"] == ["30-unlisted"]
    assert inv["migration_interrupted_name"] == ["50-cut"]


def test_json_and_another_format_conflict(device, capsys):
    assert cli.main(device.argv("status", "--json", "--format", "prometheus")) == 2


def _inventory_script(tmp_path, device, migration_body):
    """The shipped inventory script, its @SBINDIR@ pointing at a stand-in `migration`."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    stand_in = sbin / "migration"
    stand_in.write_text("#!/bin/sh\n" + migration_body + "\n")
    stand_in.chmod(0o755)
    script = tmp_path / "mender-inventory-migration"
    script.write_text(
        (FILES / "mender-inventory-migration").read_text().replace("@SBINDIR@", str(sbin))
    )
    script.chmod(0o755)
    return script


def test_mender_inventory_script_on_a_state_dir(tmp_path, device):
    args = " ".join(f"'{a}'" for a in device.argv())
    script = _inventory_script(
        tmp_path, device, f'PYTHONPATH={LIB} exec python3 -m migration {args} "$@"'
    )
    proc = subprocess.run(
        [str(script)], capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"}
    )
    assert proc.returncode == 0, proc.stderr  # status said 1: the inventory still holds
    inv = _inventory(proc.stdout)
    assert inv["migration_failed"] == ["1"] and inv["migration_failed_name"] == ["20-bad"]


def test_mender_inventory_script_reports_an_error(tmp_path, device):
    script = _inventory_script(tmp_path, device, "echo 'migration: error: x' >&2; exit 2")
    proc = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert _inventory(proc.stdout) == {"migration_status_error": ["2"]}


# --------------------------------------------------------------------------------------------
# The textfile dir is often the exporter's, not root's: what a user who can write it plants
# there must not become the runner's file, nor make root write through it (adversarial review
# of session 5, finding 2).

NOBODY = 65534


def _one_script(tmp_path):
    d = Device(tmp_path)
    d.add("10-ok", "true")
    d.write_manifest(["10-ok"])
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    return d, textdir, textdir / "migration.prom"


def _written_by_root(capsys, d, target):
    st = target.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o644)
    _code, out = d.main(capsys, "status", "--format", "prometheus")
    assert target.read_text() == out


def test_a_planted_temporary_file_is_never_written_through(tmp_path, capsys):
    """A user owning the textfile dir creates the runner's old temporary name (`.<name>.tmp.
    <pid>`: pids are small and predictable at boot) as his own file, mode 0666, and as a hard
    link to a root file (possible for any user where fs.protected_hardlinks is 0): the runner
    must write neither, so the metrics file is root's, 0644, and the root file unchanged."""
    d, textdir, target = _one_script(tmp_path)
    os.chown(textdir, NOBODY, NOBODY)
    planted = textdir / f".migration.prom.tmp.{os.getpid()}"
    planted.write_text("migration_last_run_success 1\n")
    os.chown(planted, NOBODY, NOBODY)
    planted.chmod(0o666)
    assert cli.main(d.argv("run", "--prometheus-textfile", str(target))) == 0
    _written_by_root(capsys, d, target)
    assert planted.read_text() == "migration_last_run_success 1\n"
    assert planted.stat().st_uid == NOBODY
    planted.unlink()
    victim = tmp_path / "shadow"
    victim.write_text("root:secret-hash\n")
    victim.chmod(0o600)
    os.link(victim, planted)
    assert cli.main(d.argv("run", "--prometheus-textfile", str(target))) == 0
    assert victim.read_text() == "root:secret-hash\n"
    _written_by_root(capsys, d, target)


def test_the_textfile_is_0644_whatever_the_umask(tmp_path, capsys):
    """node_exporter runs as its own user: a root umask of 077 (a package manager's, a
    hardened shell's) must not leave a file it cannot read."""
    d, _textdir, target = _one_script(tmp_path)
    old = os.umask(0o077)
    try:
        assert cli.main(d.argv("run", "--prometheus-textfile", str(target))) == 0
    finally:
        os.umask(old)
    _written_by_root(capsys, d, target)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_textfile_dir_others_can_write_is_refused_with_a_warning(tmp_path, capsys, mode):
    """In a dir that group or others can write without the sticky bit anyone of them can
    replace the file: metrics written there vouch for nothing, so the runner says so and
    writes nothing (the run's exit code stands); with the sticky bit (/tmp's 1777) only the
    file's owner can, and it is written."""
    d, textdir, target = _one_script(tmp_path)
    textdir.chmod(mode)
    capsys.readouterr()
    assert cli.main(d.argv("run", "--prometheus-textfile", str(target))) == 0
    err = capsys.readouterr().err
    assert "cannot write the Prometheus textfile" in err and "sticky" in err, err
    assert os.listdir(textdir) == []
    textdir.chmod(mode | 0o1000)
    assert cli.main(d.argv("run", "--prometheus-textfile", str(target))) == 0
    _written_by_root(capsys, d, target)
    assert os.listdir(textdir) == ["migration.prom"]


# --------------------------------------------------------------------------------------------
# Fresh after an update and a package postinst too (finding 9): the boot after an update whose
# migrations all applied starts no runner, so `update` must be able to write the file.


def test_update_writes_the_textfile_of_the_new_image(tmp_path, capsys):
    d, _textdir, target = _one_script(tmp_path)
    assert cli.main(d.argv("run", "--prometheus-textfile", str(target))) == 0
    old = parse_prometheus(target.read_text())
    assert old[("migration_image_compat_level", "")] == 0
    newroot = tmp_path / "new"
    scripts = newroot / "etc" / "migration.d"
    scripts.mkdir(parents=True)
    for name, body in (("10-ok", "true\n"), ("20-new", "true new\n")):
        (scripts / name).write_text(body)
        (scripts / name).chmod(0o755)
    migrations = [{"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                  for p in sorted(scripts.iterdir())]  # fmt: skip
    obj = {"format": 1, "migrations": migrations, "compat_level": 1}
    obj["digest"] = manifest_mod.digest_of(obj)
    manifest = newroot / cli.MANIFEST
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(obj))
    argv = ["--root", str(d.root), "--state-dir", str(d.state), "update", str(newroot),
            "--prometheus-textfile", str(target)]  # fmt: skip
    assert cli.main(argv) == 0
    new = parse_prometheus(target.read_text())
    assert new[("migration_scripts", '{state="applied"}')] == 2
    assert new[("migration_image_compat_level", "")] == 1
    assert new[("migration_last_run_success", "")] == 1
    assert (
        new[("migration_last_run_finish_time_seconds", "")]
        >= old[("migration_last_run_finish_time_seconds", "")]
    )
