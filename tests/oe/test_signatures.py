# SPDX-License-Identifier: MIT
"""Task signatures follow what the tasks read (issue 11), measured with `bitbake -S none`.

Each configuration is one `bitbake -R CONF -S none TARGETS` in the test layer's build dir; the
task hashes are read from the names of the sigdata files it writes
(tmp/stamps/<arch>/<pn>/<pv>.<task>.sigdata.<hash>). A changed configuration makes BitBake parse
every recipe again (about 2 minutes on 2 cores the first time; the parse cache keeps each
configuration for the next run).
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from oebuild import OEBuild

pytestmark = pytest.mark.oe

TARGETS = ("exampled", "migration-interp", "migration-oneway", "migration-patched", "migration")
Hashes = Dict[Tuple[str, str], str]
STAMPS = "tmp*/stamps"
"""TMPDIR is tmp, or tmp-glibc where TCLIBCAPPEND is set (scarthgap's nodistro)."""


@pytest.fixture(scope="module")
def builddir(oe: OEBuild) -> Path:
    return oe.extra_builddir("build-test-layer", [oe.test_layer])


def signatures(oe: OEBuild, builddir: Path, name: str, conf: str = "") -> Hashes:
    """{(pn, task): hash} of TARGETS' tasks with ``conf`` added to the configuration."""
    for pn in TARGETS:
        for old in builddir.glob(f"{STAMPS}/*/{pn}/*.sigdata.*"):
            old.unlink()
    postfile = builddir / "conf" / f"sigtest-{name}.conf"
    postfile.write_text(conf)
    postfile.chmod(0o644)
    proc = oe.run(f"bitbake -R {postfile} -S none {' '.join(TARGETS)}", builddir=builddir)
    assert proc.returncode == 0, proc.stdout
    found: Hashes = {}
    for pn in TARGETS:
        for path in builddir.glob(f"{STAMPS}/*/{pn}/*.sigdata.*"):
            match = re.match(r".*\.(do_[a-z_]+)\.sigdata\.([0-9a-f]{64})$", path.name)
            if match:
                found[(pn, match.group(1))] = match.group(2)
    assert ("exampled", "do_migration_lint") in found, sorted(found)
    return found


def sigdata(builddir: Path, pn: str, task: str) -> Path:
    (path,) = builddir.glob(f"{STAMPS}/*/{pn}/*.{task}.sigdata.*")
    return path


@pytest.fixture(scope="module")
def base(oe: OEBuild, builddir: Path) -> Hashes:
    return signatures(oe, builddir, "base")


def test_moving_a_lint_check_to_warn_qa_reruns_the_lint(
    oe: OEBuild, builddir: Path, base: Hashes
) -> None:
    warn = signatures(
        oe,
        builddir,
        "warn-errexit",
        'ERROR_QA:remove = "migration-errexit"\nWARN_QA:append = " migration-errexit"\n',
    )
    assert warn[("exampled", "do_migration_lint")] != base[("exampled", "do_migration_lint")]


def test_insane_skip_of_the_package_reruns_the_lint(
    oe: OEBuild, builddir: Path, base: Hashes
) -> None:
    skip = signatures(
        oe, builddir, "skip-shellcheck", 'INSANE_SKIP:exampled = "migration-shellcheck"\n'
    )
    assert skip[("exampled", "do_migration_lint")] != base[("exampled", "do_migration_lint")]


def test_raising_the_compat_level_rebuilds_only_recipes_with_one_way_scripts(
    oe: OEBuild, builddir: Path, base: Hashes
) -> None:
    raised = signatures(oe, builddir, "compat-level", 'MIGRATION_COMPAT_LEVEL = "7"\n')
    # migration-interp has no one-way script, exampled one with a pinned level (NAME:1).
    for pn in ("migration-interp", "exampled"):
        for task in ("do_migration_lint", "do_install"):
            assert raised[(pn, task)] == base[(pn, task)], (pn, task)
    # migration-oneway's convert.sh takes the distro's level: its tasks follow it.
    assert raised[("migration-oneway", "do_install")] != base[("migration-oneway", "do_install")]


@pytest.fixture
def layer_file(oe: OEBuild) -> Iterator[Path]:
    """Restores the layer copy's lib/migration after a test edits it."""
    lib = oe.layer / "lib" / "migration"
    saved = {p: p.read_bytes() for p in lib.glob("*.py")}
    yield lib
    for path, data in saved.items():
        path.write_bytes(data)
    shutil.rmtree(lib / "__pycache__" / "junk", ignore_errors=True)
    (lib / "__pycache__" / "junk.cpython-99.pyc").unlink(missing_ok=True)


def test_a_change_of_an_imported_module_reruns_the_tasks_that_import_it(
    oe: OEBuild, builddir: Path, base: Hashes, layer_file: Path
) -> None:
    with open(layer_file / "units.py", "a") as f:
        f.write("\n# a change of the gating drop-in's module\n")
    changed = signatures(oe, builddir, "base")
    assert changed[("exampled", "do_install")] != base[("exampled", "do_install")]
    # The lint does not import units.py.
    assert changed[("exampled", "do_migration_lint")] == base[("exampled", "do_migration_lint")]
    with open(layer_file / "lint.py", "a") as f:
        f.write("\n# a change of the lint\n")
    changed = signatures(oe, builddir, "base")
    assert changed[("exampled", "do_migration_lint")] != base[("exampled", "do_migration_lint")]


def test_the_runner_sources_checksum_ignores_bytecode(
    oe: OEBuild, builddir: Path, base: Hashes, layer_file: Path
) -> None:
    cache = layer_file / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "junk.cpython-99.pyc").write_bytes(b"host bytecode")
    assert signatures(oe, builddir, "base")[("migration", "do_fetch")] == base[
        ("migration", "do_fetch")
    ]
    with open(layer_file / "runner.py", "a") as f:
        f.write("\n# a change of the runner\n")
    changed = signatures(oe, builddir, "base")
    assert changed[("migration", "do_fetch")] != base[("migration", "do_fetch")]
    # ...and no migration recipe's task: the runner is not part of the build-time code.
    for task in ("do_migration_lint", "do_install"):
        assert changed[("exampled", task)] == base[("exampled", task)], task


