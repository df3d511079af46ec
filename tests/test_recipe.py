# SPDX-License-Identifier: MIT
"""The runner recipe ships what the layer holds: every source file listed, the build-only
modules left out, its version the package's."""

import re
import subprocess
import sys
from pathlib import Path
from typing import List, Set

import pytest

LAYER = Path(__file__).resolve().parent.parent
RECIPE_DIR = LAYER / "recipes-core" / "migration"
INSTALL = RECIPE_DIR / "files" / "migration-install.sh"

sys.path.insert(0, str(LAYER / "lib"))
import migration  # noqa: E402
from migration import tasksources  # noqa: E402
from test_imports import HOST_ONLY  # noqa: E402


def recipe() -> Path:
    recipes = sorted(RECIPE_DIR.glob("migration_*.bb"))
    assert len(recipes) == 1, recipes
    return recipes[0]


def src_uri() -> List[str]:
    text = recipe().read_text()
    match = re.search(r'^SRC_URI = "(.*?)"', text, re.MULTILINE | re.DOTALL)
    assert match, "no SRC_URI = in the recipe"
    return [item[len("file://") :] for item in match.group(1).replace("\\", " ").split()]


def tracked(directory: Path) -> Set[str]:
    proc = subprocess.run(
        ["git", "ls-files", "-z", "."], cwd=directory, capture_output=True, text=True, check=True
    )
    return {f for f in proc.stdout.split("\0") if f}


def build_only() -> Set[str]:
    match = re.search(r'^build_only="(.*)"$', INSTALL.read_text(), re.MULTILINE)
    assert match
    return {name.removeprefix("./") for name in match.group(1).split()}


def test_src_uri_lists_every_module_but_the_build_only_ones() -> None:
    modules = {f"migration/{f}" for f in tracked(LAYER / "lib" / "migration") if f.endswith(".py")}
    listed = {f for f in src_uri() if f.startswith("migration/")}
    assert listed == modules - {f"migration/{name}" for name in build_only()}


def test_src_uri_lists_every_file_of_files_dir() -> None:
    listed = {f for f in src_uri() if not f.startswith("migration/")}
    assert listed == tracked(RECIPE_DIR / "files")


def test_build_only_modules_are_the_ones_the_target_never_imports() -> None:
    assert build_only() == HOST_ONLY


def test_install_leaves_the_build_only_modules_out(tmp_path: Path) -> None:
    dest = tmp_path / "image"
    subprocess.run(
        ["sh", str(INSTALL), str(LAYER / "lib" / "migration"), str(RECIPE_DIR / "files")],
        env={"D": str(dest), "PATH": "/usr/bin:/bin", "MIGRATION_INIT": "systemd"},
        check=True,
    )
    installed = {p.name for p in (dest / "usr/lib/migration/migration").glob("*.py")}
    assert "runner.py" in installed
    assert not installed & HOST_ONLY


def test_recipe_version_is_the_package_version() -> None:
    assert recipe().name == f"migration_{migration.__version__}.bb"


def test_task_sources_follow_what_each_entry_point_imports() -> None:
    lint = tasksources.task_modules("lint_task")
    install = tasksources.task_modules("install")
    image = tasksources.task_modules("image_manifest")
    # The lint runs lint.py and scripts.py; only the install writes drop-ins and fragments.
    assert {"bitbake", "lint", "scripts", "noop", "errors"} <= set(lint)
    assert "units" not in lint and "manifest" not in lint
    assert {"units", "manifest", "state"} <= set(install)
    assert {"manifest", "compat", "state"} <= set(image) and "units" not in image
    # Never the runner's own modules: a change there re-runs no migration recipe's tasks.
    for modules in (lint, install, image):
        assert not {"runner", "execute", "cli"} & set(modules)


def test_task_sources_are_existing_files_with_checksum_flags() -> None:
    entries = tasksources.file_checksums("install").split()
    assert entries and all(e.endswith(":True") for e in entries)
    assert all(Path(e[: -len(":True")]).is_file() for e in entries)
    assert any(e.endswith("/units.py:True") for e in entries)


def test_task_sources_reject_an_unknown_entry_point() -> None:
    with pytest.raises(ValueError, match="no function"):
        tasksources.task_modules("no_such_function")


def test_every_glue_function_that_reads_the_datastore_is_one_bitbake_scans() -> None:
    """BitBake's addpylib skips functions whose names start with "_": a d.getVar or
    oe.qa.handle_error there would reach no task signature."""
    import ast

    tree = ast.parse((LAYER / "lib" / "migration" / "bitbake.py").read_text())
    hidden = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("_"):
            continue
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Attribute)
                and sub.attr in {"getVar", "getVarFlag", "handle_error"}
                and node.name != "_fatal"  # parse time only: FILE names the recipe
            ):
                hidden.append(f"{node.name} calls {sub.attr}")
    assert hidden == []
