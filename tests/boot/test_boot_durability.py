# SPDX-License-Identifier: MIT
"""Issue 9: a record is never durable before the data its script wrote, proven by real power
cuts (SIGKILL of QEMU: the guest's page cache is lost, what it wrote to its disks stays).

The migrations write their data as recipe authors write it: plain shell redirections, no sync
of their own. Every check reads the /var disk after the cut with its journal replayed, as the
next boot would find it:

- a cut while the next migration runs: the previous migration's record is there and so are its
  files, whole;
- cuts at random instants of a first-boot run of N_SCRIPTS data-writing migrations (a few in CI,
  MIGRATION_POWERCUTS=25 for the slow suite): after every cut, each record implies its
  script's files are whole and its config line present, no script is recorded twice, fsck is
  clean; the boot after the last cut finishes what was interrupted, and runs nothing twice.
"""

import hashlib
import os
import random
import re
from pathlib import Path
from typing import Dict, List

import bootharness as h
import pytest

pytestmark = pytest.mark.boot

DATA = "/var/lib/pc-data"
FILE_BYTES = 64 * 1024
N_SCRIPTS = 12


def writer(i: int, then: str = "") -> str:
    """A migration that writes two new files and appends a line to an existing config file,
    idempotently and without syncing anything."""
    return f"""#!/bin/sh
# data migration {i}
echo "PC-STEP {i}" >/dev/console
mkdir -p {DATA}
yes "migration {i} wrote this line" | head -c {FILE_BYTES} >{DATA}/{i}.a
yes "second file of migration {i}" | head -c {FILE_BYTES} >{DATA}/{i}.b
grep -qx "line {i}" {DATA}/config || echo "line {i}" >>{DATA}/config
{then}
"""


def expected(i: int) -> Dict[str, bytes]:
    def pattern(text: str) -> bytes:
        line = (text + "\n").encode()
        return (line * (FILE_BYTES // len(line) + 1))[:FILE_BYTES]

    return {f"{i}.a": pattern(f"migration {i} wrote this line"),
            f"{i}.b": pattern(f"second file of migration {i}")}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def applied_names(img: Path, scripts: List[h.Script]) -> List[str]:
    by_sha = {sha(s.text): s.installed_name for s in scripts}
    found = [n for n in h.list_dir(img, "/lib/migration/applied") if not n.startswith(".")]
    unknown = [n for n in found if n not in by_sha]
    assert not unknown, f"records of no known script: {unknown}"
    return sorted(by_sha[n] for n in found)


def assert_recorded_means_whole(img: Path, scripts: List[h.Script], tmp: Path) -> List[str]:
    """Every applied record's script left its files whole and its config line; returns the
    names recorded."""
    names = applied_names(img, scripts)
    index = {s.installed_name: i for i, s in enumerate(scripts)}
    data = h.rdump(img, "/lib/pc-data", tmp) if names else None
    config = (data / "config").read_bytes().split(b"\n") if data else []
    for name in names:
        i = index[name]
        for fname, content in expected(i).items():
            got = (data / fname).read_bytes() if (data / fname).exists() else None
            assert got == content, (
                f"{name} is recorded as applied but {DATA}/{fname} is "
                + ("missing" if got is None else f"{len(got)} bytes, "
                   f"{got.count(0)} of them NUL, not what it wrote"))
        assert f"line {i}".encode() in config, f"{name} recorded but its config line is lost"
    return names


def data_scripts() -> List[h.Script]:
    return [h.Script("data", f"step{i:02d}.sh", writer(i), priority=f"{10 + i}")
            for i in range(N_SCRIPTS)]


VAR = {"/lib/pc-data/config": ("base\n", 0o644)}


def test_a_record_is_never_durable_before_its_scripts_data(base: h.Base, boot_root: Path) -> None:
    """The cut of the issue: migration 1 writes its data, migration 2 starts, power is cut. The
    record of migration 1 survives, so its data must survive too."""
    first = h.Script("data", "write.sh", writer(0), priority="10")
    nxt = h.Script("data", "next.sh", """#!/bin/sh
echo "PC-NEXT-STARTED" >/dev/console
sleep 600
""", priority="20")
    system = h.new_system(base, boot_root / "record-after-data", [first, nxt], var_extra=VAR)
    cut = h.boot(system, kill_when="PC-NEXT-STARTED")
    assert cut.killed
    img = h.replayed_copy(system.var_img)
    try:
        assert applied_names(img, [first, nxt]) == [first.installed_name]
        # the recorded migration's files are whole (before issue 9: both empty, size 0)
        names = assert_recorded_means_whole(img, [first, nxt], boot_root / "record-after-data-dump")
        assert names == [first.installed_name]
        # notes of finished scripts are dropped at the end of the run: only the next one counts
        started = set(h.list_dir(img, "/lib/migration/started"))
        assert started - {sha(first.text)} == {sha(nxt.text)}
    finally:
        img.unlink()


def test_random_power_cuts_never_leave_a_record_without_its_data(
    base: h.Base, boot_root: Path
) -> None:
    cuts_wanted = int(os.environ.get("MIGRATION_POWERCUTS", "3"))
    seed = int(os.environ.get("MIGRATION_POWERCUT_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    scripts = data_scripts()
    work = boot_root / "random-cuts"
    system = h.new_system(base, work, scripts, var_extra=VAR)
    cuts = 0
    history = []
    recorded: List[str] = []
    while cuts < cuts_wanted:
        # a cut after the marker of a script this boot will run (applied ones print nothing)
        step = rng.choice([i for i, s in enumerate(scripts) if s.installed_name not in recorded])
        delay = rng.uniform(0.0, 0.4)
        result = h.boot(system, kill_when=f"PC-STEP {step}", kill_delay=delay)
        where = f"seed {seed}, cut {cuts} (PC-STEP {step} + {delay:.2f} s); history {history}"
        img = h.replayed_copy(system.var_img)
        try:
            recorded = assert_recorded_means_whole(img, scripts, work / f"dump{cuts}")
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from None
        finally:
            img.unlink()
        ok, out = h.fsck_clean(system.var_img)
        assert ok, f"{where}: {out}"
        history.append((step, round(delay, 2), len(recorded), result.killed))
        if not result.killed:  # the run ended (and the guest powered off) before the cut
            break
        cuts += 1
        if len(recorded) >= N_SCRIPTS - 2 and cuts < cuts_wanted:
            # (nearly) everything recorded: start over on fresh disks, so that the cuts spread
            # over the whole run instead of hitting its last script again and again
            system = h.new_system(base, work, scripts, var_extra=VAR)
            recorded = []
    # every cut was checked above (a violation fails at once): report what was covered
    h.log(f"power cuts: {cuts}, violations: 0, seed {seed}: {history}")
    # The boot after the cuts finishes what was left and runs nothing that was recorded.
    before = applied_names(system.var_img, scripts)
    h.boot(system)
    report = h.read_report(system)
    assert {e["state"] for e in report.status} == {"applied"}, report.status
    ran = [re.search(r"(\S+): running", ln).group(1)
           for ln in report.journal_lines(r"\S+: running")]
    assert not set(ran) & set(before), f"ran again after being recorded: {set(ran) & set(before)}"
    assert assert_recorded_means_whole(system.var_img, scripts, work / "final") == sorted(
        s.installed_name for s in scripts)
    ok, out = h.fsck_clean(system.var_img)
    assert ok, out
    assert cuts >= min(cuts_wanted, 1)