def dumpsig(oe: OEBuild, builddir: Path, path: Path) -> str:
    proc = oe.run(f"bitbake-dumpsig {path}", builddir=builddir)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def test_the_lint_signature_names_the_host_tools_and_their_versions(
    oe: OEBuild, builddir: Path, base: Hashes
) -> None:
    signatures(oe, builddir, "base")
    text = dumpsig(oe, builddir, sigdata(builddir, "exampled", "do_migration_lint"))
    match = re.search(r"^Variable MIGRATION_LINT_TOOLS value is (.*)$", text, re.MULTILINE)
    assert match, text
    tools = match.group(1)
    assert "sh=" in tools and "bash=bash" in tools, tools
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        version = subprocess.run(
            [shellcheck, "--version"], capture_output=True, text=True, check=True
        ).stdout
        line = next(x for x in version.splitlines() if x.startswith("version:"))
        assert f"shellcheck=shellcheck {line}" in tools, tools
    else:
        assert "shellcheck=none" in tools, tools
    no_shellcheck = signatures(oe, builddir, "no-shellcheck", 'MIGRATION_SHELLCHECK = "no"\n')
    assert (
        no_shellcheck[("exampled", "do_migration_lint")] != base[("exampled", "do_migration_lint")]
    )


def lint_dependencies(oe: OEBuild, builddir: Path, pn: str) -> str:
    text = dumpsig(oe, builddir, sigdata(builddir, pn, "do_migration_lint"))
    match = re.search(r"^Tasks this task depends on: (.*)$", text, re.MULTILINE)
    assert match, text
    return match.group(1)


def test_the_lint_runs_after_do_patch_when_there_are_patches(
    oe: OEBuild, builddir: Path, base: Hashes
) -> None:
    signatures(oe, builddir, "base")
    assert ":do_patch" in lint_dependencies(oe, builddir, "migration-patched")
    # Without patches, no native tool (quilt-native) stands between the sources and the lint.
    assert lint_dependencies(oe, builddir, "exampled") == "['exampled:do_unpack']"


def test_test_roots_change_no_task_of_a_build(oe: OEBuild, builddir: Path, base: Hashes) -> None:
    """MIGRATION_TEST_ROOTS (the opt-in do_migration_test) costs a build nothing: set for every
    recipe, no task of TARGETS changes its hash and none is added to the build."""
    roots = signatures(
        oe, builddir, "test-roots", 'MIGRATION_TEST_ROOTS = "/srv/release-1.0/rootfs"\n'
    )
    assert roots == base
