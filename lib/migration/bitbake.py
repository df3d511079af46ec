# SPDX-License-Identifier: MIT
"""The BitBake glue of classes/migration.bbclass and classes/migration_image.bbclass.

The only module that sees BitBake's datastore ``d``: it turns variables into plain values, calls
:mod:`migration.lint` and :mod:`migration.manifest`, and turns their findings and errors into
OE QA issues. It imports ``bb`` and ``oe`` inside functions only, so ``python3 -m migration`` and
the tests can import the package without BitBake. Nothing that runs on the target imports it.

The package ``__init__`` lists this module in ``BBIMPORTS``: BitBake then scans its public
functions (``addpylib`` skips names that start with ``_``, so every function that reads ``d``
here is public) for ``d.getVar("LITERAL")`` and ``oe.qa.handle_error("LITERAL", ...)`` so task
signatures follow them. Names built at run time (``MIGRATION_SCRIPTS:<pkg>``,
``INSANE_SKIP:<pkg>``) are added to ``vardeps`` by :func:`setup` instead. The other modules of
the package reach the signatures through ``file-checksums`` (:mod:`migration.tasksources`).
"""

import os

# Only the module, not names from it: BitBake's addpylib (bitbake 2.8) calls inspect on every
# callable attribute of a BBIMPORTS module, and typing aliases such as List make it fail.
import typing

from . import lint

PER_PACKAGE_VARS = (
    "MIGRATION_SCRIPTS",
    "MIGRATION_PRIORITY",
    "MIGRATION_BEFORE",
    "MIGRATION_ONEWAY",
)
"""Variables read per package (``VAR:<pkg>``, falling back to ``VAR``)."""

LINT_TOOLS = ("sh", "bash", "shellcheck")
"""Host tools whose verdict do_migration_lint reports (:func:`lint_tools`)."""

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""Where do_migration_test finds the sandbox's tools (unshare, mount, umount, chroot, newuidmap,
newgidmap) after the task's PATH: HOSTTOOLS lists none of them (:func:`test_task`)."""


class PackageConfig(typing.NamedTuple):
    """What one package ships: plain values read from the datastore."""

    package: str
    priority: str
    scripts: typing.List[str]
    before: typing.List[str]
    name: str
    """The package's name on the device (installed names, fragment, gate instance): the package
    without the multilib prefix, so that ``foo`` and ``lib32-foo`` ship the same files (one
    migration, run once; rpm installs identical files of two packages side by side)."""

    def installed(self) -> typing.List[typing.Tuple[str, str]]:
        """``(script, installed_name)`` for each script of the package."""
        return [(s, lint.installed_name(self.priority, self.name, s)) for s in self.scripts]


def get_package_var(d: typing.Any, var: str, pkg: str) -> str:
    """``VAR:<pkg>`` when set and not empty, else ``VAR`` (systemd.bbclass's helper)."""
    val = (d.getVar(f"{var}:{pkg}") or "").strip()
    if not val:
        val = (d.getVar(var) or "").strip()
    return val


def package_configs(d: typing.Any) -> typing.List[PackageConfig]:
    """One :class:`PackageConfig` per package in MIGRATION_PACKAGES that ships a script."""
    configs = []
    mlprefix = d.getVar("MLPREFIX") or ""
    for pkg in (d.getVar("MIGRATION_PACKAGES") or "").split():
        scripts = get_package_var(d, "MIGRATION_SCRIPTS", pkg).split()
        if not scripts:
            continue
        configs.append(
            PackageConfig(
                pkg,
                get_package_var(d, "MIGRATION_PRIORITY", pkg) or lint.DEFAULT_PRIORITY,
                scripts,
                get_package_var(d, "MIGRATION_BEFORE", pkg).split(),
                pkg[len(mlprefix) :] if mlprefix and pkg.startswith(mlprefix) else pkg,
            )
        )
    return configs


