"""The project's documents link only to what a clone of the repository holds."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "BENCHMARKS.md", *(p.relative_to(ROOT) for p in ROOT.glob("docs/*.md"))]
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def local_targets(text: str) -> list[str]:
    """Targets of the Markdown links and images outside code, other than web addresses
    and anchors on the same page."""
    prose = INLINE_CODE.sub("", FENCED.sub("", text))
    return [
        target.split("#")[0]
        for target in LINK.findall(prose)
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
    ]


def test_the_link_finder_sees_links_and_images_but_not_code():
    text = "[a](docs/x.md) ![b](y.png#z) `[c](../no.md)`\n```\n[d](../no.md)\n```\n[e](https://x)"
    assert local_targets(text) == ["docs/x.md", "y.png"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=str)
def test_every_link_stays_inside_the_repository_and_exists(document):
    path = ROOT / document
    for target in local_targets(path.read_text()):
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{document} links outside the repository: {target}"
        assert resolved.exists(), f"{document} links a missing file: {target}"
