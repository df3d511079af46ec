# SPDX-License-Identifier: MIT
"""The no-op fast path of `migration run`: prove that nothing is to be done, or step aside.

A boot with every script applied should cost little more than the interpreter's start (issue 2:
within 2x of `python3 -c pass`). The full path imports argparse, json, re, typing, enum and the
runner (about as much as the interpreter's own start). This module imports only os, sys, stat,
fcntl and the built-in sha256, and still does what the contract asks of a no-op run: it reads the
scripts dir and hashes every file, so a changed script is always noticed.

It answers exit code 0 only when the full path would certainly answer 0 without writing or
printing anything; in every other case (an option it does not know, a missing or changed file,
a busy lock, an unreadable anything) it returns None and the full path decides. Being wrong
towards None costs milliseconds; it is never wrong towards 0, because every input of the full
path's decision is checked:

- The full path's no-op test (runner._nothing_to_do) needs the manifest's digest and entries.
  Parsing JSON and recomputing the digest costs the json and re imports, so the full path leaves
  a *key* in `<state>/noop-key` when a run ends with every manifest entry applied: the sha256
  of the manifest file's bytes, with the digest and (name, sha256) entries it verified from
  exactly those bytes. Here the manifest file is hashed and must match the key byte for byte;
  then the key's digest and entries are what the full path would parse.
- The done stamp `<state>/done/<digest>` must exist (`forget` removes it: the next run is full).
- Every non-ignored name in the scripts dir must be a regular file (not a symlink) listed in the
  entries with the same sha256, and the count must match: no warning, no refusal, no pending.
  Its fstat comes before its first byte is read: larger than files.SCRIPT_MAX, or (as root) not
  root's or writable by group or others, means the full path, which refuses it unread.
- state.json must be byte-identical to the one the key was written with (so its format is known
  and update_meta would not write), and the image's os-release VERSION_ID/BUILD_ID and this
  runner's version must be those recorded.
- The runner lock is taken (without waiting; a busy lock means the full path, which waits).
- As root, the state dir, done/ and the lock pass the full path's trust checks (owner root, not
  writable by others, the lock 0600; migration.files.owner_problem), and nothing in the state
  dir is opened through a symlink or blocked on: a key and stamp forged by a user who could
  write there must not skip a migration. Anything off means the full path, which refuses it.

The full path first decides whether the image may use the device's data at all
(migration.compat; a refusal exits 3). That verdict is a function of the manifest (levels, floor,
markers), the os-release VERSION_ID, state.json (compat_level, applied_image, image), the records
(only when state.json is missing or damaged) and the data markers (only when there is no state).
The key is written only after a run the verdict allowed, and it pins the manifest's bytes,
state.json's bytes and the os-release values; it can only match while state.json exists, so the
records and the markers cannot decide then. So every way to a refusal changes a pinned input and
this path steps aside (tests/test_noop.py goes through them).

A state dir on a volatile file system (migration.volatile) never gets a key: every run there
takes the full path, which says so.

The key is a cache, not state: it may be missing, stale or damaged (anything unexpected means
the full path), so it is written without fsync ordering concerns beyond atomic_write.
"""

from __future__ import annotations

import fcntl
import os
import stat

try:  # the built-in sha256 (python3-crypt's _sha2/_sha256) starts faster than OpenSSL's
    from _sha2 import sha256  # Python >= 3.12
except ImportError:
    try:
        from _sha256 import sha256  # Python <= 3.11
    except ImportError:
        from hashlib import sha256

from migration import __version__, files

#: Name of the key in the state dir, and its first line (format of the key).
KEY_NAME = "noop-key"
_MAGIC = "migration-noop-key 1"

# Leftovers of editors and package managers: skipped without a word (issue 2).
_IGNORED_SUFFIXES = ("~", ".swp", ".bak", ".orig", ".rpmnew", ".rpmsave")
_IGNORED_INFIXES = (".dpkg-", ".opkg-")

_GLOBALS = ("--root", "--scripts-dir", "--state-dir", "--manifest")
_RUN_SECONDS = ("--timeout", "--kill-grace", "--lock-wait")
_RUN_CHOICES = {"--policy": ("continue", "stop"), "--volatile-state": ("warn", "refuse")}
_READ_FLAGS = files.READ_FLAGS
_CHUNK = 1 << 16