def oneway_levels(
    d: typing.Any, configs: typing.List[PackageConfig]
) -> typing.Tuple[
    typing.Dict[str, typing.Dict[str, int]], typing.List[typing.Tuple[str, "lint.Finding"]]
]:
    """One-way level per package and script (MIGRATION_ONEWAY[:<pkg>], levels defaulting to
    MIGRATION_COMPAT_LEVEL) and the findings of those settings: :func:`lint.resolve_oneway`."""
    own = {}
    for cfg in configs:
        value = (d.getVar("MIGRATION_ONEWAY:" + cfg.package) or "").strip()
        if value:
            own[cfg.package] = value
    return lint.resolve_oneway(
        {cfg.package: cfg.scripts for cfg in configs},
        d.getVar("MIGRATION_ONEWAY") or "",
        own,
        # Through a name, never a literal: BitBake's scanner would make every task that calls
        # this depend on the distro's level; setup() adds it where a one-way script takes it.
        d.getVar(lint.COMPAT_LEVEL_VAR) or "",
    )


def is_inert(d: typing.Any) -> bool:
    """True for native and nativesdk variants: they ship no migrations."""
    import bb.data

    return bb.data.inherits_class("native", d) or bb.data.inherits_class("nativesdk", d)


def systemd_enabled(d: typing.Any) -> bool:
    """True when DISTRO_FEATURES has systemd: the gating drop-ins are installed."""
    return "systemd" in (d.getVar("DISTRO_FEATURES") or "").split()


def source_dir(d: typing.Any) -> str:
    """Where do_unpack put the file:// sources: UNPACKDIR (styhead and later) or WORKDIR."""
    return d.getVar("UNPACKDIR") or d.getVar("WORKDIR")


def find_local(d: typing.Any, script: str) -> typing.Optional[str]:
    """The file a ``file://<script>`` SRC_URI entry would fetch (FILESPATH search), or None.

    Every path searched is marked as a parse dependency, so adding, removing or editing the
    script invalidates the parse cache and the RDEPENDS derived from its interpreter.
    """
    import bb.parse
    import bb.utils

    found, searched = bb.utils.which(d.getVar("FILESPATH") or "", script, history=True)
    for path in searched:
        bb.parse.mark_dependency(d, path)
    return found or None


def interpreter_rdepends(d: typing.Any, path: str) -> typing.List[str]:
    """Packages the interpreter of the script at ``path`` needs (MIGRATION_INTERPRETER_RDEPENDS)."""
    from . import scripts

    name = scripts.interpreter(path).name
    return (d.getVarFlag("MIGRATION_INTERPRETER_RDEPENDS", name) or "").split()


def _fatal(d: typing.Any, msg: str) -> None:
    import bb

    bb.fatal("{}: {}".format(d.getVar("FILE", False), msg))


