# SPDX-License-Identifier: MIT
"""Fragments -> manifest.json + the done symlink; conflicts are errors that name both sides."""

import hashlib
import json
import os

import pytest

from migration import files, manifest
from migration.errors import ManifestError


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Image:
    def __init__(self, root):
        self.root = root
        self.scripts = root / "etc" / "migration.d"
        self.frags = root / "usr" / "share" / "migration" / "packages"
        self.scripts.mkdir(parents=True)
        self.frags.mkdir(parents=True)

    def ship(self, package, scripts, version="1.0-r0"):
        for name, text in scripts.items():
            (self.scripts / name).write_text(text)
        frag = manifest.fragment(package, version, [(n, _sha(t)) for n, t in scripts.items()])
        (self.frags / f"{package}.json").write_text(json.dumps(frag))
        return frag


@pytest.fixture
def image(tmp_path):
    return Image(tmp_path)


def test_fragment_is_sorted_and_validated():
    entries = [("20-b", "b" * 64), {"name": "10-a", "sha256": "a" * 64}]
    frag = manifest.fragment("foo", "1.0-r0", entries)
    assert frag == {
        "format": 1,
        "package": "foo",
        "version": "1.0-r0",
        "migrations": [{"name": "10-a", "sha256": "a" * 64}, {"name": "20-b", "sha256": "b" * 64}],
    }
    with pytest.raises(ManifestError, match="invalid migration name"):
        manifest.fragment("foo", "1", [("bad name", "a" * 64)])
    with pytest.raises(ManifestError, match="64 lower-case hex"):
        manifest.fragment("foo", "1", [("10-a", "A" * 64)])
    with pytest.raises(ManifestError, match="more than once"):
        manifest.fragment("foo", "1", [("10-a", "a" * 64), ("10-a", "b" * 64)])


def test_generate_writes_manifest_and_dangling_done_link(image):
    image.ship("foo", {"50-foo-b": "echo b\n", "50-foo-a": "echo a\n"})
    image.ship("bar", {"10-bar-x": "echo x\n"}, version="2.0-r1")
    result = manifest.generate(str(image.root))
    names = [m["name"] for m in result["migrations"]]
    assert names == ["10-bar-x", "50-foo-a", "50-foo-b"]
    assert result["migrations"][0] == {
        "name": "10-bar-x", "sha256": _sha("echo x\n"), "package": "bar", "version": "2.0-r1"
    }
    canonical = json.dumps(result["migrations"], sort_keys=True, separators=(",", ":"))
    assert result["digest"] == hashlib.sha256(canonical.encode()).hexdigest()
    path = image.root / "usr/share/migration/manifest.json"
    assert json.loads(path.read_text()) == result
    link = image.root / "usr/share/migration/done"
    assert os.readlink(link) == f"/var/lib/migration/done/{result['digest']}"
    loaded = manifest.load(str(path))
    assert loaded.digest == result["digest"] and list(loaded.entries) == names
    assert loaded.entries["10-bar-x"].package == "bar"
    # regenerating replaces the link
    image.ship("baz", {"60-baz": "true\n"})
    result2 = manifest.generate(str(image.root))
    assert os.readlink(link).endswith(result2["digest"]) and result2["digest"] != result["digest"]


def test_empty_image(tmp_path):
    result = manifest.generate(str(tmp_path))
    assert result["migrations"] == [] and result["digest"] == manifest.digest([])


def test_duplicate_name_names_both_packages(image):
    image.ship("foo", {"50-x": "echo 1\n"})
    frag = manifest.fragment("bar", "1", [("50-x", _sha("echo 1\n"))])
    (image.frags / "bar.json").write_text(json.dumps(frag))
    with pytest.raises(ManifestError, match="50-x is shipped by two packages: bar and foo"):
        manifest.generate(str(image.root))


def test_duplicate_name_in_one_fragment_says_so(image):
    """Not "shipped by two packages: foo and foo"."""
    image.ship("foo", {"50-x": "echo 1\n"})
    frag = json.loads((image.frags / "foo.json").read_text())
    frag["migrations"].append(dict(frag["migrations"][0]))
    (image.frags / "foo.json").write_text(json.dumps(frag))
    with pytest.raises(ManifestError) as exc:
        manifest.generate(str(image.root))
    assert str(exc.value) == (f"migration 50-x is listed twice in {image.frags / 'foo.json'} "
                              "(package foo)")
    # one package in two fragment files: both files named
    (image.frags / "foo.json").write_text(json.dumps(manifest.fragment(
        "foo", "1", [("50-x", _sha("echo 1\n"))])))
    (image.frags / "foo-extra.json").write_text((image.frags / "foo.json").read_text())
    with pytest.raises(ManifestError, match=r"50-x is declared by package foo in two fragments: "
                       r".*foo-extra\.json and .*foo\.json"):
        manifest.generate(str(image.root))


