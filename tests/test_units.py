# SPDX-License-Identifier: MIT
"""The boot units, the install description (migration-install.sh) and migration.units.

Installs with the real install script into a temporary root and checks the result with the real
systemd tools of the host (systemd-analyze verify, systemd-escape).
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from migration import units

REPO = Path(__file__).resolve().parents[1]
FILES = REPO / "recipes-core" / "migration" / "files"
PKG = REPO / "lib" / "migration"
INSTALL = FILES / "migration-install.sh"
UNITDIR = "/lib/systemd/system"



def install(root: Path, src: Path = PKG, **env: str) -> "subprocess.CompletedProcess[str]":
    """Run migration-install.sh like the recipe's do_install does (D and BitBake's path names)."""
    full: Dict[str, str] = {
        "PATH": os.environ["PATH"],
        "D": str(root),
        "sbindir": "/usr/sbin",
        "libdir": "/usr/lib",
        "datadir": "/usr/share",
        "sysconfdir": "/etc",
        "localstatedir": "/var",
        "systemd_system_unitdir": UNITDIR,
        "MIGRATION_PYTHON": "/usr/bin/python3",
    }
    full.update(env)
    return subprocess.run(
        ["sh", str(INSTALL), str(src), str(FILES)],
        env=full,
        capture_output=True,
        text=True,
        check=False,
    )


def verify(root: Path, *unit_paths: str) -> "subprocess.CompletedProcess[str]":
    """systemd-analyze verify on installed unit files (paths inside root), as systemd 252 allows."""
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *unit_paths],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def stub_src(tmp_path: Path) -> Path:
    """A package directory of one empty module: enough for the tests of the units alone."""
    src = tmp_path / "stub" / "migration"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    return src


@pytest.fixture
def pkg_src(tmp_path: Path) -> Path:
    """A copy of lib/migration (the copy keeps __pycache__ out of the repo)."""
    dst = tmp_path / "src" / "migration"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.parametrize(
    "name",
    ["foo", "foo-bar", "python3-foo+bar", "lib32-a_b.c", ".hidden", "a/b", "caf\u00e9", "x:y", " "],
)
def test_systemd_escape_matches_systemd(name: str) -> None:
    expected = subprocess.run(
        ["systemd-escape", "--", name], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert units.systemd_escape(name) == expected


def test_systemd_escape_refuses_empty_name() -> None:
    with pytest.raises(ValueError):
        units.systemd_escape("")


@pytest.mark.parametrize("package", ["foo", "foo-bar", "python3-foo+bar"])
def test_gate_dropin_names_the_gate_of_the_package(package: str) -> None:
    text = units.gate_dropin(package)
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    unit = units.gate_unit(package)
    assert lines == ["[Unit]", f"Requires={unit}", f"After={unit}"]
    # %I of the instance gives the package name back, so `check --package %I` sees it.
    instance = unit[len("migration-gate@") : -len(".service")]
    back = subprocess.run(
        ["systemd-escape", "--unescape", "--", instance], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert back == package
    assert units.gate_dropin_name(package) == f"50-migration-{package}.conf"


def test_gate_dropin_name_refuses_paths() -> None:
    with pytest.raises(ValueError):
        units.gate_dropin_name("../foo")


def installed_text(root: Path, rel: str) -> str:
    return (root / rel.lstrip("/")).read_text()


def system_root(root: Path, src: Path, **env: str) -> Path:
    """A root holding the host's (Debian 12) system units plus ours, enabled as systemd.bbclass
    does, and foo.service gated on package foo-bar with the drop-in text the class writes."""
    unitdir = root / UNITDIR.lstrip("/")
    shutil.copytree(UNITDIR, unitdir, symlinks=True)
    res = install(root, src, **env)
    assert res.returncode == 0, res.stderr
    # migration.service's ExecCondition runs /bin/sh (verify checks that it exists in root).
    (root / "bin").mkdir()
    shutil.copy2("/bin/sh", root / "bin/sh")
    service = unitdir / "foo.service"
    service.write_text(
        "[Service]\nType=oneshot\nExecStart=/usr/sbin/migration status\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    dropin = unitdir / "foo.service.d" / units.gate_dropin_name("foo-bar")
    dropin.parent.mkdir()
    dropin.write_text(units.gate_dropin("foo-bar"))
    subprocess.run(
        ["systemctl", f"--root={root}", "enable", "migration.service", "foo.service"],
        capture_output=True,
        check=True,
    )
    return root


VERIFIED = [
    f"{UNITDIR[1:]}/migration.service",
    f"{UNITDIR[1:]}/{units.gate_unit('foo-bar')}",
    f"{UNITDIR[1:]}/foo.service",
    f"{UNITDIR[1:]}/sysinit.target",
    f"{UNITDIR[1:]}/multi-user.target",
]


@pytest.mark.parametrize("policy", ["continue", "rescue", "halt"])
def test_install_systemd_units_verify_clean(tmp_path: Path, stub_src: Path, policy: str) -> None:
    """No warning, no ordering cycle in a boot transaction with Debian's own units."""
    root = system_root(tmp_path / "root", stub_src, MIGRATION_BOOT_POLICY=policy)
    assert (root / "etc/systemd/system/sysinit.target.wants/migration.service").is_symlink()
    res = verify(root, *VERIFIED)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert not (root / "etc/init.d/migration").exists()


