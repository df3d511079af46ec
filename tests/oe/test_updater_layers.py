# SPDX-License-Identifier: MIT
"""The optional kas fragments for the updaters' layers against real checkouts of those layers.

kas/rauc.yml, kas/swupdate.yml and kas/mender.yml each add an updater's layer to kas.yml; the
example layer then parses a bundle, a .swu image or a state-scripts recipe that carries
meta-migration's update hook. Each fragment gets a build dir of its own (kas.yml + fragment +
offline overrides), parsed with BitBake as users build it. A fragment is skipped, naming the
variable, unless its checkouts are given: MIGRATION_META_RAUC_DIR, MIGRATION_META_SWUPDATE_DIR,
MIGRATION_META_MENDER_DIR, MIGRATION_META_OE_DIR (meta-openembedded), on the branch of the
OE-core checkout (MIGRATION_OECORE_DIR); for a release with kas/<release>/<fragment>.yml (which
pins that release's branches) that file is used. Nothing is built: image builds need the network.
"""

import re
import shlex
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest
import yaml
from oebuild import LAYER, OEBuild, _env

pytestmark = pytest.mark.oe

HOOKS = "recipes-core/migration/files/update-hooks"

# fragment: (kas file, {repo in the fragment: (env var, sub dir that must exist)})
FRAGMENTS: Dict[str, Tuple[str, Dict[str, Tuple[str, str]]]] = {
    "rauc": ("kas/rauc.yml", {"meta-rauc": ("MIGRATION_META_RAUC_DIR", "conf/layer.conf")}),
    "swupdate": (
        "kas/swupdate.yml",
        {
            "meta-swupdate": ("MIGRATION_META_SWUPDATE_DIR", "conf/layer.conf"),
            "meta-openembedded": ("MIGRATION_META_OE_DIR", "meta-oe/conf/layer.conf"),
        },
    ),
    "mender": (
        "kas/mender.yml",
        {
            "meta-mender": ("MIGRATION_META_MENDER_DIR", "meta-mender-core/conf/layer.conf"),
            "meta-openembedded": ("MIGRATION_META_OE_DIR", "meta-oe/conf/layer.conf"),
        },
    ),
}


def kas_repos(kasfile: str) -> Dict[str, dict]:
    return yaml.safe_load((LAYER / kasfile).read_text())["repos"]


def test_fragments_pin_their_repos_and_agree_on_shared_ones() -> None:
    """Every repo a fragment adds is pinned by commit, and a repo two fragments add is pinned to
    the same commit (kas merges a repo two fragments of one command line add)."""
    seen: Dict[str, Tuple[str, str]] = {}
    for name, (kasfile, repos) in FRAGMENTS.items():
        declared = kas_repos(kasfile)
        assert set(declared) == set(repos), kasfile
        for repo, spec in declared.items():
            assert re.fullmatch(r"[0-9a-f]{40}", spec["commit"]), (kasfile, repo)
            assert spec["url"].startswith("https://"), (kasfile, repo)
            pin = (spec["url"], spec["commit"])
            assert seen.setdefault(repo, pin) == pin, f"{repo}: {name} pins another commit"


def test_release_fragments_repin_every_repo_of_the_fragment() -> None:
    """kas/<release>/<fragment>.yml includes kas/<fragment>.yml and pins each of its repos to
    the release's branch (a repo left out would stay on the default fragment's branch, whose
    layers do not declare that release), the same commit where two fragments share a repo."""
    releases = sorted(p for p in (LAYER / "kas").iterdir() if p.is_dir())
    assert releases, "no kas/<release>/ dir"
    for release_dir in releases:
        seen: Dict[str, str] = {}
        for name, (kasfile, repos) in FRAGMENTS.items():
            path = release_dir / f"{name}.yml"
            config = yaml.safe_load(path.read_text())
            assert config["header"]["includes"] == [kasfile], path
            assert set(config["repos"]) == set(repos), path
            for repo, spec in config["repos"].items():
                assert spec["branch"] == release_dir.name, (path, repo)
                assert re.fullmatch(r"[0-9a-f]{40}", spec["commit"]), (path, repo)
                assert seen.setdefault(repo, spec["commit"]) == spec["commit"], (path, repo)


def fragment_file(oe: OEBuild, name: str) -> str:
    """kas/<release>/<name>.yml when the OE-core checkout's release has one, else kas/<name>.yml
    (as oebuild picks kas/<release>.yml)."""
    release_file = f"kas/{oe.release}/{name}.yml"
    return release_file if (LAYER / release_file).is_file() else FRAGMENTS[name][0]


