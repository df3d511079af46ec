# SPDX-License-Identifier: MIT
"""The build-time lint (migration.lint) and `migration lint`: every check, on real scripts.

`sh -n`, `bash -n` and ShellCheck are the real programs; the ShellCheck tests skip when the
binary is not installed (it is optional on a build host as well).
"""

import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from migration import compat, lint
from tools import tool

GOOD_SH = b"#!/bin/sh\nset -eu\nmkdir -p /var/lib/foo\n"
GOOD_BASH = b'#!/bin/bash\nset -euo pipefail\nfor i in {1..3}; do echo "$i"; done\n'
GOOD_PY = b"#!/usr/bin/env python3\nprint('moved')\n"

@pytest.fixture
def needs_shellcheck() -> None:
    tool("shellcheck", "apt-get install shellcheck")


def checks(findings: List[lint.Finding]) -> List[str]:
    return [f.check for f in findings]


@pytest.mark.parametrize("data", [GOOD_SH, GOOD_BASH, GOOD_PY])
def test_good_scripts_have_no_findings(data: bytes) -> None:
    assert lint.lint_script("move-data", data, shellcheck=lint.find_shellcheck()) == []


@pytest.mark.parametrize("data", [b"", b"\n  \n"])
def test_empty(data: bytes) -> None:
    assert checks(lint.lint_script("a.sh", data)) == ["empty"]


def test_no_shebang() -> None:
    (finding,) = lint.lint_script("a.sh", b"set -e\necho hi\n")
    assert finding.check == "shebang"
    assert finding.line == 1
    assert str(finding) == (
        "a.sh:1: no shebang line (#!): the runner cannot tell which interpreter to use "
        "[migration-shebang]"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"#!/bin/sh\nset -e\n:\n",
        b"#!/bin/sh\nset -eu\n:\n",
        b"#!/bin/sh\n  set -x -e\n:\n",
        b"#!/bin/bash\nset -euo pipefail\n:\n",
        b"#!/bin/sh\nset -o errexit\n:\n",
        b"#!/bin/sh -e\n:\n",
        b"#!/bin/sh -ex\n:\n",
        b"#!/usr/bin/env bash\nset -e\n:\n",
    ],
)
def test_errexit_forms_accepted(data: bytes) -> None:
    assert "errexit" not in checks(lint.lint_script("a.sh", data))


@pytest.mark.parametrize(
    "data",
    [
        b"#!/bin/sh\necho no errexit\n",
        b"#!/bin/sh\n# set -e\n:\n",
        b"#!/bin/sh\necho set -e\n",
        b"#!/bin/sh\nset -u\n:\n",
        b"#!/usr/bin/env bash\n:\n",
        b"#!/bin/sh --noprofile\n:\n",
    ],
)
def test_errexit_missing(data: bytes) -> None:
    findings = lint.lint_script("a.sh", data)
    assert "errexit" in checks(findings)


def test_errexit_not_required_for_python() -> None:
    assert lint.lint_script("a.py", b"#!/usr/bin/python3\nimport os\n") == []


@pytest.mark.parametrize(
    "data",
    [
        b"#!/usr/bin/env python3\nimport os\nif True\n    os.rename('a', 'b')\n",
        b"#!/usr/bin/python3\nprint('unclosed)\n",
        b"#!/bin/python\ndef f(:\n",
    ],
)
def test_python_syntax_error_fails_with_the_line(data: bytes) -> None:
    (syntax,) = [f for f in lint.lint_script("convert.py", data) if f.check == "syntax"]
    version = "{}.{}".format(*sys.version_info[:2])
    assert syntax.message.startswith(f"Python {version} cannot compile it (line ")
    assert syntax.line in (2, 3)


def test_python_is_compiled_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = f"#!/usr/bin/python3\nopen({str(marker)!r}, 'w').close()\n".encode()
    assert lint.lint_script("touch.py", data) == []
    assert not marker.exists()


def test_python_warnings_are_not_findings() -> None:
    assert lint.lint_script("w.py", b"#!/usr/bin/python3\nprint('\\d')\n") == []


