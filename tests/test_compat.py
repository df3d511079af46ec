# SPDX-License-Identifier: MIT
"""The compatibility decision (R6 upgrade floors, R7 one-way levels) as tables: every rule, its
boundaries, equal versions, `~` and letters, state of a 0.1.0 runner, an image without VERSION_ID,
a damaged state.json beside records. Pure functions: no disk."""

import itertools
import subprocess

import pytest

from migration import compat
from migration.compat import BELOW_FLOOR, DOWNGRADE, FRESH, OK, PREDATES
from tools import tool

# -- versions ------------------------------------------------------------------------------

# (older, newer) pairs: each strictly older than the next in this list
ORDERED = [
    "0", "0.9", "1.0~~", "1.0~rc1", "1.0~rc2", "1.0", "1.0-r0", "1.0-r1", "1.0-r9", "1.0-r10",
    "1.0a", "1.0b", "1.0+", "1.0.1", "1.1", "1.9", "1.10", "2", "2.0.0", "10", "2024.04",
    "2024.10", "1:0.1", "1:1.0", "2:0",
]


@pytest.mark.parametrize(("a", "b"), list(zip(ORDERED, ORDERED[1:])))
def test_compare_versions_orders_neighbours(a, b):
    assert compat.compare_versions(a, b) == -1
    assert compat.compare_versions(b, a) == 1


def test_compare_versions_is_a_total_order_on_the_table():
    for (i, a), (j, b) in itertools.product(enumerate(ORDERED), repeat=2):
        assert compat.compare_versions(a, b) == (i > j) - (i < j), (a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [("1.0", "1.0"), ("1.01", "1.1"), ("1.000", "1.0"), ("0:1.0", "1.0"), ("01", "1"),
     ("1.0-0", "1.0-0"), ("", "")],
)
def test_compare_versions_equal(a, b):
    assert compat.compare_versions(a, b) == 0
    assert compat.compare_versions(b, a) == 0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0~rc1", "1.0", -1),  # ~ sorts before the end of the string
        ("1.0~", "1.0~~", 1),
        ("1.0a", "1.0", 1),  # a letter after the end
        ("1.0a", "1.0+", -1),  # letters before other characters
        ("1.0A", "1.0a", -1),  # ASCII order among letters
        ("1.0.1", "1.0a", 1),  # '.' (non-letter) after letters
        ("1.10", "1.9", 1),  # numbers, not strings
        ("2:1.0", "1:9.9", 1),  # epoch first
        ("1.0-10", "1.0-9", 1),  # revision compared like a version
        ("1.0-1", "1.0", 1),
        ("5.0.4", "5.0", 1),
        ("", "0", 0),  # an empty version is 0
    ],
)
def test_compare_versions_rules(a, b, expected):
    assert compat.compare_versions(a, b) == expected
    assert compat.compare_versions(b, a) == -expected


@pytest.mark.parametrize(
    ("a", "b", "ok"),
    [("1.0", "2.0", True), ("1:2.0~rc1", "2.0-r1", True), ("2024.10", "5", True),
     ("v1.0", "2.0", False), ("1.0", "v2.0", False), ("²", "1", False), ("", "1.0", False),
     ("release-1", "1.0", False)],
)
def test_comparable(a, b, ok):
    assert compat.comparable(a, b) is ok
    assert compat.comparable(b, a) is ok


def test_only_ascii_digits_are_digits():
    """str.isdigit() accepts "²" (and int() then raises): such characters are non-digits that
    sort after letters, as dpkg's bytes >= 0x80 do."""
    assert compat.compare_versions("²:1.0", "2.0") == 1  # no epoch: "²" sorts after digits
    assert compat.compare_versions("1.²", "1.a") == 1
    assert compat.compare_versions("1.²", "1.2") == 1  # a non-digit after the "." wins
    assert compat.newest(["1.0", "1.²"]) == "1.²"
    assert compat.plausible_version("1.²") is False