def fragment_build(oe: OEBuild, name: str) -> Path:
    """The fragment's build dir; skips naming the variable when a checkout is not given."""
    kasfile, repos = fragment_file(oe, name), FRAGMENTS[name][1]
    checkouts: Dict[str, Path] = {}
    for repo, (var, probe) in repos.items():
        value = _env(var)
        if value is None:
            pytest.skip(f"{kasfile} needs {var} (a {repo} checkout, branch {oe.release})")
        path = Path(value).resolve()
        if not (path / probe).is_file():
            pytest.fail(f"{var}={path}: not a {repo} checkout ({probe} is missing)")
        checkouts[repo] = path
    return oe.fragment_builddir(f"build-{name}", [kasfile], checkouts)


def parse_clean(oe: OEBuild, builddir: Path) -> None:
    """`bitbake -p` of the whole configuration, with the example layer's recipes parsed again
    (a cached recipe prints no parse-time warning): no error and no warning."""
    oe.run("find ../meta-migration/meta-migration-example -type f -exec touch {} +", builddir)
    proc = oe.run("bitbake -p", builddir)
    assert proc.returncode == 0, proc.stdout
    problems = [line for line in proc.stdout.splitlines() if re.match(r"(WARNING|ERROR):", line)]
    assert problems == [], proc.stdout


def getvar(oe: OEBuild, builddir: Path, recipe: str, var: str, flag: str = "") -> str:
    """A variable (or one of its flags) of a recipe, expanded, as `bitbake-getvar` prints it."""
    cmd = f"bitbake-getvar -r {recipe} --value {f'-f {flag} ' if flag else ''}{var}"
    proc = oe.run(cmd, builddir)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def task_graph(oe: OEBuild, builddir: Path, target: str) -> Tuple[Set[str], str]:
    """`bitbake -g TARGET`: every dependency resolves (a layer the fragment forgot shows here as
    "Nothing PROVIDES"); the recipes of the build and the task graph (task-depends.dot)."""
    proc = oe.run(f"bitbake -g {target}", builddir)
    assert proc.returncode == 0, proc.stdout
    recipes = set((builddir / "pn-buildlist").read_text().split())
    return recipes, (builddir / "task-depends.dot").read_text()


def fetched_files(oe: OEBuild, builddir: Path, recipe: str) -> List[Path]:
    """The local files a recipe's SRC_URI resolves to (do_fetch[file-checksums]: the path each
    file:// entry was found at)."""
    value = getvar(oe, builddir, recipe, "do_fetch", "file-checksums")
    return [
        Path(entry.rsplit(":", 1)[0]).resolve()
        for entry in value.split()
        if entry.endswith(":True")
    ]


def unpacked(oe: OEBuild, builddir: Path, recipe: str) -> Path:
    """The recipe's SRC_URI fetched and unpacked by BitBake's fetcher, on the parsed recipe, into
    a scratch dir. Not `bitbake -c unpack`: a bundle's or .swu's do_unpack waits for the image
    build (network)."""
    dest = builddir / f"unpack-test-{recipe}"
    script = f"""
import os, shutil
import bb.fetch2, bb.tinfoil
shutil.rmtree({str(dest)!r}, ignore_errors=True)
os.makedirs({str(dest)!r})
with bb.tinfoil.Tinfoil() as tinfoil:
    tinfoil.prepare(quiet=2)
    d = tinfoil.parse_recipe({recipe!r})
    fetcher = bb.fetch2.Fetch(d.getVar("SRC_URI").split(), d)
    fetcher.download()
    fetcher.unpack({str(dest)!r})
"""
    proc = oe.run(f"python3 -c {shlex.quote(script)}", builddir)
    assert proc.returncode == 0, proc.stdout
    return dest


def assert_hook_in_unpackdir(unpackdir: Path, hook: str) -> None:
    """The hook the recipe takes is the layer's, executable (RAUC and SWUpdate run it as is)."""
    copy = unpackdir / hook
    assert copy.read_bytes() == (LAYER / HOOKS / hook).read_bytes()
    assert copy.stat().st_mode & 0o111


# -- RAUC ------------------------------------------------------------------------------------