def test_verify_catches_an_ordering_cycle(tmp_path: Path, stub_src: Path) -> None:
    """The verify check above can fail: ordering the unit after sysinit.target is a cycle."""
    root = system_root(tmp_path / "root", stub_src)
    extra = root / UNITDIR.lstrip("/") / "migration.service.d" / "99-test.conf"
    extra.write_text("[Unit]\nAfter=sysinit.target\n")
    res = verify(root, *VERIFIED)
    assert res.returncode != 0
    assert "ordering cycle on migration.service/start" in res.stderr


def test_verify_catches_a_missing_command(tmp_path: Path, stub_src: Path) -> None:
    """Without the wrapper, systemd-analyze verify reports migration.service's ExecStart=."""
    root = tmp_path / "root"
    assert install(root, stub_src).returncode == 0
    (root / "usr/sbin/migration").unlink()
    res = verify(root, f"{UNITDIR[1:]}/migration.service")
    assert res.returncode != 0
    assert "/usr/sbin/migration" in res.stderr


def test_install_places_every_file(tmp_path: Path, pkg_src: Path) -> None:
    root = tmp_path / "root"
    res = install(root, pkg_src, MIGRATION_INIT="systemd sysvinit", MIGRATION_BOOT_TIMEOUT="90")
    assert res.returncode == 0, res.stderr
    assert (root / "etc/migration.d").is_dir()
    assert (root / "usr/share/migration/packages").is_dir()
    sources = {p.relative_to(pkg_src) for p in pkg_src.rglob("*.py")}
    copied = {p.relative_to(root / "usr/lib/migration/migration") for p in root.rglob("*.py")}
    assert copied == sources - {Path("bitbake.py"), Path("tasksources.py")}  # build-only
    assert not list(root.rglob("__pycache__"))
    wrapper = root / "usr/sbin/migration"
    assert wrapper.stat().st_mode & 0o777 == 0o755
    assert installed_text(root, "/usr/sbin/migration").startswith("#!/usr/bin/python3 -I\n")
    assert "/usr/lib/migration" in installed_text(root, "/usr/sbin/migration")
    for rel in (
        "/usr/sbin/migration",
        f"{UNITDIR}/migration.service",
        f"{UNITDIR}/migration-gate@.service",
        f"{UNITDIR}/migration.service.d/50-boot-policy.conf",
        "/etc/init.d/migration",
    ):
        assert not re.search(r"@[A-Z_]+@", installed_text(root, rel)), rel
    dropin = installed_text(root, f"{UNITDIR}/migration.service.d/50-boot-policy.conf")
    assert ('Environment="MIGRATION_RUN_ARGS=--policy continue --timeout 90 --volatile-state warn"'
            in dropin)
    assert "OnFailure" not in dropin
    init = installed_text(root, "/etc/init.d/migration")
    assert '[ -e "/usr/share/migration/done" ] && exit 0' in init
    assert subprocess.run(["sh", "-n", str(root / "etc/init.d/migration")]).returncode == 0
    # The installed package copy is complete: the command runs from it.
    res = subprocess.run(
        [sys.executable, "-m", "migration", "--help"],
        env={"PYTHONPATH": str(root / "usr/lib/migration"), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "run" in res.stdout


def test_install_ships_the_monitoring_files(tmp_path: Path, stub_src: Path) -> None:
    """Issue 12: the journal catalog (systemd only; journalctl reads it) and the Mender
    inventory script, runnable, its placeholder replaced."""
    from migration import journal

    root = tmp_path / "root"
    assert install(root, stub_src).returncode == 0
    catalog = root / "usr/lib/systemd/catalog/migration.catalog"
    assert catalog.stat().st_mode & 0o777 == 0o644
    ids = re.findall(r"^-- ([0-9a-f]{32})$", catalog.read_text(), re.M)
    every_id = {v for k, v in vars(journal).items() if k.isupper() and re.fullmatch(
        r"[0-9a-f]{32}", str(v))}  # fmt: skip
    assert sorted(ids) == sorted(every_id)
    subprocess.run(["journalctl", f"--root={root}", "--update-catalog"], check=True)
    listed = subprocess.run(["journalctl", f"--root={root}", "--list-catalog"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert all(f"{i} meta-migration: " in listed for i in ids)
    assert "Migration @MIGRATION_NAME@ failed" in listed
    script = root / "usr/share/mender/inventory/mender-inventory-migration"
    assert script.stat().st_mode & 0o777 == 0o755
    text = script.read_text()
    assert "/usr/sbin/migration status --format mender-inventory" in text
    assert not re.search(r"@[A-Z_]+@", text)
    sysv = tmp_path / "sysv"
    assert install(sysv, stub_src, MIGRATION_INIT="sysvinit").returncode == 0
    assert not (sysv / "usr/lib/systemd").exists()
    assert (sysv / "usr/share/mender/inventory/mender-inventory-migration").exists()


def test_prometheus_textfile_setting_reaches_both_inits(tmp_path: Path, stub_src: Path) -> None:
    root = tmp_path / "root"
    res = install(root, stub_src, MIGRATION_INIT="sysvinit systemd",
                  MIGRATION_PROMETHEUS_TEXTFILE="/var/lib/node_exporter/migration.prom")
    assert res.returncode == 0, res.stderr
    args = ("--policy continue --timeout 900 --volatile-state warn "
            "--prometheus-textfile /var/lib/node_exporter/migration.prom")
    text = installed_text(root, f"{UNITDIR}/migration.service.d/50-boot-policy.conf")
    assert f'Environment="MIGRATION_RUN_ARGS={args}"' in text
    assert f'run_args="{args}"' in installed_text(root, "/etc/init.d/migration")
    from migration import cli

    parsed = cli.build_parser("run").parse_args(["run", *args.split()])
    assert parsed.prometheus_textfile == "/var/lib/node_exporter/migration.prom"


@pytest.mark.parametrize(
    ("policy", "on_failure", "job_mode", "run_args"),
    [
        ("continue", None, None, "--policy continue"),
        ("rescue", "emergency.target", "isolate", "--policy continue"),
        ("halt", "halt.target", "replace-irreversibly", "--policy stop"),
    ],
)
def test_policy_dropin(
    tmp_path: Path,
    policy: str,
    on_failure: Optional[str],
    job_mode: Optional[str],
    run_args: str,
    stub_src: Path,
) -> None:
    root = tmp_path / "root"
    res = install(root, stub_src, MIGRATION_BOOT_POLICY=policy, MIGRATION_INIT="sysvinit systemd")
    assert res.returncode == 0, res.stderr
    text = installed_text(root, f"{UNITDIR}/migration.service.d/50-boot-policy.conf")
    settings = dict(
        ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.startswith("#")
    )
    assert settings.get("OnFailure") == on_failure
    assert settings.get("OnFailureJobMode") == job_mode
    run_args += " --timeout 900 --volatile-state warn"
    assert settings["Environment"] == f'"MIGRATION_RUN_ARGS={run_args}"'
    assert f'policy="{policy}"' in installed_text(root, "/etc/init.d/migration")
    assert f'run_args="{run_args}"' in installed_text(root, "/etc/init.d/migration")


def _unit_settings(path: Path) -> Dict[str, list]:
    out: Dict[str, list] = {}
    for ln in path.read_text().splitlines():
        key, sep, value = ln.partition("=")
        if sep and not ln.startswith("#"):
            out.setdefault(key, []).append(value)
    return out


def pulled_in(root: Path, unit: str) -> set:
    """What starting `unit` pulls in (Requires=, Wants=, .wants/ and .requires/ dirs, and
    sysinit.target for a service with default dependencies), transitively, in root."""
    unitdir = root / UNITDIR.lstrip("/")
    pulled = {unit}
    todo = [unit]
    while todo:
        name = todo.pop()
        settings = _unit_settings(unitdir / name)
        deps = [d for key in ("Requires", "Wants")
                for v in settings.get(key, []) for d in v.split()]
        for sub in (f"{name}.wants", f"{name}.requires"):
            for where in (unitdir, root / "etc/systemd/system"):
                if (where / sub).is_dir():
                    deps += [p.name for p in (where / sub).iterdir()]
        if name.endswith(".service") and settings.get("DefaultDependencies") != ["no"]:
            deps.append("sysinit.target")
        for dep in deps:
            if dep not in pulled and (unitdir / dep).is_file():
                pulled.add(dep)
                todo.append(dep)
    return pulled


def test_rescue_policy_never_starts_the_failed_migration_again(
    tmp_path: Path, stub_src: Path
) -> None:
    """Issue 14: the target isolated on failure must not pull in sysinit.target, which wants
    migration.service (isolating rescue.target ran a failed migration 5 times in one boot).
    emergency.target pulls in only emergency.service, which has no default dependencies."""
    root = system_root(tmp_path / "root", stub_src, MIGRATION_BOOT_POLICY="rescue")
    dropin = root / UNITDIR.lstrip("/") / "migration.service.d" / "50-boot-policy.conf"
    target = _unit_settings(dropin)["OnFailure"][0]
    assert pulled_in(root, target) == {"emergency.target", "emergency.service"}
    # The check can fail: the old target pulls migration.service back in.
    assert "migration.service" in pulled_in(root, "rescue.target")


@pytest.mark.parametrize(
    ("timeout", "run_args"),
    [(None, "--policy continue --timeout 900"), ("", "--policy continue --timeout 900"),
     ("0", "--policy continue"), ("3600", "--policy continue --timeout 3600")],
)
def test_boot_timeout_is_finite_by_default(
    tmp_path: Path, stub_src: Path, timeout: Optional[str], run_args: str
) -> None:
    """Issue 14: a hung script must not block the boot for good; 0 still means no limit."""
    root = tmp_path / "root"
    env = {"MIGRATION_INIT": "sysvinit systemd"}
    if timeout is not None:
        env["MIGRATION_BOOT_TIMEOUT"] = timeout
    res = install(root, stub_src, **env)
    assert res.returncode == 0, res.stderr
    text = installed_text(root, f"{UNITDIR}/migration.service.d/50-boot-policy.conf")
    assert f'Environment="MIGRATION_RUN_ARGS={run_args} --volatile-state warn"' in text
    assert f'run_args="{run_args} --volatile-state warn"' in installed_text(
        root, "/etc/init.d/migration")


@pytest.mark.parametrize("setting", ["warn", "refuse"])
def test_volatile_state_setting_reaches_both_inits(
    tmp_path: Path, stub_src: Path, setting: str
) -> None:
    """Issue 14: MIGRATION_VOLATILE_STATE becomes the runner's --volatile-state at boot."""
    root = tmp_path / "root"
    res = install(root, stub_src, MIGRATION_INIT="sysvinit systemd",
                  MIGRATION_VOLATILE_STATE=setting)
    assert res.returncode == 0, res.stderr
    args = f"--policy continue --timeout 900 --volatile-state {setting}"
    text = installed_text(root, f"{UNITDIR}/migration.service.d/50-boot-policy.conf")
    assert f'Environment="MIGRATION_RUN_ARGS={args}"' in text
    assert f'run_args="{args}"' in installed_text(root, "/etc/init.d/migration")
    # The fast path of a no-op boot reads these arguments as argparse would (noop.parse_run_argv).
    from migration import noop

    parsed = noop.parse_run_argv(["run", *args.split()])
    assert parsed is not None and parsed[1]["--volatile-state"] == setting


def test_state_dir_home_is_mounted_after_volatile_binds(tmp_path: Path, stub_src: Path) -> None:
    """Issue 14: a mount at /var/lib/migration (README's persistent home on a read-only root) is
    ordered after volatile-binds' /var/lib service; mounted first, the overlay or bind over
    /var/lib hid it (tests/boot/test_boot_readonly.py boots it)."""
    root = tmp_path / "root"
    assert install(root, stub_src).returncode == 0
    mount = subprocess.run(
        ["systemd-escape", "--path", "--suffix=mount", "/var/lib/migration"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # volatile-binds.bb names a VOLATILE_BINDS line's unit after its source: /var/volatile/lib.
    binds = "/var/volatile/lib"[1:].replace("/", "-") + ".service"
    dropin = root / UNITDIR.lstrip("/") / f"{mount}.d" / "50-after-volatile-binds.conf"
    assert _unit_settings(dropin) == {"After": [binds]}
    assert dropin.stat().st_mode & 0o777 == 0o644
    assert not list((root / UNITDIR.lstrip("/")).glob("*.mount"))  # a drop-in only
    sysv = tmp_path / "sysv"
    assert install(sysv, stub_src, MIGRATION_INIT="sysvinit").returncode == 0
    assert not (sysv / UNITDIR.lstrip("/")).exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MIGRATION_BOOT_POLICY": "reboot"}, "MIGRATION_BOOT_POLICY=reboot"),
        ({"MIGRATION_INIT": "openrc"}, "unknown init manager 'openrc'"),
        ({"MIGRATION_BOOT_TIMEOUT": "5m"}, "MIGRATION_BOOT_TIMEOUT=5m"),
        ({"MIGRATION_VOLATILE_STATE": "ignore"}, "MIGRATION_VOLATILE_STATE=ignore"),
        ({"sysconfdir": "/usr/etc"}, "sysconfdir=/usr/etc"),
        ({"MIGRATION_PYTHON": "python3"}, "MIGRATION_PYTHON=python3"),
        ({"D": ""}, "D (the destination root) is not set"),
        ({"MIGRATION_PROMETHEUS_TEXTFILE": "x.prom"}, "MIGRATION_PROMETHEUS_TEXTFILE=x.prom"),
        ({"MIGRATION_PROMETHEUS_TEXTFILE": "/a b.prom"}, "MIGRATION_PROMETHEUS_TEXTFILE=/a b"),
    ],
)
def test_install_refuses_bad_settings(
    tmp_path: Path, stub_src: Path, env: Dict[str, str], message: str
) -> None:
    root = tmp_path / "root"
    res = install(root, stub_src, **env)
    assert res.returncode == 2
    assert message in res.stderr
    assert not (root / "usr").exists()


def pyc_files(root: Path) -> Dict[str, bytes]:
    pkg = root / "usr/lib/migration/migration"
    return {str(p.relative_to(pkg)): p.read_bytes() for p in sorted(pkg.rglob("*.pyc"))}


def test_install_ships_reproducible_bytecode_the_target_never_checks(
    tmp_path: Path, pkg_src: Path
) -> None:
    """Issue 9: with MIGRATION_COMPILE (the recipe: python3-native, the target's version) every
    module gets bytecode of that version, hash-based and unchecked (PEP 552: flags 0b01), so the
    target neither stats the sources nor compiles, even on a read-only root; the same sources
    give the same bytes; tracebacks name the target's paths."""
    import importlib.util
    import marshal

    first, second = tmp_path / "one", tmp_path / "two"
    for root in (first, second):
        res = install(root, pkg_src, MIGRATION_COMPILE=sys.executable)
        assert res.returncode == 0, res.stderr
    pycs = pyc_files(first)
    tag = sys.implementation.cache_tag
    sources = {p.relative_to(pkg_src) for p in pkg_src.rglob("*.py")}
    sources -= {Path("bitbake.py"), Path("tasksources.py")}  # build-only, not installed
    assert set(pycs) == {str(s.parent / "__pycache__" / f"{s.stem}.{tag}.pyc") for s in sources}
    assert pyc_files(second) == pycs  # reproducible
    for rel, data in pycs.items():
        assert data[:4] == importlib.util.MAGIC_NUMBER, rel
        assert int.from_bytes(data[4:8], "little") == 0b01, f"{rel}: not unchecked-hash"
        code = marshal.loads(data[16:])
        assert code.co_filename.startswith("/usr/lib/migration/migration/"), code.co_filename
    # The installed tree runs from its bytecode: with the sources made unreadable garbage of the
    # same name, the package still imports (an unchecked pyc is never compared with its source).
    for src in (first / "usr/lib/migration/migration").rglob("*.py"):
        src.write_text("raise SystemExit('the source was compiled, not the shipped bytecode')\n")
    res = subprocess.run([sys.executable, "-I", str(first / "usr/sbin/migration"), "--version"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0 and res.stdout.startswith("migration "), res.stdout + res.stderr


def test_install_without_a_compiler_ships_no_bytecode(tmp_path: Path, pkg_src: Path) -> None:
    root = tmp_path / "root"
    assert install(root, pkg_src).returncode == 0
    assert pyc_files(root) == {}
    res = install(root, pkg_src, MIGRATION_COMPILE="python3")
    assert res.returncode == 2 and "MIGRATION_COMPILE=python3 is not an absolute path" in res.stderr


def test_install_refuses_a_directory_that_is_not_the_package(tmp_path: Path) -> None:
    res = install(tmp_path / "root", tmp_path)
    assert res.returncode == 2
    assert "not the migration Python package" in res.stderr


def imported_modules(*cmd: str, cwd: Optional[Path] = None) -> "set[str]":
    """The modules a python3 -X importtime command line imports (its stderr), checked to exit 0."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True, check=False,
        cwd=cwd,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return {
        ln.rsplit("|", 1)[1].strip()
        for ln in res.stderr.splitlines()
        if ln.startswith("import time:") and "|" in ln and "imported package" not in ln
    }


def two_trees(tmp_path: Path, pkg_src: Path) -> "tuple[Path, Path]":
    """Two roots, each with the runner installed by migration-install.sh; the second one's
    package says a different version, so the output tells which package ran."""
    old, new = tmp_path / "old", tmp_path / "mnt" / "new"
    assert install(old, pkg_src).returncode == 0
    init = pkg_src / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', '__version__ = "99.0-new-tree"',
                           init.read_text()))  # fmt: skip
    assert install(new, pkg_src).returncode == 0
    return old, new


def version_of(wrapper: str, cwd: Optional[Path] = None) -> str:
    res = subprocess.run([sys.executable, "-I", wrapper, "--version"], capture_output=True,
                         text=True, check=False, cwd=cwd)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_wrapper_runs_the_package_of_its_own_tree(tmp_path: Path, pkg_src: Path) -> None:
    """What an updater relies on: NEWROOT/usr/sbin/migration runs NEWROOT's runner, whatever
    runner the running system has (and however the command is reached)."""
    from migration import __version__

    old, new = two_trees(tmp_path, pkg_src)
    assert version_of(str(old / "usr/sbin/migration")) == f"migration {__version__}"
    assert version_of(str(new / "usr/sbin/migration")) == "migration 99.0-new-tree"
    # A relative path, and a symlink from elsewhere (e.g. /usr/bin/migration -> ../sbin/...).
    assert version_of("./migration", cwd=new / "usr/sbin") == "migration 99.0-new-tree"
    link = tmp_path / "bin" / "migration"
    link.parent.mkdir()
    link.symlink_to(new / "usr/sbin/migration")
    assert version_of(str(link)) == "migration 99.0-new-tree"
    # Executed through its shebang too (the host's python3 stands in for the image's).
    shebang = (new / "usr/sbin/migration").read_text().splitlines()[0]
    assert shebang == "#!/usr/bin/python3 -I"
    if Path("/usr/bin/python3").exists():
        res = subprocess.run([str(new / "usr/sbin/migration"), "--version"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert res.stdout.strip() == "migration 99.0-new-tree", res.stderr


def test_wrapper_adds_no_import_to_a_no_op_run(tmp_path: Path, pkg_src: Path) -> None:
    """Finding its own tree costs the no-op boot nothing: the wrapper imports exactly what
    importing migration.cli and calling main() from the interpreter's start does."""
    root = tmp_path / "root"
    assert install(root, pkg_src).returncode == 0
    script = root / "etc/migration.d/50-demo-noop.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    sys_path = str(REPO / "lib")
    sys.path.insert(0, sys_path) if sys_path not in sys.path else None
    from migration import manifest

    frag = manifest.fragment("demo", "1.0-r0", [
        {"name": script.name, "sha256": hashlib.sha256(script.read_bytes()).hexdigest()},
    ])  # fmt: skip
    manifest.write_json_atomic(str(root / "usr/share/migration/packages/demo.json"), frag)
    manifest.generate(str(root))
    wrapper = str(root / "usr/sbin/migration")
    argv = ["--root", str(root), "run"]
    first = subprocess.run([sys.executable, "-I", wrapper, *argv], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert (root / "var/lib/migration/noop-key").is_file()
    via_wrapper = imported_modules("-I", wrapper, *argv)
    direct = imported_modules(
        "-I", "-c",
        "import sys; sys.path.insert(0, sys.argv.pop(1)); from migration.cli import main; "
        "sys.exit(main())",
        str(root / "usr/lib/migration"), *argv,
    )  # fmt: skip
    assert "migration.noop" in via_wrapper
    assert "migration.runner" not in via_wrapper
    assert via_wrapper == direct
