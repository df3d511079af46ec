# SPDX-License-Identifier: MIT
"""The private, copy-on-write views of an old release's tree that `migration test` runs scripts
in, without root privileges and without writing to that tree.

Two halves:

- `launch()` (the caller's side): starts `python3 -m migration.trial WORK` in new user, mount,
  pid and network namespaces (no network: migrations run before it at boot) with util-linux's
  `unshare`, and writes the id maps of the user namespace from outside: the caller's uid and gid
  become root inside; a root caller maps every id to itself; with `newuidmap`/`newgidmap` and an
  /etc/subuid and /etc/subgid entry, ids 1..65535 map to the subordinate ids too, so a script may
  chown to other users. The child waits for its maps, then execs Python again, as the
  namespace's root (an exec before the maps exist would drop the capabilities it needs to mount).
- `Sandbox` (inside those namespaces, as their root): OLDROOT bind-mounted read-only as the lower
  layer of an overlayfs whose upper layer is a new dir under WORK, one per view; in each view a
  new /proc (of the pid namespace), a /dev of the harmless devices bound from the host, and a
  tmpfs on /run (the device's /run is one). Scripts run chrooted into a view.

Needs Linux >= 5.11 (overlayfs mounted in a user namespace), unprivileged user namespaces
allowed (Debian 12's default), and util-linux's unshare, mount and umount and coreutils' chroot.
Files of OLDROOT owned by ids without a map show as 65534 inside, and a script that changes them
fails with EOVERFLOW ("Value too large for defined data type"): unpack OLDROOT as yourself.
"""

import os
import shutil
import subprocess
from typing import Dict, List, NamedTuple, Optional, Tuple

from migration.errors import MigrationError

#: Mount points of every view, not part of the data: left out of the tree pictures.
VIRTUAL = ("proc", "dev", "run")
#: Device nodes of the views' /dev (bound from the host's: a user namespace cannot mknod).
DEVICES = ("null", "zero", "full", "random", "urandom")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
#: Characters overlayfs' mount options cannot carry in a path.
_OPTION_CHARS = (",", ":", "\\", "=")
#: The ids below 65536 (the ones a rootfs uses) map to subordinate ids when newuidmap can.
_SUB_COUNT = 65535

NEEDS = (
    "Linux >= 5.11 (overlayfs in a user namespace) with unprivileged user namespaces "
    "allowed, util-linux (unshare, mount) and coreutils (chroot)"
)


class SandboxError(MigrationError):
    """The namespaces or the overlay cannot be set up here (exit 2, with the reason)."""


class IdMap(NamedTuple):
    """How the user namespace maps ids; `kind`: identity, subuid or single."""

    kind: str
    uids: List[Tuple[int, int, int]]  # (inside, outside, count)
    gids: List[Tuple[int, int, int]]

    def describe(self) -> str:
        if self.kind == "identity":
            return "every id maps to itself (run as root): owners are the host's"
        if self.kind == "subuid":
            return (
                "your uid and gid are root (0) inside, ids 1-65535 map to your subordinate "
                "ids: owners are shown as the namespace sees them"
            )
        return (
            "your uid and gid are root (0) inside, no other id maps (no newuidmap or no "
            "/etc/subuid entry): files of other owners show as 65534, a chown to another "
            "user fails"
        )

    def outside(self, uid: int, gid: int) -> bool:
        """Do host ids `uid` and `gid` both have a map?"""
        return any(o <= uid < o + n for _, o, n in self.uids) and any(
            o <= gid < o + n for _, o, n in self.gids
        )


def _subids(path: str, user: str, uid: int) -> Optional[Tuple[int, int]]:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                name, _, rest = line.strip().partition(":")
                start, _, count = rest.partition(":")
                if name in (user, str(uid)) and start.isdigit() and count.isdigit():
                    return int(start), min(int(count), _SUB_COUNT)
    except OSError:
        pass
    return None


