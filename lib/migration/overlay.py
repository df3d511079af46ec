# SPDX-License-Identifier: MIT
"""Is a script's name held by an overlay's upper dir, which hides the image's file?

OpenBMC (meta-phosphor's static-norootfs) mounts /etc as an overlay whose lower dir is the
image's read-only /etc and whose upper dir (/run/mnt-persist/etc-data) is on the persistent rwfs:
it survives image updates. Any change made on the device to a script of /etc/migration.d copies
it up (an edit, touch, chmod): from then on the upper's copy hides every later image's file of
that name. Deleting it leaves a whiteout (a character device 0:0) in the upper, which hides the
image's file too. The runner judges each manifest entry on its own (migration.runner.plan); this
module only finds the upper dir's entry so that the reason can name it and the fix: remove it,
and the image's file shows again once the overlay is mounted anew (the next boot). A scripts dir
removed and re-created on the device is opaque in the upper dir (xattr trusted.overlay.opaque,
or user.overlay.opaque on a userxattr mount, set to "y"): it hides every file of the image's,
those of every later image too; the fix is to remove that upper dir.

Found from /proc/self/mountinfo like migration.volatile: the mount holding the scripts dir; for
an overlay, its upperdir option and the scripts dir's path below the mount point. Anything that
cannot be read or found (no overlay, no upper dir, an upper path this mount namespace does not
see) gives None: the reason then stays the generic one.
"""

import os
import stat
from typing import Callable, Dict, NamedTuple, Optional

from migration import volatile

#: The xattrs that make an upper dir opaque (the value b"y"), for trusted and userxattr mounts.
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


class UpperEntry(NamedTuple):
    path: str  # the entry in the upper dir, e.g. /run/mnt-persist/etc-data/migration.d/20-b
    whiteout: bool  # deleted on the device; else a copy of the file
    opaque: bool = False  # `path` is the upper scripts dir itself, opaque: it hides every file


def is_opaque(upper_dir: str) -> bool:
    """Does the upper dir hide the whole lower dir (removed and re-created on the device)?"""
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(upper_dir, name, follow_symlinks=False) == b"y":
                return True
        except OSError:  # no such xattr, no dir, no permission to read trusted.*
            continue
    return False


def upper_dir_of(directory: str, mountinfo: str = volatile.MOUNTINFO) -> Optional[str]:
    """`directory`'s counterpart in the upper dir of the overlay holding it, or None."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            mounts = volatile.parse_mountinfo(f.read())
    except OSError:
        return None
    path, dev = volatile.locate(directory)
    mount = volatile.mount_at(path, dev, mounts)
    if mount is None or mount.fstype != "overlay":
        return None
    upper = volatile.mount_option(mount.options, "upperdir")
    if upper is None:
        return None
    return os.path.normpath(os.path.join(upper, os.path.relpath(path, mount.point)))


def entry(upper_dir: str, name: str) -> Optional[UpperEntry]:
    """What the upper dir holds under `name`: a whiteout, another file, or nothing, in which
    case the upper dir itself when it is opaque (it hides the image's file), else None."""
    path = os.path.join(upper_dir, name)
    try:
        st = os.lstat(path)
    except OSError:
        return UpperEntry(upper_dir, False, True) if is_opaque(upper_dir) else None
    return UpperEntry(path, stat.S_ISCHR(st.st_mode) and st.st_rdev == 0)


def finder(
    scripts_dir: str, mountinfo: str = volatile.MOUNTINFO
) -> Callable[[str], Optional[UpperEntry]]:
    """name -> the upper dir's entry for that script, or None; mountinfo is read at the first
    call only (a run with nothing wrong never reads it)."""
    cache: Dict[str, Optional[str]] = {}

    def find(name: str) -> Optional[UpperEntry]:
        if "upper" not in cache:
            cache["upper"] = upper_dir_of(scripts_dir, mountinfo) if scripts_dir else None
        upper = cache["upper"]
        return entry(upper, name) if upper is not None else None

    return find
