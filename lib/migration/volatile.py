# SPDX-License-Identifier: MIT
"""Is the state dir on a file system that forgets it at every boot?

The records in the state dir are the only memory of what ran: on a volatile file system every
migration runs again at every boot, and the upgrade floor and the one-way levels (state.json)
protect nothing. That is what a read-only root gives by default on OE: volatile-binds binds
/var/volatile/lib (tmpfs) over /var/lib, and sysvinit's read-only-rootfs-hook mounts an overlay
on /var/lib whose upper dir is on a tmpfs.

Decided from /proc/self/mountinfo (proc(5)): the mount holding the state dir (or its nearest
existing parent: a fresh device has none yet), matched by device number and then by the longest
mount point; its file system type; and for an overlay, the mount holding its upperdir, the same
way (an overlay whose upper is itself an overlay is followed a few levels). A bind mount of a
tmpfs dir shows the tmpfs type, so volatile-binds is caught as tmpfs. Anything that cannot be
read or matched (an overlay without an upper dir is read-only: writing fails on its own) is
taken as persistent: this check must never stop a boot by guessing.

The policy (`--volatile-state` of run and update) says what a volatile state dir does: `warn`
(the default: run, and say so before anything else) or `refuse` (exit 2 before anything runs
or is written). `status` says so too, and a volatile state dir never gets the no-op fast path's
key (migration.noop): every run takes the full path and warns.
"""

import os
from typing import Callable, List, NamedTuple, Optional, Tuple

MOUNTINFO = "/proc/self/mountinfo"
#: File system types whose content does not survive a reboot.
VOLATILE_TYPES = ("tmpfs", "ramfs")
POLICIES = ("warn", "refuse")
DEFAULT_POLICY = "warn"
_OVERLAY_DEPTH = 4


class Mount(NamedTuple):
    dev: str  # "major:minor"
    point: str
    fstype: str
    source: str
    options: str  # the super block options (overlay: lowerdir=,upperdir=,workdir=)


def _unescape(text: str) -> str:
    r"""The kernel writes space, tab, newline, backslash (and in options, comma) as \ooo."""
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        digits = text[i + 1 : i + 4]
        if text[i] == "\\" and len(digits) == 3 and all(c in "01234567" for c in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> List[Mount]:
    """The mounts of a mountinfo text, in its order (later mounts hide earlier ones)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(" "), right.split(" ")
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        mounts.append(Mount(fields[2], _unescape(fields[4]), tail[0], _unescape(tail[1]),
                            tail[2]))
    return mounts


def _under(path: str, point: str) -> bool:
    return point == "/" or path == point or path.startswith(point.rstrip("/") + "/")


def locate(path: str) -> Tuple[str, str]:
    """(`path` or its nearest existing parent with symlinks resolved, its device "major:minor"
    or "" when it cannot be stat'ed)."""
    path = os.path.realpath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.stat(path)
    except OSError:
        return path, ""
    return path, f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def mount_at(path: str, dev: str, mounts: List[Mount]) -> Optional[Mount]:
    """The mount that holds `path` (absolute, resolved) on device `dev`: the last one with the
    longest mount point above it, among those of `dev` when any match (a bind mount's point need
    not be a prefix of the file system's own paths, and a mount may be hidden by a later one)."""
    above = [m for m in mounts if _under(path, m.point)]
    candidates = [m for m in above if m.dev == dev] or above
    if not candidates:
        return None
    longest = max(len(m.point) for m in candidates)
    return [m for m in candidates if len(m.point) == longest][-1]


def mount_option(options: str, key: str) -> Optional[str]:
    """The value of `key=value` in a mountinfo super options field, or None."""
    for opt in options.split(","):
        name, sep, value = opt.partition("=")
        if sep and name == key:
            return _unescape(value)
    return None


def why_volatile(path: str, mounts: List[Mount],
                 where: Callable[[str], Tuple[str, str]] = locate) -> Optional[str]:
    """Why `path` does not survive a reboot, in words (naming the mounts), or None. `where`
    gives a path's resolved form and device (`locate`)."""
    mount = mount_at(*where(path), mounts)
    chain = []
    for _ in range(_OVERLAY_DEPTH):
        if mount is None:
            return None
        here = f"{mount.point} ({mount.fstype})"
        if mount.fstype in VOLATILE_TYPES:
            return " on ".join([*chain, here])
        if mount.fstype != "overlay":
            return None
        upper = mount_option(mount.options, "upperdir")
        if upper is None:
            return None
        chain.append(f"{mount.point} (overlay, upperdir {upper})")
        mount = mount_at(*where(upper), mounts)
    return None


def check(path: str, mountinfo: str = MOUNTINFO) -> Optional[str]:
    """The warning for a state dir at `path` on a volatile file system, or None (persistent,
    or unknown: /proc not mounted, an unreadable mountinfo)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return None
    why = why_volatile(path, parse_mountinfo(text))
    if why is None:
        return None
    return (f"state dir {path} is on a volatile file system: {why}; its records are lost at "
            "every reboot, so every migration runs again at every boot and the upgrade floor "
            "and one-way levels protect nothing (give it a persistent home: README, read-only "
            "root)")
