# SPDX-License-Identifier: MIT
"""Issue 14 in real QEMU boots: a package manager upgrades packages on the running device.

The device is the Debian 12 test system; dpkg is its package manager. The packages are .deb
files built on the host with dpkg-deb, laid out as OE's package_deb writes them: the files
the class installs (script in /etc/migration.d, the fragment, the gating drop-in), a unit and
its preset, and the maintainer scripts OE generates: the postinst is migration.bbclass's
`migration_postinst` (read from classes/migration.bbclass, expanded like BitBake does) followed
by systemd.bbclass's `systemd_postinst` expanded for SYSTEMD_SERVICE = "foo.service" (the
fixture below); the prerm is package_deb's upgrade guard and `systemd_prerm`.

The image carries package `base`, whose migration fails at every run: so at each boot the gate
of foo really runs its check and stays active (RemainAfterExit=yes) for the rest of the boot,
the case where a restart of foo would not check it again. Two boots:

1. `dpkg -i foo_1` on the running system: its migration applied, foo started;
2. foo runs since boot; `dpkg -i foo_2` (new migration, changed foo.service): the migration runs
   with foo stopped, then foo v2 starts and sees migrated data; `dpkg -i foo_3`, whose migration
   fails: dpkg reports the failure, foo stays stopped, data and records intact; the runner's own
   package is upgraded (`dpkg -i migration_2`, systemd.bbclass restarts migration.service): no
   migration runs; the cause is fixed and `dpkg --configure -a` retries: applied, foo v3 runs.
"""

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Dict, List

import bootharness as h
import pytest

sys.path.insert(0, str(h.LIB))
from migration import manifest, units

pytestmark = pytest.mark.boot

REPO = Path(__file__).resolve().parents[2]
T = "/var/lib/pkgtest"

# systemd_postinst of openembedded-core meta/classes-recipe/systemd.bbclass (wrynose), expanded
# for SYSTEMD_SERVICE:<pkg> = "@SERVICE@" (a system unit, no user unit) and
# SYSTEMD_AUTO_ENABLE = "enable": what package_deb writes into the postinst after our snippet.
SYSTEMD_POSTINST = """
if type systemctl >/dev/null 2>/dev/null; then
	OPTS=""

	if [ -n "$D" ]; then
		OPTS="--root=$D"
	fi

	if [ "enable" = "enable" ]; then
		for service in @SERVICE@; do
			systemctl ${OPTS} enable "$service"
		done

		for service in ; do
			systemctl --global ${OPTS} enable "$service"
		done
	fi

	if [ -z "$D" ] && systemctl >/dev/null 2>/dev/null; then
		# Reload only system service manager
		# --global for daemon-reload is not supported: https://github.com/systemd/systemd/issues/19284
		systemctl daemon-reload
		[ -n "@SERVICE@" ] && \\
			systemctl preset @SERVICE@

		[ -n "" ] && \\
			systemctl --global preset

		if [ "enable" = "enable" ]; then
			# --global flag for restart is not supported by systemd (see above)
			[ -n "@SERVICE@" ] && \\
				systemctl --no-block restart @SERVICE@
		fi
	fi
fi
"""

# systemd_prerm, same file and settings; package_deb puts its upgrade guard first.
SYSTEMD_PRERM = """
if type systemctl >/dev/null 2>/dev/null; then
	if [ -z "$D" ] && systemctl >/dev/null 2>/dev/null; then
		if [ -n "@SERVICE@" ]; then
			systemctl stop @SERVICE@
			systemctl disable @SERVICE@
		fi

		# same as above, --global flag is not supported for stop so do disable only
		if [ -n "" ]; then
			systemctl --global disable
		fi
	fi
fi
"""
DEB_PRERM_GUARD = '[ "$1" != "upgrade" ] || exit 0\n'


def class_function(name: str) -> str:
    """The body of a shell function of classes/migration.bbclass, as d.getVar returns it."""
    text = (REPO / "classes/migration.bbclass").read_text()
    m = re.search(rf"^{name}\(\) \{{\n(.*?)^\}}$", text, re.M | re.S)
    assert m, f"no shell function {name} in migration.bbclass"
    out = m.group(1)
    for var, value in (("sbindir", "/usr/sbin"), ("MIGRATION_POSTINST_PACKAGE", "foo")):
        out = out.replace("${" + var + "}", value)
    assert "${" not in out, out
    return out