def test_compare_versions_agrees_with_dpkg():
    dpkg = tool("dpkg", "a Debian host")
    versions = [v for v in ORDERED if v] + ["1.0_1", "1.0-1~", "3.1~rc1+git", "1.0.0~"]
    for a, b in itertools.combinations(versions, 2):
        ours = compat.compare_versions(a, b)
        op = {-1: "lt", 0: "eq", 1: "gt"}[ours]
        done = subprocess.run([dpkg, "--compare-versions", a, op, b], capture_output=True)
        assert done.returncode == 0, (a, op, b)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("1", True), ("2.0", True), ("5.0.4", True), ("2024.10", True), ("3.1~rc1", True),
     ("1:2.0", True), ("1.0-r1", True), ("1.0+git", True), ("1_0", True), ("", False),
     ("v2", False), ("latest", False), ("2.0 beta", False), ("2.0\n", False), (".1", False),
     ("~1", False), ("1" * 129, False), ("1" * 128, True), ("1.0/2", False)],
)
def test_plausible_version(text, ok):
    assert compat.plausible_version(text) is ok


def test_newest():
    assert compat.newest([]) is None
    assert compat.newest(["", ""]) is None
    assert compat.newest(["1.0", "1.10", "1.9", ""]) == "1.10"
    assert compat.newest(["1.0~rc1", "1.0"]) == "1.0"


def test_image_level():
    assert compat.image_level(0, []) == 0
    assert compat.image_level(2, [1]) == 2
    assert compat.image_level(0, [1, 3, 2]) == 3


# -- the decision ----------------------------------------------------------------------------


def decide(image="2.0", level=0, floor="", markers=(), state=True, slevel=0, recorded="1.0",
           source="applied_image in state.json", unfinished=""):
    return compat.decide(image, level, floor, list(markers), state, slevel, recorded, source,
                         unfinished)


# (kwargs, expected kind)
TABLE = [
    # 1. incompatible downgrade: state level above the image level, whatever else holds
    ({"level": 0, "slevel": 1}, DOWNGRADE),
    ({"level": 1, "slevel": 2}, DOWNGRADE),
    ({"level": 1, "slevel": 2, "floor": "1.0"}, DOWNGRADE),
    ({"level": 1, "slevel": 2, "floor": "3.0"}, DOWNGRADE),  # downgrade beats below-floor
    ({"level": 0, "slevel": 1, "recorded": ""}, DOWNGRADE),
    ({"level": 0, "slevel": 5, "image": ""}, DOWNGRADE),
    # boundary: equal levels and higher image levels are compatible
    ({"level": 1, "slevel": 1}, OK),
    ({"level": 2, "slevel": 1}, OK),
    ({"level": 0, "slevel": 0}, OK),
    # 2. no state: predates with floor + marker, else fresh
    ({"state": False, "slevel": 0, "recorded": "", "floor": "1.0", "markers": ["/var/x"]},
     PREDATES),
    ({"state": False, "slevel": 0, "recorded": "", "floor": "1.0"}, FRESH),
    ({"state": False, "slevel": 0, "recorded": "", "markers": ["/var/x"]}, FRESH),
    ({"state": False, "slevel": 0, "recorded": ""}, FRESH),
    ({"state": False, "slevel": 0, "recorded": "", "level": 3}, FRESH),
    ({"state": False, "slevel": 0, "recorded": "", "image": "", "floor": "1"}, FRESH),
    # 3. below floor: recorded version older than the floor
    ({"floor": "1.5", "recorded": "1.0"}, BELOW_FLOOR),
    ({"floor": "1.0", "recorded": "1.0~rc1"}, BELOW_FLOOR),
    ({"floor": "1.10", "recorded": "1.9"}, BELOW_FLOOR),
    ({"floor": "1.0", "recorded": "0.9", "markers": ["/var/x"]}, BELOW_FLOOR),
    ({"floor": "1.0", "recorded": ""}, BELOW_FLOOR),  # state but no version: cannot prove
    ({"floor": "1.0", "recorded": "", "image": ""}, BELOW_FLOOR),
    # not comparable with the floor (dpkg would say v1.0 > 2.0): refused, not waved through
    ({"floor": "2.0", "recorded": "v1.0"}, BELOW_FLOOR),
    ({"floor": "2.0", "recorded": "v3.0"}, BELOW_FLOOR),
    ({"floor": "1.0", "recorded": "²:1.0"}, BELOW_FLOOR),
    ({"floor": "1.0", "recorded": "2.0 beta"}, BELOW_FLOOR),
    # an unfinished run (no applied release): only its own image resumes it
    ({"floor": "1.0", "recorded": "", "image": "2.0", "unfinished": "2.0"}, OK),
    ({"floor": "1.0", "recorded": "", "image": "3.0", "unfinished": "2.0"}, BELOW_FLOOR),
    # boundary: equal to the floor, or newer, is fine
    ({"floor": "1.0", "recorded": "1.0"}, OK),
    ({"floor": "1.0", "recorded": "1.00"}, OK),
    ({"floor": "1.0", "recorded": "1.0-r1"}, OK),
    ({"floor": "1.0", "recorded": "1.0a"}, OK),
    ({"floor": "1.9", "recorded": "1.10"}, OK),
    # 4. no floor: any recorded version (or none) is fine; downgrades within a level too
    ({"recorded": "0.1"}, OK),
    ({"recorded": ""}, OK),
    ({"image": "1.0", "recorded": "2.0", "level": 1, "slevel": 1}, OK),
    ({"image": "1.0", "recorded": "2.0", "floor": "0.5"}, OK),
    ({"image": "", "recorded": "2.0"}, OK),
]