def test_rauc_fragment_parses_and_the_bundle_runs_the_hook_after_install(oe: OEBuild) -> None:
    builddir = fragment_build(oe, "rauc")
    parse_clean(oe, builddir)
    assert getvar(oe, builddir, "migration-demo-bundle", "RAUC_BUNDLE_HOOKS", "file") == (
        "rauc-hook.sh"
    )
    assert getvar(oe, builddir, "migration-demo-bundle", "RAUC_SLOT_rootfs") == (
        "migration-demo-image"
    )
    assert getvar(oe, builddir, "migration-demo-bundle", "RAUC_SLOT_rootfs", "hooks") == (
        "post-install"
    )
    assert oe.layer / HOOKS / "rauc-hook.sh" in fetched_files(oe, builddir, "migration-demo-bundle")
    # The device side: RAUC in the image, the example system.conf in rauc-conf.
    assert "rauc" in getvar(oe, builddir, "migration-demo-image", "IMAGE_INSTALL").split()
    conf = (
        oe.layer / "meta-migration-example/dynamic-layers/rauc/recipes-core/rauc/files/system.conf"
    )
    assert conf in fetched_files(oe, builddir, "rauc-conf")
    compatible = re.search(r"^compatible=(.*)$", conf.read_text(), re.M)
    assert compatible
    bundle_compatible = getvar(oe, builddir, "migration-demo-bundle", "RAUC_BUNDLE_COMPATIBLE")
    assert compatible.group(1) == bundle_compatible
    recipes, dot = task_graph(oe, builddir, "migration-demo-bundle")
    assert {"migration-demo-image", "rauc", "rauc-conf", "rauc-native"} <= recipes
    assert '"migration-demo-bundle.do_unpack" -> "migration-demo-image.do_image_complete"' in dot


def test_rauc_bundle_manifest_names_the_hook(oe: OEBuild) -> None:
    """meta-rauc's own write_manifest (do_configure's first step) on the parsed bundle recipe,
    after its real do_unpack; the rootfs image is a stand-in in a scratch deploy dir (building
    the image needs the network). The manifest is what `rauc install` follows."""
    builddir = fragment_build(oe, "rauc")
    assert_hook_in_unpackdir(unpacked(oe, builddir, "migration-demo-bundle"), "rauc-hook.sh")
    scratch = builddir / "manifest-test"
    script = f"""
import os, shutil
import bb.tinfoil
scratch = {str(scratch)!r}
shutil.rmtree(scratch, ignore_errors=True)
with bb.tinfoil.Tinfoil() as tinfoil:
    tinfoil.prepare(quiet=2)
    d = tinfoil.parse_recipe("migration-demo-bundle")
    d.setVar("DEPLOY_DIR_IMAGE", scratch + "/deploy")
    d.setVar("BUNDLE_DIR", scratch + "/bundle")
    image = d.expand("${{RAUC_SLOT_rootfs}}${{IMAGE_MACHINE_SUFFIX}}${{IMAGE_NAME_SUFFIX}}.ext4")
    os.makedirs(scratch + "/deploy")
    open(os.path.join(scratch, "deploy", image), "w").close()
    namespace = {{"bb": bb, "os": os, "d": d}}
    exec(d.getVar("write_manifest", False), namespace)
    namespace["write_manifest"](d)
"""
    proc = oe.run(f"python3 -c {shlex.quote(script)}", builddir)
    assert proc.returncode == 0, proc.stdout
    manifest = (scratch / "bundle/manifest.raucm").read_text()
    sections = dict(re.findall(r"^\[([^\]]+)\]\n((?:[^\[\n].*\n)*)", manifest, re.M))
    assert "filename=rauc-hook.sh\n" in sections["hooks"], manifest
    assert "hooks=post-install\n" in sections["image.rootfs"], manifest
    assert re.search(r"^filename=migration-demo-image-.*\.rootfs\.ext4$", sections["image.rootfs"],
                     re.M), manifest  # fmt: skip
    assert "format=verity\n" in sections["bundle"], manifest


# -- SWUpdate --------------------------------------------------------------------------------


def sw_description_selections(text: str) -> Dict[str, str]:
    """The selections of the example sw-description (NAME = { ... }; one level below stable)."""
    body = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return dict(re.findall(r"(slot-\w+) = \{(.*?)\n\t\t\};", body, re.S))