def test_sh_syntax_error_names_the_line() -> None:
    findings = [f for f in lint.lint_script("a.sh", b"#!/bin/sh\nset -e\nif true\n") if True]
    (syntax,) = [f for f in findings if f.check == "syntax"]
    assert syntax.message.startswith("`sh -n` fails: ")
    assert syntax.line is not None


def test_bash_syntax_checked_with_bash() -> None:
    # Valid bash, invalid POSIX sh: a bash script must be checked with bash -n.
    bash_only = b"#!/bin/bash\nset -e\nf() { [[ -n $1 ]] && echo ${1//a/b}; }\na=(1 2)\n"
    assert "syntax" not in checks(lint.lint_script("a.sh", bash_only))
    broken = b"#!/bin/bash\nset -e\nfor x in; do\n"
    (syntax,) = [f for f in lint.lint_script("b.sh", broken) if f.check == "syntax"]
    assert syntax.message.startswith("`bash -n` fails: ")


def test_posix_sh_rejects_bash_arrays() -> None:
    data = b"#!/bin/sh\nset -e\na=(1 2)\n"
    assert "syntax" in checks(lint.lint_script("a.sh", data))


def test_crlf() -> None:
    data = b"#!/bin/sh\nset -e\r\necho hi\r\n"
    (crlf,) = [f for f in lint.lint_script("a.sh", data) if f.check == "crlf"]
    assert crlf.line == 2
    assert "dos2unix" in crlf.message


def test_crlf_shebang_still_found() -> None:
    # "#!/bin/sh\r" must not also count as a missing shebang or a syntax error.
    data = b"#!/bin/sh\r\nset -e\r\n:\r\n"
    assert checks(lint.lint_script("a.sh", data)) == ["crlf"]


@pytest.mark.parametrize("name", [".hidden.sh", "fix.sh~", "fix.sh.dpkg-new", "fix.sh.orig"])
def test_names_the_runner_skips(name: str) -> None:
    findings = lint.lint_script(name, GOOD_SH)
    assert checks(findings) == ["name"]
    assert "silently skips" in findings[0].message


@pytest.mark.parametrize("name", ["move data.sh", "-move.sh", "mové.sh"])
def test_names_the_runner_refuses(name: str) -> None:
    findings = lint.lint_script(name, GOOD_SH)
    assert checks(findings) == ["name"]
    assert "refuses" in findings[0].message


def test_installed_name_is_checked_instead_of_the_source_name() -> None:
    inst = lint.installed_name("50", "foo", "fix.sh~")
    assert inst == "50-foo-fix.sh~"
    (finding,) = lint.lint_script("fix.sh~", GOOD_SH, installed_name=inst)
    assert finding.message.startswith("installed as 50-foo-fix.sh~: ")
    # A source name with a leading dot is fine once it carries the priority prefix.
    assert lint.lint_script(".x.sh", GOOD_SH, installed_name="50-foo-.x.sh") == []


def test_installed_name_orders_by_priority_then_package() -> None:
    names = [
        lint.installed_name("50", "zlib", "a.sh"),
        lint.installed_name("10", "zz", "z.sh"),
        lint.installed_name("50", "abc", "b/z.sh"),
    ]
    assert sorted(names) == ["10-zz-z.sh", "50-abc-z.sh", "50-zlib-a.sh"]


@pytest.mark.parametrize("priority", ["5", "100", "ab", "", " 5"])
def test_priority_must_be_two_digits(priority: str) -> None:
    with pytest.raises(ValueError, match="two digits"):
        lint.installed_name(priority, "foo", "a.sh")


def test_duplicates_name_every_origin() -> None:
    (dup,) = lint.check_duplicates(
        [("50-foo-fix.sh", "script a/fix.sh"), ("50-foo-x.sh", "x"), ("50-foo-fix.sh", "b/fix.sh")]
    )
    assert dup.check == "duplicate"
    assert dup.name == "50-foo-fix.sh"
    assert "script a/fix.sh and b/fix.sh" in dup.message


def test_lint_scripts_finds_duplicate_base_names() -> None:
    findings = lint.lint_scripts([("a/fix.sh", GOOD_SH), ("b/fix.sh", GOOD_SH)])
    assert checks(findings) == ["duplicate"]


