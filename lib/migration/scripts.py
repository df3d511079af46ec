# SPDX-License-Identifier: MIT
"""What a migration is: a regular file directly in the scripts dir, named by the rules below,
identified by the sha256 of its content, run by the interpreter its first line names.

Lint (build time), manifest generation (rootfs time) and the runner (target) all use this module,
so they can never disagree on which files are migrations, on their names or on their hashes.
"""

import errno
import os
import re
import stat
from typing import Collection, List, NamedTuple, Optional, Tuple, Union

from migration import files
from migration.errors import MigrationError

# shared with the no-op fast path (which must not import this module's re and typing)
from migration.noop import is_ignored as is_ignored
from migration.noop import sha256 as sha256

#: Valid installed names. `<priority>-<pkg>-<script>` is the convention, this is the rule.
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z")

#: Longest accepted name (bytes): NAME_MAX of common Linux filesystems.
NAME_MAX = 255

#: Shells that get errexit: the ones of issue 2 (sh, bash, dash, ash) plus the other POSIX-style
#: shells that accept `-e` the same way, so R3 holds whichever one a script names.
SHELLS = frozenset(("sh", "bash", "dash", "ash", "ksh", "mksh", "posh", "zsh"))

#: Interpreter for files without a `#!` line (what run-parts and the kernel's ENOEXEC fallback
#: of shells do).
DEFAULT_SHELL = "/bin/sh"

_HASH_CHUNK = 1 << 16

#: Largest script the runner reads (bytes). A migration is a program; a bigger payload belongs
#: in a file of its package that the script uses. Checked before anything is read.
SCRIPT_MAX = files.SCRIPT_MAX

#: Never blocks on open or read (a FIFO, /proc/kmsg); O_NOFOLLOW unless a symlink is allowed.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


class ScriptsDirError(MigrationError):
    """The scripts dir is missing, not a directory or unreadable (exit 2)."""


class Script(NamedTuple):
    """One candidate migration found in the scripts dir."""

    name: str
    path: str
    sha256: str
    symlink: bool  # the directory entry is a symlink (refused when running as root)
    uid: int  # owner of the directory entry (lstat)
    mode: int  # permission bits of the directory entry (lstat; symlinks: of the link)
    #: why the entry is refused without being read (then `sha256` is ""): a symlink, an owner or
    #: mode root must not run (as root), larger than SCRIPT_MAX, changed while it was read
    refusal: str = ""


class Interpreter(NamedTuple):
    """How a script is started: `command` + (`-e` for shells) + the script path."""

    command: Tuple[str, ...]  # e.g. ("/bin/sh",), ("/usr/bin/env", "bash"), ("/usr/bin/python3",)
    name: str  # basename of the program that really interprets, e.g. "bash", "python3"
    shell: bool  # a POSIX-style shell: started with errexit whatever the script says

    def argv(self, script_path: str) -> List[str]:
        """Command line to run `script_path`. For shells `-e` comes after the shebang argument,
        so `#!/bin/sh +e` still starts with errexit; a `set +e` inside the script remains the
        author's explicit choice."""
        extra = ["-e"] if self.shell else []
        return [*self.command, *extra, script_path]


def invalid_name_reason(name: str) -> Optional[str]:
    """Why `name` is not a valid migration name, or None when it is."""
    if NAME_RE.match(name):  # ASCII only, so characters are bytes
        return None if len(name) <= NAME_MAX else f"name longer than {NAME_MAX} bytes"
    if not name:
        return "empty name"
    try:
        size = len(os.fsencode(name))
    except UnicodeEncodeError:  # a lone surrogate from JSON ("\ud800"): no file has that name
        return "name is not valid Unicode"
    if size > NAME_MAX:
        return f"name longer than {NAME_MAX} bytes"
    if not re.match(r"[A-Za-z0-9]", name[0]):
        return f"name must start with a letter or digit, not {name[0]!r}"
    bad = sorted({c for c in name if not re.match(r"[A-Za-z0-9._-]", c)})
    return "name contains " + ", ".join(repr(c) for c in bad) + " (allowed: A-Z a-z 0-9 . _ -)"