def is_ignored(name: str) -> bool:
    """True for names skipped silently: hidden files and editor/package-manager leftovers."""
    return (
        name.startswith(".")
        or name.endswith(_IGNORED_SUFFIXES)
        or any(infix in name for infix in _IGNORED_INFIXES)
    )


def _inside(root: str, path: str) -> str:
    """`path` (below `root`) with its absolute symlinks (the file's own) taken as relative to `root`
    (at most 8 links, like a short chroot lookup; relative links resolve as they are)."""
    for _ in range(8):
        try:
            target = os.readlink(path)
        except OSError:
            return path
        if target.startswith("/"):
            path = os.path.join(root, target.lstrip("/"))
        else:
            path = os.path.join(os.path.dirname(path), target)
    return path


def read_os_release(root: str = "/") -> dict[str, str]:
    """VERSION_ID and BUILD_ID of the image at `root` (os-release(5): /etc first, then /usr/lib),
    as {"version_id": ..., "build_id": ...} with only the keys present.

    Below another root (an image mounted by an updater, IMAGE_ROOTFS at build time), an absolute
    symlink such as /etc/os-release -> /usr/lib/os-release is resolved inside that root, not on
    the running system. Only regular files count."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = os.path.join(root, rel)
        if root not in ("/", ""):
            path = _inside(root, path)
        try:
            # a symlink on most images; but never a FIFO, never unbounded
            text = files.read_bytes(path, files.OS_RELEASE_MAX, follow=True).decode(
                "utf-8", "replace")
        except OSError:
            continue
        found: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key in ("VERSION_ID", "BUILD_ID"):
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                found[key.lower()] = value
        return found
    return {}


def file_sha256(path: str, flags: int = _READ_FLAGS) -> str | None:
    """Hex sha256 of a regular file's content, None when it is not one (or a symlink)."""
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return _digest_rest(fd, sha256())
    finally:
        os.close(fd)