def test_a_symlinked_script_fails_the_build(image):
    """The runner refuses a symlinked script (as root) on every run: refuse it when the
    manifest is written, not on the device."""
    image.ship("foo", {"50-x": "echo 1\n"})
    (image.scripts / "50-x").rename(image.root / "real-x")
    (image.scripts / "50-x").symlink_to(image.root / "real-x")
    with pytest.raises(ManifestError, match="50-x is a symlink: the runner refuses"):
        manifest.generate(str(image.root))
    assert not (image.root / manifest.MANIFEST_REL).exists()


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_load_refuses_what_is_not_a_regular_file(tmp_path, special):
    """manifest.json -> /dev/zero ended in MemoryError (exit 1), a FIFO hung the runner."""
    path = tmp_path / "manifest.json"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(special)
    with pytest.raises(ManifestError, match="not a regular file"):
        manifest.load(str(path))


def test_load_caps_the_size_read(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MANIFEST_MAX", 100)
    path = tmp_path / "manifest.json"
    path.write_text("[" + "1," * 100 + "1]")
    with pytest.raises(ManifestError, match="larger than"):
        manifest.load(str(path))


def test_hash_mismatch_between_fragment_and_file(image):
    image.ship("foo", {"50-x": "echo 1\n"})
    (image.scripts / "50-x").write_text("echo changed\n")
    with pytest.raises(ManifestError, match=r"package foo declares sha256 .* but .*50-x has"):
        manifest.generate(str(image.root))


def test_missing_and_undeclared_scripts(image):
    image.ship("foo", {"50-x": "echo 1\n"})
    (image.scripts / "50-x").unlink()
    (image.scripts / "60-stray").write_text("true\n")
    with pytest.raises(ManifestError) as exc:
        manifest.generate(str(image.root))
    assert "50-x (package foo) is missing" in str(exc.value)
    assert "60-stray is not declared by any package fragment" in str(exc.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "not valid JSON"),
        ('{"format": 1, "digest": "x", "migrations": []}', "digest does not match"),
        ('{"format": 9, "digest": "x", "migrations": []}', "newer"),
        ('{"migrations": []}', "no format"),
        ('{"format": 1, "migrations": [{"name": "a b", "sha256": "x"}]}', "invalid migration name"),
    ],
)
def test_load_rejects_damaged_manifest(tmp_path, content, match):
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=match):
        manifest.load(str(path))


def test_load_absent_is_none(tmp_path):
    assert manifest.load(str(tmp_path / "nope.json")) is None


def test_bad_fragment(image):
    (image.frags / "foo.json").write_text('{"format": 1, "package": "", "version": "1"}')
    with pytest.raises(ManifestError, match="package and version"):
        manifest.generate(str(image.root))


# -- issue 5: one-way levels, compat_level, upgrade floor, data markers ---------------------


def test_fragment_passes_oneway_through():
    frag = manifest.fragment(
        "foo", "1", [("10-a", "a" * 64, 2), {"name": "20-b", "sha256": "b" * 64, "oneway": 1},
                     {"name": "30-c", "sha256": "c" * 64, "oneway": 0}, ("40-d", "d" * 64, None)]
    )
    assert frag["migrations"] == [
        {"name": "10-a", "sha256": "a" * 64, "oneway": 2},
        {"name": "20-b", "sha256": "b" * 64, "oneway": 1},
        {"name": "30-c", "sha256": "c" * 64},
        {"name": "40-d", "sha256": "d" * 64},
    ]


@pytest.mark.parametrize("level", [-1, "1", 1.0, True])
def test_fragment_rejects_bad_oneway(level):
    with pytest.raises(ManifestError, match="oneway must be an integer >= 1"):
        manifest.fragment("foo", "1", [{"name": "10-a", "sha256": "a" * 64, "oneway": level}])


