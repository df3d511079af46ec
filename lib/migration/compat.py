# SPDX-License-Identifier: MIT
"""May this image use the device's data? Upgrade floors (R6) and one-way migrations (R7).

Everything here is a pure function of plain values, so pytest covers the decisions exhaustively
(tests/test_compat.py); state.py reads the values from the state dir, runner.py acts on them.

Words:
- *image version*: VERSION_ID of the image's os-release. Versions compare like Debian package
  versions (`compare_versions`, dpkg's algorithm), and only *comparable* ones are compared
  (`comparable`): both match _VERSION_RE (an optional epoch of ASCII digits and `:`, then an
  ASCII digit, then only ASCII letters and digits and `. + ~ _ : -`; at most 128 characters).
  Outside that set dpkg's order is not the order of releases (`v1.0` > `2.0`: letters sort after
  digits), so a device release or an image VERSION_ID that is not comparable with the floor is
  refused, never waved through.
- *compatibility level*: a whole number >= 0. A one-way migration has a level >= 1. The image's
  level is max(MIGRATION_COMPAT_LEVEL of the image, every one-way level in its manifest); the
  state's level is the highest level of any one-way migration *started* on the device (raised
  durably before it starts: a one-way script that failed half-way may already have converted
  data).
- *upgrade floor*: the oldest release the image can upgrade from (MIGRATION_UPGRADE_FLOOR).
- *data markers*: absolute paths whose existence proves that the device has data (used only
  when there is no migration state at all, to tell a fresh device from one whose data was written
  by an image older than meta-migration).

The decision (`decide`), in this order:
1. state level > image level: *downgrade*, refused (the data went through a one-way migration
   this image does not know).
2. no state (no state.json and no record): with a floor set and a data marker present:
   *predates*, refused. Otherwise *fresh*: every migration of the image runs (scripts must cope
   with absent data).
3. floor set and the recorded version (applied_image, else the image of a 0.1.0 runner's
   state.json, else the newest image in the records) is older than the floor: *below-floor*,
   refused; state without any recorded version with a floor set: *below-floor* too (cannot prove
   the data is recent enough), except for the image whose own run left it so (state.json's
   image, say a power cut in the first run on a fresh device): it may resume its run.
4. otherwise ok (a downgrade within a compatible level included: nothing re-runs).
"""

import re
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence, Tuple

OK, FRESH, DOWNGRADE, BELOW_FLOOR, PREDATES = "ok", "fresh", "downgrade", "below-floor", "predates"
#: Verdict kinds that refuse the image (the values of MIGRATION_VERDICT for the hooks).
REFUSALS = (DOWNGRADE, BELOW_FLOOR, PREDATES)

#: A version a floor may name: an optional epoch, then a digit, then dpkg's version characters
#: (plus os-release's `_`). VERSION_ID values such as 5.0.4, 2024.10, 3.1~rc1 all fit.
_VERSION_RE = re.compile(r"\A(?:[0-9]+:)?[0-9][A-Za-z0-9.+~_:-]*\Z")
VERSION_MAX = 128


#: `comparable` in words, for messages.
COMPARABLE = ("an ASCII digit first, after an optional epoch N:, then only letters, digits and "
              ". + ~ _ : -")


def plausible_version(text: str) -> bool:
    """True for a string usable as an upgrade floor (see _VERSION_RE), at most 128 chars."""
    return isinstance(text, str) and len(text) <= VERSION_MAX and bool(_VERSION_RE.match(text))


def comparable(a: str, b: str) -> bool:
    """True when versions `a` and `b` can be ordered as releases: both are plausible versions
    (COMPARABLE). dpkg orders any two strings, but `v1.0` > `2.0`, so a floor compared with a
    VERSION_ID such as `v1.0` would silently let every such release through."""
    return plausible_version(a) and plausible_version(b)


def _isdigit(c: str) -> bool:
    """An ASCII digit: str.isdigit() also accepts "²" and other digits int() cannot read (dpkg
    works on bytes, where only 0-9 are digits)."""
    return "0" <= c <= "9"