def maintainer_script(*parts: str, prerm: bool = False) -> str:
    """A script as package_deb writes it: #!/bin/sh, the upgrade guard of prerm, the text."""
    text = "".join(parts).strip()
    return "#!/bin/sh\n" + (DEB_PRERM_GUARD if prerm else "") + text + "\n"


def migration(tag: str, body: str) -> str:
    """foo's migration: logs whether foo runs while it does, then converts the data."""
    return (
        f"#!/bin/sh\nset -eu\n# {tag}\nmkdir -p {T} /var/lib/foo\n"
        f'echo "migrate {tag} foo=$(systemctl is-active foo.service) $MIGRATION_PHASE" >>{T}/log\n'
        + body
    )


MIGRATIONS = {
    "one.sh": migration("one", "echo 1 >/var/lib/foo/format\n"),
    "two.sh": migration("two", "echo 2 >/var/lib/foo/format\n"),
    # Fails until the cause is fixed (the file `fix`), before it changes anything.
    "three.sh": migration("three", f"[ -e {T}/fix ] || exit 7\necho 3 >/var/lib/foo/format\n"),
}


def foo_unit(version: int) -> str:
    """foo.service of version N: records the data format it finds when it starts."""
    return f"""[Unit]
Description=foo {version}

[Service]
ExecStartPre=/bin/sh -c 'echo "start v{version} data=$$(cat /var/lib/foo/format)" >>{T}/log'
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def build_deb(dest: Path, name: str, version: str, files: Dict[str, tuple], scripts: Dict[str, str]
              ) -> Path:  # fmt: skip
    staging = dest / f"{name}_{version}"
    for rel, (data, mode) in files.items():
        path = staging / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        path.chmod(mode)
    control = staging / "DEBIAN"
    control.mkdir(parents=True, exist_ok=True)
    (control / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: meta-migration tests <tests@example.invalid>\nDescription: test package\n"
    )
    for script, text in scripts.items():
        (control / script).write_text(text)
        (control / script).chmod(0o755)
    deb = dest / f"{name}_{version}.deb"
    h.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(staging), str(deb)])
    return deb


def foo_deb(dest: Path, version: int, scripts: List[str]) -> Path:
    """foo N: recipe `foo` with inherit systemd migration, MIGRATION_BEFORE = "foo.service"."""
    files: Dict[str, tuple] = {
        "/lib/systemd/system/foo.service": (foo_unit(version), 0o644),
        f"/lib/systemd/system/foo.service.d/{units.gate_dropin_name('foo')}": (
            units.gate_dropin("foo"),
            0o644,
        ),
        "/lib/systemd/system-preset/98-foo.preset": ("enable foo.service\n", 0o644),
    }
    entries = []
    for s in scripts:
        installed = f"50-foo-{s}"
        files[f"/etc/migration.d/{installed}"] = (MIGRATIONS[s], 0o755)
        digest = hashlib.sha256(MIGRATIONS[s].encode()).hexdigest()
        entries.append({"name": installed, "sha256": digest})
    files["/usr/share/migration/packages/foo.json"] = (
        json.dumps(manifest.fragment("foo", f"{version}.0-r0", entries)),
        0o644,
    )
    service = "foo.service"
    return build_deb(dest, "foo", f"{version}.0", files, {
        "postinst": maintainer_script(class_function("migration_postinst"),
                                      SYSTEMD_POSTINST.replace("@SERVICE@", service)),
        "prerm": maintainer_script(SYSTEMD_PRERM.replace("@SERVICE@", service), prerm=True),
    })  # fmt: skip


def runner_deb(dest: Path, tree: Path) -> Path:
    """migration 2: the runner recipe's files (its do_install: migration-install.sh) and, as
    it inherits systemd with SYSTEMD_SERVICE = "migration.service", a postinst that restarts
    migration.service."""
    staging = dest / "runner-files"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "D": str(staging),
        "MIGRATION_PYTHON": "/usr/bin/python3",
        "MIGRATION_INIT": "systemd",
        "MIGRATION_COMPILE": h.guest_python(tree),
    }
    h.run(["sh", str(h.INSTALL), str(h.LIB / "migration"), str(h.FILES)], env=env)
    (staging / "etc/migration/incompatible.d/50-request-wipe").unlink()  # another package
    files = {
        "/" + str(p.relative_to(staging)): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in staging.rglob("*")
        if p.is_file()
    }
    service = "migration.service"
    return build_deb(dest, "migration", "2.0", files, {
        "postinst": maintainer_script(SYSTEMD_POSTINST.replace("@SERVICE@", service)),
        "prerm": maintainer_script(SYSTEMD_PRERM.replace("@SERVICE@", service), prerm=True),
    })  # fmt: skip


# Package `base` of the image: its migration fails at every run (no gated service).
BASE_BAD = h.Script("base", "broken.sh", "#!/bin/sh\nset -eu\necho base is broken >&2\nexit 1\n",
                    priority="40")  # fmt: skip

# What an admin or an updater does on the running device; every step leaves its output, exit
# status and what it saw in /var/lib/harness (read by the host from the /var disk).
COMMAND = r"""#!/bin/sh
out=/var/lib/harness
T=/var/lib/pkgtest
mkdir -p "$T"
# Until systemd has no job left: the restarts are queued with --no-block.
settle() {
	n=0
	while [ -n "$(systemctl list-jobs --no-legend 2>/dev/null)" ] && [ "$n" -lt 120 ]; do
		sleep 0.5
		n=$((n + 1))
	done
}
# step NAME COMMAND...: run it, keep its output and status, then what the device looks like.
step() {
	name=$1
	shift
	echo "== $name" >>"$T/log"
	"$@" >"$out/$name.out" 2>&1
	echo $? >"$out/$name.rc"
	settle
	{
		echo "foo=$(systemctl is-active foo.service)"
		echo "gate=$(systemctl is-active migration-gate@foo.service)"
		echo "dpkg=$(dpkg-query -W -f='${Status}' foo 2>/dev/null)"
		echo "data=$(cat /var/lib/foo/format 2>/dev/null)"
		# What package postinsts stopped and will start again once its migrations are applied
		echo "stopped=$(ls /run/migration/stopped 2>/dev/null | xargs)"
	} >"$out/$name.seen"
	/usr/sbin/migration status --json >"$out/$name.status.json" 2>/dev/null
	systemctl show -p ActiveState -p Result -p ExecMainPID migration.service >"$out/$name.unit"
}
if [ ! -e "$T/boot1" ]; then
	touch "$T/boot1"
	step install-v1 dpkg -i /opt/pkgs/foo_1.0.deb
	exit 0