def test_generate_writes_levels_floor_markers_and_oneway(image):
    frag = manifest.fragment("foo", "1", [("50-foo-a", _sha("a\n"), 3), ("50-foo-b", _sha("b\n"))])
    (image.scripts / "50-foo-a").write_text("a\n")
    (image.scripts / "50-foo-b").write_text("b\n")
    (image.frags / "foo.json").write_text(json.dumps(frag))
    result = manifest.generate(str(image.root), compat_level=1, upgrade_floor="2.0",
                               data_markers=["/var/lib/foo", "/etc/foo.conf"])
    assert result["compat_level"] == 3  # max'ed with the one-way level
    assert result["upgrade_floor"] == "2.0"
    assert result["data_markers"] == ["/var/lib/foo", "/etc/foo.conf"]
    assert result["migrations"][0]["oneway"] == 3 and "oneway" not in result["migrations"][1]
    # the digest covers the one-way level and the settings of the verdict
    assert result["digest"] == manifest.digest_of(result)
    plain = [dict(result["migrations"][0]), result["migrations"][1]]
    del plain[0]["oneway"]
    assert manifest.digest_of({**result, "migrations": plain}) != result["digest"]
    assert manifest.digest(result["migrations"]) != result["digest"]
    loaded = manifest.load(str(image.root / manifest.MANIFEST_REL))
    assert loaded.compat_level == 3 and loaded.upgrade_floor == "2.0"
    assert loaded.data_markers == ("/var/lib/foo", "/etc/foo.conf")
    assert loaded.entries["50-foo-a"].oneway == 3 and loaded.entries["50-foo-b"].oneway == 0


def test_a_floor_gives_the_image_a_stamp_of_its_own(image):
    """Two releases with the same migrations, the later one with an upgrade floor above the
    earlier: the earlier release's done stamp must not let the later one skip the runner (and
    with it the refusal of data below its floor)."""
    image.ship("foo", {"50-m1": "echo m1\n"})
    plain = manifest.generate(str(image.root))
    floored = manifest.generate(str(image.root), upgrade_floor="2.0")
    marked = manifest.generate(str(image.root), data_markers=["/var/lib/foo"])
    leveled = manifest.generate(str(image.root), compat_level=2)
    digests = {m["digest"] for m in (plain, floored, marked, leveled)}
    assert len(digests) == 4
    link = os.readlink(image.root / manifest.DONE_LINK_REL)
    assert link.endswith("/" + leveled["digest"])
    for result in (plain, floored, marked, leveled):
        assert result["digest"] == manifest.digest_of(result)


def test_generate_without_options_writes_level_zero_only(image):
    image.ship("foo", {"50-x": "echo 1\n"})
    result = manifest.generate(str(image.root))
    assert result["compat_level"] == 0
    assert "upgrade_floor" not in result and "data_markers" not in result
    # entries without "oneway" hash exactly as before issue 5 (1.0 manifests stay valid)
    entry = {"name": "50-x", "sha256": _sha("echo 1\n"), "package": "foo", "version": "1.0-r0"}
    assert result["digest"] == manifest.digest([entry])
    loaded = manifest.load(str(image.root / manifest.MANIFEST_REL))
    assert (loaded.compat_level, loaded.upgrade_floor, loaded.data_markers) == (0, "", ())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"upgrade_floor": "latest"}, "upgrade floor 'latest' is not a version"),
        ({"upgrade_floor": "2.0 beta"}, "not a version"),
        ({"upgrade_floor": "v2"}, "not a version"),
        ({"data_markers": ["var/lib/foo"]}, "data marker 'var/lib/foo' is not an absolute path"),
        ({"data_markers": [""]}, "not an absolute path"),
        ({"compat_level": -1}, "compat_level must be an integer >= 0"),
    ],
)
def test_generate_rejects_bad_options(image, kwargs, match):
    with pytest.raises(ManifestError, match=match):
        manifest.generate(str(image.root), **kwargs)
    assert not (image.root / manifest.MANIFEST_REL).exists()


def test_load_of_a_1_0_manifest_has_level_zero(tmp_path):
    migrations = [{"name": "50-x", "sha256": "a" * 64, "package": "p", "version": "1"}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": 1, "digest": manifest.digest(migrations),
                                "migrations": migrations}))
    loaded = manifest.load(str(path))
    assert (loaded.compat_level, loaded.upgrade_floor, loaded.data_markers) == (0, "", ())
    assert loaded.entries["50-x"].oneway == 0


