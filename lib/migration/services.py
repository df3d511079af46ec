# SPDX-License-Identifier: MIT
"""The services gated on migrations (MIGRATION_BEFORE), while a package manager upgrades a
package on a running systemd system (`migration postinst`).

A gated service requires ``migration-gate@PKG.service``, a oneshot with RemainAfterExit=yes:
active since boot, it counts as satisfied for the rest of the boot, whatever a package upgrade
brings. So before pending migrations run, each such gate is stopped, which stops every unit that
requires it (systemd propagates a stop along Requires=), and left inactive: the next start of a
gated service starts the gate again, and its check decides. Afterwards the units that ran
before are started again when their package's migrations are applied; otherwise the gate is
started once, fails (journal, ``systemctl --failed``), and they stay stopped.

Talks to systemd with ``systemctl`` only (no D-Bus library on the target).
"""

import os
import subprocess
from typing import Callable, Dict, List

from migration import units


def systemd_running(root: str) -> bool:
    """sd_booted(): systemd manages the system under `root` (``ROOT/run/systemd/system``)."""
    return os.path.isdir(os.path.join(root, "run/systemd/system"))


class Gates:
    """Stops the gates of packages with pending migrations and restores what they stopped."""

    def __init__(self, say: Callable[[str], None], systemctl: str = "systemctl") -> None:
        self.say = say
        self.systemctl = systemctl
        self.stopped: Dict[str, List[str]] = {}  # package -> units that were active

    def _call(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([self.systemctl, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)  # fmt: skip

    def stop(self, packages: List[str]) -> None:
        """Load the unit files the package manager just unpacked (a new drop-in may gate one
        more service), then stop the gate of each package, and so its gated services."""
        self._call("daemon-reload")
        for pkg in packages:
            gate = units.gate_unit(pkg)
            required_by = self._call("show", "--property=RequiredBy", "--value", gate)
            gated = sorted(required_by.stdout.split())
            active: List[str] = []
            if gated:
                states = self._call("is-active", *gated).stdout.split()
                active = [
                    u for u, s in zip(gated, states) if s in ("active", "activating", "reloading")
                ]
            self._call("stop", gate)
            self.stopped[pkg] = active
            if active:
                self.say(
                    f"stopped {' '.join(active)} until the migrations of package {pkg} are applied"
                )

    def restore(self, not_applied: Dict[str, List[str]]) -> None:
        """Start again what each package's gate stopped when its migrations are applied; else
        start the gate once so that its failure shows, and leave the services stopped."""
        for pkg, active in self.stopped.items():
            if pkg not in not_applied:
                if active:
                    self._call("start", "--no-block", *active)
                    self.say(f"starting {' '.join(active)} again")
                continue
            self._call("start", units.gate_unit(pkg))
            if active:
                self.say(
                    f"{' '.join(active)} stay(s) stopped: the migrations of package {pkg} "
                    f"are not applied ({', '.join(not_applied[pkg])})"
                )