@pytest.mark.usefixtures("needs_shellcheck")
def test_shellcheck_findings_are_reported_per_line() -> None:
    data = b"#!/bin/sh\nset -e\nrm -rf $DIR/\n"
    findings = lint.lint_script("a.sh", data, shellcheck=lint.find_shellcheck())
    sc = [f for f in findings if f.check == "shellcheck"]
    assert sc, findings
    assert all(f.line == 3 for f in sc)
    assert any("SC2115" in f.message for f in sc)


@pytest.mark.usefixtures("needs_shellcheck")
def test_shellcheck_uses_the_script_dialect() -> None:
    bash = b"#!/bin/bash\nset -e\nif [[ -n ${1:-} ]]; then echo yes; fi\n"
    assert lint.lint_script("a.sh", bash, shellcheck=lint.find_shellcheck()) == []
    posix = b"#!/bin/sh\nset -e\nif [[ -n ${1:-} ]]; then echo yes; fi\n"
    findings = lint.lint_script("a.sh", posix, shellcheck=lint.find_shellcheck())
    assert any(f.check == "shellcheck" and "SC3010" in f.message for f in findings)


def test_shellcheck_skipped_without_binary() -> None:
    data = b"#!/bin/sh\nset -e\nrm -rf $DIR/\n"
    assert lint.lint_script("a.sh", data, shellcheck=None) == []


def test_qa_names_cover_every_check() -> None:
    assert {lint.Finding(c, "x", "m").qa_name for c in lint.CHECKS} == {
        "migration-" + c for c in lint.CHECKS
    }


def class_qa_list(name: str) -> set:
    bbclass = (Path(__file__).resolve().parent.parent / "classes/migration.bbclass").read_text()
    (line,) = [x for x in bbclass.splitlines() if x.startswith(name + ":append")]
    return set(line.split('"')[1].split())


def test_every_check_is_an_error_or_a_warning_by_default_in_the_class() -> None:
    # A QA name missing from ERROR_QA (and WARN_QA) is silently ignored by oe.qa.handle_error.
    # migration-package: not a check of the scripts but of the package split (do_package).
    errors = {f"migration-{c}" for c in lint.CHECKS if c not in lint.WARNINGS}
    assert class_qa_list("ERROR_QA") == errors | {"migration-package"}
    assert class_qa_list("WARN_QA") == {"migration-idempotence"}


def test_the_glue_routes_every_check_by_its_qa_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """bitbake.report hands each finding to oe.qa.handle_error under its own QA name (a name
    missing there raises KeyError; a wrong one goes to the wrong QA list)."""
    import types

    from migration import bitbake

    calls = []
    qa = types.ModuleType("oe.qa")
    qa.handle_error = lambda name, msg, d: calls.append((name, msg))  # type: ignore[attr-defined]
    oe = types.ModuleType("oe")
    oe.qa = qa  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "oe", oe)
    monkeypatch.setitem(sys.modules, "oe.qa", qa)

    class Datastore:
        def getVar(self, name: str) -> str:  # BitBake's name
            return {"PN": "foo"}.get(name, "")

    for check in lint.CHECKS:
        bitbake.report(Datastore(), lint.Finding(check, "a.sh", "msg", 3), "foo")
    assert calls == [(f"migration-{c}", "foo: a.sh:3: msg") for c in lint.CHECKS]


# `migration lint FILE...`: the command line authors run before building.


def run_lint(*args: str) -> subprocess.CompletedProcess:
    lib = Path(__file__).resolve().parent.parent / "lib"
    return subprocess.run(
        [sys.executable, "-m", "migration", "lint", "--no-shellcheck", *args],
        cwd=lib,
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_clean_file_exits_0(tmp_path: Path) -> None:
    script = tmp_path / "move.sh"
    script.write_bytes(GOOD_SH)
    proc = run_lint(str(script))
    assert (proc.returncode, proc.stdout) == (0, "")


def test_cli_findings_exit_1(tmp_path: Path) -> None:
    script = tmp_path / "move.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\r\n")
    proc = run_lint(str(script))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"{script}:2: CRLF (DOS) line endings: convert with dos2unix [migration-crlf]",
        f"{script}: shell script without errexit: add `set -e` (or `set -eu`) after the "
        "shebang [migration-errexit]",
    ]