def _order(c: str) -> int:
    """dpkg's order(): letters sort by ASCII, before every other non-digit; `~` before all,
    even the end of the string (so 1.0~rc1 < 1.0)."""
    if _isdigit(c):
        return 0
    if "A" <= c <= "Z" or "a" <= c <= "z":
        return ord(c)
    if c == "~":
        return -1
    if c:
        return ord(c) + 256
    return 0


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's verrevcmp(): alternate non-digit runs (compared by _order, char by char) and digit
    runs (compared as numbers, leading zeros ignored). Returns <0, 0 or >0."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not _isdigit(a[i])) or (j < len(b) and not _isdigit(b[j])):
            ac = _order(a[i] if i < len(a) else "")
            bc = _order(b[j] if j < len(b) else "")
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and _isdigit(a[i]) and j < len(b) and _isdigit(b[j]):
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and _isdigit(a[i]):
            return 1
        if j < len(b) and _isdigit(b[j]):
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(version: str) -> Tuple[int, str, str]:
    """(epoch, upstream, revision) the way dpkg parses a version: the epoch is the number
    before the first `:` (0 when absent or not a number), the revision what follows the last
    `-` (empty when none)."""
    epoch = 0
    head, colon, rest = version.partition(":")
    if colon and head and all(_isdigit(c) for c in head):
        epoch, version = int(head), rest
    upstream, dash, revision = version.rpartition("-")
    if not dash:
        upstream, revision = revision, ""
    return epoch, upstream, revision


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version `a` is older than, equal to or newer than `b`, with dpkg's rules
    (dpkg --compare-versions): epoch first, then the upstream part, then the revision, each of
    these compared by verrevcmp: digit runs as numbers (1.10 > 1.9, 1.01 == 1.1), letters before
    other characters (1.0a < 1.0+), `~` before anything, the end of the string included
    (1.0~rc1 < 1.0 < 1.0.1 and 1.0 < 1.0a)."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    result = (ea > eb) - (ea < eb) or _verrevcmp(ua, ub) or _verrevcmp(ra, rb)
    return (result > 0) - (result < 0)


class Verdict(NamedTuple):
    """The answer: `kind` is one of OK, FRESH (both allow the run) or a refusal (DOWNGRADE,
    BELOW_FLOOR, PREDATES); `message` says in plain words what was found and what to do."""

    kind: str
    message: str

    @property
    def refused(self) -> bool:
        return self.kind in REFUSALS


def _image(version: str) -> str:
    return f"this image ({version})" if version else "this image (its os-release has no VERSION_ID)"


def decide(
    image_version: str,
    image_level: int,
    floor: str,
    markers_found: Sequence[str],
    has_state: bool,
    state_level: int,
    recorded_version: str,
    recorded_from: str = "",
    unfinished_version: str = "",
    unfinished_failed: Sequence[str] = (),
) -> Verdict:
    """The verdict for an image on the device's state (see the module docstring for the rules).

    image_version: VERSION_ID of the image whose migrations would run ("" when unknown).
    image_level: the image's compatibility level (manifest compat_level, one-way levels max'ed).
    floor: the image's upgrade floor ("" when none).
    markers_found: the image's data markers that exist on the device.
    has_state: state.json or any record exists.
    state_level: the state's compatibility level (0 when none).
    recorded_version: the image version the state says last completed ("" when none).
    recorded_from: where recorded_version comes from, for the message (e.g. "applied_image").
    unfinished_version: the image that last ran (state.json's image), whose run may not have
        completed; used when no version is recorded, and to say what a later, unfinished
        release lacks when the recorded one is below the floor.
    unfinished_failed: names of the migrations recorded as failed (for that message).
    """
    this = _image(image_version)
    wipe = "or wipe the writable data"
    if state_level > image_level:
        return Verdict(
            DOWNGRADE,
            f"incompatible downgrade: the data on this device went through a one-way migration "
            f"of compatibility level {state_level}, but {this} only understands level "
            f"{image_level}; it must not touch the data. Boot an image of compatibility level "
            f">= {state_level}, {wipe}.",
        )
    if not has_state:
        if floor and markers_found:
            return Verdict(
                PREDATES,
                f"data exists ({', '.join(markers_found)}) but there is no migration state: it "
                f"was written by an image older than meta-migration; {this} upgrades only from "
                f"{floor} or newer. Install release {floor} (or a newer one that can upgrade "
                f"from the installed release) first, {wipe}.",
            )
        return Verdict(
            FRESH,
            # Short: said at every first boot, on an 80-column console.
            "fresh device (no migration state): this image runs every migration",
        )
    if floor:
        refusal = _floor_refusal(this, floor, recorded_version, recorded_from,
                                 image_version, unfinished_version, unfinished_failed)
        if refusal is not None:
            return refusal
    if recorded_version:
        last = f"release {recorded_version}"
    elif unfinished_version:
        last = f"the unfinished run of release {unfinished_version}"
    else:
        last = "an unknown release"
    return Verdict(
        OK,
        f"compatible: state of {last}, level {state_level}; {this}, level {image_level}"
        + (f", upgrades from {floor} or newer" if floor else ""),
    )


