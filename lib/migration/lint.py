# SPDX-License-Identifier: MIT
"""Build-time checks of migration scripts: pure functions from (name, bytes) to findings.

Two callers, one set of rules: ``classes/migration.bbclass`` (through :mod:`migration.bitbake`,
which reports each finding as an OE QA issue named ``migration-<check>``) and ``migration lint
FILE...`` on any host, so authors can check a script before they build.

Checks (the ``check`` field of a :class:`Finding`, also the suffix of the QA name):

``empty``       the file is empty or only whitespace
``shebang``     no ``#!`` line: the runner cannot tell the interpreter
``errexit``     a shell script that does not turn on errexit (``set -e``, ``set -eu``,
                ``set -o errexit``, ``#!/bin/sh -e``); the runner adds it, but a script that
                relies on it misbehaves when run by hand or at update time by other tools
``syntax``      ``sh -n`` (``bash -n`` for bash scripts) rejects the script, or the Python running
                the lint cannot compile a Python script
``shellcheck``  a ShellCheck finding of severity warning or worse; only when the ``shellcheck``
                binary is available (it is optional on a build host)
``crlf``        CRLF line endings (``/bin/sh^M: bad interpreter``)
``name``        a name the runner would skip or refuse
                (:func:`.scripts.invalid_name_reason`, :func:`.scripts.is_ignored`)
``duplicate``   two scripts with the same installed name in one set
``missing``     a listed script that is not there (reported by the callers, which know the paths)
``oneway``      a ``MIGRATION_ONEWAY`` entry that names no listed script or has no valid level
                (build time only: :func:`resolve_oneway`)
``idempotence`` a shell pattern that changes or fails on a second run (``>>``, ``useradd``,
                ``mv``, ``mkdir`` without ``-p``, ``ln`` without ``-f``...) without a guard
                (:mod:`.idempotence`); a warning, not an error (:data:`WARNINGS`)

The syntax and ShellCheck checks run external programs (``sh``, ``bash``, ``shellcheck``) found in
``PATH``; a missing ``sh``/``bash`` skips that check with a note finding of its own.
"""

import re
import shutil
import subprocess
import sys
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from . import compat, scripts

CHECKS = (
    "missing",
    "empty",
    "shebang",
    "errexit",
    "syntax",
    "shellcheck",
    "crlf",
    "name",
    "duplicate",
    "oneway",
    "idempotence",
)
"""Every check name; the QA name of a check is ``migration-<check>``."""

WARNINGS = frozenset(("idempotence",))
"""Checks that are warnings by default (WARN_QA in the class; `migration lint` prints them as
warnings and exits 0 for them unless --strict): static help that may be wrong, not a defect."""

POSIX_SHELLS = frozenset(("sh", "dash", "ash", "posh"))
"""Shells whose scripts ``sh -n`` (the build host's POSIX shell) checks."""

SHELLCHECK_SEVERITY = "warning"
"""Lowest ShellCheck severity reported (error, warning, info, style)."""

_SET_ERREXIT = re.compile(
    rb"^\s*set\s+(?:[-+][A-Za-z]*\s+)*(?:-[A-Za-z]*e[A-Za-z]*\b|-o\s+errexit\b)", re.MULTILINE
)
_SHELLCHECK_LINE = re.compile(r"^[^:]*:(\d+):(\d+): (\w+): (.*)$")


DEFAULT_PRIORITY = "50"
"""MIGRATION_PRIORITY when a recipe sets none."""

PRIORITY_RE = re.compile(r"\A[0-9][0-9]\Z")
"""A priority is two digits, so that byte-wise order of installed names is priority order."""


def installed_name(priority: str, package: str, script: str) -> str:
    """The name of a script in /etc/migration.d: ``<priority>-<package>-<script base name>``.

    The runner applies scripts in byte-wise order of these names, so the global order is: by
    priority (two digits, 00 first), then by package name, then by script name within the
    package. The package name keeps two recipes' scripts apart; a clash is still possible across
    packages whose names and script names overlap at a hyphen (package ``a-b`` script ``c.sh`` and
    package ``a`` script ``b-c.sh``), which the package manager and the image manifest refuse,
    naming both packages.
    """
    if not PRIORITY_RE.match(priority):
        raise ValueError(f"priority {priority!r} is not two digits (00-99)")
    return f"{priority}-{package}-{script.rsplit('/', 1)[-1]}"