@pytest.mark.parametrize(("kwargs", "kind"), TABLE)
def test_decide_table(kwargs, kind):
    verdict = decide(**kwargs)
    assert verdict.kind == kind
    assert verdict.refused is (kind in (DOWNGRADE, BELOW_FLOOR, PREDATES))
    assert verdict.message and "\n" not in verdict.message


def test_every_rule_is_in_the_table():
    assert {kind for _, kind in TABLE} == {OK, FRESH, DOWNGRADE, BELOW_FLOOR, PREDATES}


def test_decide_is_total_over_a_grid():
    """Every combination gives exactly the kind the rules in their order give."""
    for level, slevel, floor, recorded, state, markers in itertools.product(
        (0, 1, 2), (0, 1, 2), ("", "1.0", "2.0"), ("", "0.9", "1.0", "2.0"), (True, False),
        ((), ("/m",)),
    ):
        if not state and (slevel or recorded):
            continue  # no state has no level and no version
        verdict = decide(level=level, slevel=slevel, floor=floor, recorded=recorded, state=state,
                         markers=markers)
        if slevel > level:
            expected = DOWNGRADE
        elif not state:
            expected = PREDATES if floor and markers else FRESH
        elif floor and (not recorded or compat.compare_versions(recorded, floor) < 0):
            expected = BELOW_FLOOR
        else:
            expected = OK
        assert verdict.kind == expected, (level, slevel, floor, recorded, state, markers)