def test_cli_checks_installed_name_with_package(tmp_path: Path) -> None:
    script = tmp_path / "move.sh"
    script.write_bytes(GOOD_SH)
    assert run_lint("--package", "foo bar", str(script)).returncode == 1
    assert run_lint("--package", "foo", "--priority", "10", str(script)).returncode == 0


def test_cli_duplicates_across_files(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "fix.sh").write_bytes(GOOD_SH)
    proc = run_lint(str(tmp_path / "a" / "fix.sh"), str(tmp_path / "b" / "fix.sh"))
    assert proc.returncode == 1
    assert "[migration-duplicate]" in proc.stdout


def test_cli_prints_idempotence_findings_as_warnings_and_exits_0(tmp_path: Path) -> None:
    script = tmp_path / "move.sh"
    script.write_bytes(b"#!/bin/sh\nset -eu\nmkdir /var/lib/foo\n")
    proc = run_lint(str(script))
    assert proc.returncode == 0
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"{script}:3: warning: `mkdir` without `-p` fails ")
    assert line.endswith(" [migration-idempotence]")
    assert run_lint("--strict", str(script)).returncode == 1


def test_cli_warnings_do_not_hide_errors(tmp_path: Path) -> None:
    script = tmp_path / "move.sh"
    script.write_bytes(b"#!/bin/sh\nmkdir /var/lib/foo\n")
    proc = run_lint(str(script))
    assert proc.returncode == 1
    assert [ln.rsplit(" ", 1)[-1] for ln in proc.stdout.splitlines()] == [
        "[migration-errexit]",
        "[migration-idempotence]",
    ]


@pytest.mark.parametrize("args", [(), ("/nonexistent/x.sh",), ("--priority", "7", "x.sh")])
def test_cli_usage_errors_exit_2(args: tuple) -> None:
    assert run_lint(*args).returncode == 2


# MIGRATION_ONEWAY (migration.bbclass): which scripts are one-way, at which level.


def oneway(
    scripts: dict, default: str = "", own: Optional[dict] = None, level: str = "0"
) -> Tuple[dict, List[Tuple[str, str, str]]]:
    levels, findings = lint.resolve_oneway(scripts, default, own or {}, level)
    return levels, [(pkg, f.name, str(f)) for pkg, f in findings]


def test_oneway_pinned_and_default_levels() -> None:
    levels, findings = oneway({"foo": ["a.sh", "b.sh", "c.py"]}, "a.sh:2 c.py", level="3")
    assert findings == []
    assert levels == {"foo": {"a.sh": 2, "c.py": 3}}


def test_oneway_nothing_set() -> None:
    assert oneway({"foo": ["a.sh"]}) == ({"foo": {}}, [])


def test_oneway_without_level_needs_compat_level() -> None:
    levels, findings = oneway({"foo": ["a.sh"]}, "a.sh", level="0")
    assert levels == {"foo": {}}
    assert findings == [
        (
            "foo",
            "a.sh",
            "a.sh: one-way (MIGRATION_ONEWAY) without a level of its own, and "
            "MIGRATION_COMPAT_LEVEL = '0' is not a whole number >= 1: set MIGRATION_COMPAT_LEVEL "
            "in the distro or pin a.sh:LEVEL [migration-oneway]",
        )
    ]


@pytest.mark.parametrize("pinned", ["0", "x", "", "-1", "1.5", "²"])
def test_oneway_pinned_level_must_be_a_whole_number_from_1(pinned: str) -> None:
    levels, findings = oneway({"foo": ["a.sh"]}, f"a.sh:{pinned}", level="5")
    assert levels == {"foo": {}}
    assert findings == [
        (
            "foo",
            "a.sh",
            f"a.sh: one-way level {pinned!r} in MIGRATION_ONEWAY is not a whole number >= 1: "
            "pin a.sh:LEVEL with LEVEL 1 or more [migration-oneway]",
        )
    ]


def test_oneway_name_not_in_scripts() -> None:
    levels, findings = oneway({"foo": ["a.sh"]}, "b.sh:1 a.sh:1")
    assert levels == {"foo": {"a.sh": 1}}
    assert findings == [
        (
            "foo",
            "b.sh",
            "b.sh: named in MIGRATION_ONEWAY but not in MIGRATION_SCRIPTS of package foo (a.sh): "
            "a one-way script must be one of them [migration-oneway]",
        )
    ]


