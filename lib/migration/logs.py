# SPDX-License-Identifier: MIT
"""A script's log as one console line shows it (the FAILED note of `run`, `status`).

Serial consoles are 80 columns wide and wrap longer lines into the next one. A log is
<state dir>/logs/<sha256>.log (state.State.log_path): its 64 hex digits alone take most of a
line. `short_path` prints it as a shell glob of the first 12 hex digits (more when another file
in logs/ shares them), which expands to exactly that file: `less` or `cat` it as printed.
`status --json` keeps the full path.

`last_line` is the last non-empty line of the script's output, read from the end of the log
the runner wrote (execute._Output: a header note, the output, a closing note such as
"[migration: exit 1]"). The runner's own lines are told from the script's by where they are,
not by what they say: the header is the log's first line, the closing note its last (the note
of dropped output sits 512 KiB before the end, beyond what is read). A script line of the same
form is the script's: it is shown with its "[" escaped ("\\x5bmigration: exit 0]"), so it
cannot pass for a note of the runner's. The bytes are the script's, so anything: terminal
escape sequences, NUL, invalid UTF-8, one line of megabytes. What is returned is safe to print
and fits the width asked for: every character that is not printable (control characters,
invisible format characters such as a bidi override, undecodable bytes) escaped like Python's
repr, a cut line marked with "...". Non-ASCII characters count as two columns (East Asian
wide ones take two on a terminal; the runner has no character width table), so the line may
end early, never late.
Reading never follows a symlink, the logs dir included (a logs/ that is not a real directory is
read as absent, as the runner reads every subdir of its state dir), nor blocks on a FIFO, and
reads at most TAIL bytes.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable

from migration.files import READ_FLAGS

#: Hex digits of the sha256 kept in a short log path (48 bits: a clash is rare, and handled).
PREFIX_HEX = 12
#: Bytes read from the end of a log to find its last line: more than a console shows.
TAIL = 8192
_CUT = "..."
_NOTE = b"[migration: "


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def listing(logs_dir: str) -> list[str]:
    """The names in the logs dir (empty when it cannot be read or is not a real directory)."""
    try:
        fd = os.open(logs_dir, _DIR_FLAGS)
    except OSError:
        return []
    try:
        return os.listdir(fd)
    except OSError:
        return []
    finally:
        os.close(fd)


def present(path: str) -> bool:
    """Is the log at `path` a regular file in a real logs directory (no symlink followed)?"""
    directory, name = os.path.split(path)
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(fd)


def short_path(path: str, names: Iterable[str]) -> str:
    """`path` (a .../<sha256>.log) as the shortest glob of PREFIX_HEX or more leading characters
    that no other name of `names` (the log's directory) matches; `path` itself otherwise."""
    directory, base = os.path.split(path)
    if not base.endswith(".log"):
        return path
    stem = base[: -len(".log")]
    others = [n for n in names if n != base and n.endswith(".log")]
    for size in range(PREFIX_HEX, len(stem)):
        prefix = stem[:size]
        if not any(n.startswith(prefix) for n in others):
            return os.path.join(directory, f"{prefix}*.log")
    return path


def _tail(path: str) -> tuple[bytes, bool]:
    """(the last TAIL bytes of the regular file `path`, whether the file goes on before them);
    (b"", False) when it cannot be read as one."""
    directory, name = os.path.split(path)
    try:
        dfd = os.open(directory, _DIR_FLAGS)
    except OSError:
        return b"", False
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dfd)
    except OSError:
        return b"", False
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", False
        start = max(0, st.st_size - TAIL)
        return os.pread(fd, TAIL, start), start > 0
    except OSError:
        return b"", False
    finally:
        os.close(fd)


def _escape(c: str) -> str:
    if c.isprintable():
        return c
    o = ord(c)
    if 0xDC80 <= o < 0xDD00:  # an undecodable byte (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def _columns(piece: str) -> int:
    return len(piece) if piece.isascii() else 2 * len(piece)


def fit(text: str, width: int, cut_before: bool = False, escape_first: bool = False) -> str:
    """`text` escaped and cut to `width` columns; `cut_before`: it began earlier (shown with a
    leading "..."); `escape_first`: its first character is escaped too."""
    pieces = [_escape(c) for c in text]
    if escape_first and pieces:
        pieces[0] = f"\\x{ord(text[0]):02x}"
    head = _CUT if cut_before else ""
    room = width - len(head)
    if sum(_columns(p) for p in pieces) <= room:
        return head + "".join(pieces)
    room -= len(_CUT)
    out: list[str] = []
    for piece in pieces:
        room -= _columns(piece)
        if room < 0:
            break
        out.append(piece)
    return head + "".join(out) + _CUT


def last_line(path: str, width: int) -> str:
    """The last non-empty line of the script's output in the log at `path`, safe to print and at
    most `width` columns; "" when there is none or the log cannot be read."""
    data, cut = _tail(path)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the log ends with a newline
    # The runner's notes, by position: its closing note is the last line (the form is checked
    # too, for a log the runner could not finish), its header the first line of the file.
    if lines and lines[-1].startswith(_NOTE):
        lines.pop()
    if not cut and lines and lines[0].startswith(_NOTE):
        lines.pop(0)
    for index in range(len(lines) - 1, -1, -1):
        text = lines[index].decode("utf-8", "surrogateescape").strip()
        if text:
            like_a_note = text.encode("utf-8", "surrogateescape").startswith(_NOTE)
            return fit(text, width, cut_before=cut and index == 0, escape_first=like_a_note)
    return ""
