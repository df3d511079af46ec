# SPDX-License-Identifier: MIT
"""Fragments -> manifest.json + the done symlink; conflicts are errors that name both sides."""

import hashlib
import json
import os

import pytest

from migration import manifest
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
