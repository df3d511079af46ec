# SPDX-License-Identifier: MIT
"""A real OpenEmbedded-Core build configuration for tests/oe, made from kas.yml by kas.

Environment:
  MIGRATION_OECORE_DIR   openembedded-core checkout (wrynose, or scarthgap); unset: tests skip
  MIGRATION_BITBAKE_DIR  bitbake checkout (2.18, or 2.8); must sit next to openembedded-core as
                         `bitbake` (where oe-init-build-env and kas look); unset: tests skip
  MIGRATION_OE_USER      unprivileged user that runs BitBake (BitBake refuses root); when the
                         tests run as root it is created if missing and given a git identity.
                         Default: oeuser. Not root: BitBake runs as the current user.
  MIGRATION_OE_WORKDIR   where the layer copy and build directories live; kept between runs so
                         that the parse cache makes reruns fast. Default: /tmp/migration-oe
  MIGRATION_KAS_FILE     kas file of the layer to test. Default: kas.yml for wrynose (and any
                         other release), kas/<release>.yml for a release that has one
                         (scarthgap, whinlatter).
  MIGRATION_OE_SLOW=1    also run yocto-check-layer (12 to 25 minutes on 2 cores, fresh build dir)
  MIGRATION_META_RAUC_DIR, MIGRATION_META_SWUPDATE_DIR, MIGRATION_META_MENDER_DIR,
  MIGRATION_META_OE_DIR  checkouts of meta-rauc, meta-swupdate, meta-mender and
                         meta-openembedded (the branch of the OE-core release) for
                         test_updater_layers.py, which parses kas/rauc.yml, kas/swupdate.yml and
                         kas/mender.yml with them; a fragment whose checkouts are not given skips

How: the layer is copied (its git-tracked and untracked-but-not-ignored files) into the work
dir, made a git repository of its own, and given `offline.yml`, which points the kas repos at the
local checkouts (`url: null` + `path:`) and sets BB_NO_NETWORK. `kas shell KASFILE:offline.yml
-c true` (kas from the Python running pytest) writes conf/local.conf and conf/bblayers.conf, so
the configuration under test is the one users build. BitBake then runs as the unprivileged user.
"""

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

LAYER = Path(__file__).resolve().parents[2]
TEST_LAYER_REL = "tests/oe/data/meta-migration-test"


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def release_of(oecore: Path) -> str:
    """The series name of an OE-core checkout (the last of LAYERSERIES_CORENAMES)."""
    for line in (oecore / "meta/conf/layer.conf").read_text().splitlines():
        if line.startswith("LAYERSERIES_CORENAMES"):
            return line.split("=", 1)[1].strip().strip('"').split()[-1]
    return "unknown"


