# SPDX-License-Identifier: MIT
"""`migration postinst --package PKG`: what a migration package's postinst runs on a running
target (package manager, not rootfs time), before systemd.bbclass's part of the same postinst
restarts the package's services.

systemd is faked: ROOT/run/systemd/system exists (what sd_booted() looks at) and a `systemctl`
first on PATH records every call and keeps unit states as files, so the order of stops, runs
and starts is checked exactly. The real thing runs in tests/boot/test_boot_package_upgrade.py.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import tools

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "lib"
sys.path.insert(0, str(LIB))

from migration import units  # noqa: E402

FAKE_SYSTEMCTL = r"""#!/bin/sh
# A systemd stand-in: units are files in $FAKE/active (active) and $FAKE/requiredby/UNIT (the
# units whose Requires= name UNIT); every call is logged.
echo "$*" >>"$FAKE/calls"
case "$1" in
daemon-reload) exit 0 ;;
show)
	# show --property=RequiredBy --value UNIT
	f="$FAKE/requiredby/$4"
	[ -f "$f" ] && tr '\n' ' ' <"$f"
	echo
	exit 0 ;;
is-active)
	shift
	rc=0
	for u in "$@"; do
		if [ -e "$FAKE/active/$u" ]; then echo active; else echo inactive; rc=3; fi
	done
	exit $rc ;;
stop)
	# Stopping a unit stops the units that require it (systemd's Requires= propagation).
	if [ -f "$FAKE/requiredby/$2" ]; then
		while read -r u; do rm -f "$FAKE/active/$u"; done <"$FAKE/requiredby/$2"
	fi
	rm -f "$FAKE/active/$2"
	exit 0 ;;
start)
	shift
	[ "$1" = --no-block ] && shift
	for u in "$@"; do
		case "$u" in
		migration-gate@*)
			# The gate: `migration check --package PKG` (the instance, unescaped).
			pkg=${u#migration-gate@}
			pkg=${pkg%.service}
			"$PYTHON" -m migration --root "$ROOT" check --package "$pkg" || exit 1 ;;
		esac
		touch "$FAKE/active/$u"
	done
	exit 0 ;;
esac
echo "fake systemctl: unexpected call: $*" >&2
exit 2
"""


class Device:
    """A root with a manifest, a state dir and (optionally) a running fake systemd."""

    def __init__(self, path: Path, systemd: bool = True) -> None:
        self.root = path / "root"
        self.fake = path / "fake"
        self.scripts = self.root / "etc/migration.d"
        self.scripts.mkdir(parents=True)
        self.scripts.chmod(0o755)
        (self.root / "usr/share/migration/packages").mkdir(parents=True)
        for d in ("active", "requiredby", "bin"):
            (self.fake / d).mkdir(parents=True)
        (self.fake / "calls").write_text("")
        systemctl = self.fake / "bin/systemctl"
        systemctl.write_text(FAKE_SYSTEMCTL)
        systemctl.chmod(0o755)
        if systemd:
            (self.root / "run/systemd/system").mkdir(parents=True)
        self.packages: Dict[str, List[Tuple[str, str]]] = {}

    def gate(self, service: str, package: str, active: bool = True) -> None:
        """`service` is gated on `package` (MIGRATION_BEFORE) and runs (or not)."""
        with open(self.fake / "requiredby" / units.gate_unit(package), "a") as f:
            f.write(service + "\n")
        if active:
            (self.fake / "active" / service).touch()
            (self.fake / "active" / units.gate_unit(package)).touch()

    def ship(self, package: str, name: str, text: str) -> None:
        """Install a script and the package's fragment, as the package manager unpacks them."""
        path = self.scripts / name
        path.write_text(text)
        path.chmod(0o755)
        entries = [e for e in self.packages.get(package, []) if e[0] != name]
        entries.append((name, hashlib.sha256(text.encode()).hexdigest()))
        self.packages[package] = entries
        frag = {"format": 1, "package": package, "version": "1.0-r0",
                "migrations": [{"name": n, "sha256": s} for n, s in entries]}  # fmt: skip
        (self.root / "usr/share/migration/packages" / f"{package}.json").write_text(
            json.dumps(frag)
        )

    def probe(self, service: str) -> str:
        """Script text that records whether `service` runs while the script runs."""
        return (
            "#!/bin/sh\nset -eu\n"
            f'if [ -e "{self.fake}/active/{service}" ]; then s=running; else s=stopped; fi\n'
            f'echo "$MIGRATION_NAME $MIGRATION_PHASE {service}=$s" >>"{self.fake}/seen"\n'
        )

    def __call__(self, *args: str) -> "subprocess.CompletedProcess[str]":
        env = dict(os.environ, PYTHONPATH=str(LIB), FAKE=str(self.fake), ROOT=str(self.root),
                   PYTHON=sys.executable, PATH=f"{self.fake}/bin:{os.environ['PATH']}")  # fmt: skip
        return subprocess.run([sys.executable, "-m", "migration", "--root", str(self.root), *args],
                              capture_output=True, text=True, env=env, timeout=60)  # fmt: skip

    def calls(self) -> List[str]:
        return (self.fake / "calls").read_text().splitlines()

    def seen(self) -> List[str]:
        p = self.fake / "seen"
        return p.read_text().splitlines() if p.exists() else []

    def active(self, unit: str) -> bool:
        return (self.fake / "active" / unit).exists()

    def status(self) -> Dict[str, dict]:
        proc = self("status", "--json")
        return {row["name"]: row for row in json.loads(proc.stdout)}


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path)


