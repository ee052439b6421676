"""The documentation's links: every relative link of the markdown files points at a file that exists,
and every `docs/FILE.md#anchor` (in the markdown and in the package's docstrings) at a heading of it."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = sorted([ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "results" / "README.md",
                   ROOT / "tasks" / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOC_REFERENCE = re.compile(r"(docs/[\w.-]+\.md)#([\w-]+)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    in_code, found = False, set()
    for line in path.read_text().splitlines():
        in_code ^= line.startswith("```")
        if not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            found.add(slug(m.group(1)))
    return found


def test_slug_is_githubs():
    assert slug("Chunked prefill (`--prefill-chunk N|auto|off`)") == "chunked-prefill---prefill-chunk-nautooff"
    assert slug("Gemma 3 270M past its native 32k: PG-19, s = 2") == "gemma-3-270m-past-its-native-32k-pg-19-s--2"


@pytest.mark.parametrize("page", MARKDOWN, ids=[str(p.relative_to(ROOT)) for p in MARKDOWN])
def test_relative_links_point_at_what_exists(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or a place in the same page
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve()
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)}: {broken}"


def test_doc_sections_named_in_the_package_exist():
    named = [(path, doc, anchor) for path in sorted((ROOT / "evalharness").rglob("*.py"))
             for doc, anchor in DOC_REFERENCE.findall(path.read_text())]
    assert len(named) >= 10  # the modules' docstrings point at their protocols
    missing = [f"{path.relative_to(ROOT)}: {doc}#{anchor}" for path, doc, anchor in named
               if not (ROOT / doc).exists() or anchor not in anchors(ROOT / doc)]
    assert missing == []
