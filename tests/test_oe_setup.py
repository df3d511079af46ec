# SPDX-License-Identifier: MIT
"""The set-up of tests/oe that needs no OE-core: the unprivileged BitBake user's git."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "oe"))
from oebuild import ensure_user, unreadable_for, user_git

USER = "oeuser"


@pytest.fixture
def private_cwd(tmp_path: Path) -> Path:
    """A 0700 working directory the BitBake user cannot enter (a private home, a temp dir)."""
    if os.getuid() != 0:
        pytest.skip("runs BitBake's user through runuser: needs root (tests/oe's set-up does)")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    cwd = os.getcwd()
    os.chdir(private)
    yield private
    os.chdir(cwd)


def test_the_users_git_works_from_a_directory_it_cannot_enter(private_cwd: Path) -> None:
    ensure_user(USER)  # sets the git identity with user_git: exit 128 here before the fix
    proc = user_git(USER, "--get", "user.name")
    assert (proc.returncode, proc.stdout.strip()) == (0, "meta-migration tests")


def test_unreadable_checkouts_are_named(private_cwd: Path) -> None:
    ensure_user(USER)
    inside = private_cwd / "openembedded-core" / "oe-init-build-env"
    inside.parent.mkdir()
    inside.write_text("")
    readable = Path(__file__)
    assert unreadable_for(USER, [inside, readable]) == [inside]