def _floor_refusal(this: str, floor: str, recorded: str, recorded_from: str,
                   image_version: str, unfinished: str,
                   failed: Sequence[str] = ()) -> Optional[Verdict]:
    """The below-floor verdict for state that has a version to compare (or none), else None."""
    wipe = "or wipe the writable data"
    if not recorded:
        if unfinished and unfinished == image_version:
            return None  # the image resumes its own run (its floor is not above itself)
        if unfinished:
            return Verdict(
                BELOW_FLOOR,
                f"no run of this runner ever completed on this device: the last one, of "
                f"release {unfinished}, failed or was cut, so it cannot be proven that the "
                f"data was written by release {floor} or newer, the oldest that {this} "
                f"upgrades from. Boot release {unfinished} again (it resumes its run) or "
                f"install release {floor} first, {wipe}.",
            )
        return Verdict(
            BELOW_FLOOR,
            f"the migration state records no image version, so it cannot be proven that "
            f"the data was written by release {floor} or newer, the oldest that {this} "
            f"upgrades from. Install release {floor} first, {wipe}.",
        )
    where = f" ({recorded_from})" if recorded_from else ""
    if not comparable(recorded, floor):
        return Verdict(
            BELOW_FLOOR,
            f"the data was last fully migrated by release {recorded!r}{where}, which cannot be "
            f"compared with the upgrade floor {floor} of {this} (a comparable version has "
            f"{COMPARABLE}), so it cannot be proven to be {floor} or newer. Install release "
            f"{floor} first, {wipe}.",
        )
    if compare_versions(recorded, floor) < 0:
        if (unfinished and unfinished != recorded and comparable(unfinished, floor)
                and compare_versions(unfinished, floor) >= 0):
            # The release the floor asks for did run here, but not to the end.
            lacks = f" (failed: {', '.join(failed)})" if failed else ""
            return Verdict(
                BELOW_FLOOR,
                f"upgrade from a release that did not finish: the data was last fully migrated "
                f"by release {recorded}{where}; release {unfinished} ran after it but did not "
                f"apply all its migrations{lacks}, and {this} upgrades only from {floor} or "
                f"newer. Boot release {unfinished} again to finish them (see `migration "
                f"status` there; fix what makes them fail), {wipe}.",
            )
        return Verdict(
            BELOW_FLOOR,
            f"upgrade from a too old release: the data was last fully migrated by release "
            f"{recorded}{where}, but {this} upgrades only from {floor} or newer "
            f"(the migrations in between are no longer shipped). Install release {floor} "
            f"(or a newer one that can still upgrade from {recorded}) first, {wipe}.",
        )
    return None


def image_level(compat_level: int, oneway_levels: Sequence[int]) -> int:
    """max(compat_level, every one-way level): the level an image understands."""
    return max([compat_level, *oneway_levels])


def newest(versions: Sequence[str]) -> Optional[str]:
    """The newest of `versions` (compare_versions), None for none."""
    best: Optional[str] = None
    for v in versions:
        if v and (best is None or compare_versions(v, best) > 0):
            best = v
    return best


def _level_of(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _version_of(image: Any) -> str:
    if isinstance(image, dict):
        v = image.get("version_id")
        if isinstance(v, str):
            return v
    return ""


#: Runners whose state.json has no applied_image key, only `image`, written after a run.
LEGACY_RUNNERS = ("0.1.0",)


def legacy_applied_image(meta: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """What stands for applied_image in a state.json without that key: the image of a legacy
    runner's state.json; None for any other (this runner always writes the key, so its
    state.json never lacks it; one that does was not written by a known runner)."""
    if "applied_image" not in meta and meta.get("runner_version") in LEGACY_RUNNERS:
        image = meta.get("image")
        return image if isinstance(image, dict) else None
    return None


class StateFacts(NamedTuple):
    """What the state says, for decide(): its level and the version it last completed."""

    level: int
    version: str  # "" when none is recorded
    source: str  # where `version` comes from, in words ("" when none)


def state_facts(meta: Optional[Dict[str, Any]], records: Iterable[Dict[str, Any]]) -> StateFacts:
    """The state's level and recorded version from state.json (`meta`, None when missing or
    damaged) and, only when `meta` cannot tell, from the records (applied, failed and started).

    Level: state.json's compat_level (absent: 0); when state.json is missing or damaged, or its
    compat_level is not a whole number, the highest "oneway" of any record (a one-way script's
    records carry its level, and the level is raised before it starts, so state.json is never
    lower than its records).
    Version: applied_image.version_id (the image whose manifest a run last left completely
    applied; this runner writes the key with every state.json, null until a run completes);
    without the key, only in state.json of runner 0.1.0 (LEGACY_RUNNERS), which never wrote it,
    image.version_id (the image that last ran: that runner's record of the last release); any
    other state.json without it records no version (the image that last ran may never have
    completed); without a usable state.json, the newest image version of the applied records
    (failed records and started notes name images that did not get through; applied records of
    a run that failed later still count: without state.json nothing tells them apart).
    """
    level = _level_of(meta.get("compat_level", 0)) if meta is not None else None
    recs = None
    if level is None:
        recs = list(records)
        level = max([0] + [r["oneway"] for r in recs if _level_of(r.get("oneway"))])
    if meta is not None:
        if "applied_image" in meta:
            v = _version_of(meta["applied_image"])
            return StateFacts(level, v, "applied_image in state.json" if v else "")
        v = _version_of(legacy_applied_image(meta))
        return StateFacts(level, v, "image in state.json" if v else "")
    if recs is None:
        recs = list(records)
    # only successes: a failed record or a started note is an image that did not get through
    v = newest([_version_of(r.get("image")) for r in recs if r.get("kind") == "applied"]) or ""
    return StateFacts(level, v, "applied records" if v else "")
