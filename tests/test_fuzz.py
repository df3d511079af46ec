# SPDX-License-Identifier: MIT
"""Issue 10: damaged bytes in every file the runner reads, from a seeded generator.

Each case copies a device (scripts 10-a, 20-b, 25-fail applied or failed before, 30-c new and
pending, a manifest from package fragments, os-release, state with a no-op key), damages one
input (a record, state.json, the manifest, a fragment, the no-op key, os-release, a script's
first line, or a name in the scripts or state dir) and runs `migration run`, `status` and
`status --json` in-process. Every case must end with no traceback, an exit code from the
documented set, no damaged record left in place, and, when the run could go ahead (0 or 1),
the undamaged new script 30-c applied.

MIGRATION_FUZZ_CASES sets the number of generated cases (default 200, a few seconds; the slow
suite runs e.g. 5000) and MIGRATION_FUZZ_SEED the seed. A case that once found a bug goes into
CRASHERS, which always run.
"""

import contextlib
import hashlib
import io
import json
import os
import random
import shutil

import pytest

from migration import cli, state
from migration import manifest as manifest_mod

CASES = int(os.environ.get("MIGRATION_FUZZ_CASES", "200"))
SEED = int(os.environ.get("MIGRATION_FUZZ_SEED", "10"))
EXIT_CODES = {0, 1, 2, 3, 75, 130}  # cli.py's docstring
TARGETS = ("applied", "failed", "state.json", "manifest", "fragment", "noop-key", "os-release",
           "header", "script-name", "state-name")
SCRIPTS = {"10-a": "echo a\n", "20-b": "#!/bin/sh\necho b\n", "25-fail": "exit 3\n"}
NEW = ("30-c", "echo c > \"$MIGRATION_ROOT/c-ran\"\n")

#: JSON values that broke a reader once (or could): substituted for a value of the document.
HOSTILE_VALUES = [
    b'"abc"', b"[1]", b"1.5e999", b"-1e999", b"-3", b"1" * 5000, b'"\\ud800"', b'"a\\nb"',
    b"null", b"{}", b"true", b"[" * 5000 + b"]" * 5000, b'"' + b"x" * 70000 + b'"', b"NaN",
    b'"\\u0000"', b"0.5",
]

#: Past crashers (target, content): always run.
CRASHERS = [
    ("state.json", b"[" * 200000),
    ("applied", b"[" * 200000 + b"]" * 200000),
    ("manifest", b"[" * 200000),
    ("fragment", b"{" * 100000),
    ("failed", None),  # "attempts": "abc", below
    ("os-release", b"VERSION_ID=\xff\xfe\nBUILD_ID=\x00\n"),
    ("header", b"#!/bin/sh -e\xff\n"),
    ("noop-key", b"migration-noop-key 1\nentry \xff \xfe\nend 1\n"),
]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _fragment(root, package, names):
    migrations = [{"name": n, "sha256": _digest(root / "etc/migration.d" / n)} for n in names]
    path = root / "usr/share/migration/packages" / f"{package}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest_mod.fragment(package, "1.0-r0", migrations)))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "device"
    scripts = root / "etc/migration.d"
    scripts.mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=demo\nVERSION_ID="1.0"\nBUILD_ID=7\n')
    for name, text in SCRIPTS.items():
        (scripts / name).write_text(text)
    _fragment(root, "p", list(SCRIPTS))
    assert _main("--root", str(root), "manifest")[0] == 0
    assert _main("--root", str(root), "run")[0] == 1  # 25-fail failed, the rest applied
    (scripts / NEW[0]).write_text(NEW[1])
    _fragment(root, "q", [NEW[0]])
    assert _main("--root", str(root), "manifest")[0] == 0
    return root


def _json_mutation(rng, data):
    """Replace one JSON value (a token after ':' or '[' or ',') with a hostile one."""
    spots = [i for i, c in enumerate(data) if c in b":[,"]
    if not spots:
        return data + rng.choice(HOSTILE_VALUES)
    i = rng.choice(spots) + 1
    end = i
    while end < len(data) and data[end] not in b",]}":
        end += 1
    return data[:i] + rng.choice(HOSTILE_VALUES) + data[end:]