def setup(d: typing.Any) -> None:
    """Parse time (anonymous python): validate the settings, then set PACKAGES, FILES, RDEPENDS,
    the gating drop-ins' FILES and the vardeps of the per-package variables.

    Misconfiguration is fatal here, naming the recipe file, the variable and the fix.
    """
    from . import units

    if is_inert(d):
        return
    mode = d.getVar("MIGRATION_SHELLCHECK") or "auto"
    choices = (d.getVarFlag("MIGRATION_SHELLCHECK", "choices") or "auto no").split()
    if mode not in choices:
        _fatal(d, f"MIGRATION_SHELLCHECK = {mode!r}: set it to one of {', '.join(choices)}")
    pkgs = (d.getVar("MIGRATION_PACKAGES") or "").split()
    runner = (d.getVar("MIGRATION_RUNNER") or "").split()
    packages = (d.getVar("PACKAGES") or "").split()
    configs = package_configs(d)
    unpinned = lint.takes_default_level(d.getVar("MIGRATION_ONEWAY") or "")
    for pkg in pkgs:
        names = " ".join(f"{var}:{pkg}" for var in PER_PACKAGE_VARS)
        unpinned = unpinned or lint.takes_default_level(d.getVar("MIGRATION_ONEWAY:" + pkg) or "")
        for task in ("do_migration_lint", "migration_install"):
            d.appendVarFlag(task, "vardeps", " " + names)
        d.appendVarFlag("do_migration_lint", "vardeps", f" INSANE_SKIP:{pkg}")
    if has_patches(d):
        import bb.build

        # The lint must read the patched bytes, which are the installed ones.
        bb.build.addtask("do_migration_lint", None, "do_patch", d)
    roots = test_roots(d)
    for root in roots:
        if not os.path.isabs(root):
            _fatal(
                d,
                f"MIGRATION_TEST_ROOTS names {root!r}, which is not an absolute path: give the "
                "old release's trees (directories, e.g. a previous image's IMAGE_ROOTFS) as "
                "absolute paths",
            )
    if roots:
        import bb.build

        # Only here: a recipe without MIGRATION_TEST_ROOTS has no such task, and its task list
        # and signatures are what they were (nothing depends on this task).
        bb.build.addtask("do_migration_test", None, "do_migration_lint", d)
    if not qa_names_in_signatures():
        # Before wrynose, oe.qa.handle_error has no visitorcode: the QA names of report()
        # reach no signature, so the lint depends on the whole QA lists.
        d.appendVarFlag("do_migration_lint", "vardeps", " ERROR_QA WARN_QA")
    if unpinned:
        # Only recipes with a one-way script that takes the distro's level (NAME, not
        # NAME:LEVEL) depend on it: raising it rebuilds them, not every recipe that ships a
        # migration (oneway_levels() reads it through a name the scanner does not see).
        for task in ("do_migration_lint", "migration_install"):
            d.appendVarFlag(task, "vardeps", " " + lint.COMPAT_LEVEL_VAR)
    if not configs:
        import bb

        bb.warn(
            f"{d.getVar('FILE', False)} inherits migration but no package in MIGRATION_PACKAGES "
            f"({' '.join(pkgs) or 'empty'}) has MIGRATION_SCRIPTS: set MIGRATION_SCRIPTS"
        )
    for cfg in configs:
        pkg = cfg.package
        if not lint.PRIORITY_RE.match(cfg.priority):
            _fatal(
                d,
                "MIGRATION_PRIORITY{} = {!r} for package {} is not two digits: use 00 (first) "
                "to 99 (last), the default is {}".format(
                    "" if d.getVar("MIGRATION_PRIORITY:" + pkg) is None else ":" + pkg,
                    cfg.priority,
                    pkg,
                    lint.DEFAULT_PRIORITY,
                ),
            )
        for unit in cfg.before:
            if not units.UNIT_RE.match(unit):
                _fatal(
                    d,
                    f"MIGRATION_BEFORE of package {pkg} names {unit!r}, which is not a systemd "
                    "unit name (for example foo.service)",
                )
        if pkg not in packages:
            # First, so that ${PN}'s default FILES (all of ${sysconfdir}) do not take the scripts.
            d.prependVar("PACKAGES", pkg + " ")
            packages.insert(0, pkg)
        d.appendVar("FILES:" + pkg, " " + " ".join(package_paths(d, cfg)))
        rdepends = list(runner)
        for script in cfg.scripts:
            path = find_local(d, script)
            if path:
                rdepends += [r for r in interpreter_rdepends(d, path) if r not in rdepends]
        d.appendVar("RDEPENDS:" + pkg, " " + " ".join(rdepends))


PATCH_EXTENSIONS = (".diff", ".patch")
COMPRESSED_EXTENSIONS = (".gz", ".bz2", ".xz", ".Z")


