# SPDX-License-Identifier: MIT
"""The services gated on migrations (MIGRATION_BEFORE), while a package manager upgrades a
package on a running systemd system (`migration postinst`).

A gated service requires ``migration-gate@PKG.service``, a oneshot with RemainAfterExit=yes:
active since boot, it counts as satisfied for the rest of the boot, whatever a package upgrade
brings. So before pending migrations run, each such gate is stopped, which stops every unit that
requires it (systemd propagates a stop along Requires=), and left inactive: the next start of a
gated service starts the gate again, and its check decides. Afterwards the units that ran
before are started again when the migrations of every package gating them are applied;
otherwise the gate is started once, fails (journal, ``systemctl --failed``), and they stay
stopped.

What a postinst stops outlives it: one file per unit under /run/migration/stopped (`Stopped`),
written before the stop, so that the retry of a failed postinst (``dpkg --configure -a``), or
any later one, starts it again, also after a signal or SIGKILL ended the first. /run, not the
state dir: a reboot forgets it, and the boot starts the services normally.

systemctl failing while the gated services are found or stopped ends the postinst before any
migration runs (`SystemctlError`): migrations must not run while services that read the data
may be running. Talks to systemd with ``systemctl`` only (no D-Bus library on the target).
"""

import contextlib
import os
import stat
import subprocess
from typing import Callable, Dict, List

from migration import files, units
from migration.errors import MigrationError

#: Under --root: the units a package postinst stopped and has not started again.
STOPPED_DIR = "run/migration/stopped"

#: What is-active says of a unit that runs (or is about to): it was running before.
_RUNNING = ("active", "activating", "reloading")


class SystemctlError(MigrationError):
    """systemctl failed while the gated services were found or stopped: no migration ran."""