class Finding(NamedTuple):
    """One problem in one script."""

    check: str
    """One of :data:`CHECKS`."""
    name: str
    """The script's name as the author wrote it (or the installed name for ``duplicate``)."""
    message: str
    """What is wrong and how to fix it, without the script name."""
    line: Optional[int] = None
    """1-based line number when the problem has one."""

    @property
    def qa_name(self) -> str:
        """The OE QA issue name (ERROR_QA/WARN_QA/INSANE_SKIP) of this finding."""
        return "migration-" + self.check

    @property
    def is_warning(self) -> bool:
        """True for the checks of :data:`WARNINGS`."""
        return self.check in WARNINGS

    def describe(self) -> str:
        """``name[:line]: message``: the finding without its QA name."""
        where = f"{self.name}:{self.line}" if self.line else self.name
        return f"{where}: {self.message}"

    def __str__(self) -> str:
        """``name[:line]: [warning: ]message [migration-<check>]``: how `migration lint` prints
        it (BitBake's QA output says WARNING itself, so :meth:`describe` does not)."""
        where = f"{self.name}:{self.line}" if self.line else self.name
        level = "warning: " if self.is_warning else ""
        return f"{where}: {level}{self.message} [{self.qa_name}]"


def shebang(data: bytes) -> Optional[List[str]]:
    """The words of the ``#!`` line (``['/bin/sh', '-e']``), None without one."""
    if not data.startswith(b"#!"):
        return None
    line = data[2:].split(b"\n", 1)[0].rstrip(b"\r")
    return line.decode("utf-8", "replace").split()


def interpreter_name(data: bytes) -> str:
    """Base name of the program that runs the script, as the runner sees it: 'sh', 'bash',
    'python3'... (:func:`migration.scripts.interpreter`, which looks through ``env`` and
    ``busybox``)."""
    return scripts.interpreter(data).name


def is_shell(data: bytes) -> bool:
    """True when the runner starts the script with a shell (and errexit)."""
    return scripts.interpreter(data).shell


def syntax_checker(data: bytes) -> Optional[str]:
    """'bash' for bash scripts, 'sh' for POSIX-shell scripts, None for shells with a syntax of
    their own (ksh, zsh...), which are not checked."""
    name = interpreter_name(data)
    if name == "bash":
        return "bash"
    if name in POSIX_SHELLS:
        return "sh"
    return None


def has_errexit(data: bytes) -> bool:
    """True when a shell script turns on errexit itself.

    Counts ``#!/bin/sh -e`` (any option word with ``e``), ``set -e``, ``set -eu``,
    ``set -euo pipefail`` and ``set -o errexit`` at the start of a line; comments do not count.
    """
    words = shebang(data) or []
    for word in words[1:]:
        if word.startswith("-") and not word.startswith("--") and "e" in word[1:]:
            return True
    return _SET_ERREXIT.search(data) is not None


def _first_crlf_line(data: bytes) -> Optional[int]:
    pos = data.find(b"\r\n")
    if pos < 0:
        return None
    return data.count(b"\n", 0, pos) + 1


def check_name(name: str) -> List[Finding]:
    """Findings for a name the runner would skip silently or refuse."""
    base = name.rsplit("/", 1)[-1]
    if scripts.is_ignored(base):
        return [
            Finding(
                "name",
                name,
                "the runner silently skips this name (hidden file, editor or package-manager "
                "leftover): rename the script",
            )
        ]
    reason = scripts.invalid_name_reason(base)
    if reason:
        return [Finding("name", name, f"the runner refuses this name: {reason}")]
    return []