def has_patches(d: typing.Any) -> bool:
    """True when SRC_URI holds a patch do_patch applies: what oe.patch.patch_path() takes for
    one (``apply=yes``, or a .diff/.patch name, compressed or not, without ``apply=no``), read
    from the URLs alone so that parsing fetches and searches nothing."""
    import bb.fetch2
    import oe.types

    for url in (d.getVar("SRC_URI") or "").split():
        try:
            _type, _host, path, _user, _pswd, parm = bb.fetch2.decodeurl(url)
        except bb.fetch2.MalformedUrl:
            continue
        base, ext = os.path.splitext(os.path.basename(path))
        if ext in COMPRESSED_EXTENSIONS:
            ext = os.path.splitext(base)[1]
        if "apply" in parm:
            if oe.types.boolean(parm["apply"]):
                return True
        elif ext in PATCH_EXTENSIONS:
            return True
    return False


def qa_names_in_signatures() -> bool:
    """True when BitBake's scanner turns ``oe.qa.handle_error("NAME", ...)`` into a dependency on
    whether NAME is in ERROR_QA or WARN_QA (OE-core's handle_error has a visitorcode)."""
    import oe.qa

    return hasattr(oe.qa.handle_error, "visitorcode")


_TOOL_IDS: typing.Dict[typing.Tuple[str, int, int], str] = {}