def mutate(rng, data):
    op = rng.randrange(7)
    if op == 0 and data:
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if op == 1:
        return data[: rng.randrange(len(data) + 1)]
    if op == 2:
        i = rng.randrange(len(data) + 1)
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[i:]
    if op == 3:
        return b""
    if op == 4:
        return rng.choice(HOSTILE_VALUES)
    return _json_mutation(rng, data)


def _random_name(rng):
    raw = bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, 40))).replace(b"/", b"_")
    return os.fsdecode(raw) if raw not in (b".", b"..") else "x"


def damage(root, target, rng, content=None):
    """Damage `target` of the device at `root`; returns the record path damaged, if any."""
    st = root / "var/lib/migration"
    sha = {n: _digest(root / "etc/migration.d" / n) for n in (*SCRIPTS, NEW[0])}
    paths = {
        "applied": st / "applied" / sha["10-a"],
        "failed": st / "failed" / sha["25-fail"],
        "state.json": st / "state.json",
        "manifest": root / "usr/share/migration/manifest.json",
        "fragment": root / "usr/share/migration/packages/p.json",
        "noop-key": st / "noop-key",
        "os-release": root / "etc/os-release",
        "header": root / "etc/migration.d/20-b",
    }
    if target == "script-name":
        (root / "etc/migration.d" / _random_name(rng)).write_bytes(b"true\n")
        return None
    if target == "state-name":
        sub = rng.choice(("applied", "failed", "started", "done", "logs"))
        (st / sub / _random_name(rng)).write_bytes(rng.choice(HOSTILE_VALUES))
        return None
    path = paths[target]
    old = path.read_bytes() if path.exists() else b""
    if target == "failed" and content is None and not rng:
        record = json.loads(old)
        record["attempts"] = "abc"
        content = json.dumps(record).encode()
    if content is None:
        if target == "header":
            first, _, rest = old.partition(b"\n")
            content = mutate(rng, first) + b"\n" + rest
        else:
            content = mutate(rng, old)
    path.write_bytes(content)
    return path if target in ("applied", "failed") else None


def check_case(template, tmp_path, target, rng, content=None):
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(template, root, symlinks=True)
    record = damage(root, target, rng, content)
    if target in ("fragment", "header"):
        rc, _, err = _main("--root", str(root), "manifest")
        assert "Traceback" not in err and rc in (0, 2), err
    results = {}
    for argv in (["run"], ["status"], ["status", "--json"], ["run"]):
        rc, _out, err = _main("--root", str(root), *argv)
        assert "Traceback" not in err, (target, argv, err)
        assert rc in EXIT_CODES, (target, argv, rc, err)
        results.setdefault(argv[0], rc)
    st = state.State(str(root / "var/lib/migration"))
    if record is not None and record.exists() and results["run"] in (0, 1):
        kind = record.parent.name
        data = record.read_bytes()
        assert state.validate_record(kind, record.name, json.loads(data)) is None, data
    if results["run"] in (0, 1):
        sha_c = _digest(root / "etc/migration.d" / NEW[0])
        assert st.read_record("applied", sha_c)[0] is not None, (target, results)
        assert (root / "c-ran").exists()
        if target not in ("header",):
            sha_a = _digest(root / "etc/migration.d/10-a")
            assert st.read_record("applied", sha_a)[0] is not None


# Short ids: the id goes into PYTEST_CURRENT_TEST, which the scripts inherit, and an
# environment string over 128 KiB makes every exec fail (E2BIG).
@pytest.mark.parametrize("target, content", CRASHERS,
                         ids=[f"{t}-{i}" for i, (t, _) in enumerate(CRASHERS)])
def test_past_crashers(template, tmp_path, target, content):
    check_case(template, tmp_path, target, None, content)


def test_fuzz_every_input(template, tmp_path):
    rng = random.Random(SEED)
    for case in range(CASES):
        target = TARGETS[case % len(TARGETS)]
        seed = rng.randrange(2**32)
        try:
            check_case(template, tmp_path, target, random.Random(seed))
        except AssertionError as e:
            raise AssertionError(f"case {case} (target {target}, seed {seed}): {e}") from None