def test_messages_say_what_was_found_and_the_way_out():
    m = decide(level=1, slevel=2, image="1.0").message
    assert "incompatible downgrade" in m and "level 2" in m and "level 1" in m
    assert "this image (1.0)" in m
    assert "Boot an image of compatibility level >= 2, or wipe the writable data" in m

    m = decide(floor="1.5", recorded="1.0", source="applied_image in state.json").message
    assert "release 1.0 (applied_image in state.json)" in m and "1.5 or newer" in m
    assert ("Install release 1.5 (or a newer one that can still upgrade from 1.0) first, or "
            "wipe the writable data") in m

    m = decide(floor="1.5", recorded="").message
    assert "records no image version" in m and "cannot be proven" in m and "1.5" in m

    m = decide(state=False, recorded="", floor="1.5", markers=["/var/lib/foo", "/etc/x"]).message
    assert "data exists (/var/lib/foo, /etc/x) but there is no migration state" in m
    assert "older than meta-migration" in m and "upgrades only from 1.5 or newer" in m
    assert "wipe the writable data" in m

    m = decide(state=False, recorded="").message
    assert "fresh device" in m and "runs every migration" in m

    m = decide(image="", level=0, slevel=1).message
    assert "os-release has no VERSION_ID" in m

    m = decide(image="1.0", recorded="2.0", level=1, slevel=1, floor="0.5").message
    assert "compatible" in m and "release 2.0" in m and "0.5" in m


# -- what the state says ---------------------------------------------------------------------


def facts(meta, records=()):
    return compat.state_facts(meta, list(records))


def rec(version=None, oneway=None, kind="applied"):
    r = {"format": 1, "kind": kind, "name": "x"}
    if version is not None:
        r["image"] = {"version_id": version}
    if oneway is not None:
        r["oneway"] = oneway
    return r


@pytest.mark.parametrize(
    ("meta", "records", "expected"),
    [
        # a current state.json: applied_image wins over image
        ({"format": 1, "compat_level": 2, "image": {"version_id": "3.0"},
          "applied_image": {"version_id": "2.0"}}, [], (2, "2.0", "applied_image in state.json")),
        # applied_image of an image without VERSION_ID: nothing to prove with
        ({"format": 1, "image": {"version_id": "3.0"}, "applied_image": {}}, [], (0, "", "")),
        # a 0.1.0 runner's state.json: no compat_level (0), no applied_image: its image
        ({"format": 1, "image": {"version_id": "1.0", "build_id": "x"}, "runner_version": "0.1.0"},
         [rec("1.0")], (0, "1.0", "image in state.json")),
        # a 0.1.0 runner on an image without VERSION_ID
        ({"format": 1, "image": {}}, [rec("1.0")], (0, "", "")),
        # state.json says level 1; records are not consulted; not 0.1.0's, and without
        # applied_image: no run completed, `image` proves nothing
        ({"format": 1, "compat_level": 1, "image": {"version_id": "2.0"}}, [rec("9.0", 5)],
         (1, "", "")),
        ({"format": 1, "image": {"version_id": "2.0"}, "runner_version": "0.2.0",
          "applied_image": None}, [rec("2.0")], (0, "", "")),
        # a state.json whose compat_level is damaged: the records' highest level
        ({"format": 1, "compat_level": "x", "applied_image": {"version_id": "2.0"}},
         [rec("2.0", 1), rec("2.0", 3)], (3, "2.0", "applied_image in state.json")),
        ({"format": 1, "compat_level": -1}, [], (0, "", "")),
        # state.json missing or damaged: records tell level and newest version
        (None, [rec("1.0"), rec("1.10", 2), rec("1.9", 1), rec()],
         (2, "1.10", "applied records")),
        # only successes name the release: a failed update (or a cut one) got nowhere
        (None, [rec("2.1"), rec("3.0", kind="failed"), rec("3.0", 1, kind="started")],
         (1, "2.1", "applied records")),
        (None, [rec(oneway=True), rec(oneway="2"), rec(oneway=-1)], (0, "", "")),
        (None, [{"image": "not a dict"}, {"image": {"version_id": 7}}], (0, "", "")),
        (None, [], (0, "", "")),
    ],
)
def test_state_facts(meta, records, expected):
    assert tuple(facts(meta, records)) == expected


def test_state_facts_reads_records_only_when_needed():
    def boom():
        raise AssertionError("records read although state.json could tell")
        yield  # pragma: no cover

    meta = {"format": 1, "compat_level": 1, "applied_image": {"version_id": "1"}}
    assert compat.state_facts(meta, boom()) == (1, "1", "applied_image in state.json")
