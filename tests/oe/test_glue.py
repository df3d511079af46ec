# SPDX-License-Identifier: MIT
"""migration.bitbake with BitBake's real datastore and OE-core's oe.qa, without a build.

What a full build would do after do_unpack (install into D, the package fragment, the gating
drop-in) and at rootfs time (the image manifest, its errors as a QA failure) needs native tools
built from network sources, so these tests call the same functions on a datastore made by
bb.data.init(), with the libraries of the checkouts in MIGRATION_BITBAKE_DIR and
MIGRATION_OECORE_DIR. Skipped when those are unset.
"""

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from migration import units

pytestmark = pytest.mark.oe


@pytest.fixture(scope="module")
def bbmods() -> Any:
    oecore, bitbake = (
        os.environ.get("MIGRATION_OECORE_DIR"),
        os.environ.get("MIGRATION_BITBAKE_DIR"),
    )
    if not oecore or not bitbake:
        pytest.skip(
            "needs MIGRATION_OECORE_DIR and MIGRATION_BITBAKE_DIR (BitBake's and oe's libs)"
        )
    for path in (os.path.join(bitbake, "lib"), os.path.join(oecore, "meta", "lib")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import bb
    import bb.data

    _give_back_generated_files(Path(bitbake))
    return bb


def _give_back_generated_files(bitbake: Path) -> None:
    """Importing bb generates lib/bb/pysh/pyshtables.py (a parser table) when it is missing; made
    by root here, it would keep the BitBake user of the other OE tests from regenerating it."""
    tables = bitbake / "lib/bb/pysh/pyshtables.py"
    if os.getuid() == 0 and tables.exists():
        owner = tables.parent.stat()
        os.chown(tables, owner.st_uid, owner.st_gid)


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def messages(bbmods: Any) -> Iterator[Messages]:
    handler = Messages()
    logger = logging.getLogger("BitBake")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def datastore(bb: Any, tmp_path: Path, pn: str, **values: str) -> Any:
    d = bb.data.init()
    defaults = {
        "PN": pn,
        "PV": "2.0",
        "PR": "r0",
        "FILE": f"/layer/recipes-x/{pn}/{pn}_2.0.bb",
        "WORKDIR": str(tmp_path / pn),
        "UNPACKDIR": str(tmp_path / pn / "sources"),
        "D": str(tmp_path / pn / "image"),
        "T": str(tmp_path / pn / "temp"),
        "sysconfdir": "/etc",
        "datadir": "/usr/share",
        "systemd_system_unitdir": "/usr/lib/systemd/system",
        "DISTRO_FEATURES": "systemd",
        "MIGRATION_PACKAGE": pn,
        "MIGRATION_PACKAGES": pn,
        "MIGRATION_PRIORITY": "50",
        "MIGRATION_SHELLCHECK": "no",
        "ERROR_QA": "migration-missing migration-empty migration-shebang migration-errexit "
        "migration-syntax migration-shellcheck migration-crlf migration-name "
        "migration-duplicate migration-oneway migration-manifest migration-package",
        "WARN_QA": "migration-idempotence",
    }
    defaults.update(values)
    for key, value in defaults.items():
        d.setVar(key, value)
    os.makedirs(d.getVar("UNPACKDIR"), exist_ok=True)
    os.makedirs(d.getVar("T"), exist_ok=True)
    return d


def unpack(d: Any, name: str, data: bytes) -> None:
    path = Path(d.getVar("UNPACKDIR")) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


GOOD = b"#!/bin/sh\nset -eu\nchown -R foo:foo /var/lib/foo\n"


def test_install_writes_scripts_fragment_and_gate(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    d = datastore(
        bbmods, tmp_path, "foo", MIGRATION_SCRIPTS="b.sh a.sh", MIGRATION_BEFORE="foo.service"
    )
    unpack(d, "a.sh", GOOD)
    unpack(d, "b.sh", GOOD + b"# b\n")
    glue.install(d)
    image = Path(d.getVar("D"))
    scripts = image / "etc/migration.d"
    assert sorted(p.name for p in scripts.iterdir()) == ["50-foo-a.sh", "50-foo-b.sh"]
    assert (scripts / "50-foo-a.sh").read_bytes() == GOOD
    assert os.stat(scripts / "50-foo-a.sh").st_mode & 0o777 == 0o755
    fragment = json.loads((image / "usr/share/migration/packages/foo.json").read_text())
    assert fragment["package"] == "foo"
    assert fragment["version"] == "2.0-r0"
    assert [m["name"] for m in fragment["migrations"]] == ["50-foo-a.sh", "50-foo-b.sh"]
    dropin = image / "usr/lib/systemd/system/foo.service.d/50-migration-foo.conf"
    assert dropin.read_text() == units.gate_dropin("foo")


def test_no_gate_without_systemd(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    d = datastore(
        bbmods,
        tmp_path,
        "foo",
        MIGRATION_SCRIPTS="a.sh",
        MIGRATION_BEFORE="foo.service",
        DISTRO_FEATURES="sysvinit",
    )
    unpack(d, "a.sh", GOOD)
    glue.install(d)
    assert not (Path(d.getVar("D")) / "usr/lib/systemd").exists()


def test_per_package_variables_fall_back(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    d = datastore(
        bbmods,
        tmp_path,
        "foo",
        MIGRATION_PACKAGES="foo foo-tools",
        MIGRATION_SCRIPTS="a.sh",
        **{"MIGRATION_SCRIPTS:foo-tools": "t.sh", "MIGRATION_PRIORITY:foo-tools": "10"},
    )
    configs = glue.package_configs(d)
    assert [(c.package, c.priority, c.scripts) for c in configs] == [
        ("foo", "50", ["a.sh"]),
        ("foo-tools", "10", ["t.sh"]),
    ]


def test_lint_task_reports_each_finding_and_fails(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    d = datastore(bbmods, tmp_path, "foo", MIGRATION_SCRIPTS="ok.sh bad.sh gone.sh")
    unpack(d, "ok.sh", GOOD)
    unpack(d, "bad.sh", b"#!/bin/sh\necho no errexit\r\n")
    with pytest.raises(bbmods.BBHandledException):
        glue.lint_task(d)
    errors = [line for line in messages.lines if line.startswith("QA Issue")]
    assert errors == [
        "QA Issue: foo: bad.sh:2: CRLF (DOS) line endings: convert with dos2unix [migration-crlf]",
        "QA Issue: foo: bad.sh: shell script without errexit: add `set -e` (or `set -eu`) "
        "after the shebang [migration-errexit]",
        f"QA Issue: foo: gone.sh: listed in MIGRATION_SCRIPTS but not in {d.getVar('UNPACKDIR')}: "
        "add file://gone.sh to SRC_URI [migration-missing]",
    ]


def test_lint_findings_follow_warn_qa_and_insane_skip(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    d = datastore(bbmods, tmp_path, "foo", MIGRATION_SCRIPTS="bad.sh", INSANE_SKIP="migration-crlf")
    d.setVar("ERROR_QA", "")
    d.setVar("WARN_QA", "migration-errexit")
    unpack(d, "bad.sh", b"#!/bin/sh\necho no errexit\r\n")
    glue.lint_task(d)  # warnings only: the task succeeds
    assert [line for line in messages.lines if line.startswith("QA Issue")] == [
        "QA Issue: foo: bad.sh: shell script without errexit: add `set -e` (or `set -eu`) "
        "after the shebang [migration-errexit]"
    ]


def test_idempotence_findings_are_warnings_by_default(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    d = datastore(bbmods, tmp_path, "foo", MIGRATION_SCRIPTS="add.sh")
    unpack(d, "add.sh", b"#!/bin/sh\nset -eu\nuseradd foo\n")
    glue.lint_task(d)  # a warning: the task succeeds
    (issue,) = [line for line in messages.lines if line.startswith("QA Issue")]
    assert issue.startswith("QA Issue: foo: add.sh:3: `useradd` fails when the user exists")
    assert issue.endswith("[migration-idempotence]")
    d.setVar("ERROR_QA", d.getVar("ERROR_QA") + " migration-idempotence")
    d.setVar("WARN_QA", "")
    with pytest.raises(bbmods.BBHandledException):
        glue.lint_task(d)


def test_image_manifest_from_installed_packages(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    rootfs = tmp_path / "rootfs"
    for pn in ("foo", "bar"):
        d = datastore(bbmods, tmp_path, pn, MIGRATION_SCRIPTS="a.sh", D=str(rootfs))
        unpack(d, "a.sh", GOOD + pn.encode())
        glue.install(d)
    image = datastore(bbmods, tmp_path, "demo-image", IMAGE_ROOTFS=str(rootfs))
    glue.image_manifest(image)
    manifest = json.loads((rootfs / "usr/share/migration/manifest.json").read_text())
    assert [(m["name"], m["package"]) for m in manifest["migrations"]] == [
        ("50-bar-a.sh", "bar"),
        ("50-foo-a.sh", "foo"),
    ]


def test_image_manifest_fails_when_two_packages_ship_one_name(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    rootfs = tmp_path / "rootfs"
    # Package "a-b" with script "c.sh" and package "a" with script "b-c.sh": both 50-a-b-c.sh.
    for pn, script in (("a-b", "c.sh"), ("a", "b-c.sh")):
        d = datastore(bbmods, tmp_path, pn, MIGRATION_SCRIPTS=script, D=str(rootfs))
        unpack(d, script, GOOD)
        glue.install(d)
    image = datastore(bbmods, tmp_path, "demo-image", IMAGE_ROOTFS=str(rootfs))
    with pytest.raises(bbmods.BBHandledException):
        glue.image_manifest(image)
    assert [line for line in messages.lines if line.startswith("QA Issue")] == [
        "QA Issue: demo-image: image manifest: migration 50-a-b-c.sh is shipped by two "
        "packages: a-b and a [migration-manifest]"
    ]


def test_image_without_migrations_is_left_alone(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    image = datastore(bbmods, tmp_path, "core-image-minimal", IMAGE_ROOTFS=str(rootfs))
    glue.image_manifest(image)
    assert not (rootfs / "usr/share/migration").exists()


def test_setup_warns_when_no_package_has_scripts(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    d = datastore(bbmods, tmp_path, "foo", PACKAGES="foo", MIGRATION_SCRIPTS="")
    glue.setup(d)
    assert messages.lines == [
        "/layer/recipes-x/foo/foo_2.0.bb inherits migration but no package in "
        "MIGRATION_PACKAGES (foo) has MIGRATION_SCRIPTS: set MIGRATION_SCRIPTS"
    ]


def test_setup_packages_files_and_rdepends(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    files = tmp_path / "files"
    files.mkdir()
    (files / "a.sh").write_bytes(GOOD)
    (files / "b.py").write_bytes(b"#!/usr/bin/env python3\nprint(1)\n")
    d = datastore(
        bbmods,
        tmp_path,
        "foo",
        PACKAGES="foo-dev foo",
        FILESPATH=str(files),
        MIGRATION_PACKAGES="foo-migration",
        MIGRATION_SCRIPTS="a.sh b.py",
        MIGRATION_BEFORE="foo.service",
        MIGRATION_RUNNER="migration",
    )
    d.setVarFlag("MIGRATION_INTERPRETER_RDEPENDS", "python3", "python3-core")
    glue.setup(d)
    assert d.getVar("PACKAGES").split() == ["foo-migration", "foo-dev", "foo"]
    assert d.getVar("FILES:foo-migration").split() == [
        "/etc/migration.d/50-foo-migration-a.sh",
        "/etc/migration.d/50-foo-migration-b.py",
        "/usr/share/migration/packages/foo-migration.json",
        "/usr/lib/systemd/system/foo.service.d/50-migration-foo-migration.conf",
    ]
    assert d.getVar("RDEPENDS:foo-migration").split() == ["migration", "python3-core"]
    assert "MIGRATION_SCRIPTS:foo-migration" in d.getVarFlag("do_migration_lint", "vardeps")
    assert "MIGRATION_PRIORITY:foo-migration" in d.getVarFlag("migration_install", "vardeps")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"MIGRATION_PRIORITY": "5"},
            "MIGRATION_PRIORITY = '5' for package foo is not two digits",
        ),
        ({"MIGRATION_BEFORE": "foo"}, "MIGRATION_BEFORE of package foo names 'foo', which is not"),
        (
            {"MIGRATION_TEST_ROOTS": "/srv/old old/rootfs"},
            "MIGRATION_TEST_ROOTS names 'old/rootfs', which is not an absolute path",
        ),
    ],
)
def test_setup_misconfiguration_is_fatal(
    bbmods: Any, tmp_path: Path, messages: Messages, values: dict, message: str
) -> None:
    from migration import bitbake as glue

    d = datastore(bbmods, tmp_path, "foo", PACKAGES="foo", MIGRATION_SCRIPTS="a.sh", **values)
    with pytest.raises(bbmods.BBHandledException):
        glue.setup(d)
    assert any(
        line.startswith("/layer/recipes-x/foo/foo_2.0.bb: " + message) for line in messages.lines
    ), messages.lines


# One-way migrations (MIGRATION_ONEWAY) and the image's compatibility settings (issue 5).


def test_install_records_oneway_levels_in_the_fragment(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    d = datastore(
        bbmods,
        tmp_path,
        "foo",
        MIGRATION_SCRIPTS="a.sh b.sh c.sh",
        MIGRATION_ONEWAY="a.sh:2 c.sh",
        MIGRATION_COMPAT_LEVEL="3",
    )
    for name in ("a.sh", "b.sh", "c.sh"):
        unpack(d, name, GOOD + name.encode())
    glue.install(d)
    fragment = json.loads(
        (Path(d.getVar("D")) / "usr/share/migration/packages/foo.json").read_text()
    )
    assert [(m["name"], m.get("oneway")) for m in fragment["migrations"]] == [
        ("50-foo-a.sh", 2),
        ("50-foo-b.sh", None),
        ("50-foo-c.sh", 3),
    ]


def test_lint_task_fails_on_bad_oneway_naming_recipe_and_script(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    d = datastore(
        bbmods,
        tmp_path,
        "foo",
        MIGRATION_SCRIPTS="a.sh b.sh",
        MIGRATION_ONEWAY="a.sh gone.sh:1 b.sh:x",
        MIGRATION_COMPAT_LEVEL="0",
    )
    unpack(d, "a.sh", GOOD)
    unpack(d, "b.sh", GOOD)
    with pytest.raises(bbmods.BBHandledException):
        glue.lint_task(d)
    assert [line for line in messages.lines if line.startswith("QA Issue")] == [
        "QA Issue: foo: a.sh: one-way (MIGRATION_ONEWAY) without a level of its own, and "
        "MIGRATION_COMPAT_LEVEL = '0' is not a whole number >= 1: set MIGRATION_COMPAT_LEVEL in "
        "the distro or pin a.sh:LEVEL [migration-oneway]",
        "QA Issue: foo: gone.sh: named in MIGRATION_ONEWAY but not in MIGRATION_SCRIPTS of "
        "package foo (a.sh b.sh): a one-way script must be one of them [migration-oneway]",
        "QA Issue: foo: b.sh: one-way level 'x' in MIGRATION_ONEWAY is not a whole number >= 1: "
        "pin b.sh:LEVEL with LEVEL 1 or more [migration-oneway]",
    ]


def test_setup_makes_oneway_recipes_depend_on_the_compat_level(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    plain = datastore(bbmods, tmp_path, "foo", PACKAGES="foo", MIGRATION_SCRIPTS="a.sh")
    glue.setup(plain)
    assert "MIGRATION_ONEWAY:foo" in plain.getVarFlag("migration_install", "vardeps")
    # A distro raising its level rebuilds only the recipes with one-way scripts.
    assert "MIGRATION_COMPAT_LEVEL" not in plain.getVarFlag("migration_install", "vardeps")
    oneway = datastore(
        bbmods,
        tmp_path,
        "bar",
        PACKAGES="bar",
        MIGRATION_SCRIPTS="a.sh",
        **{"MIGRATION_ONEWAY:bar": "a.sh"},
    )
    glue.setup(oneway)
    for task in ("do_migration_lint", "migration_install"):
        assert "MIGRATION_COMPAT_LEVEL" in oneway.getVarFlag(task, "vardeps").split()
    # A pinned level (NAME:LEVEL) does not take the distro's.
    pinned = datastore(
        bbmods, tmp_path, "baz", PACKAGES="baz", MIGRATION_SCRIPTS="a.sh", MIGRATION_ONEWAY="a.sh:2"
    )
    glue.setup(pinned)
    for task in ("do_migration_lint", "migration_install"):
        assert "MIGRATION_COMPAT_LEVEL" not in pinned.getVarFlag(task, "vardeps").split()


def install_into(bbmods: Any, tmp_path: Path, rootfs: Path, pn: str, **values: str) -> None:
    from migration import bitbake as glue

    d = datastore(bbmods, tmp_path, pn, MIGRATION_SCRIPTS="a.sh", D=str(rootfs), **values)
    unpack(d, "a.sh", GOOD + pn.encode())
    glue.install(d)


def os_release(rootfs: Path, version_id: str) -> None:
    """os-release as OE-core's recipe installs it: /etc/os-release a relative symlink."""
    lib = rootfs / "usr/lib/os-release"
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_text(f'ID=nodistro\nNAME="OpenEmbedded"\nVERSION_ID="{version_id}"\n')
    (rootfs / "etc").mkdir(parents=True, exist_ok=True)
    os.symlink("../usr/lib/os-release", rootfs / "etc/os-release")


def test_image_manifest_carries_level_floor_and_markers(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    rootfs = tmp_path / "rootfs"
    install_into(bbmods, tmp_path, rootfs, "foo", MIGRATION_ONEWAY="a.sh:2")
    install_into(bbmods, tmp_path, rootfs, "bar")
    os_release(rootfs, "3.1")
    image = datastore(
        bbmods,
        tmp_path,
        "demo-image",
        IMAGE_ROOTFS=str(rootfs),
        MIGRATION_COMPAT_LEVEL="1",
        MIGRATION_UPGRADE_FLOOR="3.0",
        MIGRATION_DATA_MARKERS="/var/lib/foo /etc/foo.conf",
    )
    glue.image_manifest(image)
    manifest = json.loads((rootfs / "usr/share/migration/manifest.json").read_text())
    assert manifest["compat_level"] == 2  # the highest of the image's and its scripts' levels
    assert manifest["upgrade_floor"] == "3.0"
    assert manifest["data_markers"] == ["/var/lib/foo", "/etc/foo.conf"]
    assert [(m["name"], m.get("oneway")) for m in manifest["migrations"]] == [
        ("50-bar-a.sh", None),
        ("50-foo-a.sh", 2),
    ]


def test_image_manifest_defaults_write_level_0_and_no_floor(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    rootfs = tmp_path / "rootfs"
    install_into(bbmods, tmp_path, rootfs, "foo")
    image = datastore(bbmods, tmp_path, "demo-image", IMAGE_ROOTFS=str(rootfs))
    glue.image_manifest(image)  # no os-release needed without a floor
    manifest = json.loads((rootfs / "usr/share/migration/manifest.json").read_text())
    assert manifest["compat_level"] == 0
    assert "upgrade_floor" not in manifest
    assert "data_markers" not in manifest


@pytest.mark.parametrize(
    ("values", "version_id", "message"),
    [
        (
            {"MIGRATION_UPGRADE_FLOOR": "3.2"},
            "3.1",
            "MIGRATION_UPGRADE_FLOOR = '3.2' is newer than the image's own version (os-release "
            "VERSION_ID '3.1'): no device could upgrade to this image; set the floor to this "
            "release or an older one",
        ),
        (
            {"MIGRATION_UPGRADE_FLOOR": "3.0"},
            None,
            "MIGRATION_UPGRADE_FLOOR = '3.0', but the image's os-release (/etc/os-release or "
            "/usr/lib/os-release) has no VERSION_ID: the runner records the image version from "
            "it; give the image a VERSION_ID (DISTRO_VERSION in OE-core's os-release recipe) or "
            "unset MIGRATION_UPGRADE_FLOOR",
        ),
        (
            {"MIGRATION_COMPAT_LEVEL": "two"},
            "3.1",
            "MIGRATION_COMPAT_LEVEL = 'two' is not a whole number >= 0 (the highest one-way "
            "level of the image's releases; 0: none)",
        ),
    ],
)
def test_image_settings_that_cannot_work_fail_the_image(
    bbmods: Any,
    tmp_path: Path,
    messages: Messages,
    values: dict,
    version_id: Optional[str],
    message: str,
) -> None:
    from migration import bitbake as glue

    rootfs = tmp_path / "rootfs"
    install_into(bbmods, tmp_path, rootfs, "foo")
    if version_id:
        os_release(rootfs, version_id)
    image = datastore(bbmods, tmp_path, "demo-image", IMAGE_ROOTFS=str(rootfs), **values)
    with pytest.raises(bbmods.BBHandledException):
        glue.image_manifest(image)
    assert [line for line in messages.lines if line.startswith("QA Issue")] == [
        f"QA Issue: demo-image: image manifest: {message} [migration-manifest]"
    ]


def test_image_marker_must_be_absolute(bbmods: Any, tmp_path: Path, messages: Messages) -> None:
    from migration import bitbake as glue

    rootfs = tmp_path / "rootfs"
    install_into(bbmods, tmp_path, rootfs, "foo")
    image = datastore(
        bbmods, tmp_path, "demo-image", IMAGE_ROOTFS=str(rootfs), MIGRATION_DATA_MARKERS="var/x"
    )
    with pytest.raises(bbmods.BBHandledException):
        glue.image_manifest(image)
    (issue,) = [line for line in messages.lines if line.startswith("QA Issue")]
    assert issue.startswith("QA Issue: demo-image: image manifest: ")
    assert "var/x" in issue
    assert issue.endswith("[migration-manifest]")


@pytest.mark.parametrize(
    ("src_uri", "patched"),
    [
        ("file://a.sh", False),
        ("file://a.sh file://0001-fix.patch", True),
        ("file://fix.diff.gz", True),
        ("file://notes.patch;apply=no", False),
        ("file://fix.txt;apply=yes", True),
        ("https://example.com/foo-1.0.tar.gz file://a.sh", False),
    ],
)
def test_the_lint_waits_for_do_patch_only_when_there_are_patches(
    bbmods: Any, tmp_path: Path, src_uri: str, patched: bool
) -> None:
    from migration import bitbake as glue

    d = datastore(
        bbmods, tmp_path, "foo", PACKAGES="foo", MIGRATION_SCRIPTS="a.sh", SRC_URI=src_uri
    )
    d.setVarFlag("do_migration_lint", "deps", ["do_unpack"])
    glue.setup(d)
    assert ("do_patch" in d.getVarFlag("do_migration_lint", "deps")) == patched


def split_into(pkgdest: Path, package: str, path: str, data: bytes) -> None:
    """A file as populate_packages leaves it: PKGDEST/<package>/<path>."""
    target = pkgdest / package / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def test_packaging_takes_interpreters_from_the_packaged_scripts(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    """Scripts from a tarball (not in FILESPATH at parse time) still get their interpreter."""
    from migration import bitbake as glue

    pkgdest = tmp_path / "packages-split"
    d = datastore(
        bbmods,
        tmp_path,
        "foo",
        PACKAGES="foo",
        PKGDEST=str(pkgdest),
        FILESPATH=str(tmp_path / "nowhere"),
        MIGRATION_SCRIPTS="foo-1.0/a.bash foo-1.0/b.py foo-1.0/c.sh",
        MIGRATION_RUNNER="migration",
    )
    d.setVarFlag("MIGRATION_INTERPRETER_RDEPENDS", "bash", "bash")
    d.setVarFlag("MIGRATION_INTERPRETER_RDEPENDS", "python3", "python3-core")
    glue.setup(d)
    assert d.getVar("RDEPENDS:foo").split() == ["migration"]  # nothing found at parse time
    split_into(pkgdest, "foo", "/etc/migration.d/50-foo-a.bash", b"#!/bin/bash\nset -e\n")
    split_into(pkgdest, "foo", "/etc/migration.d/50-foo-b.py", b"#!/usr/bin/env python3\n")
    split_into(pkgdest, "foo", "/etc/migration.d/50-foo-c.sh", b"#!/bin/sh\nset -e\n")
    split_into(pkgdest, "foo", "/usr/share/migration/packages/foo.json", b"{}")
    glue.check_packaging(d)
    assert d.getVar("RDEPENDS:foo").split() == ["migration", "bash", "python3-core"]
    glue.check_packaging(d)  # idempotent: nothing added twice
    assert d.getVar("RDEPENDS:foo").split() == ["migration", "bash", "python3-core"]
    assert not [m for m in messages.lines if "QA Issue" in m]


def test_packaging_fails_when_an_earlier_package_takes_the_scripts(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    """PACKAGES += "${PN}-tools" with the scripts in -tools: ${PN}'s FILES take them first."""
    from migration import bitbake as glue

    pkgdest = tmp_path / "packages-split"
    d = datastore(
        bbmods,
        tmp_path,
        "foo",
        PACKAGES="foo foo-tools",
        PKGDEST=str(pkgdest),
        **{"FILES:foo": "/usr/bin/* /etc"},
        MIGRATION_PACKAGES="foo-tools",
        MIGRATION_SCRIPTS="a.sh",
    )
    glue.setup(d)
    assert d.getVar("PACKAGES").split() == ["foo", "foo-tools"]
    split_into(pkgdest, "foo", "/etc/migration.d/50-foo-tools-a.sh", GOOD)
    split_into(pkgdest, "foo-tools", "/usr/share/migration/packages/foo-tools.json", b"{}")
    with pytest.raises(bbmods.BBHandledException):
        glue.check_packaging(d)
    (issue,) = [m for m in messages.lines if "QA Issue" in m]
    assert issue == (
        "QA Issue: foo: /etc/migration.d/50-foo-tools-a.sh of package foo-tools went to package "
        "foo, which comes before it in PACKAGES and whose FILES (/usr/bin/* /etc) take it: list "
        'foo-tools first (PACKAGE_BEFORE_PN += "foo-tools", or PACKAGES =+ "foo-tools" instead '
        "of +=) [migration-package]"
    )


def test_multilib_variant_ships_the_same_files_as_the_base_package(
    bbmods: Any, tmp_path: Path
) -> None:
    """foo and lib32-foo: one migration (installed once, run once), not 50-foo-x and
    50-lib32-foo-x; the files are byte for byte the same, so rpm installs both variants."""
    from migration import bitbake as glue

    trees = {}
    for pn, mlprefix in (("foo", ""), ("lib32-foo", "lib32-")):
        d = datastore(
            bbmods,
            tmp_path / pn,
            pn,
            MLPREFIX=mlprefix,
            PACKAGES=pn,
            MIGRATION_SCRIPTS="a.sh",
            MIGRATION_BEFORE="foo.service",
        )
        glue.setup(d)
        assert d.getVar("FILES:" + pn).split() == [
            "/etc/migration.d/50-foo-a.sh",
            "/usr/share/migration/packages/foo.json",
            "/usr/lib/systemd/system/foo.service.d/50-migration-foo.conf",
        ]
        unpack(d, "a.sh", GOOD)
        glue.install(d)
        image = Path(d.getVar("D"))
        trees[pn] = {
            str(p.relative_to(image)): p.read_bytes() for p in image.rglob("*") if p.is_file()
        }
    assert trees["lib32-foo"] == trees["foo"]
    fragment = json.loads(trees["foo"]["usr/share/migration/packages/foo.json"])
    assert fragment["package"] == "foo"


def _class_function(name: str) -> str:
    """The body of a shell function of classes/migration.bbclass, as the class sets it."""
    import re

    text = (Path(__file__).resolve().parents[2] / "classes/migration.bbclass").read_text()
    m = re.search(rf"^{name}\(\) \{{\n(.*?)^\}}$", text, re.M | re.S)
    assert m, name
    return m.group(1)


def test_the_migration_snippets_come_first_in_the_maintainer_scripts(
    bbmods: Any, tmp_path: Path
) -> None:
    """A recipe's own pkg_postinst (restarting its service, ending in `exit 0`) and pkg_postrm
    come after the class's snippets, and systemd.bbclass's part, which
    systemd_populate_packages appends after add_postinsts ran, after everything: run as the
    package manager would, with $D empty and at rootfs time."""
    import subprocess

    from migration import bitbake as glue

    tools = tmp_path / "tools"
    tools.mkdir()
    log = tmp_path / "log"
    for tool in ("migration", "python3", "systemctl"):
        (tools / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>{log}\n')
        (tools / tool).chmod(0o755)
    d = datastore(bbmods, tmp_path, "foo", PACKAGES="foo", MIGRATION_SCRIPTS="a.sh",
                  sbindir=str(tools), nonarch_libdir="/usr/lib")  # fmt: skip
    for fn in ("migration_postinst", "migration_rootfs_manifest", "migration_refresh_manifest"):
        d.setVar(fn, _class_function(fn))
    d.setVar("pkg_postinst:foo", "#!/bin/sh\nsystemctl restart foo.service\nexit 0\n")
    d.setVar("pkg_postrm:foo", "\tsystemctl daemon-reload\n\texit 0\n")  # a function body
    glue.add_postinsts(d)
    # systemd_populate_packages (meta/classes-recipe/systemd.bbclass), which runs next
    postinst = d.getVar("pkg_postinst:foo") or "#!/bin/sh\n"
    d.setVar("pkg_postinst:foo", postinst + "systemctl systemd-part\n")
    for script, on_target in (("postinst", "migration postinst --package foo"),
                              ("postrm", "migration manifest")):  # fmt: skip
        text = d.getVar(f"pkg_{script}:foo").strip()
        if not text.startswith("#!"):  # package_deb (and _ipk, _rpm): a #! line first
            text = "#!/bin/sh\n" + text
        path = tmp_path / script
        path.write_text(text + "\n")
        for dest, first in (("", on_target), (str(tmp_path / "rootfs"), "python3 -I -B -c ")):
            log.write_text("")
            res = subprocess.run(["sh", str(path)], env={"D": dest, "PATH": f"{tools}:/bin"},
                                 capture_output=True, text=True, check=False)  # fmt: skip
            assert res.returncode == 0, res.stderr
            calls = log.read_text().splitlines()
            assert calls[0].startswith(first), (script, dest, calls)
            # the recipe's own text ran after ours, and ended the script there
            assert calls[-1] == ("systemctl restart foo.service" if script == "postinst"
                                 else "systemctl daemon-reload"), calls  # fmt: skip


# do_migration_test (MIGRATION_TEST_ROOTS): `migration test` at build time (issue 12).


def tasks(d: Any) -> List[str]:
    return list(d.getVar("__BBTASKS", False) or [])


def test_the_test_task_exists_only_with_test_roots(bbmods: Any, tmp_path: Path) -> None:
    from migration import bitbake as glue

    d = datastore(bbmods, tmp_path, "foo", PACKAGES="foo", MIGRATION_SCRIPTS="a.sh")
    glue.setup(d)
    assert "do_migration_test" not in tasks(d)
    d = datastore(
        bbmods, tmp_path, "foo", PACKAGES="foo", MIGRATION_SCRIPTS="a.sh",
        MIGRATION_TEST_ROOTS="/srv/old-1.0 /srv/old-1.1",
    )  # fmt: skip
    glue.setup(d)
    assert "do_migration_test" in tasks(d)
    # After the lint, so on the bytes it read (patched, when there are patches).
    assert d.getVarFlag("do_migration_test", "deps") == ["do_migration_lint"]


def oldroot(tmp_path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from test_migration_test import make_oldroot
    finally:
        del sys.path[0]
    return make_oldroot(tmp_path / "old")


IDEMPOTENT = b"#!/bin/sh\nset -eu\nmkdir -p /var/lib/app/v2\n"
REPEATS = b"#!/bin/sh\nset -eu\necho x >> /var/lib/app/data\n"


def trial_datastore(bbmods: Any, tmp_path: Path, roots: str, **scripts: bytes) -> Any:
    d = datastore(
        bbmods,
        tmp_path,
        "foo",
        PACKAGES="foo",
        MIGRATION_SCRIPTS=" ".join(scripts),
        MIGRATION_TEST_ROOTS=roots,
    )
    for name, data in scripts.items():
        unpack(d, name, data)
    return d


def test_the_test_task_passes_idempotent_scripts_with_the_report_in_the_log(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    old = oldroot(tmp_path)
    d = trial_datastore(bbmods, tmp_path, str(old), **{"v2.sh": IDEMPOTENT})
    glue.test_task(d)
    (report,) = [line for line in messages.lines if line.startswith("migration test of foo")]
    assert report.startswith(f"migration test of foo on {old}:\n")
    assert "  50-foo-v2.sh: ok" in report  # the installed name
    assert "added /var/lib/app/v2" in report
    assert report.endswith("verdict: idempotent")
    assert not (old / "var/lib/app/v2").exists()


def test_the_test_task_fails_naming_recipe_tree_script_and_path(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    old = oldroot(tmp_path)
    d = trial_datastore(bbmods, tmp_path, str(old), **{"v2.sh": IDEMPOTENT, "append.sh": REPEATS})
    with pytest.raises(bbmods.BBHandledException):
        glue.test_task(d)
    assert (
        f"foo: migration test on {old}: not idempotent: 50-foo-append.sh changed "
        "/var/lib/app/data again (50-foo-append.sh is append.sh of package foo)"
    ) in messages.lines[-1].splitlines()
    report = next(line for line in messages.lines if line.startswith("migration test of foo"))
    assert "changed /var/lib/app/data: content" in report


def test_the_test_task_tries_every_tree(bbmods: Any, tmp_path: Path, messages: Messages) -> None:
    from migration import bitbake as glue

    good = oldroot(tmp_path / "a")
    bad = oldroot(tmp_path / "b")
    (bad / "var/lib/app/data").unlink()  # the script's `cat` fails on this release's tree
    script = b"#!/bin/sh\nset -eu\ncat /var/lib/app/data >/dev/null\n"
    d = trial_datastore(bbmods, tmp_path, f"{good} {bad}", **{"read.sh": script})
    with pytest.raises(bbmods.BBHandledException):
        glue.test_task(d)
    assert [line for line in messages.lines if line.startswith("migration test of foo")] != []
    failure = messages.lines[-1]
    assert f"foo: migration test on {bad}: failed: 50-foo-read.sh failed in the first run" in (
        failure
    )
    assert str(good) + ":" not in failure


def test_the_test_task_names_the_cause_when_it_cannot_test(
    bbmods: Any, tmp_path: Path, messages: Messages
) -> None:
    from migration import bitbake as glue

    old = oldroot(tmp_path)
    (old / "bin/sh").unlink()
    d = trial_datastore(bbmods, tmp_path, str(old), **{"v2.sh": IDEMPOTENT})
    with pytest.raises(bbmods.BBHandledException):
        glue.test_task(d)
    assert messages.lines[-1].startswith(
        f"foo: migration test cannot run on {old}: OLDROOT has no /bin/sh"
    ), messages.lines
    d = trial_datastore(bbmods, tmp_path, str(tmp_path / "missing"), **{"v2.sh": IDEMPOTENT})
    with pytest.raises(bbmods.BBHandledException):
        glue.test_task(d)
    assert messages.lines[-1] == (
        f"foo: migration test cannot run on {tmp_path / 'missing'}: "
        f"OLDROOT {tmp_path / 'missing'} is not a directory"
    )