fi
step boot2 true
step upgrade-v2 dpkg -i /opt/pkgs/foo_2.0.deb
step upgrade-v3 dpkg -i /opt/pkgs/foo_3.0.deb
step upgrade-runner dpkg -i /opt/pkgs/migration_2.0.deb
touch "$T/fix"
step retry dpkg --configure -a
cp "$T/log" "$out/log"
"""


@pytest.fixture(scope="module")
def device(base: h.Base, boot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two boots of one device; each returns the guest's report."""
    system = h.new_system(base, boot_root / "pkgup", [BASE_BAD],
                          extra={"/usr/local/sbin/harness-command": (COMMAND, 0o755)})  # fmt: skip
    debs = tmp_path_factory.mktemp("debs")
    pkgs = system.tree / "opt/pkgs"
    pkgs.mkdir(parents=True)
    built = [
        foo_deb(debs, 1, ["one.sh"]),
        foo_deb(debs, 2, ["one.sh", "two.sh"]),
        foo_deb(debs, 3, ["one.sh", "two.sh", "three.sh"]),
        runner_deb(debs, system.tree),
    ]
    for deb in built:
        (pkgs / deb.name).write_bytes(deb.read_bytes())
    h.make_ext4(system.tree, system.root_img, 400, "root")
    reports = []
    for _ in range(2):
        h.clear_report(system)
        h.boot(system, timeout=900)
        reports.append(h.read_report(system))
    return {"boot1": reports[0], "boot2": reports[1]}


def seen(report: h.Report, step: str) -> Dict[str, str]:
    return dict(ln.split("=", 1) for ln in report.files[f"{step}.seen"].splitlines() if "=" in ln)


def status(report: h.Report, step: str) -> Dict[str, dict]:
    return {e["name"]: e for e in json.loads(report.files[f"{step}.status.json"])}


def log_after(report: h.Report, step: str) -> List[str]:
    """The lines migrations and foo's starts wrote during `step`."""
    lines = report.files["log"].splitlines()
    start = lines.index(f"== {step}")
    rest = lines[start + 1 :]
    end = next((i for i, ln in enumerate(rest) if ln.startswith("== ")), len(rest))
    return rest[:end]


def test_install_on_a_running_device_applies_then_starts(device: dict) -> None:
    r1 = device["boot1"]
    assert r1.files["install-v1.rc"].strip() == "0", r1.files["install-v1.out"]
    assert seen(r1, "install-v1")["foo"] == "active"
    assert status(r1, "install-v1")["50-foo-one.sh"]["state"] == "applied"
    # At boot, the base package's migration ran (the boot-only condition let it) and failed.
    assert status(r1, "install-v1")["40-base-broken.sh"]["state"] == "failed"