def test_load_takes_the_image_level_from_oneway_entries(tmp_path):
    """A hand-written manifest without compat_level still knows the levels it ships."""
    migrations = [{"name": "50-x", "sha256": "a" * 64, "oneway": 2}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": 1, "digest": manifest.digest(migrations),
                                "migrations": migrations}))
    assert manifest.load(str(path)).compat_level == 2


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"compat_level": "1"}, "compat_level must be an integer"),
        ({"upgrade_floor": "x"}, "is not a version"),
        ({"data_markers": "/a"}, "must be a list"),
        ({"data_markers": ["rel"]}, "not an absolute path"),
    ],
)
def test_load_rejects_bad_top_level_fields(tmp_path, extra, match):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": 1, "digest": manifest.digest([]), "migrations": [],
                                **extra}))
    with pytest.raises(ManifestError, match=match):
        manifest.load(str(path))


def test_load_rejects_bad_oneway(tmp_path):
    migrations = [{"name": "50-x", "sha256": "a" * 64, "oneway": 0}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": 1, "digest": manifest.digest(migrations),
                                "migrations": migrations}))
    with pytest.raises(ManifestError, match="oneway must be an integer >= 1"):
        manifest.load(str(path))


def test_manifest_command_options(image, capsys):
    from migration import cli

    image.ship("foo", {"50-x": "echo 1\n"})
    rc = cli.main(["manifest", "--root", str(image.root), "--compat-level", "2",
                   "--upgrade-floor", "1.5", "--data-marker", "/var/a", "--data-marker", "/b"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "compatibility level 2" in out and "upgrades from 1.5 or newer" in out
    loaded = manifest.load(str(image.root / manifest.MANIFEST_REL))
    assert (loaded.compat_level, loaded.upgrade_floor, loaded.data_markers) == (2, "1.5",
                                                                             ("/var/a", "/b"))
    assert cli.main(["manifest", "--root", str(image.root), "--upgrade-floor", "soon"]) == 2
    assert "is not a version" in capsys.readouterr().err
    assert cli.main(["manifest", "--root", str(image.root), "--data-marker", "rel"]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["manifest", "--root", str(image.root), "--compat-level", "-1"])
    assert exc.value.code == 2


def test_manifest_refresh_keeps_the_image_settings(image, capsys):
    """A package installed on a running device refreshes the manifest with a plain
    `migration manifest` (the class's postinst): the image's level, floor and markers stay."""
    from migration import cli

    image.ship("foo", {"50-x": "echo 1\n"})
    assert cli.main(["manifest", "--root", str(image.root), "--compat-level", "2",
                     "--upgrade-floor", "1.5", "--data-marker", "/var/a"]) == 0
    image.ship("bar", {"60-y": "echo 2\n"})
    assert cli.main(["manifest", "--root", str(image.root)]) == 0
    loaded = manifest.load(str(image.root / manifest.MANIFEST_REL))
    assert sorted(loaded.entries) == ["50-x", "60-y"]
    assert (loaded.compat_level, loaded.upgrade_floor, loaded.data_markers) == (2, "1.5",
                                                                             ("/var/a",))
    # given settings replace the kept ones; "" removes the floor
    assert cli.main(["manifest", "--root", str(image.root), "--upgrade-floor", ""]) == 0
    loaded = manifest.load(str(image.root / manifest.MANIFEST_REL))
    assert (loaded.compat_level, loaded.upgrade_floor, loaded.data_markers) == (2, "",
                                                                             ("/var/a",))
    # without a manifest to keep from: the defaults
    (image.root / manifest.MANIFEST_REL).unlink()
    assert cli.main(["manifest", "--root", str(image.root)]) == 0
    loaded = manifest.load(str(image.root / manifest.MANIFEST_REL))
    assert (loaded.compat_level, loaded.upgrade_floor, loaded.data_markers) == (0, "", ())
    capsys.readouterr()


def test_an_unwritable_done_link_is_named_not_the_manifest(image):
    """A directory where the done link belongs: the error names the link (adversary F7)."""
    image.ship("foo", {"50-foo-a": "echo a\n"})
    (image.root / "usr/share/migration/done").mkdir()
    with pytest.raises(ManifestError) as exc:
        manifest.generate(str(image.root))
    assert str(exc.value).startswith(
        f"cannot write the done link {image.root}/usr/share/migration/done: "
    )


def test_a_symlink_out_of_the_image_root_is_not_followed_for_the_write(image, tmp_path):
    """At rootfs time the build host writes the manifest: an absolute symlink in the image must
    not send the write to the host's files (adversary F5)."""
    image.ship("foo", {"50-foo-a": "echo a\n"})
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    share = image.root / "usr/share/migration"
    (share / "packages").rename(outside / "packages")
    share.rmdir()
    share.symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the image root"):
        manifest.generate(str(image.root))
    assert not (outside / "manifest.json").exists() and not (outside / "done").exists()