def test_oneway_two_levels_for_one_script() -> None:
    levels, findings = oneway({"foo": ["a.sh"]}, "a.sh:1 a.sh:2")
    assert levels == {"foo": {"a.sh": 1}}
    assert [f[2] for f in findings] == [
        "a.sh: MIGRATION_ONEWAY gives it two levels, 1 and 2: keep one [migration-oneway]"
    ]
    # The same level twice (an :append repeated) is harmless.
    assert oneway({"foo": ["a.sh"]}, "a.sh:1 a.sh:1") == ({"foo": {"a.sh": 1}}, [])


def test_oneway_per_package() -> None:
    scripts = {"foo": ["a.sh"], "foo-tools": ["t.sh"], "foo-extra": ["e.sh"]}
    # MIGRATION_ONEWAY applies to the packages without their own; each name to its package.
    levels, findings = oneway(scripts, "a.sh e.sh:4", {"foo-tools": "t.sh:2"}, level="1")
    assert findings == []
    assert levels == {"foo": {"a.sh": 1}, "foo-tools": {"t.sh": 2}, "foo-extra": {"e.sh": 4}}
    # A package's own value names only its own scripts.
    _, findings = oneway(scripts, "", {"foo-tools": "a.sh:1"})
    assert [f[:2] for f in findings] == [("foo-tools", "a.sh")]
    assert "not in MIGRATION_SCRIPTS of package foo-tools (t.sh)" in findings[0][2]
    assert "MIGRATION_ONEWAY:foo-tools" in findings[0][2]
    # MIGRATION_ONEWAY naming a script of a package that has its own value.
    _, findings = oneway(scripts, "t.sh:1", {"foo-tools": "t.sh:2"})
    assert [f[:2] for f in findings] == [("foo", "t.sh")]
    assert "not in MIGRATION_SCRIPTS of packages foo foo-extra (a.sh e.sh)" in findings[0][2]


@pytest.mark.parametrize(
    ("text", "level"), [("", 0), ("0", 0), ("3", 3), ("12", 12), ("x", None), ("-1", None)]
)
def test_image_compat_level(text: str, level: Optional[int]) -> None:
    value, problem = lint.image_compat_level(text)
    if level is None:
        assert value == 0
        assert problem == f"MIGRATION_COMPAT_LEVEL = {text!r} is not a whole number >= 0 " + (
            "(the highest one-way level of the image's releases; 0: none)"
        )
    else:
        assert (value, problem) == (level, None)


@pytest.mark.parametrize(
    ("floor", "version", "ok"),
    [
        ("", None, True),
        ("", "1.0", True),
        ("2.0", "2.0", True),
        ("2.0", "2.1", True),
        ("2.0", "10.0", True),
        ("2.0", "2.0~rc1", False),
        ("2.0", "1.9", False),
    ],
)
def test_floor_against_image_version(floor: str, version: Optional[str], ok: bool) -> None:
    problem = lint.floor_problem(floor, version, compat.compare_versions)
    if ok:
        assert problem is None
    else:
        assert problem == (
            f"MIGRATION_UPGRADE_FLOOR = {floor!r} is newer than the image's own version "
            f"(os-release VERSION_ID {version!r}): no device could upgrade to this image; set the "
            "floor to this release or an older one"
        )


@pytest.mark.parametrize("version", ["v3.0", "release-3", "3.²", "3.0 beta"])
def test_floor_needs_a_comparable_version_id(version: str) -> None:
    """dpkg orders `v3.0` after `2.0` (letters after digits) and any floor after `v1.0`: the
    build refuses a VERSION_ID that is not comparable with the floor (the runner would refuse
    every upgrade from this image)."""
    problem = lint.floor_problem("2.0", version, compat.compare_versions)
    assert problem is not None and "cannot be compared with it" in problem
    assert lint.floor_problem("2.0", "3.0", compat.compare_versions) is None


def test_floor_needs_a_version_id() -> None:
    problem = lint.floor_problem("2.0", None, compat.compare_versions)
    assert problem is not None
    assert problem.startswith("MIGRATION_UPGRADE_FLOOR = '2.0', but the image's os-release ")
    assert "has no VERSION_ID" in problem