def _digest_rest(fd: int, digest: sha256) -> str:
    """Feed the rest of `fd` into `digest`; its hex value."""
    while True:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def key_text(
    manifest_sha: str, state_sha: str, image: dict[str, str], digest: str,
    entries: list[tuple[str, str]],
) -> bytes:
    """The key's content. `entries` are (name, sha256) pairs of valid names (no blanks)."""
    lines = [_MAGIC, f"runner {__version__}", f"manifest {manifest_sha}", f"state {state_sha}"]
    lines += [f"image {k}={v}" for k, v in sorted(image.items())]
    lines.append(f"digest {digest}")
    lines += [f"entry {sha} {name}" for name, sha in entries]
    lines.append(f"end {len(entries)}")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def _parse_key(data: bytes) -> tuple[dict[str, str], dict[str, str], dict[str, str]] | None:
    """(fields, image, entries by name) of a key, None unless it is whole and of this format."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if len(lines) < 2 or lines[0] != _MAGIC or lines[-1] != "":
        return None
    fields: dict[str, str] = {}
    image: dict[str, str] = {}
    entries: dict[str, str] = {}
    for line in lines[1:-1]:
        word, _, rest = line.partition(" ")
        if word == "entry":
            sha, _, name = rest.partition(" ")
            entries[name] = sha
        elif word == "image":
            k, _, v = rest.partition("=")
            image[k] = v
        else:
            fields[word] = rest
    if fields.get("end") != str(len(entries)):
        return None  # torn or edited: the full path decides (and rewrites it)
    return fields, image, entries


def parse_run_argv(argv: list[str]) -> tuple[dict[str, str], dict[str, object]] | None:
    """(global paths as given, run options parsed) of a plain `run` command line, the way
    argparse would read it; None for anything else (another command, --dry-run, --help, an
    abbreviation, a bad or dash-leading value...), which argparse then handles."""
    paths: dict[str, str] = {}
    opts: dict[str, object] = {}
    tokens = iter(argv)

    def value_of(token: str) -> str | None:
        _, eq, value = token.partition("=")
        if eq:
            return value
        value = next(tokens, None)
        if value is None or value.startswith("-"):
            return None  # argparse would not take it as the value
        return value

    for token in tokens:
        opt = token.partition("=")[0]
        if opt in _GLOBALS:
            value = value_of(token)
            if value is None:
                return None
            paths[opt] = value
        elif token == "run":
            break
        else:
            return None
    else:
        return None  # no command
    for token in tokens:
        opt = token.partition("=")[0]
        if opt not in _RUN_CHOICES and opt not in _RUN_SECONDS:
            return None
        value = value_of(token)
        if value is None:
            return None
        if opt in _RUN_CHOICES:
            if value not in _RUN_CHOICES[opt]:
                return None
            opts[opt] = value
            continue
        try:
            seconds = float(value)
        except ValueError:
            return None
        if not seconds >= 0 or seconds == float("inf"):
            return None
        opts[opt] = seconds
    return paths, opts


def fast_run(argv: list[str]) -> int | None:
    """0 when `migration <argv>` is a `run` with nothing to do (proven as the module docstring
    says), else None: the full path must run. Never raises for I/O problems."""
    parsed = parse_run_argv(argv)
    if parsed is None:
        return None
    given = parsed[0]
    try:  # abspath of a relative path needs the cwd, which may have been removed
        root = os.path.abspath(given["--root"]) if given.get("--root") else "/"
        scripts_dir = os.path.abspath(given.get("--scripts-dir") or
                                      os.path.join(root, "etc/migration.d"))
        state_dir = os.path.abspath(given.get("--state-dir") or
                                    os.path.join(root, "var/lib/migration"))
        manifest = os.path.abspath(given.get("--manifest") or
                                   os.path.join(root, "usr/share/migration/manifest.json"))
        euid = os.geteuid()
        if files.owner_problem(os.stat(state_dir), euid) is not None:
            return None
        lock = os.open(os.path.join(state_dir, "lock"), _READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(lock)
        if not stat.S_ISREG(st.st_mode) or files.owner_problem(st, euid, private=True):
            return None
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return _check(root, scripts_dir, state_dir, manifest, euid)
    except (OSError, ValueError):
        return None
    finally:
        os.close(lock)  # drops the lock


def _check(root: str, scripts_dir: str, state_dir: str, manifest: str,
           euid: int) -> int | None:
    parsed = _parse_key(files.read_bytes(os.path.join(state_dir, KEY_NAME), files.KEY_MAX))
    if parsed is None:
        return None
    fields, image, entries = parsed
    if fields.get("runner") != __version__:
        return None
    data = files.read_bytes(manifest, files.MANIFEST_MAX, follow=True)
    if fields.get("manifest") != sha256(data).hexdigest():
        return None
    data = files.read_bytes(os.path.join(state_dir, "state.json"), files.RECORD_MAX)
    if fields.get("state") != sha256(data).hexdigest():
        return None
    digest = fields.get("digest", "")
    done = os.path.join(state_dir, "done")
    st = os.lstat(done)
    if not digest or not stat.S_ISDIR(st.st_mode) or files.owner_problem(st, euid):
        return None
    if not stat.S_ISREG(os.lstat(os.path.join(done, digest)).st_mode):
        return None
    if read_os_release(root) != image:
        return None
    if any(is_ignored(name) for name in entries):
        return None  # a hand-made manifest listing a name the full path skips: let it say so
    # Names opened relative to the directory's fd: one path component to resolve, not all.
    dfd = os.open(scripts_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _check_dir(dfd, entries, euid)
    finally:
        os.close(dfd)


def _check_dir(dfd: int, entries: dict[str, str], euid: int) -> int | None:
    seen = 0
    with os.scandir(dfd) as it:
        for entry in it:
            name = entry.name
            expected = entries.get(name)  # listed names are never ignored (checked above)
            if expected is None:
                if is_ignored(name):
                    continue
                return None  # an unlisted name: the full path warns or refuses
            # d_type from the listing (no syscall) and O_NOFOLLOW: a regular file, not a symlink
            if not entry.is_file(follow_symlinks=False) or _hash(name, dfd, euid) != expected:
                return None  # changed content or not a regular file: the full path decides
            seen += 1
    return 0 if seen == len(entries) else None


def _hash(name: str, dfd: int, euid: int) -> str | None:
    """file_sha256 of a script the full path would read (a regular file of at most SCRIPT_MAX
    bytes; as root, root's and not writable by group or others: its fstat is checked before a
    byte is read), else None. One read for the usual small script (a short read of a regular
    file is its end)."""
    fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_size > files.SCRIPT_MAX
                or files.owner_problem(st, euid) is not None):
            return None
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:
            return sha256(data).hexdigest()
        digest = sha256(data)
        size = len(data)
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return digest.hexdigest()
            size += len(chunk)
            if size > files.SCRIPT_MAX:
                return None  # grew (or a /proc file): the full path refuses it
            digest.update(chunk)
    finally:
        os.close(fd)
