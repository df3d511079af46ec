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
import signal
import subprocess
import sys
import time
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
# units whose Requires= name UNIT); every call is logged. $FAKE/fail/VERB (holding a unit
# name, or * for any) makes that call fail as systemctl does, message on stderr, exit 1;
# $FAKE/slow/VERB makes it hang (after a stop's effect, before a start's) until killed.
echo "$*" >>"$FAKE/calls"
if [ -f "$FAKE/fail/$1" ]; then
	what=$(cat "$FAKE/fail/$1")
	case " $* " in
	*" $what "*) fail=1 ;;
	*) [ "$what" = "*" ] && fail=1 ;;
	esac
	if [ -n "${fail:-}" ]; then
		echo "Failed to $1: Access denied" >&2
		exit 1
	fi
fi
slow() {
	[ -e "$FAKE/slow/$1" ] && : >"$FAKE/hanging-$1" && exec sleep 60
	return 0
}
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
	[ "$1" = -- ] && shift
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
	slow stop
	exit 0 ;;
start)
	slow start
	shift
	block=yes
	[ "$1" = --no-block ] && block= && shift
	[ "$1" = -- ] && shift
	for u in "$@"; do
		# A unit starts its gates first (Requires=): a failed one fails the unit's start, which
		# --no-block does not wait for.
		gates=$u
		for g in "$FAKE"/requiredby/*; do
			[ -f "$g" ] && grep -qx "$u" "$g" && gates="${g##*/} $gates"
		done
		for g in $gates; do
			case "$g" in
			migration-gate@*)
				# The gate: `migration check --package PKG` (the instance, unescaped).
				pkg=${g#migration-gate@}
				pkg=${pkg%.service}
				if ! "$PYTHON" -m migration --root "$ROOT" check --package "$pkg"; then
					[ -n "$block" ] && exit 1
					continue 2
				fi ;;
			esac
			touch "$FAKE/active/$g"
		done
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

    def env(self) -> Dict[str, str]:
        path = f"{self.fake}/bin:{os.environ['PATH']}"
        return dict(os.environ, PYTHONPATH=str(LIB), FAKE=str(self.fake), ROOT=str(self.root),
                    PYTHON=sys.executable, PATH=path)  # fmt: skip

    def __call__(self, *args: str) -> "subprocess.CompletedProcess[str]":
        argv = [sys.executable, "-m", "migration", "--root", str(self.root), *args]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=60)

    def start(self, *args: str) -> "subprocess.Popen[str]":
        """The command in the background (to signal it)."""
        return subprocess.Popen([sys.executable, "-m", "migration", "--root", str(self.root),
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env())  # fmt: skip

    def wait_for_call(self, prefix: str) -> None:
        """Until the fake systemctl was called with arguments starting with `prefix`."""
        deadline = time.monotonic() + 30
        while not any(c.startswith(prefix) for c in self.calls()):
            assert time.monotonic() < deadline, self.calls()
            time.sleep(0.05)

    def wait_for_hang(self, verb: str) -> None:
        """Until a slow systemctl VERB hangs: for stop, after its effect (a logged call alone
        may still be before it)."""
        deadline = time.monotonic() + 30
        while not (self.fake / f"hanging-{verb}").exists():
            assert time.monotonic() < deadline, self.calls()
            time.sleep(0.05)

    def fail(self, verb: str, unit: str = "*") -> None:
        """systemctl VERB fails (for calls naming `unit`)."""
        (self.fake / "fail").mkdir(exist_ok=True)
        (self.fake / "fail" / verb).write_text(unit)

    def slow(self, verb: str, on: bool = True) -> None:
        """systemctl VERB hangs until killed."""
        (self.fake / "slow").mkdir(exist_ok=True)
        if on:
            (self.fake / "slow" / verb).touch()
        else:
            (self.fake / "slow" / verb).unlink()

    def remembered(self) -> List[str]:
        """The units a postinst stopped and still means to start again."""
        d = self.root / "run/migration/stopped"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

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
        "is-active -- foo.service",
        f"stop {GATE}",
        "start --no-block -- foo.service",
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
    assert device.calls()[-2:] == [f"start {GATE}", "is-active -- foo.service"]
    assert not device.active("foo.service") and not device.active(GATE)
    # A fixed package (or `dpkg --configure -a` once the cause is fixed) passes.
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\ntrue\n")
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.status()["50-foo-bad.sh"]["state"] == "applied"
    # The failed run stopped it: the retry starts it again (then systemd.bbclass's part of the
    # postinst restarts it: both on migrated data).
    assert "start --no-block -- foo.service" in device.calls()
    assert device.active("foo.service") and device.remembered() == []


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


def test_postinst_writes_the_prometheus_textfile_whatever_the_outcome(tmp_path: Path) -> None:
    """A package upgrade on a running device changes what monitoring must show (a failed
    migration most of all); no boot follows to refresh the file."""
    device = Device(tmp_path, systemd=False)
    first_install(device)
    target = tmp_path / "migration.prom"
    argv = ("postinst", "--package", "foo", "--prometheus-textfile", str(target))
    assert device(*argv).returncode == 0
    assert "migration_last_run_success 1\n" in target.read_text()
    device.ship("foo", "50-foo-two.sh", "#!/bin/sh\nexit 1\n")
    proc = device(*argv)
    assert proc.returncode == 1, proc.stderr
    text = target.read_text()
    assert 'migration_scripts{state="failed"} 1\n' in text
    assert "migration_last_run_success 0\n" in text


# --------------------------------------------------------------------------------------------
# What a postinst stopped is remembered under /run/migration/stopped until it runs again, so a
# retry, another process, starts it (F1); systemctl's failures stop the postinst (F2).

BAR_GATED_ON_FOO = "bar.service"  # another package's service in foo's MIGRATION_BEFORE


def foo_gates_bar_too(device: Device) -> None:
    first_install(device)
    device.gate(BAR_GATED_ON_FOO, "foo")


def test_a_retry_after_a_failed_migration_starts_what_the_failed_run_stopped(
    device: Device,
) -> None:
    """bar.service (another package's, gated on foo) ran before foo's failed upgrade; the
    retry (dpkg --configure -a runs the postinst again) applies foo's migration and starts it,
    though the retry itself found it stopped."""
    foo_gates_bar_too(device)
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\nexit 4\n")
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 1
    assert "bar.service foo.service stay stopped until the migrations of package foo" in proc.stderr
    assert device.remembered() == ["bar.service", "foo.service"]
    # status says which services stay stopped, and why
    status = " ".join(device("status").stdout.split())  # wrapped at 80 columns
    assert (
        "stopped by a package postinst: bar.service, until the migrations of package foo "
        "are applied"
    ) in status
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\ntrue\n")
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.active("bar.service") and device.active("foo.service")
    assert "starting bar.service foo.service again" in proc.stderr
    assert device.remembered() == []
    assert "stopped by a package postinst" not in device("status").stdout


def test_any_later_postinst_starts_a_remembered_unit_once_its_packages_are_applied(
    device: Device,
) -> None:
    """Not only the retry of the same package: the next migration package's postinst (here,
    foo fixed by hand with `migration run`, then baz upgraded) starts bar.service again."""
    foo_gates_bar_too(device)
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\nexit 4\n")
    assert device("postinst", "--package", "foo").returncode == 1
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\ntrue\n")
    assert device("manifest").returncode == 0
    assert device("run").returncode == 0
    assert not device.active("bar.service")  # `run` starts no service
    device.ship("baz", "50-baz-one.sh", "#!/bin/sh\nset -eu\ntrue\n")
    proc = device("postinst", "--package", "baz")
    assert proc.returncode == 0, proc.stderr
    assert device.active("bar.service") and device.remembered() == []


def test_sigterm_while_systemctl_stops_a_gate_leaves_it_remembered(device: Device) -> None:
    foo_gates_bar_too(device)
    device.ship("foo", "50-foo-two.sh", device.probe("foo.service"))
    device.slow("stop")
    proc = device.start("postinst", "--package", "foo")
    device.wait_for_hang("stop")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert device.seen() == []  # no migration ran
    assert device.remembered() == ["bar.service", "foo.service"]
    assert "bar.service foo.service stay stopped" in err
    device.slow("stop", on=False)
    proc2 = device("postinst", "--package", "foo")
    assert proc2.returncode == 0, proc2.stderr
    assert device.seen() == ["50-foo-two.sh package foo.service=stopped"]
    assert device.active("bar.service") and device.active("foo.service")
    assert device.remembered() == []


def test_sigkill_during_the_migration_the_retry_starts_the_services(device: Device) -> None:
    foo_gates_bar_too(device)
    killed = device.fake / "killed"
    # Kills its runner (the postinst) the first time, succeeds the second.
    device.ship("foo", "50-foo-two.sh", "#!/bin/sh\nset -eu\n"
                f'if [ ! -e {killed} ]; then touch {killed}; kill -KILL "$PPID"; fi\n')  # fmt: skip
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == -signal.SIGKILL
    assert not device.active("bar.service")
    assert device.remembered() == ["bar.service", "foo.service"]
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.status()["50-foo-two.sh"]["state"] == "applied"
    assert device.active("bar.service") and device.active("foo.service")
    assert device.remembered() == []


def test_sigterm_while_starting_them_again_the_retry_starts_them(device: Device) -> None:
    """Interrupted after the migration was applied: the retry has nothing pending, and still
    starts what the first run stopped."""
    foo_gates_bar_too(device)
    device.ship("foo", "50-foo-two.sh", "#!/bin/sh\nset -eu\necho two\n")
    device.slow("start")
    proc = device.start("postinst", "--package", "foo")
    device.wait_for_hang("start")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert device.status()["50-foo-two.sh"]["state"] == "applied"
    assert not device.active("bar.service")
    device.slow("start", on=False)
    proc2 = device("postinst", "--package", "foo")
    assert proc2.returncode == 0, proc2.stderr
    assert device.active("bar.service") and device.active("foo.service")
    assert device.remembered() == []


def test_a_busy_lock_then_a_retry_starts_the_services(device: Device) -> None:
    from migration.state import State

    foo_gates_bar_too(device)
    device.ship("foo", "50-foo-two.sh", "#!/bin/sh\nset -eu\necho two\n")
    other = State(str(device.root / "var/lib/migration"))
    other.lock(0)
    try:
        proc = device("postinst", "--package", "foo", "--lock-wait", "0.1")
    finally:
        other.unlock()
    assert proc.returncode == 75, proc.stderr
    assert "bar.service foo.service stay stopped" in proc.stderr
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.active("bar.service") and device.active("foo.service")
    assert device.remembered() == []


def test_the_memory_is_root_only_and_read_with_care(device: Device) -> None:
    foo_gates_bar_too(device)
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\nexit 4\n")
    assert device("postinst", "--package", "foo").returncode == 1
    top = device.root / "run/migration"
    for d in (top, top / "stopped"):
        assert (d.stat().st_mode & 0o777, d.stat().st_uid) == (0o700, os.getuid())
    # A record that is not one (damage, or a name systemd would not take) is ignored, said,
    # and never started.
    (top / "stopped/evil.service").write_text("not json")
    (top / "stopped/x y.service").write_text('{"format": 1, "packages": []}')
    (top / "stopped/ok.service").symlink_to("/etc/passwd")
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\ntrue\n")
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.active("bar.service")
    assert not any(u in c for c in device.calls() for u in ("evil", "x y", "ok.service"))
    for name in ("evil.service", "x y.service", "ok.service"):
        assert f"ignoring {top / 'stopped' / name}" in proc.stderr
    # A directory others could write is refused before anything is stopped.
    (top / "stopped").chmod(0o777)
    device.ship("foo", "50-foo-three.sh", "#!/bin/sh\nset -eu\necho three\n")
    (device.fake / "calls").write_text("")
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 2
    assert f"{top / 'stopped'} is writable by group or others" in proc.stderr
    assert device.calls() == [] and device.status()["50-foo-three.sh"]["state"] == "pending"


def test_a_unit_that_cannot_start_again_holds_back_no_other(device: Device) -> None:
    foo_gates_bar_too(device)
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\nexit 4\n")
    assert device("postinst", "--package", "foo").returncode == 1
    device.fail("start", "bar.service")  # e.g. masked meanwhile
    device.ship("foo", "50-foo-bad.sh", "#!/bin/sh\nset -eu\ntrue\n")
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert "cannot start bar.service again" in proc.stderr and "Access denied" in proc.stderr
    assert device.active("foo.service") and device.remembered() == ["bar.service"]
    assert "stopped by a package postinst: bar.service, to be started" in device("status").stdout


@pytest.mark.parametrize("verb", ["daemon-reload", "show", "is-active"])
def test_systemd_that_cannot_say_what_reads_the_data_stops_the_postinst(
    device: Device, verb: str
) -> None:
    """Fail closed: without knowing which services read the data, no migration runs."""
    first_install(device)
    device.ship("foo", "50-foo-two.sh", device.probe("foo.service"))
    device.fail(verb)
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 2
    assert f"systemctl {verb}" in proc.stderr and "Access denied" in proc.stderr
    if verb != "daemon-reload":
        assert GATE in proc.stderr
    assert "no migration ran" in proc.stderr
    assert device.seen() == [] and device.status()["50-foo-two.sh"]["state"] == "pending"
    assert not any(c.startswith("stop") for c in device.calls())
    assert device.active("foo.service")


def test_a_failed_stop_stops_the_postinst_before_any_migration(device: Device) -> None:
    """bar's gate stopped, foo's refuses: nothing runs under a live foo.service; bar.service,
    which this postinst stopped, is started again once bar's migrations can run (the retry)."""
    first_install(device)
    device.gate("bar.service", "bar")
    device.ship("bar", "40-bar-one.sh", device.probe("bar.service"))
    device.ship("foo", "50-foo-two.sh", device.probe("foo.service"))
    device.fail("stop", GATE)
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 2
    assert f"systemctl stop {GATE}" in proc.stderr and "Access denied" in proc.stderr
    assert "no migration ran" in proc.stderr
    assert "stopped bar.service until" in proc.stderr and "stopped foo.service" not in proc.stderr
    assert device.seen() == []
    assert device.active("foo.service")
    # What this postinst stopped: tried again (its gate refuses: bar's migration is pending),
    # said, and remembered.
    assert f"start {units.gate_unit('bar')}" in device.calls()
    assert "bar.service stays stopped until the migrations of package bar" in proc.stderr
    assert device.remembered() == ["bar.service"]
    (device.fake / "fail/stop").unlink()
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 0, proc.stderr
    assert device.active("bar.service") and device.active("foo.service")
    assert device.remembered() == []


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


@pytest.mark.parametrize(
    "recipe",
    [
        None,  # no pkg_postinst of its own
        "#!/bin/sh\necho recipe\nsystemctl restart foo.service\nexit 0\n",
        "\n\techo recipe\n\texit 0\n",  # a pkg_postinst:foo() { ... } body, no #! line
        "#!/bin/sh -e\necho recipe\nexit 0\n",
    ],
    ids=["none", "shebang-exit-0", "body-exit-0", "shebang-with-option"],
)
@pytest.mark.parametrize("kind", ["postinst", "postrm"])
def test_the_migration_snippets_come_first_whatever_the_recipe_postinst_does(
    tmp_path: Path, recipe: "str | None", kind: str
) -> None:
    """A recipe's own pkg_postinst that restarts its service or ends in `exit 0` runs after
    the class's snippets (at rootfs time and on the target), and systemd.bbclass's part, which
    its populate function appends later, comes after both."""
    from migration import bitbake as glue

    sbin = tmp_path / "sbin"
    sbin.mkdir()
    log = tmp_path / "log"
    for tool in ("migration", "python3", "systemctl"):
        (sbin / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>{log}\n')
        (sbin / tool).chmod(0o755)
    values = {"sbindir": str(sbin), "MIGRATION_POSTINST_PACKAGE": "foo",
              "nonarch_libdir": "/usr/lib"}  # fmt: skip
    first = "migration_postinst" if kind == "postinst" else "migration_refresh_manifest"
    ours = expand(class_function(first) + class_function("migration_rootfs_manifest"), values)
    composed = glue.first_in_script(recipe, ours)
    composed += "echo systemd\n"  # systemd_populate_packages: appended after ours
    # What package_deb writes (package_ipk and package_rpm alike): the #! line, else #!/bin/sh.
    stripped = composed.strip()
    if stripped.startswith("#!"):
        text = stripped + "\n"
        if recipe and recipe.startswith("#!"):
            assert text.splitlines()[0] == recipe.splitlines()[0]
    else:
        text = "#!/bin/sh\n" + stripped + "\n"
    script = tmp_path / kind
    script.write_text(text)
    on_target = "migration postinst --package foo" if kind == "postinst" else "migration manifest"
    at_rootfs = "python3 -I -B -c "
    for d, expected in (("", on_target), (str(tmp_path / "rootfs"), at_rootfs)):
        log.write_text("")
        res = subprocess.run(["sh", str(script)], env={"D": d, "PATH": f"{sbin}:/bin:/usr/bin"},
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert log.read_text().splitlines()[0].startswith(expected), (text, log.read_text())
        if recipe:
            assert res.stdout.startswith("recipe\n")
        else:
            assert res.stdout == "systemd\n"


# --------------------------------------------------------------------------------------------
# The runner's own package: systemd.bbclass's postinst restarts migration.service.


@pytest.mark.parametrize(
    ("sysinit", "runs"),
    [
        # The boot, migration.service's place: sysinit.target waits for it (Before=).
        ("inactive", True),
        # Emergency mode (the rescue policy, or a failed mount): emergency.target conflicts
        # with sysinit.target, which is stopped, so a root shell's retry runs.
        ("inactive", True),
        # Shutting down, or isolated away: the boot's run is not over either.
        ("deactivating", True),
        # systemctl missing or mute: the boot-safe answer.
        ("", True),
        # sysinit.target reached: the boot's run is over, whatever else is still starting
        # (is-system-running says `starting` while any start job is queued, with regular
        # services up): a package upgrade's restart, or a gate started later, runs nothing.
        ("active", False),
    ],
    ids=["boot", "emergency", "deactivating", "no-systemctl", "up-or-starting"],
)
def test_migration_service_runs_nothing_once_the_boot_is_past_it(
    tmp_path: Path, sysinit: str, runs: bool
) -> None:
    """After the boot's run, a (re)start of migration.service is skipped by its ExecCondition,
    so neither the restart in the runner package's postinst nor a gate started after the boot
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
    if sysinit:
        # `systemctl is-active [--quiet] UNIT...`: the state unless --quiet, 0 iff active.
        (fake / "systemctl").write_text(
            "#!/bin/sh\n"
            '[ "$1" = is-active ] || exit 9\n'
            'case " $* " in *" sysinit.target "*) ;; *) exit 9 ;; esac\n'
            f'case " $* " in *" --quiet "*) ;; *) echo {sysinit} ;; esac\n'
            f"[ {sysinit} = active ]\n"
        )
        (fake / "systemctl").chmod(0o755)
    res = subprocess.run(["/bin/sh", "-c", command], env={"PATH": f"{fake}:/nonexistent"},
                         capture_output=True, text=True, check=False)  # fmt: skip
    # ExecCondition: 0 runs the unit, 1-254 skips it like a failed condition (not a failure).
    assert (res.returncode == 0) == runs, res
    if not runs:
        assert "migration postinst" in res.stdout + res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="symlinks are refused by root only")
def test_a_symlinked_script_is_reported_as_run_reports_it(device: Device) -> None:
    """adv5 finding 10: a symlink in place of an applied script is refused by run, status and
    the gate (exit 1); the postinst says the same (exit 1 with the refusal), not exit 2, which
    means systemctl failed."""
    first_install(device)
    script = device.scripts / "50-foo-one.sh"
    elsewhere = device.root / "elsewhere.sh"
    elsewhere.write_bytes(script.read_bytes())
    script.unlink()
    script.symlink_to(elsewhere)
    proc = device("postinst", "--package", "foo")
    assert proc.returncode == 1, proc.stderr
    assert "50-foo-one.sh: refused: is a symlink" in proc.stderr
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
    assert device("check", "--package", "foo").returncode == 1  # the gate keeps it down
    # Nothing runs, so nothing is stopped (as `run` stops nothing for a refusal).
    assert device.calls() == [] and device.active("foo.service")