class Stopped:
    """The units a package postinst stopped, one file per unit: ``{"format": 1, "unit": U,
    "packages": [P...]}``, P the packages whose gates stopped it. Same trust rules as the state
    dir: root's directories (created 0700) that nobody else can write, regular files of root's,
    nothing followed; anything else found there is reported and ignored, never started."""

    def __init__(self, root: str, say: Callable[[str], None]) -> None:
        self.path = os.path.join(root, STOPPED_DIR)
        self.say = say

    def _trusted_dir(self, path: str) -> bool:
        """Does `path` exist (False: not yet)? MigrationError when root must not trust it."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        problem = None if stat.S_ISDIR(st.st_mode) else f"is {files.kind_of(st.st_mode)}"
        problem = problem or files.owner_problem(st, os.geteuid())
        if problem:
            raise MigrationError(
                f"{path} {problem}: refusing it (it names the services a package postinst "
                f"stopped, for root to start again; it must be root's directory, writable by "
                f"root only: remove it)"
            )
        return True

    def load(self) -> Dict[str, List[str]]:
        """Unit -> packages gating it, for every sound record (reads only)."""
        if not (self._trusted_dir(os.path.dirname(self.path)) and self._trusted_dir(self.path)):
            return {}
        out: Dict[str, List[str]] = {}
        for name in sorted(os.listdir(self.path)):
            if name.startswith("."):  # a write in progress, or a killed one's leftover
                continue
            path = os.path.join(self.path, name)
            packages = self._read(path, name)
            if isinstance(packages, str):
                self.say(f"ignoring {path}: {packages}")
            else:
                out[name] = packages
        return out

    @staticmethod
    def _read(path: str, name: str) -> "List[str] | str":
        """The packages of one record, or why it is not one."""
        if not units.UNIT_RE.match(name):
            return "not a unit name"
        try:
            st = os.lstat(path)
            problem = files.owner_problem(st, os.geteuid())
            if problem:
                return problem
            obj = files.load_json(files.read_bytes(path, 64 << 10))
        except OSError as e:
            return files.why_unreadable(e)
        except ValueError as e:
            return f"not JSON ({e})"
        packages = obj.get("packages") if isinstance(obj, dict) else None
        if (not isinstance(obj, dict) or obj.get("unit") != name or not isinstance(packages, list)
                or not all(isinstance(p, str) and p for p in packages)):  # fmt: skip
            return "not a record of a stopped unit"
        return packages

    def _make_dirs(self) -> None:
        for path in (os.path.dirname(self.path), self.path):
            if not self._trusted_dir(path):
                os.mkdir(path, 0o700)  # never follows a planted symlink: EEXIST
                os.chmod(path, 0o700)  # whatever the umask
                self._trusted_dir(path)

    def remember(self, unit: str, packages: List[str]) -> None:
        from migration.state import atomic_write, dump_json

        self._make_dirs()
        record = {"format": 1, "unit": unit, "packages": sorted(packages)}
        # /run is a tmpfs: no fsync buys anything there.
        atomic_write(os.path.join(self.path, unit), dump_json(record), mode=0o600,
                     sync_dir=False)  # fmt: skip

    def forget(self, unit: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, unit))


def systemd_running(root: str) -> bool:
    """sd_booted(): systemd manages the system under `root` (``ROOT/run/systemd/system``)."""
    return os.path.isdir(os.path.join(root, "run/systemd/system"))


def _units(names: List[str]) -> str:
    return " ".join(names) + (" stays" if len(names) == 1 else " stay")


def _packages(names: List[str]) -> str:
    return ("package " if len(names) == 1 else "packages ") + ", ".join(names)


class Gates:
    """Stops the gates of packages with pending migrations and starts again what they stopped,
    this time or an earlier one (`Stopped`). Creating it reads the records: a directory root must
    not trust fails it before anything is stopped."""

    def __init__(self, say: Callable[[str], None], root: str,
                 systemctl: str = "systemctl") -> None:  # fmt: skip
        self.say = say
        self.systemctl = systemctl
        self.memory = Stopped(root, say)
        self.remembered = self.memory.load()  # unit -> packages gating it
        self.stopped_gates: List[str] = []  # packages whose gate this process stopped

    def _call(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([self.systemctl, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)  # fmt: skip

    @staticmethod
    def _error(proc: "subprocess.CompletedProcess[str]") -> str:
        err = " ".join(proc.stderr.split()) or "no message"
        return f"`{' '.join(proc.args)}` failed (exit {proc.returncode}): {err}"

    def stop(self, packages: List[str]) -> None:
        """Load the unit files the package manager just unpacked (a new drop-in may gate one
        more service), then stop the gate of each package, and so its gated services, having
        first remembered those that ran. SystemctlError when systemctl fails."""
        proc = self._call("daemon-reload")
        if proc.returncode:
            raise SystemctlError(
                f"cannot load the unit files just installed, which may gate "
                f"more services: {self._error(proc)}; no migration ran"
            )
        for pkg in packages:
            gate = units.gate_unit(pkg)
            gated = self._gated(gate)
            active = self._running(gate, gated)
            # Remembered first: whatever ends this process from here on, a later postinst
            # starts them again. Units stopped earlier and still waiting now wait for pkg too.
            waiting = [u for u in gated if u in self.remembered and u not in active]
            for unit in active + waiting:
                self.remembered[unit] = sorted({*self.remembered.get(unit, []), pkg})
                self.memory.remember(unit, self.remembered[unit])
            self.stopped_gates.append(pkg)
            proc = self._call("stop", gate)
            if proc.returncode:
                raise SystemctlError(f"cannot stop {gate} (and with it the services it gates): "
                                     f"{self._error(proc)}; no migration ran")  # fmt: skip
            if active:
                self.say(f"stopped {' '.join(active)} until the migrations of package {pkg} "
                         "are applied")  # fmt: skip

    def _gated(self, gate: str) -> List[str]:
        proc = self._call("show", "--property=RequiredBy", "--value", gate)
        if proc.returncode:
            raise SystemctlError(f"cannot tell which services {gate} gates: "
                                 f"{self._error(proc)}; no migration ran")  # fmt: skip
        return sorted(proc.stdout.split())

    def _running(self, gate: str, gated: List[str]) -> List[str]:
        if not gated:
            return []
        proc = self._call("is-active", "--", *gated)
        states = proc.stdout.split()
        # 0: one of them is active, 3: none is; either way one state per unit.
        if proc.returncode not in (0, 3) or len(states) != len(gated):
            raise SystemctlError(f"cannot tell which services that {gate} gates run: "
                                 f"{self._error(proc)}; no migration ran")  # fmt: skip
        return [u for u, s in zip(gated, states) if s in _RUNNING]

    def restore(self, not_applied: Dict[str, List[str]]) -> None:
        """Start again, and forget, every remembered unit whose gating packages' migrations are
        all applied. Start the gate of each package still pending that this process stopped
        once, so that its failure shows, and say which units stay stopped and why."""
        ready = [u for u, pkgs in self.remembered.items() if not set(pkgs) & set(not_applied)]
        started = []
        for unit in ready:  # one by one: a unit that cannot start must not hold back the rest
            proc = self._call("start", "--no-block", "--", unit)
            if proc.returncode:
                self.say(f"cannot start {unit} again: {self._error(proc)}; the next package "
                         "postinst tries again, or start it by hand")  # fmt: skip
                continue
            self.memory.forget(unit)
            del self.remembered[unit]
            started.append(unit)
        if started:
            self.say(f"starting {' '.join(started)} again")
        for pkg in self.stopped_gates:
            if pkg in not_applied:
                self._call("start", units.gate_unit(pkg))
        self._say_waiting(not_applied)

    def _say_waiting(self, not_applied: Dict[str, List[str]]) -> None:
        waiting = sorted(self.remembered)
        if not waiting:
            return
        proc = self._call("is-active", "--", *waiting)
        states = proc.stdout.split()
        if len(states) == len(waiting):
            for unit, state in zip(waiting, states):
                if state in _RUNNING:  # started by hand, or its stop failed: not stopped
                    self.memory.forget(unit)
                    del self.remembered[unit]
        why: Dict[tuple, List[str]] = {}
        for unit in sorted(self.remembered):
            pending = tuple(p for p in self.remembered[unit] if p in not_applied)
            why.setdefault(pending, []).append(unit)
        for pending, names in why.items():
            if not pending:  # ready, but their start failed: said above
                continue
            scripts = ", ".join(n for p in pending for n in not_applied[p])
            self.say(
                f"{_units(names)} stopped until the migrations of {_packages(list(pending))} "
                f"are applied ({scripts}); then the next package postinst starts them again "
                "(after a fix: dpkg --configure -a, opkg configure)"
            )
