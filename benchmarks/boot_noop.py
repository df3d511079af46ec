#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Boot cost of meta-migration, measured by the guest's own systemd (not a test).

Boots the QEMU test system of tests/boot (Debian 12, systemd 252) with 0 migrations and with 100
already-applied trivial migrations, several times each, and prints the time to
multi-user.target side by side (from `systemd-analyze time` and multi-user.target's
ActiveEnterTimestampMonotonic in the guest). Also prints how long the first boot of the
100-migration image spent applying them (migration.service's ExecMainStart..ExecMainExit).

    sudo python3 benchmarks/boot_noop.py [--boots N] [--workdir DIR]

Needs what the boot tests need (mmdebstrap, qemu-system-x86, e2fsprogs, busybox-static; root).
The rootfs tarball is cached in $MIGRATION_CACHE_DIR (default ~/.cache/meta-migration).
"""

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "boot"))
import bootharness as h


def trivial(i: int) -> h.Script:
    text = f"#!/bin/sh\n# {i}\ntrue\n"
    return h.Script(f"pkg{i % 10}", f"step{i:03d}.sh", text, f"{i % 90 + 10}")


def userspace_seconds(report: h.Report) -> float:
    """'multi-user.target reached after X in userspace' of systemd-analyze time."""
    m = re.search(r"multi-user\.target reached after ([\d.]+)(ms|s) in userspace",
                  report.files.get("analyze-time.txt", ""))  # fmt: skip
    if not m:
        raise h.HarnessError("no systemd-analyze time in the report: "
                             + report.files.get("analyze-time.txt", ""))  # fmt: skip
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def since_kernel(report: h.Report) -> float:
    props = report.units()["multi-user.target"]
    return int(props["ActiveEnterTimestampMonotonic"]) / 1e6


def measure(system: h.System, boots: int, label: str) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {"userspace": [], "since_kernel": [], "host": []}
    for i in range(boots):
        b = h.boot(system)
        report = h.read_report(system)
        mig = report.units()["migration.service"]
        if mig.get("ExecMainPID") != "0":
            raise h.HarnessError(f"{label}: migration.service started a process on boot {i + 1}")
        out["userspace"].append(userspace_seconds(report))
        out["since_kernel"].append(since_kernel(report))
        out["host"].append(b.seconds)
        h.clear_report(system)
    return out


def fmt(values: List[float]) -> str:
    return (f"{statistics.median(values):6.2f} s (min {min(values):.2f}, max {max(values):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3, help="measured boots per image")
    parser.add_argument("--count", type=int, default=100, help="number of migrations")
    parser.add_argument("--workdir", type=Path, help="keep the images here")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="boot-noop-"))
    start = time.monotonic()
    base = h.prepare_base(work / "base")
    empty = h.new_system(base, work / "zero")
    full = h.new_system(base, work / "full", [trivial(i) for i in range(args.count)])

    h.boot(full)
    first = h.read_report(full)
    mig = first.units()["migration.service"]
    applied = [e for e in first.status if e["state"] == "applied"]
    if len(applied) != args.count or mig["Result"] != "success":
        raise h.HarnessError(f"first boot applied {len(applied)} of {args.count}: {mig}")
    apply_s = (int(mig["ExecMainExitTimestampMonotonic"])
               - int(mig["ExecMainStartTimestampMonotonic"])) / 1e6  # fmt: skip
    first_userspace = userspace_seconds(first)
    h.clear_report(full)
    # The empty image's first boot (machine-id, journal files, ...) is not measured either.
    h.boot(empty)
    h.clear_report(empty)

    # Alternate the two images so drift on the host hits both alike.
    zero: Dict[str, List[float]] = {"userspace": [], "since_kernel": [], "host": []}
    hundred: Dict[str, List[float]] = {"userspace": [], "since_kernel": [], "host": []}
    for _ in range(args.boots):
        for acc, system, label in ((zero, empty, "0"), (hundred, full, str(args.count))):
            for k, v in measure(system, 1, label).items():
                acc[k].extend(v)

    accel = "kvm" if h.kvm_works() else "tcg"
    print(f"\nBoot to multi-user.target, {args.boots} boots each, QEMU {accel}, 1 vCPU, "
          "Debian 12 / systemd 252 (median, min, max)")  # fmt: skip
    print(f"{'':34} {'0 migrations':>32} {f'{args.count} applied':>32}")
    print(f"{'userspace (systemd-analyze time)':34} {fmt(zero['userspace']):>32} "
          f"{fmt(hundred['userspace']):>32}")  # fmt: skip
    print(f"{'since kernel start (monotonic)':34} {fmt(zero['since_kernel']):>32} "
          f"{fmt(hundred['since_kernel']):>32}")  # fmt: skip
    print(f"{'host wall clock, boot to poweroff':34} {fmt(zero['host']):>32} "
          f"{fmt(hundred['host']):>32}")  # fmt: skip
    print(f"\nFirst boot of the {args.count}-migration image: migration.service ran "
          f"{apply_s:.2f} s (applying {args.count} trivial migrations); userspace reached "
          f"multi-user.target after {first_userspace:.2f} s.")  # fmt: skip
    print(f"(total benchmark time {time.monotonic() - start:.0f} s; images in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
