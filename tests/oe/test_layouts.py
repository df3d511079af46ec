# SPDX-License-Identifier: MIT
"""The QEMU suite's stand-ins for OE-core's layouts are OE-core's: compared with a checkout."""

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "boot"))
from test_boot_readonly import CREATE_VOLATILE, VOLATILE_LIB_UNIT

pytestmark = pytest.mark.oe


def test_the_layout_mirrors_oe_core() -> None:
    """The volatile-binds unit and 00-create-volatile.conf above are OE-core's, as its recipes
    generate them (checked against a checkout when MIGRATION_OECORE_DIR names one)."""
    oecore = os.environ.get("MIGRATION_OECORE_DIR")
    if not oecore:
        pytest.skip("MIGRATION_OECORE_DIR (an openembedded-core checkout) is not set")
    meta = Path(oecore, "meta")
    unit = (meta / "recipes-core/volatile-binds/files/volatile-binds.service.in").read_text()
    for key, value in (("what", "/var/volatile/lib"), ("where", "/var/lib"),
                       ("whatparent", "/var/volatile"), ("whereparent", "/var"),
                       ("avoid_overlayfs", "{avoid}")):  # fmt: skip
        unit = unit.replace(f"@{key}@", value)
    # volatile-binds.bb's do_compile, for the /var/lib line.
    unit = re.sub(r"^((Before|WantedBy)=.*)$", r"\1 systemd-random-seed.service", unit, flags=re.M)
    assert unit.replace("/sbin/mount-copybind", "/usr/local/sbin/copybind") == VOLATILE_LIB_UNIT
    conf = (meta / "recipes-core/systemd/systemd/00-create-volatile.conf").read_text()
    lines = [ln.split() for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    # systemd's do_install adds the /var/log line with fs-perms-volatile-log.txt.
    lines.append(["L", "/var/log", "-", "-", "-", "-", "/var/volatile/log"])
    assert lines == [ln.split() for ln in CREATE_VOLATILE.splitlines()]
