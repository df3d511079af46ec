# SPDX-License-Identifier: MIT
"""The one place where the runner reads bytes it did not write itself, checks who may have
written them, and turns names into something safe to print.

Everything the runner reads may be hostile or damaged: records and state.json (written by a
runner, but a user could have forged them if the state dir were not root's), the manifest and
its fragments, the no-op key, os-release, script headers. So every read goes through
`read_bytes`: a size cap, no blocking (O_NONBLOCK: a FIFO planted as a record must not stop a
boot), a regular file only, and no symlink followed unless the caller says so (os-release is a
symlink on most images). JSON goes through `load_json`, which turns every way of being
malformed, nesting a hundred thousand levels deep included, into ValueError.

`owner_problem` is the one ownership rule for what root trusts in the state dir: owned by root,
not writable by group or others (the lock: not even readable by them, since flock(2) needs only
a read fd). Like the script checks, it applies to root only: an unprivileged runner can only do
what its user can do anyway.

Imported by the no-op fast path, so it imports only what that path has already (os, stat,
and errno, which is built into the interpreter).
"""

from __future__ import annotations

import errno
import os
import stat

#: Flags for reading a file of the state dir: never follow a symlink, never block on a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK

#: Size caps (bytes). A record or state.json is a few hundred bytes; a manifest ~200 per entry.
RECORD_MAX = 1 << 20
MANIFEST_MAX = 16 << 20
KEY_MAX = 16 << 20
OS_RELEASE_MAX = 64 << 10
#: A migration script (migration.scripts.SCRIPT_MAX): a program; a payload belongs in a file of
#: its package.
SCRIPT_MAX = 64 << 20

def read_bytes(path: str, limit: int, follow: bool = False) -> bytes:
    """The content of the regular file `path`, at most `limit` bytes. Raises OSError: as open(2)
    would (ENOENT...), ELOOP "a symlink" when `path` is one and not `follow`, EINVAL "not a
    regular file" (a FIFO, a device, a directory), EFBIG when it holds more than `limit`."""
    flags = READ_FLAGS if not follow else READ_FLAGS & ~os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise OSError(errno.ELOOP, "a symlink (not followed)", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
    return b"".join(chunks)


def why_unreadable(e: OSError) -> str:
    """A short reason for an OSError of read_bytes (for messages and damaged records)."""
    return e.strerror or str(e)


def load_json(data: bytes) -> object:
    """Parse UTF-8 JSON; ValueError for anything that is not (bad bytes, bad syntax, nesting
    too deep for the parser, numbers too long to convert)."""
    import json

    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def mode_text(mode: int) -> str:
    return oct(stat.S_IMODE(mode))[2:].rjust(4, "0")


def owner_problem(st: os.stat_result, euid: int, private: bool = False) -> str | None:
    """Why root must not trust a state dir entry with this stat, or None. `private`: readable by
    root only (the lock)."""
    if euid != 0:
        return None
    if st.st_uid != 0:
        return f"is owned by uid {st.st_uid}, not root"
    if private and st.st_mode & 0o077:
        return f"is accessible to group or others (mode {mode_text(st.st_mode)}, not 0600)"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {mode_text(st.st_mode)})"
    return None


def kind_of(mode: int) -> str:
    """What a non-regular directory entry is, in words."""
    for test, word in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return word
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def shown(text: str) -> str:
    """`text` made safe for one line of a message: control characters (a newline in a file name
    would forge a second journal line), lone surrogates (undecodable bytes of a name; they would
    kill print()) and the Unicode line separators are escaped like Python's repr does."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for c in text:
        o = ord(c)
        if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0 or o in (0x2028, 0x2029):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        elif 0xD800 <= o < 0xE000:
            out.append(f"\\x{o - 0xDC00:02x}" if 0xDC80 <= o < 0xDD00 else f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)
