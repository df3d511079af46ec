#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""First-boot cost, measured inside the QEMU guest (a slow CPU, like a BMC's), side by side.

One boot of the tests/boot system (Debian 12, systemd 252, the runner installed by the recipe's
migration-install.sh, bytecode included) runs, in the booted guest and interleaved --repeat
times, over the same N trivial scripts (`#!/bin/sh`, a distinct comment, `true`) on its /var disk:

- runner apply N: `migration run` applying all N into a fresh state dir, each durably recorded;
- run-parts: Debian's run-parts over the same scripts (no memory of what ran, nothing synced);
- script + sync: a sh loop running each script and then sync(1): the floor that a runner which
  makes every script's effects durable before going on cannot beat;
- runner start: `migration run` with no scripts and no stamp (the interpreter, the imports, the
  state dir), with the package's bytecode and with a copy of the package without it
  (`python3 -B`: compiled at every start, as on a read-only root without shipped bytecode);
- python3 -I -c pass: the floor of any Python program.

Prints medians (and min/max) and the verdict of issue 9: applying N within 2x of script + sync.

    sudo python3 benchmarks/guest_apply.py [--count 100] [--repeat 5] [--tcg]

Needs what the boot tests need (mmdebstrap, qemu-system-x86, e2fsprogs, busybox-static; root).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "boot"))
import bootharness as h

B = "/var/lib/bench"

# Runs in the booted guest as the harness's command; prints "<column> <seconds>" lines.
GUEST = r"""#!/bin/sh
set -eu
B=@B@
N=@N@
R=@R@
mkdir -p "$B/empty" "$B/nobc"
cp -r /usr/lib/migration/migration "$B/nobc/"
find "$B/nobc" -name __pycache__ -prune -exec rm -rf {} +
NOBC="import sys; sys.path.insert(0, '$B/nobc'); from migration.cli import main; sys.exit(main())"
now() { date +%s.%N; }
col() {  # col NAME COMMAND...: time one run of COMMAND
    name=$1
    shift
    t0=$(now)
    "$@" >/dev/null 2>&1 || { echo "FAILED $name: $*"; exit 1; }
    t1=$(now)
    echo "$name $(echo "$t1 - $t0" | awk '{print $1 - $3}')"
}
loop_sync() {
    for f in "$B/scripts"/*; do
        "$f"
        sync
    done
}
sync
r=0
while [ "$r" -lt "$R" ]; do
    col pass python3 -I -c pass
    col start migration --scripts-dir "$B/empty" --state-dir "$B/s0-$r" \
        --manifest /nonexistent run
    col start_nobc python3 -I -B -c "$NOBC" --scripts-dir "$B/empty" --state-dir "$B/s1-$r" \
        --manifest /nonexistent run
    sync
    col apply migration --scripts-dir "$B/scripts" --state-dir "$B/state-$r" \
        --manifest /nonexistent run
    sync
    col run_parts run-parts --exit-on-error "$B/scripts"
    sync
    col script_sync loop_sync
    n=$(ls "$B/state-$r/applied" | wc -l)
    [ "$n" -eq "$N" ] || { echo "FAILED: $n of $N applied"; exit 1; }
    r=$((r + 1))
done
"""


def columns(out: str) -> Dict[str, List[float]]:
    cols: Dict[str, List[float]] = {}
    for line in out.splitlines():
        if line.startswith("FAILED"):
            raise h.HarnessError(f"guest benchmark: {line}\n{out}")
        parts = line.split()
        if len(parts) == 2:
            cols.setdefault(parts[0], []).append(float(parts[1]))
    return cols


def fmt(values: List[float]) -> str:
    return (f"{statistics.median(values) * 1000:7.0f} ms "
            f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tcg", action="store_true", help="no KVM: a much slower CPU")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if args.tcg:
        h.kvm_works = lambda: False  # the harness picks the accelerator through this
    work = args.workdir or Path(tempfile.mkdtemp(prefix="guest-apply-"))
    start = time.monotonic()
    base = h.prepare_base(work / "base")
    var = {}
    for i in range(args.count):
        var[f"/lib/bench/scripts/{i:04d}-bench-step"] = (f"#!/bin/sh\n# step {i}\ntrue\n", 0o755)
    guest = GUEST.replace("@B@", B).replace("@N@", str(args.count))
    guest = guest.replace("@R@", str(args.repeat))
    extra = {"/usr/local/sbin/harness-command": (guest, 0o755)}
    system = h.new_system(base, work / "bench", extra=extra, var_extra=var)
    h.boot(system, timeout=3600)
    report = h.read_report(system)
    out = report.files.get("command.out", "")
    if report.files.get("command.rc", "").strip() != "0":
        raise h.HarnessError(f"guest benchmark failed:\n{out}")
    cols = columns(out)
    accel = "kvm" if h.kvm_works() else "tcg"
    med = {k: statistics.median(v) for k, v in cols.items()}
    print(f"In the guest: QEMU {accel}, 1 vCPU, Debian 12, /var on ext4 (virtio, host "
          f"writeback cache); {args.repeat} runs each, interleaved; median (min-max)\n")
    print(f"| what | {args.count} scripts |")
    print("|---|---:|")
    for key, label in (("apply", f"runner, apply {args.count}"),
                       ("run_parts", "run-parts"),
                       ("script_sync", "script + sync (the durable floor)"),
                       ("start", "runner start, 0 scripts, no stamp"),
                       ("start_nobc", "runner start without bytecode"),
                       ("pass", "python3 -I -c pass")):
        print(f"| {label} | {fmt(cols[key])} |")
    x = med["apply"] / med["script_sync"]
    print(f"\n- apply {args.count} / (script + sync): {x:.2f}x (target <= 2x): "
          f"{'PASS' if x <= 2 else 'MISS'}")
    print(f"- apply {args.count} / run-parts: {med['apply'] / med['run_parts']:.2f}x")
    print(f"- bytecode saves {(med['start_nobc'] - med['start']) * 1000:.0f} ms per start")
    print(f"\n(total {time.monotonic() - start:.0f} s; images in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
