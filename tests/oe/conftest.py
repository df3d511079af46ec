# SPDX-License-Identifier: MIT
"""Fixtures of tests/oe; the set-up and its environment variables are described in oebuild.py."""

import os
from pathlib import Path
from typing import Optional

import pytest
from oebuild import OEBuild, _env, ensure_user, unreadable_for


@pytest.fixture(scope="session")
def oe() -> OEBuild:
    """The prepared build configuration (skips when the OE-core checkouts are not given)."""
    oecore, bitbake = _env("MIGRATION_OECORE_DIR"), _env("MIGRATION_BITBAKE_DIR")
    if not oecore or not bitbake:
        pytest.skip(
            "OE-core tests need MIGRATION_OECORE_DIR (openembedded-core checkout) and "
            "MIGRATION_BITBAKE_DIR (bitbake checkout next to it)"
        )
    oecore_p, bitbake_p = Path(oecore).resolve(), Path(bitbake).resolve()
    for path, what in (
        (oecore_p / "oe-init-build-env", "OE-core"),
        (bitbake_p / "bin/bitbake", "BitBake"),
    ):
        if not path.exists():
            pytest.fail(f"{what} checkout not found: {path} does not exist")
    if bitbake_p != (oecore_p.parent / "bitbake").resolve():
        pytest.fail(
            f"MIGRATION_BITBAKE_DIR={bitbake_p} must be {oecore_p.parent / 'bitbake'}: "
            "oe-init-build-env (run by kas) looks for bitbake next to openembedded-core"
        )
    user: Optional[str] = None
    if os.getuid() == 0:
        user = _env("MIGRATION_OE_USER") or "oeuser"
        ensure_user(user)
        hidden = unreadable_for(
            user, [oecore_p / "oe-init-build-env", bitbake_p / "bin" / "bitbake"]
        )
        if hidden:
            pytest.fail(
                f"BitBake runs as the unprivileged user {user}, who cannot read "
                f"{', '.join(map(str, hidden))}: give it read and search access (chmod o+rx on "
                "the checkout and every directory above it), or move the checkouts out of a "
                "private home or 0700 temp dir"
            )
    workdir = Path(_env("MIGRATION_OE_WORKDIR") or "/tmp/migration-oe")
    build = OEBuild(oecore_p, bitbake_p, user, workdir)
    build.prepare()
    return build