def tool_id(path: str) -> str:
    """What identifies the lint verdict of the tool at ``path``: its real name and the first
    line of ``--version`` (dash has none: its name). Memoised per file, size and mtime."""
    import subprocess

    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _TOOL_IDS:
        name = os.path.basename(real)
        try:
            proc = subprocess.run(
                [real, "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
            # ShellCheck prints "ShellCheck - shell script analysis tool" and "version: X".
            version = next((line for line in lines if line.startswith("version:")), "")
            version = version or (lines[0] if proc.returncode == 0 and lines else "")
        except (OSError, subprocess.SubprocessError):
            version = ""
        _TOOL_IDS[key] = f"{name} {version}".strip()
    return _TOOL_IDS[key]


def lint_tools(d: typing.Any) -> str:
    """MIGRATION_LINT_TOOLS: the host tools do_migration_lint runs (``sh -n``, ``bash -n``,
    ShellCheck unless MIGRATION_SHELLCHECK is "no") and their versions, or "none" for a tool
    the task PATH lacks. In the lint's signature, so that a build gives the same QA verdict for
    the same hash: another ShellCheck (or none) re-runs the lint.

    Every HOSTTOOLS_DIR path looked at becomes a parse dependency, so installing, removing or
    upgrading a tool invalidates the parse cache that holds this value.
    """
    import shutil

    import bb.parse

    names = [t for t in LINT_TOOLS if t != "shellcheck" or d.getVar("MIGRATION_SHELLCHECK") != "no"]
    hosttools = d.getVar("HOSTTOOLS_DIR") or ""
    ids = []
    for name in names:
        if hosttools:
            bb.parse.mark_dependency(d, os.path.join(hosttools, name))
        found = shutil.which(name, path=d.getVar("PATH"))
        ids.append(f"{name}={tool_id(found) if found else 'none'}")
    return "; ".join(ids)


def package_paths(d: typing.Any, cfg: PackageConfig) -> typing.List[str]:
    """The paths (relative to the image root) that package ``cfg.package`` must hold: its
    scripts, its fragment and its gating drop-ins."""
    from . import units

    paths = [f"{d.getVar('sysconfdir')}/migration.d/{inst}" for _, inst in cfg.installed()]
    paths.append(f"{d.getVar('datadir')}/migration/packages/{cfg.name}.json")
    if systemd_enabled(d):
        unitdir = d.getVar("systemd_system_unitdir")
        paths += [f"{unitdir}/{unit}.d/{units.gate_dropin_name(cfg.name)}" for unit in cfg.before]
    return paths


def check_packaging(d: typing.Any) -> None:
    """populate_packages:append: after the split, each migration package holds its files, and
    its RDEPENDS name the interpreter of each script it holds.

    A package earlier in PACKAGES whose FILES match (``${PN}``'s ``${sysconfdir}``, when
    ``PACKAGES += "${PN}-tools"`` puts the migration package after it) takes the files first:
    the QA issue migration-package names both packages and the fix. Interpreters are read from
    the packaged scripts, so scripts from a tarball, git or ``subdir=`` get their dependency too
    (setup() can find only file:// ones at parse time, and those already have it then).
    """
    import bb
    import bb.utils
    import oe.qa

    from . import scripts

    if is_inert(d):
        return
    pkgdest = d.getVar("PKGDEST")
    packages = (d.getVar("PACKAGES") or "").split()
    mlprefix = d.getVar("MLPREFIX") or ""
    for cfg in package_configs(d):
        pkg = cfg.package
        for path in package_paths(d, cfg):
            if os.path.lexists(os.path.join(pkgdest, pkg) + path):
                continue
            owner = next(
                (p for p in packages if os.path.lexists(os.path.join(pkgdest, p) + path)), None
            )
            if owner is None:
                continue  # not installed at all: do_install failed on it already
            oe.qa.handle_error(
                "migration-package",
                f"{d.getVar('PN')}: {path} of package {pkg} went to package {owner}, which "
                f"comes before it in PACKAGES and whose FILES ({d.getVar('FILES:' + owner)}) "
                f"take it: list {pkg} first (PACKAGE_BEFORE_PN += \"{pkg}\", or "
                f"PACKAGES =+ \"{pkg}\" instead of +=)",
                d,
            )
        rdepends = bb.utils.explode_deps(d.getVar("RDEPENDS:" + pkg) or "")
        added = []
        for _, inst in cfg.installed():
            script = os.path.join(pkgdest, pkg) + f"{d.getVar('sysconfdir')}/migration.d/{inst}"
            if not os.path.isfile(script):
                continue
            name = scripts.interpreter(script).name
            for dep in (d.getVarFlag("MIGRATION_INTERPRETER_RDEPENDS", name) or "").split():
                dep = dep if dep.startswith(mlprefix) else mlprefix + dep
                if dep not in rdepends and dep not in added:
                    added.append(dep)
        if added:
            bb.note(f"migration: adding {' '.join(added)} to RDEPENDS:{pkg} (script interpreters)")
            d.appendVar("RDEPENDS:" + pkg, " " + " ".join(added))
    oe.qa.exit_if_errors(d)


def first_in_script(script: typing.Optional[str], text: str) -> str:
    """`script` (a pkg_postinst or pkg_postrm value, or None) with `text` first: after its
    leading ``#!`` line if it has one (the package writers keep that line first, and add
    ``#!/bin/sh`` when there is none), before everything else, so that no ``exit 0`` of the
    recipe's own text skips it."""
    if not script:
        return "#!/bin/sh\n" + text
    body = script.lstrip()
    if body.startswith("#!"):
        line, _, rest = body.partition("\n")
        return f"{line}\n{text}{rest}"
    return text + script


def add_postinsts(d: typing.Any) -> None:
    """PACKAGESPLITFUNCS: each migration package's pkg_postinst gets migration_postinst
    (``migration postinst --package PKG``) and its pkg_postrm the manifest refresh, both for the
    package manager on the target; both get migration_rootfs_manifest, the image manifest at
    rootfs time.

    The text goes first (:func:`first_in_script`), before the recipe's own pkg_postinst: one
    that restarts its service, or ends in ``exit 0``, must not run before the migrations or
    skip them. PACKAGESPLITFUNCS:prepend runs this before systemd_populate_packages, which
    appends its part (the restart of the package's services) after ours.
    """
    import shlex

    if is_inert(d):
        return
    refresh = d.getVar("migration_refresh_manifest")
    rootfs = d.getVar("migration_rootfs_manifest")
    for cfg in package_configs(d):
        localdata = d.createCopy()
        # The name the manifest and the gates know (without a multilib prefix).
        localdata.setVar("MIGRATION_POSTINST_PACKAGE", shlex.quote(cfg.name))
        for var, text in (("pkg_postinst", localdata.getVar("migration_postinst") + rootfs),
                          ("pkg_postrm", refresh + rootfs)):  # fmt: skip
            key = f"{var}:{cfg.package}"
            d.setVar(key, first_in_script(d.getVar(key), text))


def qa_skipped(d: typing.Any, qa_name: str, pkg: str) -> bool:
    """True when INSANE_SKIP or INSANE_SKIP:<pkg> lists the QA name."""
    skip = (d.getVar("INSANE_SKIP") or "").split()
    skip += (d.getVar("INSANE_SKIP:" + pkg) or "").split()
    return qa_name in skip


def report(d: typing.Any, finding: lint.Finding, pkg: str) -> None:
    """One QA issue per finding, routed by ERROR_QA/WARN_QA; the QA names stay literal."""
    import oe.qa

    if qa_skipped(d, finding.qa_name, pkg):
        return
    msg = "{}: {}".format(d.getVar("PN"), finding.describe())
    # Literal names: on wrynose, oe.qa.handle_error's visitorcode then makes the signature
    # depend on whether each name is in ERROR_QA or WARN_QA, and on nothing else.
    handlers = {
        "missing": lambda: oe.qa.handle_error("migration-missing", msg, d),
        "empty": lambda: oe.qa.handle_error("migration-empty", msg, d),
        "shebang": lambda: oe.qa.handle_error("migration-shebang", msg, d),
        "errexit": lambda: oe.qa.handle_error("migration-errexit", msg, d),
        "syntax": lambda: oe.qa.handle_error("migration-syntax", msg, d),
        "shellcheck": lambda: oe.qa.handle_error("migration-shellcheck", msg, d),
        "crlf": lambda: oe.qa.handle_error("migration-crlf", msg, d),
        "name": lambda: oe.qa.handle_error("migration-name", msg, d),
        "duplicate": lambda: oe.qa.handle_error("migration-duplicate", msg, d),
        "oneway": lambda: oe.qa.handle_error("migration-oneway", msg, d),
        "idempotence": lambda: oe.qa.handle_error("migration-idempotence", msg, d),
    }
    handlers[finding.check]()


def shellcheck_binary(d: typing.Any) -> typing.Optional[str]:
    """The ShellCheck to use per MIGRATION_SHELLCHECK: "auto" (if in the task PATH), "no"."""
    import shutil

    import bb

    mode = d.getVar("MIGRATION_SHELLCHECK") or "auto"
    if mode == "no":
        return None
    found = shutil.which("shellcheck", path=d.getVar("PATH"))
    if not found:
        bb.debug(
            1,
            "migration: shellcheck not in PATH (add it to HOSTTOOLS_NONFATAL): check skipped",
        )
    return found


def lint_task(d: typing.Any) -> None:
    """do_migration_lint: every check on every listed script, one QA issue per finding."""
    import oe.qa

    if is_inert(d):
        return
    srcdir = source_dir(d)
    shellcheck = shellcheck_binary(d)
    origins: typing.List[typing.Tuple[str, str]] = []
    configs = package_configs(d)
    for pkg, finding in oneway_levels(d, configs)[1]:
        report(d, finding, pkg)
    for cfg in configs:
        for script, inst in cfg.installed():
            origins.append((inst, f"package {cfg.package} script {script}"))
            path = os.path.join(srcdir, script)
            if not os.path.isfile(path):
                report(
                    d,
                    lint.Finding(
                        "missing",
                        script,
                        f"listed in MIGRATION_SCRIPTS but not in {srcdir}: "
                        f"add file://{script} to SRC_URI",
                    ),
                    cfg.package,
                )
                continue
            with open(path, "rb") as f:
                data = f.read()
            for finding in lint.lint_script(script, data, inst, shellcheck):
                report(d, finding, cfg.package)
    for finding in lint.check_duplicates(origins):
        report(d, finding, d.getVar("PN"))
    oe.qa.exit_if_errors(d)


def test_roots(d: typing.Any) -> typing.List[str]:
    """MIGRATION_TEST_ROOTS: the old trees do_migration_test runs the scripts on."""
    return (d.getVar("MIGRATION_TEST_ROOTS") or "").split()


def test_task(d: typing.Any) -> None:
    """do_migration_test: `migration test` (:func:`migration.commands.test.check`) of the
    recipe's scripts, the bytes do_migration_lint read, under their installed names (so in the
    runner's order), on each tree of MIGRATION_TEST_ROOTS in turn, with BitBake's Python.

    Each report goes to the task log. A script that fails or is not idempotent fails the task,
    naming the recipe, the tree, the installed name, the path and the recipe's script; so does
    what `migration test` exits 2 on (no user namespaces, a tree whose /bin/sh this host cannot
    run), with its reason. Not a QA issue: the check was asked for, and the QA lists (part of
    the lint's signature before wrynose) stay as they are.
    """
    import shutil

    import bb

    from .commands import test as trial
    from .errors import MigrationError

    pn = d.getVar("PN")
    srcdir = source_dir(d)
    work = os.path.join(d.getVar("WORKDIR"), "migration-test")
    scriptsdir = os.path.join(work, "scripts")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(scriptsdir)
    paths: typing.List[str] = []
    origins: typing.Dict[str, str] = {}
    for cfg in package_configs(d):
        for script, inst in cfg.installed():
            src = os.path.join(srcdir, script)
            if not os.path.isfile(src):
                bb.fatal(
                    f"{pn}: {script} of package {cfg.package} is not in {srcdir}: "
                    f"add file://{script} to SRC_URI"
                )
            target = os.path.join(scriptsdir, inst)
            shutil.copyfile(src, target)
            os.chmod(target, 0o755)
            paths.append(target)
            origins[inst] = f"{script} of package {cfg.package}"
    if not paths:
        bb.note(f"migration: {pn} has no migration script to test")
        return
    problems: typing.List[str] = []
    saved_path = os.environ.get("PATH", "")
    # The sandbox's tools are the host's: mount, chroot, unshare are no HOSTTOOLS.
    os.environ["PATH"] = f"{saved_path}:{SANDBOX_PATH}" if saved_path else SANDBOX_PATH
    try:
        for root in test_roots(d):
            try:
                report = trial.check(root, paths, work_dir=work)
            except MigrationError as e:
                bb.fatal(f"{pn}: migration test cannot run on {root}: {e}")
            bb.note(f"migration test of {pn} on {root}:\n{trial.report_text(report)}")
            for problem in report["problems"]:
                names = [f"{i} is {o}" for i, o in origins.items() if f" {i} " in f" {problem} "]
                problems.append(
                    f"{pn}: migration test on {root}: {problem}"
                    + (f" ({'; '.join(names)})" if names else "")
                )
    finally:
        os.environ["PATH"] = saved_path
    if problems:
        bb.fatal("\n".join(problems) + "\n(what each script changed is in the task log)")


def install(d: typing.Any) -> None:
    """do_install postfunc: the scripts into ${sysconfdir}/migration.d, the gating drop-ins and
    each package's fragment ${datadir}/migration/packages/<pkg>.json (name and sha256 of what
    was installed, package version PV-PR)."""
    import shutil

    import bb

    from . import manifest, scripts, units

    if is_inert(d):
        return
    dest = d.getVar("D")
    srcdir = source_dir(d)
    scriptsdir = dest + d.getVar("sysconfdir") + "/migration.d"
    version = "{}-{}".format(d.getVar("PV"), d.getVar("PR"))
    configs = package_configs(d)
    # Invalid MIGRATION_ONEWAY entries failed do_migration_lint (or were turned into warnings
    # there): the scripts they name are installed as not one-way.
    oneway = oneway_levels(d, configs)[0]
    for cfg in configs:
        entries: typing.List[typing.Dict[str, typing.Any]] = []
        for script, inst in cfg.installed():
            src = os.path.join(srcdir, script)
            if not os.path.isfile(src):
                bb.fatal(
                    f"migration: {script} of package {cfg.package} is not in {srcdir}: "
                    f"add file://{script} to SRC_URI"
                )
            os.makedirs(scriptsdir, exist_ok=True)
            target = os.path.join(scriptsdir, inst)
            shutil.copyfile(src, target)
            os.chmod(target, 0o755)
            entry: typing.Dict[str, typing.Any] = {
                "name": inst,
                "sha256": scripts.sha256_file(target),
            }
            level = oneway.get(cfg.package, {}).get(script)
            if level:
                entry["oneway"] = level
            entries.append(entry)
        if cfg.before and systemd_enabled(d):
            for unit in cfg.before:
                dropin = os.path.join(
                    dest + d.getVar("systemd_system_unitdir"),
                    unit + ".d",
                    units.gate_dropin_name(cfg.name),
                )
                os.makedirs(os.path.dirname(dropin), exist_ok=True)
                with open(dropin, "w") as f:
                    f.write(units.gate_dropin(cfg.name))
                os.chmod(dropin, 0o644)
        fragment = os.path.join(
            dest + d.getVar("datadir"), "migration", "packages", cfg.name + ".json"
        )
        os.makedirs(os.path.dirname(fragment), exist_ok=True)
        manifest.write_json_atomic(fragment, manifest.fragment(cfg.name, version, entries))
        os.chmod(fragment, 0o644)


def image_manifest(d: typing.Any) -> None:
    """ROOTFS_POSTPROCESS_COMMAND of migration_image: the image manifest from what is installed.

    Images without migrations (no fragments dir and no scripts dir) are left alone. Errors of
    :func:`migration.manifest.generate`, such as two packages shipping one name, fail the build.
    """
    import bb
    import oe.qa

    from . import manifest
    from .errors import ManifestError

    root = d.getVar("IMAGE_ROOTFS")
    fragments = root + d.getVar("datadir") + "/migration/packages"
    scriptsdir = root + d.getVar("sysconfdir") + "/migration.d"
    if not os.path.isdir(fragments) and not os.path.isdir(scriptsdir):
        bb.debug(1, "migration: no migrations in this image, no manifest")
        return
    pn = d.getVar("PN")
    compat_level, problem = lint.image_compat_level(
        (d.getVar("MIGRATION_COMPAT_LEVEL") or "").strip()
    )
    floor = (d.getVar("MIGRATION_UPGRADE_FLOOR") or "").strip()
    markers = tuple((d.getVar("MIGRATION_DATA_MARKERS") or "").split())
    if problem:
        oe.qa.handle_error("migration-manifest", f"{pn}: image manifest: {problem}", d)
        oe.qa.exit_if_errors(d)
        return
    try:
        result = manifest.generate(
            root, compat_level=compat_level, upgrade_floor=floor, data_markers=markers
        )
    except ManifestError as e:
        oe.qa.handle_error("migration-manifest", f"{pn}: image manifest: {e}", d)
        oe.qa.exit_if_errors(d)
        return
    if floor:
        from . import compat, state

        version_id = state.read_os_release(root).get("version_id")
        problem = lint.floor_problem(floor, version_id, compat.compare_versions)
        if problem:
            oe.qa.handle_error("migration-manifest", f"{pn}: image manifest: {problem}", d)
            oe.qa.exit_if_errors(d)
            return
    count = len(result.get("migrations", []))
    bb.note(
        f"migration: image manifest with {count} migrations, compatibility level "
        f"{result.get('compat_level', compat_level)}, digest {result.get('digest')}"
    )