def first_install(device: Device) -> None:
    """v1 of foo installed and applied, foo.service running since boot behind its gate."""
    device.ship("foo", "50-foo-one.sh", "#!/bin/sh\nset -eu\ntrue\n")
    device.gate("foo.service", "foo")
    assert device("manifest").returncode == 0
    assert device("run").returncode == 0
    (device.fake / "calls").write_text("")


GATE = units.gate_unit("foo")


def test_upgrade_stops_the_gated_service_applies_then_starts_it_again(device: Device) -> None:
    first_install(device)
    device.ship("foo", "50-foo-two.sh", device.probe("foo.service"))
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    # The manifest was refreshed (the new script is known, not refused as unlisted), the
    # migration ran with the gated service stopped, in the package phase.
    assert device.seen() == ["50-foo-two.sh package foo.service=stopped"]
    assert device.status()["50-foo-two.sh"]["state"] == "applied"
    # systemd: new unit files loaded first (a new drop-in may gate another service), the gate
    # stopped (which stops what requires it), the service that ran before started again.
    assert device.calls() == [
        "daemon-reload",
        f"show --property=RequiredBy --value {GATE}",
        "is-active foo.service",
        f"stop {GATE}",
        "start --no-block foo.service",
    ]
    assert device.active("foo.service")
    assert "foo.service" in proc.stderr  # says what it stopped and started


def test_a_failed_migration_keeps_the_service_stopped_and_fails_the_postinst(
    device: Device,
) -> None:
    first_install(device)
    marker = device.root / "data"
    marker.write_text("v1 data\n")
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\necho broken >&2\nexit 4\n")
    proc = device("postinst", "--package", "foo")
    # Non-zero: the package manager reports the package as not configured, and skips the rest
    # of the postinst (systemd.bbclass's restart of the service).
    assert proc.returncode == 1
    assert "50-foo-bad.sh" in proc.stderr and "foo.service" in proc.stderr
    assert "migration status" in proc.stderr
    row = device.status()["50-foo-bad.sh"]
    assert (row["state"], row["exit_code"]) == ("failed", 4)
    assert marker.read_text() == "v1 data\n"  # nothing lost
    # The gate is started again and fails (journal, systemctl --failed); the service stays
    # stopped and is not started.
    assert device.calls()[-1] == f"start {GATE}"
    assert not device.active("foo.service") and not device.active(GATE)
    # A fixed package (or `dpkg --configure -a` once the cause is fixed) passes.
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\ntrue\n")
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.status()["50-foo-bad.sh"]["state"] == "applied"
    # It was stopped by the failed run, not running: nothing to start again (the package's
    # own postinst, systemd.bbclass's part, starts its services).
    assert not any(c.startswith("start --no-block") for c in device.calls())


def test_nothing_pending_touches_no_service(device: Device) -> None:
    first_install(device)
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.calls() == []
    assert device.active("foo.service")


def test_other_packages_pending_migrations_run_in_order_with_their_services_stopped(
    device: Device,
) -> None:
    """Unpacked in the same transaction, bar's postinst has not run yet: the runner applies
    every pending script in the global order, so bar's gated service is stopped too; foo's
    postinst fails only for foo's own migrations."""
    first_install(device)
    device.gate("bar.service", "bar")
    device.ship("bar", "40-bar-first.sh", device.probe("bar.service") + "exit 1\n")
    device.ship("foo", "50-foo-two.sh", device.probe("foo.service"))
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.seen() == [
        "40-bar-first.sh package bar.service=stopped",
        "50-foo-two.sh package foo.service=stopped",
    ]
    assert device.active("foo.service") and not device.active("bar.service")
    assert f"start {units.gate_unit('bar')}" in device.calls()


