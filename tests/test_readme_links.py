# SPDX-License-Identifier: MIT
"""README's links lead somewhere: every #anchor is a heading, every relative file exists.

An adopter follows README from the top ("Adopting the layer" is a list of links); a link to a
section that was renamed or never written is a dead end.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, blanks to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(markdown: str) -> set:
    lines = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL).splitlines()
    return {github_slug(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}


def links(markdown: str) -> list:
    prose = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def test_slug_follows_github() -> None:
    assert github_slug("The runner recipe, `migration` (distro, local.conf or a bbappend)") == (
        "the-runner-recipe-migration-distro-localconf-or-a-bbappend"
    )
    assert github_slug("State (`/var/lib/migration`)") == "state-varlibmigration"


def test_every_anchor_is_a_heading() -> None:
    text = README.read_text()
    known = headings(text)
    dead = [target for target in links(text) if target.startswith("#") and target[1:] not in known]
    assert not dead, f"README links to sections that do not exist: {dead}"


def test_every_relative_link_exists() -> None:
    text = README.read_text()
    targets = [t.split("#")[0] for t in links(text) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