def _layer_files(src: Path) -> List[str]:
    """Files of the layer to copy: tracked plus untracked-not-ignored (so work in progress is
    tested), without build output, caches or .git."""
    proc = subprocess.run(
        ["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if proc.returncode == 0:
        return sorted({f for f in proc.stdout.decode().split("\0") if f})
    return sorted(
        str(p.relative_to(src))
        for p in src.rglob("*")
        if p.is_file() and not {".git", "__pycache__", ".venv"} & set(p.parts)
    )


class OEBuild:
    """One build configuration: the layer copy, a build dir, the user that runs BitBake."""

    def __init__(self, oecore: Path, bitbake: Path, user: Optional[str], workdir: Path) -> None:
        self.oecore = oecore
        self.bitbake_dir = bitbake
        self.user = user
        self.release = release_of(oecore)
        self.root = workdir / self.release
        self.layer = self.root / "meta-migration"
        self.builddir = self.root / "build"
        self.test_layer = self.layer / TEST_LAYER_REL
        kasfile = _env("MIGRATION_KAS_FILE")
        if kasfile is None:
            release_file = f"kas/{self.release}.yml"
            kasfile = release_file if (LAYER / release_file).is_file() else "kas.yml"
        self.kasfile = kasfile
        self.timings: Dict[str, float] = {}
        self._configured: Set[str] = set()

    # -- set-up ------------------------------------------------------------------------------

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root.parent, 0o755)
        os.chmod(self.root, 0o755)
        self._copy_layer()
        self._write_offline()
        self._kas_configure(self.builddir)
        self._chown_config(self.builddir)
        self._trust_layer_copy()

    def _copy_layer(self) -> None:
        if self.layer.exists():
            shutil.rmtree(self.layer)
        for rel in _layer_files(LAYER):
            src = LAYER / rel
            if not src.is_file():
                continue
            dst = self.layer / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)  # keeps mtimes: unchanged recipes stay in the parse cache
        git = ["git", "-C", str(self.layer), "-c", "user.name=tests", "-c", "user.email=t@t"]
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "layer under test"]):
            subprocess.run(git + cmd, check=True, capture_output=True)

    def _write_offline(self) -> None:
        text = f"""\
header:
  version: 14
repos:
  openembedded-core:
    url: null
    path: {self.oecore}
  bitbake:
    url: null
    path: {self.bitbake_dir}
local_conf_header:
  zz-offline: |
    BB_NO_NETWORK = "1"
"""
        (self.layer / "offline.yml").write_text(text)

    def _kas_configure(self, builddir: Path, fragments: Sequence[str] = ()) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "KAS_WORK_DIR": str(self.root / "kaswork"),
            "KAS_BUILD_DIR": str(builddir),
            "LANG": "en_US.UTF-8",
            # The layer copy belongs to the BitBake user after the first set-up; kas (run by
            # root here) must still see it as a git repository to resolve repo-relative includes.
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "safe.directory",
            "GIT_CONFIG_VALUE_0": "*",
        }
        (self.root / "kaswork").mkdir(exist_ok=True)
        kasfiles = ":".join([self.kasfile, *fragments, "offline.yml"])
        cmd = [sys.executable, "-m", "kas", "shell", kasfiles, "-c", "true"]
        proc = subprocess.run(
            cmd, cwd=self.layer, env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"kas failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")

    def _trust_layer_copy(self) -> None:
        """The BitBake user reads the root-owned layer copy with git (oe-selftest collects layer
        revisions): mark it safe for that user."""
        if self.user is None or os.getuid() != 0:
            return
        have = user_git(self.user, "--get-all", "safe.directory")
        if str(self.layer) not in have.stdout.split():
            user_git(self.user, "--add", "safe.directory", str(self.layer), check=True)

    def _chown_config(self, builddir: Path) -> None:
        """Hand kas's work dir and the build dir's conf over to the user."""
        if self.user is None or os.getuid() != 0:
            return
        pw = pwd.getpwnam(self.user)
        # The release dir too: oe-selftest creates <builddir>-st next to the build dir.
        os.lchown(self.root, pw.pw_uid, pw.pw_gid)
        os.lchown(builddir, pw.pw_uid, pw.pw_gid)
        # Not the layer copy: BitBake only reads it, and as root's it stays a git repository
        # that kas (run by root) can resolve repo-relative includes in.
        for top in (self.root / "kaswork", builddir / "conf"):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                    os.lchown(name, pw.pw_uid, pw.pw_gid)

    def extra_builddir(self, name: str, extra_layers: List[Path]) -> Path:
        """A second build dir with the same kas configuration plus ``extra_layers``.

        Configured again on every session, like the main build dir, so that a change of kas.yml
        reaches it too (kas rewrites local.conf and bblayers.conf; the parse cache survives).
        """
        builddir = self.root / name
        if name not in self._configured:
            self._kas_configure(builddir)
            with open(builddir / "conf/bblayers.conf", "a") as f:
                for layer in extra_layers:
                    f.write(f'BBLAYERS += "{layer}"\n')
            self._chown_config(builddir)
            self._configured.add(name)
        return builddir

    def fragment_builddir(
        self, name: str, fragments: List[str], checkouts: Dict[str, Path]
    ) -> Path:
        """A build dir configured from the kas file plus the kas ``fragments`` (such as
        kas/rauc.yml), whose repos are pointed at the local ``checkouts`` (repo name: path) by an
        override file after them. Configured again on every session, like the others."""
        builddir = self.root / name
        if name not in self._configured:
            repos = "".join(
                f"  {repo}:\n    url: null\n    path: {path}\n" for repo, path in checkouts.items()
            )
            override = f"offline-{name}.yml"
            (self.layer / override).write_text(f"header:\n  version: 14\nrepos:\n{repos}")
            self._kas_configure(builddir, [*fragments, override])
            self._chown_config(builddir)
            self._configured.add(name)
        return builddir

    # -- running BitBake ---------------------------------------------------------------------

    def run(
        self,
        command: str,
        builddir: Optional[Path] = None,
        timeout: float = 3600,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run a shell command in the initialised build environment, as the unprivileged user.

        Output (stdout and stderr together) is in ``.stdout``; the wall time goes to
        :attr:`timings` under the command.
        """
        builddir = builddir or self.builddir
        script = (
            f"export BITBAKEDIR={shlex.quote(str(self.bitbake_dir))}; "
            f". {shlex.quote(str(self.oecore / 'oe-init-build-env'))} "
            f"{shlex.quote(str(builddir))} >/dev/null && {command}"
        )
        if self.user is not None and os.getuid() == 0:
            argv = [
                "runuser",
                "-u",
                self.user,
                "--",
                "env",
                "-i",
                f"HOME={self._home()}",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "LANG=en_US.UTF-8",
                f"USER={self.user}",
                "bash",
                "-c",
                script,
            ]
        else:
            argv = ["bash", "-c", script]
        start = time.monotonic()
        proc = subprocess.run(
            argv,
            cwd=str(builddir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.timings[command] = time.monotonic() - start
        if check and proc.returncode != 0:
            raise AssertionError(f"`{command}` failed ({proc.returncode}):\n{proc.stdout}")
        return proc

    def _home(self) -> str:
        assert self.user is not None
        return pwd.getpwnam(self.user).pw_dir


def user_git(user: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`git config --global ARGS` as ``user``, in that user's own ~/.gitconfig."""
    home = pwd.getpwnam(user).pw_dir
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", f"HOME={home}", "git", "config", "--global", *args],
        capture_output=True,
        text=True,
        check=check,
        # Not the caller's directory: in a private home or a 0700 temp dir the user cannot
        # enter it, and git stops with an opaque exit 128 ("Unable to read current directory").
        cwd=home if os.path.isdir(home) else "/",
    )


def unreadable_for(user: str, paths: List[Path]) -> List[Path]:
    """Those of ``paths`` that ``user`` cannot read (BitBake runs as that user)."""
    return [
        path
        for path in paths
        if subprocess.run(
            ["runuser", "-u", user, "--", "test", "-r", str(path)], cwd="/", check=False
        ).returncode
        != 0
    ]


def ensure_user(user: str) -> None:
    """Create the unprivileged user (when root) and give it a git identity (oe-selftest)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", user], check=True)
    for key, value in (("user.name", "meta-migration tests"), ("user.email", f"{user}@localhost")):
        if user_git(user, key).returncode != 0:
            user_git(user, key, value, check=True)