def _mode(mode: int) -> str:
    return oct(stat.S_IMODE(mode))[2:].rjust(4, "0")


def owner_refusal(uid: int, mode: int, euid: int) -> Optional[str]:
    """Why root must not run a file of this owner and mode, or None (scripts and hooks)."""
    if euid != 0:
        return None
    if uid != 0:
        return f"is owned by uid {uid}, not root"
    if mode & 0o022:
        return f"is writable by group or others (mode {_mode(mode)})"
    return None


def too_big(size: int) -> str:
    return (
        f"is larger than {SCRIPT_MAX >> 20} MiB ({size} bytes): not read (a payload belongs "
        "in a file of its package that the script uses)"
    )


def open_script(path: str, follow: bool, expect: Optional[os.stat_result] = None) -> int:
    """An fd of the script at `path`, checked before a byte is read: a symlink is not followed
    unless `follow` (ELOOP), never blocks (O_NONBLOCK), a regular file (EINVAL otherwise), the
    file `expect` (its stat) said it was (ESTALE otherwise: replaced in between), at most
    SCRIPT_MAX bytes by its size (EFBIG: a reader must still stop at SCRIPT_MAX, a /proc file
    says 0). The OSError's strerror is the reason in words."""
    fd = os.open(path, _OPEN_FLAGS if follow else _OPEN_FLAGS | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if expect is not None and not os.path.samestat(st, expect):
            raise OSError(errno.ESTALE, "replaced while it was read", path)
        if st.st_size > SCRIPT_MAX:
            raise OSError(errno.EFBIG, too_big(st.st_size), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _hash_fd(fd: int, path: str) -> str:
    """sha256 of the rest of `fd`, reading at most SCRIPT_MAX bytes (EFBIG beyond)."""
    digest = sha256()
    size = 0
    while True:
        chunk = os.read(fd, _HASH_CHUNK)
        if not chunk:
            return digest.hexdigest()
        size += len(chunk)
        if size > SCRIPT_MAX:
            raise OSError(errno.EFBIG, too_big(size), path)
        digest.update(chunk)


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's content (follows symlinks)."""
    digest = sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            chunk = os.read(fd, _HASH_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _first_line(path_or_bytes: Union[str, bytes, "os.PathLike[str]"]) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        head = bytes(path_or_bytes[:256])
    else:
        fd = os.open(path_or_bytes, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.read(fd, 256)  # the kernel reads at most 256 bytes of a #! line
        finally:
            os.close(fd)
    return head.split(b"\n", 1)[0].rstrip(b"\r")


def interpreter(path_or_bytes: Union[str, bytes, "os.PathLike[str]"]) -> Interpreter:
    """Which interpreter runs a script (a path, or the script's content as bytes).

    No `#!` line means /bin/sh. Like the kernel, everything after the program on the `#!` line is
    one argument. `#!/usr/bin/env [-S] [VAR=x] prog` and `#!/bin/busybox sh` are looked through
    to find the real interpreter, so `#!/usr/bin/env bash` is a shell and gets errexit too.
    """
    line = _first_line(path_or_bytes)
    if not line.startswith(b"#!"):
        return Interpreter((DEFAULT_SHELL,), "sh", True)
    text = line[2:].decode("utf-8", "surrogateescape").strip()
    if not text:
        return Interpreter((DEFAULT_SHELL,), "sh", True)
    parts = text.split(None, 1)
    program = parts[0]
    command: Tuple[str, ...] = tuple(parts)
    name = os.path.basename(program)
    if name in ("env", "busybox") and len(parts) > 1:
        for token in parts[1].split():
            if token.startswith("-") or "=" in token:
                continue
            name = os.path.basename(token)
            break
    return Interpreter(command, name, name in SHELLS)


def list_dir(scripts_dir: str) -> List[str]:
    """The names in `scripts_dir` (unsorted); ScriptsDirError when it cannot be listed."""
    try:
        return os.listdir(scripts_dir)
    except FileNotFoundError:
        raise ScriptsDirError(f"scripts dir {scripts_dir} does not exist") from None
    except NotADirectoryError:
        raise ScriptsDirError(f"scripts dir {scripts_dir} is not a directory") from None
    except OSError as e:
        raise ScriptsDirError(f"cannot read scripts dir {scripts_dir}: {e.strerror}") from None


def discover(
    scripts_dir: str, refuse_unsafe: Optional[bool] = None, only: Optional[Collection[str]] = None
) -> Tuple[List[Script], List[str]]:
    """Candidate migrations in `scripts_dir`, in byte-wise order of their names, and warnings.

    Regular files (and symlinks to regular files) are candidates. Ignored names are skipped
    silently; invalid names, directories, special files and dangling symlinks are skipped with
    a warning. Nothing is opened before its lstat allows it, and nothing is read without bound:
    a file larger than SCRIPT_MAX is a candidate refused unread (Script.refusal, sha256 ""). So
    are, with `refuse_unsafe` (default: running as root, what the runner refuses), a symlink and
    a file whose owner or mode root must not run: root never reads what it will not run, so a
    link to /proc/kmsg or a user's sparse file cannot hold up a boot. Raises ScriptsDirError
    when the directory cannot be listed. `only`: look at these names only (the gate: one
    package's entries)."""
    names = list_dir(scripts_dir)
    if only is not None:
        names = [n for n in names if n in only]
    euid = os.geteuid()
    if refuse_unsafe is None:
        refuse_unsafe = euid == 0
    scripts: List[Script] = []
    warnings: List[str] = []
    for name in sorted(names, key=os.fsencode):
        if is_ignored(name):
            continue
        path = os.path.join(scripts_dir, name)
        reason = invalid_name_reason(name)
        if reason is not None:
            warnings.append(f"skipping {path}: {reason}")
            continue
        found = _candidate(name, path, refuse_unsafe, warnings)
        if found is not None:
            scripts.append(found)
    return scripts, warnings


def _candidate(name: str, path: str, refuse_unsafe: bool, warnings: List[str]) -> Optional[Script]:
    symlink = False
    try:
        st = os.lstat(path)
        symlink = stat.S_ISLNK(st.st_mode)
        target = os.stat(path) if symlink else st  # a stat, not an open: never blocks
    except FileNotFoundError:
        if symlink:
            warnings.append(f"skipping {path}: dangling symlink")
        return None  # else: removed while we looked
    except OSError as e:
        warnings.append(f"skipping {path}: {e.strerror}")
        return None
    if not stat.S_ISREG(target.st_mode):
        kind = "directory" if stat.S_ISDIR(target.st_mode) else "not a regular file"
        warnings.append(f"skipping {path}: {kind}")
        return None
    unread = Script(name, path, "", symlink, st.st_uid, stat.S_IMODE(st.st_mode))
    refusal = None
    if refuse_unsafe:
        refusal = "is a symlink" if symlink else owner_refusal(st.st_uid, st.st_mode, 0)
    if refusal is None and target.st_size > SCRIPT_MAX:
        refusal = too_big(target.st_size)
    if refusal is not None:
        return unread._replace(refusal=refusal)
    try:
        fd = open_script(path, follow=symlink, expect=target)
        try:
            digest = _hash_fd(fd, path)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None  # removed while we looked
    except OSError as e:
        if e.errno in (errno.EFBIG, errno.ESTALE, errno.ELOOP):
            # grew past the cap, replaced, or a symlink now: this run leaves it alone
            why = e.strerror if e.errno != errno.ELOOP else "replaced while it was read"
            return unread._replace(refusal=why)
        warnings.append(f"skipping {path}: cannot read: {e.strerror}")
        return None
    return unread._replace(sha256=digest)