def plan_ids() -> IdMap:
    """The maps `launch` will write, chosen from who runs and what the host offers."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        whole = [(0, 0, 4294967295)]
        return IdMap("identity", whole, whole)
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    sub_u = _subids("/etc/subuid", user, uid)
    sub_g = _subids("/etc/subgid", user, uid)
    if sub_u and sub_g and shutil.which("newuidmap") and shutil.which("newgidmap"):
        return IdMap(
            "subuid", [(0, uid, 1), (1, sub_u[0], sub_u[1])], [(0, gid, 1), (1, sub_g[0], sub_g[1])]
        )
    return IdMap("single", [(0, uid, 1)], [(0, gid, 1)])


def _write_maps(pid: int, ids: IdMap) -> None:
    if ids.kind == "subuid":
        for tool, ranges in (("newuidmap", ids.uids), ("newgidmap", ids.gids)):
            args = [str(n) for triple in ranges for n in triple]
            r = subprocess.run([tool, str(pid), *args], capture_output=True, text=True)
            if r.returncode:
                raise SandboxError(f"{tool} failed: {r.stderr.strip() or r.returncode}")
        return
    if ids.kind == "single":
        with open(f"/proc/{pid}/setgroups", "w") as f:  # required before an unprivileged gid_map
            f.write("deny")
    for name, ranges in (("uid_map", ids.uids), ("gid_map", ids.gids)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write("".join(f"{i} {o} {n}\n" for i, o, n in ranges))


#: What unshare's errno means here.
_HINTS = (
    ("No space left on device", " (the user.max_user_namespaces sysctl is 0 or reached)"),
    (
        "Operation not permitted",
        " (unprivileged user namespaces are disabled: "
        "kernel.unprivileged_userns_clone=0, or a security policy)",
    ),
)

#: The child: say it is in its namespaces, wait for its maps, exec Python as the namespace's root.
_CHILD = 'echo ready && read -r go && [ "$go" = go ] && exec "$0" -m migration.trial "$1"'


def launch(work: str, ids: IdMap, python: str) -> int:
    """Run migration.trial on `work` in new namespaces; its exit status. SandboxError when the
    namespaces cannot be made (the reason is unshare's, or the map's)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SandboxError(f"unshare (util-linux) is not in PATH; migration test needs {NEEDS}")
    lib = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    errlog = os.path.join(work, "stderr.log")
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(
            [
                unshare,
                "--user",
                "--mount",
                "--pid",
                "--net",
                "--fork",
                "--kill-child",
                "/bin/sh",
                "-c",
                _CHILD,
                python,
                work,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline() != b"ready\n":
            proc.wait()
            why = log_tail(errlog) or f"unshare exit {proc.returncode}"
            hint = next((h for text, h in _HINTS if text in why), "")
            raise SandboxError(
                f"cannot create user, mount, pid and network namespaces: {why}{hint}; "
                f"migration test needs {NEEDS}"
            )
        try:
            _write_maps(proc.pid, ids)
        except OSError as e:
            raise SandboxError(
                f"cannot map ids in the user namespace: {e.strerror} "
                f"({e.filename}); migration test needs {NEEDS}"
            ) from None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        proc.stdout.close()
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def log_tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace").strip()


def _run(argv: List[str], what: str) -> None:
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode:
        raise SandboxError(f"{what}: {r.stderr.strip() or 'exit ' + str(r.returncode)}")


class Sandbox:
    """Inside the namespaces: views of `oldroot` under `work`."""

    def __init__(self, work: str, oldroot: str) -> None:
        for path in (work, oldroot):
            if any(c in path for c in _OPTION_CHARS):
                raise SandboxError(
                    f"{path}: overlayfs cannot take a path with any of {' '.join(_OPTION_CHARS)}"
                )
        self.work = work
        self.oldroot = oldroot
        self.lower = os.path.join(work, "lower")
        self.dev = os.path.join(work, "dev")
        self.views: Dict[str, str] = {}  # merged dir -> its view dir
        self.mounts: List[str] = []  # of setup(), in order (a bind is no st_dev boundary)
        self.chroot = shutil.which("chroot") or "/usr/sbin/chroot"

    def setup(self) -> None:
        """The read-only lower layer and the /dev every view binds."""
        os.mkdir(self.lower)
        _run(
            ["mount", "--bind", "-o", "ro", self.oldroot, self.lower],
            f"cannot bind {self.oldroot} read-only",
        )
        self.mounts.append(self.lower)
        # On the file system of `work`, not on a tmpfs mounted in the namespace: the kernel
        # refuses to open a device bound onto a file of such a file system.
        os.mkdir(self.dev, 0o755)
        for name in DEVICES:
            node = os.path.join(self.dev, name)
            with open(node, "w"):
                pass
            _run(["mount", "--bind", f"/dev/{name}", node], f"cannot bind /dev/{name}")
            self.mounts.append(node)
        for name, target in _DEV_LINKS.items():
            os.symlink(target, os.path.join(self.dev, name))

    def fresh_view(self) -> str:
        """A new view of OLDROOT as it is (none of the other views' changes); its root dir."""
        view = os.path.join(self.work, f"view{len(self.views)}")
        upper, workdir, merged = (os.path.join(view, d) for d in ("upper", "work", "merged"))
        for d in (view, upper, workdir, merged):
            os.mkdir(d, 0o755)
        os.chmod(upper, os.stat(self.lower).st_mode & 0o7777)  # the root dir's mode is OLDROOT's
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.lower},upperdir={upper},workdir={workdir},userxattr",
                merged,
            ],
            "cannot mount an overlayfs in a user namespace (it needs Linux >= 5.11, and an upper "
            "dir on a file system with user extended attributes: ext4, xfs, btrfs, tmpfs since "
            f"Linux 6.6; choose it with --work-dir): {self.work}",
        )
        self.views[merged] = view
        for name in VIRTUAL:  # an unpacked rootfs has them; if not, made in the upper layer
            mountpoint = os.path.join(merged, name)
            if not os.path.isdir(mountpoint) or os.path.islink(mountpoint):
                raise SandboxError(f"OLDROOT has no directory /{name}: give an unpacked rootfs")
        _run(["mount", "-t", "proc", "proc", os.path.join(merged, "proc")], "cannot mount /proc")
        _run(["mount", "--rbind", self.dev, os.path.join(merged, "dev")], "cannot bind /dev")
        _run(
            ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", os.path.join(merged, "run")],
            "cannot mount a tmpfs on /run",
        )
        return merged

    def drop_view(self, merged: str) -> None:
        """Unmount a view and remove its upper layer."""
        _run(["umount", "-R", merged], f"cannot unmount {merged}")
        shutil.rmtree(self.views.pop(merged))

    def close(self) -> None:
        """Unmount and remove everything `setup` and the views made under `work`."""
        for merged in list(self.views):
            self.drop_view(merged)
        while self.mounts:
            path = self.mounts.pop()
            _run(["umount", path], f"cannot unmount {path}")
        if os.path.isdir(self.dev):
            shutil.rmtree(self.dev)
        if os.path.isdir(self.lower):
            os.rmdir(self.lower)

    def resolve(self, merged: str, path: str) -> Optional[str]:
        """`path` (absolute, as the device sees it) inside the view, symlinks followed as a
        chroot would; None when it does not lead to an existing file."""
        parts = [p for p in path.split("/") if p]
        done: List[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            real = os.path.join(merged, *done, part)
            try:
                target = os.readlink(real)
            except FileNotFoundError:
                return None
            except OSError:  # not a symlink
                done.append(part)
                continue
            hops += 1
            if hops > 40:
                return None
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
        real = os.path.join(merged, *done)
        return real if os.path.exists(real) else None
