# SPDX-License-Identifier: MIT
"""The lint's idempotence check (migration.idempotence, QA issue migration-idempotence): common
shell patterns that change or fail on a second run, each found with its line; their guarded
forms, the silencing comment, and the layer's own examples are not reported."""

import re
from pathlib import Path
from typing import List, Tuple

import pytest

from migration import idempotence, lint

REPO = Path(__file__).resolve().parent.parent
EXAMPLED = REPO / "meta-migration-example/recipes-example/exampled/files/run-as-exampled-user.sh"


def found(body: str) -> List[Tuple[int, str]]:
    """(line, first word of the message) of each finding in a script of `body` (after a
    two-line header, so the body's first line is line 3)."""
    data = ("#!/bin/sh\nset -eu\n" + body).encode()
    return [(f.line or 0, f.message.split()[0]) for f in idempotence.check("a.sh", data)]


@pytest.mark.parametrize(
    "body, line, word",
    [
        ('echo "x=1" >> /etc/foo.conf\n', 3, "`>>`"),
        ("cat >>/etc/foo.conf <<EOF\nx=1\nEOF\n", 3, "`>>`"),
        ("printf '%s\\n' x 2>&1 >>/var/lib/foo/list\n", 3, "`>>`"),
        ("useradd --system foo\n", 3, "`useradd`"),
        ("/usr/sbin/useradd foo\n", 3, "`useradd`"),
        ("groupadd --system foo\n", 3, "`groupadd`"),
        ("adduser -S foo\n", 3, "`adduser`"),
        ("addgroup -S foo\n", 3, "`addgroup`"),
        ("mv /etc/foo.conf /etc/foo/foo.conf\n", 3, "`mv`"),
        ("mv -f /etc/foo.conf /etc/foo/foo.conf\n", 3, "`mv`"),
        ("mkdir /var/lib/foo\n", 3, "`mkdir`"),
        ("mkdir -m 0700 /var/lib/foo\n", 3, "`mkdir`"),
        ("ln -s /var/lib/foo /etc/foo\n", 3, "`ln`"),
        ("ln /etc/a /etc/b\n", 3, "`ln`"),
        ("ln -sf /var/lib/foo /etc/foo\n", 3, "`ln"),
        ("echo a\n\nmkdir /x\n", 5, "`mkdir`"),
        # continuation lines: the line of the command's own word
        ("echo a; \\\n  mkdir \\\n  /x\n", 4, "`mkdir`"),
        # a && after the command does not guard it
        ("useradd foo && echo added\n", 3, "`useradd`"),
        # an || exit after it does not either: the second run still fails
        ("mv /a /b || exit 1\n", 3, "`mv`"),
        # in a loop or a function: no guard
        ("for f in a b; do\n  mkdir /x/$f\ndone\n", 4, "`mkdir`"),
        ("f() {\n  ln -s /a /b\n}\n", 4, "`ln`"),
        ('while read -r l; do echo "$l" >>/etc/out; done </etc/in\n', 3, "`>>`"),
        # after a heredoc's body, and after a quoted string over two lines
        ("cat >/etc/x <<'EOF'\nmkdir /y\nEOF\nmkdir /z\n", 6, "`mkdir`"),
        ("echo 'a\nb'; mkdir /z\n", 4, "`mkdir`"),
        # command substitution inside double quotes does not end the word
        ('echo "$(cat "/etc/a")" >>/etc/b\n', 3, "`>>`"),
        ("command mkdir /x\n", 3, "`mkdir`"),
        ("busybox mkdir /x\n", 3, "`mkdir`"),
        ("LC_ALL=C mkdir /x\n", 3, "`mkdir`"),
    ],
)
def test_pattern_found_with_its_line(body: str, line: int, word: str) -> None:
    assert found(body) == [(line, word)]