def test_upgrade_applies_the_new_migration_before_the_service_restarts(device: dict) -> None:
    r2 = device["boot2"]
    # foo ran since boot behind a gate that ran its check at boot (base failed: no done stamp).
    assert seen(r2, "boot2") == {"foo": "active", "gate": "active", "dpkg": "install ok installed",
                                 "data": "1", "stopped": ""}  # fmt: skip
    # base's migration ran at both boots (attempts 1 and 3; 2 was v1's postinst): the boot-only
    # condition of migration.service lets a boot run.
    assert status(r2, "boot2")["40-base-broken.sh"]["attempts"] == 3
    assert r2.files["upgrade-v2.rc"].strip() == "0", r2.files["upgrade-v2.out"]
    # The migration ran with foo stopped, then foo v2 started on the migrated data.
    # (Started twice: once by `migration postinst`, which restores what it stopped, once by
    # systemd.bbclass's restart; both after the migration.)
    first, *starts = log_after(r2, "upgrade-v2")
    assert first == "migrate two foo=inactive package"
    assert starts and set(starts) == {"start v2 data=2"}
    assert seen(r2, "upgrade-v2")["foo"] == "active"
    st = status(r2, "upgrade-v2")
    assert st["50-foo-two.sh"]["state"] == "applied"
    # Another package's failure does not fail foo's postinst (it is retried, in order).
    assert st["40-base-broken.sh"]["state"] == "failed"


def test_failed_migration_keeps_the_service_stopped_and_dpkg_says_so(device: dict) -> None:
    r2 = device["boot2"]
    assert r2.files["upgrade-v3.rc"].strip() != "0"
    out = r2.files["upgrade-v3.out"]
    assert "50-foo-three.sh" in out and "foo.service" in out and "migration status" in out
    # No start of foo v3 on data it cannot read; the package is not configured.
    assert log_after(r2, "upgrade-v3") == ["migrate three foo=inactive package"]
    assert seen(r2, "upgrade-v3") == {
        "foo": "inactive", "gate": "failed", "dpkg": "install ok half-configured", "data": "2",
        "stopped": "foo.service",  # written down for the retry to start again
    }  # fmt: skip
    assert "foo.service stays stopped until the migrations of package foo" in out
    row = status(r2, "upgrade-v3")["50-foo-three.sh"]
    assert (row["state"], row["exit_code"]) == ("failed", 7)
    assert "50-foo-three.sh" in r2.journal  # the gate's check, in the journal


def test_upgrading_the_runner_runs_no_migration_live(device: dict) -> None:
    r2 = device["boot2"]
    assert r2.files["upgrade-runner.rc"].strip() == "0", r2.files["upgrade-runner.out"]
    before, after = status(r2, "upgrade-v3"), status(r2, "upgrade-runner")
    assert {n: e.get("attempts") for n, e in after.items()} == {
        n: e.get("attempts") for n, e in before.items()
    }
    assert log_after(r2, "upgrade-runner") == []
    unit_props = dict(ln.split("=", 1) for ln in r2.files["upgrade-runner.unit"].splitlines())
    # systemd.bbclass's restart happened and was skipped by the boot-only condition.
    assert (unit_props["ActiveState"], unit_props["Result"]) == ("inactive", "exec-condition")
    assert seen(r2, "upgrade-runner")["foo"] == "inactive"


def test_retry_after_the_fix_applies_and_starts_the_service(device: dict) -> None:
    r2 = device["boot2"]
    assert r2.files["retry.rc"].strip() == "0", r2.files["retry.out"]
    # foo, which the failed run stopped, started by `migration postinst` (what that run wrote
    # down) and by systemd.bbclass's restart: once or twice, on migrated data either way.
    first, *starts = log_after(r2, "retry")
    assert first == "migrate three foo=inactive package"
    assert starts and set(starts) == {"start v3 data=3"}
    assert "starting foo.service again" in r2.files["retry.out"]
    # The gate ran its check (base's failure leaves no done stamp) and passed.
    assert seen(r2, "retry") == {"foo": "active", "gate": "active",
                                 "dpkg": "install ok installed", "data": "3",
                                 "stopped": ""}  # fmt: skip
    row = status(r2, "retry")["50-foo-three.sh"]
    assert (row["state"], row["attempts"]) == ("applied", 2)