def _run(argv: Sequence[str], data: bytes) -> Tuple[int, str]:
    proc = subprocess.run(
        list(argv),
        input=data,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def check_syntax(name: str, data: bytes) -> List[Finding]:
    """``sh -n`` / ``bash -n`` on the script text (read from stdin, so no temporary file)."""
    dialect = syntax_checker(data)
    prog = shutil.which(dialect) if dialect else None
    if dialect is None or prog is None:
        return []
    code, out = _run([prog, "-n"], data)
    if code == 0:
        return []
    line = None
    text = " ".join(out.split())
    match = re.search(r"(?:line |: )(\d+): ", out)
    if match:
        line = int(match.group(1))
    # Drop the shell's own prefix ("sh: 3: ", "bash: line 3: "): the finding names the script.
    text = re.sub(r"^\S*(?:sh|bash):\s*(?:line\s+)?\d+:\s*", "", text)
    return [Finding("syntax", name, f"`{dialect} -n` fails: {text}", line)]


def check_python(name: str, data: bytes) -> List[Finding]:
    """Python scripts: compiled (not run) by the Python running the lint, BitBake's on a build
    host, so syntax errors fail the build instead of the migration at boot. Syntax newer than
    that Python (the target's may be newer) is reported too: the message names the version."""
    import warnings

    version = "{}.{}".format(*sys.version_info[:2])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning: advice, not an error
            compile(data, name, "exec", dont_inherit=True)
    except SyntaxError as e:
        where = f" (line {e.lineno})" if e.lineno else ""
        return [
            Finding(
                "syntax",
                name,
                f"Python {version} cannot compile it{where}: {e.msg}",
                e.lineno or None,
            )
        ]
    except ValueError as e:  # NUL bytes, before Python 3.12
        return [Finding("syntax", name, f"Python {version} cannot compile it: {e}")]
    return []


def check_shellcheck(name: str, data: bytes, shellcheck: str) -> List[Finding]:
    """ShellCheck findings (severity :data:`SHELLCHECK_SEVERITY` or worse), one per finding."""
    argv = [
        shellcheck,
        "--format=gcc",
        f"--severity={SHELLCHECK_SEVERITY}",
        f"--shell={syntax_checker(data) or 'sh'}",
        "-",
    ]
    code, out = _run(argv, data)
    findings = []
    for raw in out.splitlines():
        match = _SHELLCHECK_LINE.match(raw)
        if match:
            line, _col, level, text = match.groups()
            findings.append(Finding("shellcheck", name, f"shellcheck {level}: {text}", int(line)))
    if code != 0 and not findings:
        findings.append(Finding("shellcheck", name, f"shellcheck failed: {' '.join(out.split())}"))
    return findings


def find_shellcheck() -> Optional[str]:
    """Path of the ``shellcheck`` binary in PATH, or None (the check is then skipped)."""
    return shutil.which("shellcheck")


def lint_script(
    name: str,
    data: bytes,
    installed_name: Optional[str] = None,
    shellcheck: Optional[str] = None,
) -> List[Finding]:
    """Every content and name check for one script.

    ``name`` is how the author knows the script (its file name in SRC_URI); ``installed_name``,
    when given, is its name in /etc/migration.d, and the runner's naming rules apply to it instead
    of ``name``. ``shellcheck`` is the path of a ShellCheck binary, or None to skip that check.
    """
    if installed_name:
        findings = [
            f._replace(message=f"installed as {installed_name}: {f.message}")
            for f in check_name(installed_name)
        ]
    else:
        findings = check_name(name)
    if not data.strip():
        findings.append(Finding("empty", name, "the script is empty"))
        return findings
    crlf = _first_crlf_line(data)
    if crlf:
        findings.append(
            Finding("crlf", name, "CRLF (DOS) line endings: convert with dos2unix", crlf)
        )
    words = shebang(data)
    if not words:
        findings.append(
            Finding(
                "shebang",
                name,
                "no shebang line (#!): the runner cannot tell which interpreter to use",
                1,
            )
        )
        return findings
    if interpreter_name(data).startswith("python"):
        findings += check_python(name, data)
    if not is_shell(data):
        return findings
    if not has_errexit(data):
        findings.append(
            Finding(
                "errexit",
                name,
                "shell script without errexit: add `set -e` (or `set -eu`) after the shebang",
            )
        )
    # Syntax and ShellCheck see LF text, so a CRLF file reports its line endings only once.
    text = data.replace(b"\r\n", b"\n")
    findings += check_syntax(name, text)
    if shellcheck and syntax_checker(text):
        findings += check_shellcheck(name, text, shellcheck)
    from . import idempotence  # it imports this module (Finding)

    findings += idempotence.check(name, text)
    return findings


def check_duplicates(installed: Iterable[Tuple[str, str]]) -> List[Finding]:
    """Findings for installed names that occur more than once.

    ``installed`` holds ``(installed_name, origin)`` pairs; origin says where each came from (for
    instance ``"package foo, script a/fix.sh"``) and the finding names every origin.
    """
    seen: Dict[str, List[str]] = {}
    for inst, origin in installed:
        seen.setdefault(inst, []).append(origin)
    return [
        Finding(
            "duplicate",
            inst,
            "installed more than once, from " + " and ".join(origins),
        )
        for inst, origins in sorted(seen.items())
        if len(origins) > 1
    ]


def lint_scripts(
    items: Iterable[Tuple[str, bytes]],
    shellcheck: Optional[str] = None,
) -> List[Finding]:
    """:func:`lint_script` for each ``(name, data)`` plus duplicate base names among them."""
    findings: List[Finding] = []
    names = []
    for name, data in items:
        findings += lint_script(name, data, shellcheck=shellcheck)
        names.append((name.rsplit("/", 1)[-1], name))
    findings += check_duplicates(names)
    return findings


ONEWAY_VAR = "MIGRATION_ONEWAY"
COMPAT_LEVEL_VAR = "MIGRATION_COMPAT_LEVEL"


def takes_default_level(value: str) -> bool:
    """True when a MIGRATION_ONEWAY value has an entry without a level of its own (NAME, not
    NAME:LEVEL): its level is MIGRATION_COMPAT_LEVEL's."""
    return any(":" not in word for word in value.split())


def parse_level(text: str, minimum: int) -> Optional[int]:
    """``text`` as a whole number >= ``minimum`` (ASCII digits only), else None."""
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value >= minimum else None


def _oneway_entries(
    value: str,
    variable: str,
    packages: Sequence[str],
    allowed: Sequence[str],
    default_level: str,
) -> Tuple[Dict[str, int], List[Finding]]:
    """Levels of one MIGRATION_ONEWAY value whose names must be in ``allowed`` (the scripts of
    ``packages``)."""
    levels: Dict[str, int] = {}
    findings: List[Finding] = []
    for word in value.split():
        # Script names never hold a colon (the runner refuses such names): NAME or NAME:LEVEL.
        script, sep, pinned = word.partition(":")
        if script not in allowed:
            findings.append(
                Finding(
                    "oneway",
                    script or word,
                    f"named in {variable} but not in MIGRATION_SCRIPTS of package"
                    f"{'s' if len(packages) > 1 else ''} {' '.join(packages)} "
                    f"({' '.join(allowed) or 'empty'}): a one-way script must be one of them",
                )
            )
            continue
        if sep:
            level = parse_level(pinned, 1)
            if level is None:
                findings.append(
                    Finding(
                        "oneway",
                        script,
                        f"one-way level {pinned!r} in {variable} is not a whole number >= 1: "
                        f"pin {script}:LEVEL with LEVEL 1 or more",
                    )
                )
                continue
        else:
            level = parse_level(default_level, 1)
            if level is None:
                findings.append(
                    Finding(
                        "oneway",
                        script,
                        f"one-way ({variable}) without a level of its own, and "
                        f"{COMPAT_LEVEL_VAR} = {default_level!r} is not a whole number >= 1: "
                        f"set {COMPAT_LEVEL_VAR} in the distro or pin {script}:LEVEL",
                    )
                )
                continue
        if script in levels and levels[script] != level:
            findings.append(
                Finding(
                    "oneway",
                    script,
                    f"{variable} gives it two levels, {levels[script]} and {level}: keep one",
                )
            )
            continue
        levels[script] = level
    return levels, findings


def resolve_oneway(
    scripts: Mapping[str, Sequence[str]],
    default_value: str,
    package_values: Mapping[str, str],
    default_level: str,
) -> Tuple[Dict[str, Dict[str, int]], List[Tuple[str, Finding]]]:
    """The one-way level of each script, per package, from MIGRATION_ONEWAY[:<pkg>].

    ``scripts`` maps each package to its MIGRATION_SCRIPTS (as written, in order);
    ``package_values`` holds ``MIGRATION_ONEWAY:<pkg>`` for the packages that set it (not empty);
    the others use ``default_value`` (``MIGRATION_ONEWAY``), whose names must then be scripts of
    one of those packages. Each entry is ``NAME`` or ``NAME:LEVEL``; LEVEL (a whole number >= 1)
    defaults to ``default_level`` (``MIGRATION_COMPAT_LEVEL``, "0" when the distro sets none, which
    is no valid level: a one-way script must have one).

    Returns ``({package: {script: level}}, [(package, finding)])``; scripts that are not one-way,
    and entries with a finding, are absent from the levels. Findings of ``MIGRATION_ONEWAY`` are
    attributed to the first package that uses it.
    """
    levels: Dict[str, Dict[str, int]] = {}
    findings: List[Tuple[str, Finding]] = []
    fallback = [pkg for pkg in scripts if not package_values.get(pkg, "").strip()]
    shared: Dict[str, int] = {}
    if fallback and default_value.strip():
        allowed = [s for pkg in fallback for s in scripts[pkg]]
        shared, found = _oneway_entries(default_value, ONEWAY_VAR, fallback, allowed, default_level)
        findings += [(fallback[0], f) for f in found]
    for pkg, names in scripts.items():
        own = package_values.get(pkg, "").strip()
        if own:
            levels[pkg], found = _oneway_entries(
                own, f"{ONEWAY_VAR}:{pkg}", [pkg], list(names), default_level
            )
            findings += [(pkg, f) for f in found]
        else:
            levels[pkg] = {s: lvl for s, lvl in shared.items() if s in names}
    return levels, findings


def image_compat_level(text: str) -> Tuple[int, Optional[str]]:
    """An image's MIGRATION_COMPAT_LEVEL (empty: 0) as a number, and why it is invalid (a whole
    number >= 0 is valid; an invalid one reads as 0)."""
    level = parse_level(text or "0", 0)
    if level is None:
        return 0, (
            f"{COMPAT_LEVEL_VAR} = {text!r} is not a whole number >= 0 "
            "(the highest one-way level of the image's releases; 0: none)"
        )
    return level, None


def floor_problem(
    upgrade_floor: str, version_id: Optional[str], compare: Callable[[str, str], int]
) -> Optional[str]:
    """Why an image of os-release VERSION_ID ``version_id`` cannot have ``upgrade_floor``, or None.

    With a floor, the runner records the image's VERSION_ID in the device's state and compares
    the next image's floor with it: the image must have a VERSION_ID comparable with the floor
    (compat.comparable), and the floor cannot be newer than the image itself (such an image
    could never be installed by an upgrade).
    ``compare`` orders versions (:func:`migration.compat.compare_versions`).
    """
    if not upgrade_floor:
        return None
    if not version_id:
        return (
            f"MIGRATION_UPGRADE_FLOOR = {upgrade_floor!r}, but the image's os-release "
            "(/etc/os-release or /usr/lib/os-release) has no VERSION_ID: the runner records "
            "the image version from it; give the image a VERSION_ID (DISTRO_VERSION in OE-core's "
            "os-release recipe) or unset MIGRATION_UPGRADE_FLOOR"
        )
    if not compat.comparable(version_id, upgrade_floor):
        return (
            f"MIGRATION_UPGRADE_FLOOR = {upgrade_floor!r}, but the image's os-release VERSION_ID "
            f"{version_id!r} cannot be compared with it in the runner's version order "
            f"({compat.COMPARABLE}): the runner would refuse every upgrade from this image; "
            "give the image such a VERSION_ID (DISTRO_VERSION) or unset MIGRATION_UPGRADE_FLOOR"
        )
    if compare(version_id, upgrade_floor) < 0:
        return (
            f"MIGRATION_UPGRADE_FLOOR = {upgrade_floor!r} is newer than the image's own "
            f"version (os-release VERSION_ID {version_id!r}): no device could upgrade to this "
            "image; set the floor to this release or an older one"
        )
    return None
