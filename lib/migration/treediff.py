# SPDX-License-Identifier: MIT
"""What a tree holds and what changed between two pictures of it (`migration test`).

A picture maps each path (absolute as the device sees it: "/etc/passwd") to its type, permission
bits, owner, group and content: the sha256 of a regular file, a symlink's target, a device's
numbers. Timestamps are not compared: rewriting a file with the bytes it had is no change. Extended
attributes, ACLs and hard links are not compared either.

Hashing a whole rootfs at every picture would cost seconds each: a file whose inode, size, mtime
and ctime are those of the last picture keeps its hash (`Cache`). Nothing changes a file's bytes
without changing its ctime (utime, to put the mtime back, sets the ctime).
"""

import os
import stat
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from migration.noop import sha256

_CHUNK = 1 << 16

_TYPES = (
    (stat.S_ISREG, "file"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "char device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)


class Entry(NamedTuple):
    type: str
    mode: int  # permission bits, set-id and sticky bits included
    uid: int
    gid: int
    data: str  # sha256 (file), target (symlink), "major:minor" (device), "" (others)

    def as_dict(self) -> Dict[str, object]:
        out: Dict[str, object] = {
            "type": self.type,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
        }
        key = {"file": "sha256", "symlink": "target"}.get(self.type, "device")
        if self.data:
            out[key] = self.data
        return out


class Change(NamedTuple):
    path: str
    change: str  # "added", "removed" or "changed"
    what: Tuple[str, ...]  # for "changed": of "type", "content", "mode", "owner"
    before: Optional[Entry]
    after: Optional[Entry]

    def as_dict(self) -> Dict[str, object]:
        out: Dict[str, object] = {"path": self.path, "change": self.change}
        if self.what:
            out["what"] = list(self.what)
        if self.before is not None:
            out["before"] = self.before.as_dict()
        if self.after is not None:
            out["after"] = self.after.as_dict()
        return out

    def describe(self) -> str:
        """One line: `added /etc/foo (file 0644 0:0)`, `changed /etc/bar: mode 0644 -> 0600`."""
        if self.change == "added":
            assert self.after is not None
            return f"added {self.path} ({_brief(self.after)})"
        if self.change == "removed":
            return f"removed {self.path}"
        assert self.before is not None and self.after is not None
        b, a = self.before, self.after
        parts = []
        for what in self.what:
            if what == "type":
                parts.append(f"type {b.type} -> {a.type}")
            elif what == "content":
                parts.append("content" if a.type == "file" else f"target {b.data} -> {a.data}")
            elif what == "mode":
                parts.append(f"mode {b.mode:04o} -> {a.mode:04o}")
            else:
                parts.append(f"owner {b.uid}:{b.gid} -> {a.uid}:{a.gid}")
        return f"changed {self.path}: " + ", ".join(parts)


def _brief(e: Entry) -> str:
    target = f" -> {e.data}" if e.type == "symlink" else ""
    return f"{e.type}{target} {e.mode:04o} {e.uid}:{e.gid}"


#: path -> ((inode, size, mtime_ns, ctime_ns), sha256)
Cache = Dict[str, Tuple[Tuple[int, int, int, int], str]]


def _hash(path: str) -> str:
    digest = sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
    finally:
        os.close(fd)


def _entry(path: str, st: os.stat_result, shown: str, cache: Cache) -> Entry:
    mode = st.st_mode
    kind = next(name for test, name in _TYPES if test(mode))
    data = ""
    if kind == "file":
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = cache.get(shown)
        if hit is not None and hit[0] == key:
            data = hit[1]
        else:
            try:
                data = _hash(path)
            except OSError as e:  # unreadable even to the namespace's root: say so, compare it
                data = f"unreadable: {e.strerror}"
            cache[shown] = (key, data)
    elif kind == "symlink":
        data = os.readlink(path)
    elif kind.endswith("device"):
        data = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return Entry(kind, stat.S_IMODE(mode), st.st_uid, st.st_gid, data)


def picture(root: str, skip: Iterable[str] = (), cache: Optional[Cache] = None) -> Dict[str, Entry]:
    """Every entry under `root`, by its path as seen from `root` ("/", "/etc", ...); the top-level
    names in `skip` (and all below them) are left out. Symlinks are not followed."""
    cache = {} if cache is None else cache
    skipped = {"/" + name.strip("/") for name in skip}
    out = {"/": _entry(root, os.lstat(root), "/", cache)}
    stack = [(root, "")]
    while stack:
        real, shown = stack.pop()
        with os.scandir(real) as it:
            entries = list(it)
        for dent in entries:
            path = f"{shown}/{dent.name}"
            if path in skipped:
                continue
            st = dent.stat(follow_symlinks=False)
            out[path] = _entry(dent.path, st, path, cache)
            if stat.S_ISDIR(st.st_mode):
                stack.append((dent.path, path))
    return out


def diff(before: Dict[str, Entry], after: Dict[str, Entry]) -> List[Change]:
    """What turned `before` into `after`, by path."""
    changes = []
    for path in sorted(before.keys() | after.keys()):
        b, a = before.get(path), after.get(path)
        if b == a:
            continue
        if b is None:
            changes.append(Change(path, "added", (), None, a))
        elif a is None:
            changes.append(Change(path, "removed", (), b, None))
        else:
            what = []
            if a.type != b.type:
                what.append("type")
            elif a.data != b.data:
                what.append("content")
            if a.mode != b.mode:
                what.append("mode")
            if (a.uid, a.gid) != (b.uid, b.gid):
                what.append("owner")
            changes.append(Change(path, "changed", tuple(what), b, a))
    return changes
