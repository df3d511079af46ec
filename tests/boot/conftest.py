# SPDX-License-Identifier: MIT
"""Session fixtures of the QEMU boot tests (marker ``boot``).

The boot tests need mmdebstrap, qemu-system-x86_64, e2fsprogs and busybox-static. When one is
missing they FAIL with the list of Debian packages to install; they are skipped only when the
environment says so explicitly: MIGRATION_SKIP_BOOT=1.
"""

import os
from pathlib import Path
from typing import Iterator

import bootharness as h
import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if os.environ.get("MIGRATION_SKIP_BOOT") == "1":
        skip = pytest.mark.skip(reason="MIGRATION_SKIP_BOOT=1: QEMU boot tests switched off")
        for item in items:
            if item.get_closest_marker("boot") is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Base]:
    """The Debian 12 test system, unpacked once per session from the cached tarball."""
    missing = h.missing_tools()
    if missing:
        pytest.fail(
            "QEMU boot tests need: " + ", ".join(missing)
            + " (or set MIGRATION_SKIP_BOOT=1 to skip them explicitly)",
            pytrace=False,
        )  # fmt: skip
    if os.geteuid() != 0:
        pytest.fail("QEMU boot tests build root file systems and must run as root", pytrace=False)
    workdir = tmp_path_factory.mktemp("boot-base")
    yield h.prepare_base(workdir)


@pytest.fixture(scope="session")
def boot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boot-systems")