def test_without_systemd_it_applies_and_touches_no_service(tmp_path: Path) -> None:
    """sysvinit (or a chroot): no gates to stop; update-rc.d's postinst starts nothing."""
    device = Device(tmp_path, systemd=False)
    first_install(device)
    device.ship("foo", "50-foo-two.sh", device.probe("foo.service"))
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.status()["50-foo-two.sh"]["state"] == "applied"
    assert device.calls() == []


# --------------------------------------------------------------------------------------------
# The postinst OE writes: the class's snippet, then systemd.bbclass's.


def class_function(name: str) -> str:
    """The body of a shell function of classes/migration.bbclass, as d.getVar returns it."""
    text = (REPO / "classes/migration.bbclass").read_text()
    m = re.search(rf"^{name}\(\) \{{\n(.*?)^\}}$", text, re.M | re.S)
    assert m, f"no shell function {name} in migration.bbclass"
    return m.group(1)


def expand(text: str, values: Dict[str, str]) -> str:
    """BitBake's ${VAR} expansion of the few variables the snippet uses (none may be left)."""
    out = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: values[m.group(1)], text)
    assert "${" not in out, out
    return out


def test_class_postinst_calls_the_subcommand_on_a_running_target_only(tmp_path: Path) -> None:
    snippet = expand(class_function("migration_postinst"),
                     {"sbindir": "/usr/sbin", "MIGRATION_POSTINST_PACKAGE": "foo"})  # fmt: skip
    assert "/usr/sbin/migration postinst --package foo" in snippet
    script = tmp_path / "postinst"
    # With $D set (rootfs time) it does nothing and succeeds; the snippet is followed by
    # systemd.bbclass's, so it must not exit on success.
    script.write_text("#!/bin/sh\n" + snippet + "echo after\n")
    res = subprocess.run(["sh", str(script)], env={"D": "/some/rootfs", "PATH": "/bin:/usr/bin"},
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert (res.returncode, res.stdout) == (0, "after\n")
    sc = tools.tool("shellcheck", "apt-get install shellcheck")
    res = subprocess.run([sc, "--shell=sh", str(script)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout


# --------------------------------------------------------------------------------------------
# The runner's own package: systemd.bbclass's postinst restarts migration.service.


@pytest.mark.parametrize(
    ("system_state", "runs"),
    [
        ("initializing", True),  # the boot, before sysinit.target: where it belongs
        ("starting", True),
        ("maintenance", True),  # emergency mode: a root shell retrying by hand
        ("", True),  # systemctl missing or mute: the boot-safe answer
        ("running", False),  # upgrade of the runner's package, or a gate started later
        ("degraded", False),
    ],
)
def test_migration_service_runs_nothing_once_the_system_is_up(
    tmp_path: Path, system_state: str, runs: bool
) -> None:
    """After the boot, a (re)start of migration.service is skipped by its ExecCondition, so
    neither the restart in the runner package's postinst nor a gate started after the boot
    (Wants=migration.service) runs migrations live, with every service up and the boot's
    failure policy (emergency.target, halt.target) armed."""
    from test_units import install

    assert install(tmp_path).returncode == 0
    text = (tmp_path / "lib/systemd/system/migration.service").read_text()
    conditions = [ln.split("=", 1)[1] for ln in text.splitlines()
                  if ln.startswith("ExecCondition=")]  # fmt: skip
    assert len(conditions) == 1
    argv = conditions[0].split(" ", 2)
    assert argv[:2] == ["/bin/sh", "-c"]
    command = argv[2].strip("'").replace("$$", "$")  # systemd's unescaping of this line
    fake = tmp_path / "bin"
    fake.mkdir()
    if system_state:
        (fake / "systemctl").write_text(f"#!/bin/sh\necho {system_state}\n")
        (fake / "systemctl").chmod(0o755)
    res = subprocess.run(["/bin/sh", "-c", command], env={"PATH": f"{fake}:/nonexistent"},
                         capture_output=True, text=True, check=False)  # fmt: skip
    # ExecCondition: 0 runs the unit, 1-254 skips it like a failed condition (not a failure).
    assert (res.returncode == 0) == runs, res
    if not runs:
        assert "migration postinst" in res.stdout + res.stderr