def test_swupdate_fragment_parses_and_the_swu_runs_the_hook_after_the_rootfs(
    oe: OEBuild,
) -> None:
    builddir = fragment_build(oe, "swupdate")
    parse_clean(oe, builddir)
    sources = fetched_files(oe, builddir, "migration-demo-swu")
    desc = oe.layer / (
        "meta-migration-example/dynamic-layers/swupdate/recipes-swupdate/migration-demo-swu/"
        "files/sw-description"
    )
    assert desc in sources
    assert oe.layer / HOOKS / "swupdate-postinst.sh" in sources
    # The rootfs image is built first and taken into the .swu under the name sw-description uses.
    depends = getvar(oe, builddir, "migration-demo-swu", "do_swuimage", "depends")
    assert "migration-demo-image:do_build" in depends.split()
    fstype = getvar(oe, builddir, "migration-demo-swu", "SWUPDATE_IMAGES_FSTYPES",
                    "migration-demo-image")  # fmt: skip
    assert fstype == ".rootfs.ext4.zst"
    assert "ext4.zst" in getvar(oe, builddir, "migration-demo-image", "IMAGE_FSTYPES").split()
    assert "swupdate" in getvar(oe, builddir, "migration-demo-image", "IMAGE_INSTALL").split()
    recipes, dot = task_graph(oe, builddir, "migration-demo-swu")
    assert {"migration-demo-image", "swupdate"} <= recipes
    assert '"migration-demo-swu.do_swuimage" -> "migration-demo-image.do_build"' in dot
    selections = sw_description_selections(desc.read_text())
    assert set(selections) == {"slot-a", "slot-b"}
    for name, selection in selections.items():
        (device,) = re.findall(r'device = "([^"]+)";', selection)
        # The hook is a shellscript (run with postinst after the images) on the slot just written.
        script = re.search(r"scripts: \( \{(.*?)\} \);", selection, re.S)
        assert script, name
        assert 'filename = "swupdate-postinst.sh";' in script.group(1)
        assert 'type = "shellscript";' in script.group(1)
        assert f'data = "{device}";' in script.group(1)
        assert '"migration-demo-image-@@MACHINE@@.rootfs.ext4.zst"' in selection


def test_swu_sources_unpack_with_the_hook(oe: OEBuild) -> None:
    builddir = fragment_build(oe, "swupdate")
    unpackdir = unpacked(oe, builddir, "migration-demo-swu")
    assert_hook_in_unpackdir(unpackdir, "swupdate-postinst.sh")
    assert (unpackdir / "sw-description").is_file()


# -- Mender ----------------------------------------------------------------------------------


def test_mender_fragment_parses_and_the_artifact_takes_the_state_script(oe: OEBuild) -> None:
    builddir = fragment_build(oe, "mender")
    parse_clean(oe, builddir)
    recipe = "migration-mender-state-scripts"
    script = "ArtifactInstall_Leave_50_migration"
    assert oe.layer / HOOKS / script in fetched_files(oe, builddir, recipe)
    env = oe.run(f"bitbake -e {recipe}", builddir)
    assert env.returncode == 0, env.stdout
    scripts_dir = re.search(r'^MENDER_STATE_SCRIPTS_DIR="(.*)"$', env.stdout, re.M)
    assert scripts_dir, env.stdout
    compile_body = re.search(r"^do_compile\(\) \{\n(.*?)^\}$", env.stdout, re.M | re.S)
    assert compile_body, env.stdout
    assert re.search(rf"install -m 0755 \S+/{script} {re.escape(scripts_dir.group(1))}/",
                     compile_body.group(1)), compile_body.group(1)  # fmt: skip
    # mender-state-scripts deploys Artifact* scripts; the image's Artifact waits for that deploy.
    image = "migration-demo-image"
    assert "mender" in getvar(oe, builddir, image, "IMAGE_FSTYPES").split()
    depends = getvar(oe, builddir, image, "do_image_mender", "depends")
    assert f"{recipe}:do_deploy" in depends.split()
    assert getvar(oe, builddir, image, "MENDER_ARTIFACT_NAME") == "migration-demo-1"
    # mender-full: the client and the A/B image layout.
    features = set(getvar(oe, builddir, image, "MENDER_FEATURES").split())
    assert {"mender-image", "mender-update-install", "mender-grub"} <= features
    recipes, dot = task_graph(oe, builddir, image)
    assert {recipe, "mender", "mender-artifact-native"} <= recipes
    assert f'"{image}.do_image_mender" -> "{recipe}.do_deploy"' in dot


def test_mender_state_script_unpacks_unchanged(oe: OEBuild) -> None:
    builddir = fragment_build(oe, "mender")
    assert_hook_in_unpackdir(
        unpacked(oe, builddir, "migration-mender-state-scripts"),
        "ArtifactInstall_Leave_50_migration",
    )