@pytest.mark.parametrize(
    "body",
    [
        # appends guarded on the line or by an enclosing if/case
        "grep -qxF 'x=1' /etc/foo.conf || echo 'x=1' >> /etc/foo.conf\n",
        "if ! grep -q '^x=' /etc/foo.conf; then\n  echo 'x=1' >>/etc/foo.conf\nfi\n",
        "case $(cat /etc/v) in\n  1) echo x >>/etc/foo ;;\n  *) : ;;\nesac\n",
        "[ -e /etc/done ] || { echo x >>/etc/foo; touch /etc/done; }\n",
        "echo x >>/dev/null\necho y >> /dev/console\n",
        'echo x >>"$TMPDIR/list"\necho y >> ${TMPDIR}/z\n',
        "echo 'a >> b'\necho \"mkdir x\" # mkdir /y\n",
        "cat >/etc/x <<EOF\nmkdir /y\nuseradd z\nln -s a b\necho a >> b\nEOF\n",
        "cat >/etc/x <<-EOF\n\tmkdir /y\n\tEOF\n",
        # users and groups with an existence check
        "grep -q '^foo:' /etc/passwd || useradd foo\n",
        "id -u foo >/dev/null 2>&1 || useradd --system foo\n",
        "getent group foo >/dev/null || groupadd foo\n",
        "if ! getent passwd foo >/dev/null; then\n  useradd \\\n    --system foo\nfi\n",
        "useradd foo || true\n",
        "adduser -S foo 2>/dev/null || :\n",
        "groupadd -f foo\ngroupadd --force bar\ngroupadd -rf baz\n",
        # moves of what is there
        "if [ -f /etc/a ]; then\n  mv -f /etc/a /etc/b\nfi\n",
        "[ ! -e /etc/a ] || mv /etc/a /etc/b\n",
        "test -e /etc/a && mv /etc/a /etc/b\n",
        # a file this run wrote from scratch: the write-then-rename pattern, a list rebuilt
        'tmp=$(mktemp)\nsed "s/a/b/" /etc/foo >"$tmp"\nmv "$tmp" /etc/foo\n',
        "sed 's/a/b/' /etc/foo >/etc/foo.new\nmv -f /etc/foo.new /etc/foo\n",
        ': >/etc/list\nfor f in a b; do echo "$f" >>/etc/list; done\n',
        'mv "$TMPDIR/foo" /etc/foo\n',
        # mkdir -p, ln -sfn
        "mkdir -p /var/lib/foo\nmkdir -m 0700 -p /x\nmkdir --parents /y\nmkdir -pm 0700 /z\n",
        "[ -d /x ] || mkdir /x\n",
        "ln -sfn /var/lib/foo /etc/foo\nln -sfT /a /b\nln -f /a /b\n",
        "ln --symbolic --force --no-dereference /a /b\n",
        "[ -L /etc/foo ] || ln -s /var/lib/foo /etc/foo\n",
        # words, not commands
        "echo mkdir useradd mv\nfor mkdir in a; do :; done\nprintf '%s\\n' \"ln -s a b\"\n",
        "# mkdir /x >> /etc/y\n",
        "x=$(mkdir /y)\n",
    ],
)
def test_guarded_forms_not_found(body: str) -> None:
    assert found(body) == []


@pytest.mark.parametrize(
    "body",
    [
        "echo x >>/var/log/foo.log # migration: idempotent\n",
        "mkdir /x  #migration: idempotent (the image removes it first)\n",
        "useradd \\\n  foo # migration: idempotent\n",
    ],
)
def test_silencing_comment(body: str) -> None:
    assert found(body) == []


def test_silencing_comment_is_per_line() -> None:
    assert found("mkdir /x # migration: idempotent\nmkdir /y\n") == [(4, "`mkdir`")]


def test_finding_names_script_line_and_fix() -> None:
    (finding,) = idempotence.check("fix.sh", b"#!/bin/sh\nset -e\nmkdir /var/lib/foo\n")
    assert finding.check == "idempotence"
    assert finding.qa_name == "migration-idempotence"
    assert finding.describe().startswith("fix.sh:3: `mkdir` without `-p` fails")
    assert "use `mkdir -p`" in finding.message


def test_lint_script_runs_the_check_on_shell_scripts_only() -> None:
    sh = b"#!/bin/sh\nset -e\nmkdir /x\n"
    assert [f.check for f in lint.lint_script("a.sh", sh)] == ["idempotence"]
    bash = b"#!/bin/bash\nset -e\nuseradd foo\n"
    assert [f.check for f in lint.lint_script("a.sh", bash)] == ["idempotence"]
    py = b"#!/usr/bin/python3\nimport os\nos.system('mkdir /x')\n# mkdir /y\n"
    assert lint.lint_script("a.py", py) == []


def test_scanner_survives_broken_scripts() -> None:
    for text in (b"#!/bin/sh\necho 'open\n", b"#!/bin/sh\ncat <<EOF\n", b"#!/bin/sh\n)))}}fi\n",
                 b"#!/bin/sh\necho $(\n", b"#!/bin/sh\n\xff\xfe >>\n"):  # fmt: skip
        idempotence.check("a.sh", text)


# The layer's own examples are clean.


def test_exampled_migration_is_clean() -> None:
    assert lint.lint_script(EXAMPLED.name, EXAMPLED.read_bytes()) == []


def readme_scripts() -> List[str]:
    """The fenced blocks of README.md that are scripts (start with #!)."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", text, re.M | re.S)
    return [b for b in blocks if b.startswith("#!")]


def test_readme_example_scripts_are_clean() -> None:
    scripts = readme_scripts()
    assert scripts, "README.md has no example script"
    for text in scripts:
        assert lint.lint_script("readme.sh", text.encode()) == [], text


def test_readme_one_line_examples_are_clean() -> None:
    """The inline guarded forms README recommends (`grep -q ... || useradd ...`)."""
    text = (REPO / "README.md").read_text()
    (rule,) = re.findall(r"^- \*\*Scripts must be idempotent\.\*\*.*?(?=^- )", text, re.M | re.S)
    spans = re.findall(r"`([^`]+)`", rule)
    assert len(spans) >= 3
    for span in spans:
        assert found(span.replace("...", "foo") + "\n") == [], span
