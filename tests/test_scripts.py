# SPDX-License-Identifier: MIT
"""Naming rules, ignored names, discovery order, identity by content, interpreter detection."""

import hashlib
import os

import pytest

from migration.scripts import (
    ScriptsDirError,
    discover,
    interpreter,
    invalid_name_reason,
    is_ignored,
    sha256_file,
)


@pytest.mark.parametrize(
    "name",
    ["10-foo-move.sh", "a", "0", "Z.z_9-x", "50-pkg-name.with.dots", "x" * 255],
)
def test_valid_names(name):
    assert invalid_name_reason(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("-leading-dash", "start with"),
        ("_under", "start with"),
        ("has space", "' '"),
        ("tab\tname", "'\\t'"),
        ("semi;colon", "';'"),
        ("ümlaut", "start with"),
        ("a/b", "'/'"),
        ("x" * 256, "longer than 255"),
        ("new\nline", "'\\n'"),
    ],
)
def test_invalid_names_say_why(name, words):
    reason = invalid_name_reason(name)
    assert reason is not None
    assert words in reason


@pytest.mark.parametrize(
    "name",
    [
        ".hidden",
        ".10-foo.sh.swp",
        "10-foo.sh~",
        "10-foo.sh.swp",
        "10-foo.sh.bak",
        "10-foo.sh.orig",
        "10-foo.sh.dpkg-old",
        "10-foo.sh.dpkg-new",
        "10-foo.sh.dpkg-dist",
        "10-foo.sh.rpmnew",
        "10-foo.sh.rpmsave",
        "10-foo.sh.opkg-old",
    ],
)
def test_leftovers_are_ignored(name):
    assert is_ignored(name)


@pytest.mark.parametrize("name", ["10-foo.sh", "backup-data.sh", "10-orig-data", "swp"])
def test_normal_names_are_not_ignored(name):
    assert not is_ignored(name)


def _write(path, text, mode=0o755):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def test_discover_orders_bytewise_and_skips(tmp_path):
    d = tmp_path / "migration.d"
    d.mkdir()
    for name in ["b-2", "B-1", "10-x", "9-y", "a.b", "10-x~", ".hidden", "x.dpkg-old"]:
        _write(d / name, "true\n")
    _write(d / "bad name", "true\n")
    (d / "subdir").mkdir()
    os.mkfifo(d / "fifo")
    os.symlink("nowhere", d / "dangling")
    os.symlink("10-x", d / "link")
    for refuse_unsafe in (False, True):
        scripts, warnings = discover(str(d), refuse_unsafe=refuse_unsafe)
        assert [s.name for s in scripts] == ["10-x", "9-y", "B-1", "a.b", "b-2", "link"]
        assert [s.symlink for s in scripts] == [False] * 5 + [True]
        text = "\n".join(warnings)
        assert len(warnings) == 4, text
        assert "bad name" in text and "directory" in text
        assert "fifo: not a regular file" in text and "dangling: dangling symlink" in text
        for s in scripts[:5]:
            assert s.sha256 == hashlib.sha256(b"true\n").hexdigest()
        # root (the default as root) refuses a symlink without reading what it leads to
        link = scripts[5]
        if refuse_unsafe:
            assert (link.sha256, link.refusal) == ("", "is a symlink")
        else:
            assert (link.sha256, link.refusal) == (hashlib.sha256(b"true\n").hexdigest(), "")


def test_discover_reports_owner_and_mode(tmp_path):
    _write(tmp_path / "s", "true\n", 0o664)
    (script,), _ = discover(str(tmp_path))
    assert script.mode == 0o664
    assert script.uid == os.getuid()


def test_identity_is_content(tmp_path):
    _write(tmp_path / "one", "echo hi\n")
    _write(tmp_path / "two", "echo hi\n")
    _write(tmp_path / "three", "echo hi \n")
    assert sha256_file(str(tmp_path / "one")) == sha256_file(str(tmp_path / "two"))
    assert sha256_file(str(tmp_path / "one")) != sha256_file(str(tmp_path / "three"))


@pytest.mark.parametrize(
    "kind", ["missing", "file"],
)
def test_discover_missing_dir(tmp_path, kind):
    path = tmp_path / "migration.d"
    if kind == "file":
        path.write_text("")
    with pytest.raises(ScriptsDirError, match=r"does not exist|not a directory"):
        discover(str(path))


@pytest.mark.parametrize(
    ("first_line", "argv", "name", "shell"),
    [
        (b"", ["/bin/sh", "-e", "S"], "sh", True),
        (b"echo no shebang", ["/bin/sh", "-e", "S"], "sh", True),
        (b"#!/bin/sh", ["/bin/sh", "-e", "S"], "sh", True),
        (b"#! /bin/bash", ["/bin/bash", "-e", "S"], "bash", True),
        (b"#!/bin/dash\r", ["/bin/dash", "-e", "S"], "dash", True),
        (b"#!/bin/ash -x", ["/bin/ash", "-x", "-e", "S"], "ash", True),
        (b"#!/bin/sh +e", ["/bin/sh", "+e", "-e", "S"], "sh", True),
        (b"#!/usr/bin/env bash", ["/usr/bin/env", "bash", "-e", "S"], "bash", True),
        (b"#!/usr/bin/env -S bash -u", ["/usr/bin/env", "-S bash -u", "-e", "S"], "bash", True),
        (b"#!/bin/busybox sh", ["/bin/busybox", "sh", "-e", "S"], "sh", True),
        (b"#!/usr/bin/python3", ["/usr/bin/python3", "S"], "python3", False),
        (b"#!/usr/bin/env python3", ["/usr/bin/env", "python3", "S"], "python3", False),
        (b"#!/usr/bin/perl -w", ["/usr/bin/perl", "-w", "S"], "perl", False),
    ],
)
def test_interpreter(first_line, argv, name, shell):
    interp = interpreter(first_line + b"\nset +e\n")
    assert interp.argv("S") == argv
    assert interp.name == name
    assert interp.shell is shell


def test_interpreter_from_path(tmp_path):
    _write(tmp_path / "s", "#!/bin/bash\necho\n")
    assert interpreter(str(tmp_path / "s")).argv("x") == ["/bin/bash", "-e", "x"]
