# SPDX-License-Identifier: MIT
"""Host tools the tests call: found in the test suite's own venv first (scripts/run-tests
installs the PyPI ones there, not on PATH), then on PATH. A missing tool skips the test on a
developer's machine but fails it in CI (CI=true), where scripts/run-tests installs every tool:
a skip there would hide a broken install step."""

import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import pytest


def find(name: str) -> Optional[str]:
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def tool(name: str, hint: str) -> str:
    """The tool's path, or skip (fail in CI) with how to install it."""
    path = find(name)
    if path is not None:
        return path
    msg = f"{name} is not installed ({hint})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{msg}; CI installs it (scripts/run-tests), so this is a failure")
    pytest.skip(msg)
