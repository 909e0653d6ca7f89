"""The README and docs/ link only to files inside the repository, and every such file exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "examples").glob("*/README.md")),
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def broken_links(doc: Path, root: Path) -> list[str]:
    """Links of `doc` that leave `root` or name a file that does not exist (web links aside)."""
    problems = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(root):
            problems.append(f"{target} leaves the repository")
        elif not path.exists():
            problems.append(f"{target} does not exist")
    return problems


def test_the_check_catches_a_link_outside_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    doc = tmp_path / "README.md"
    doc.write_text("[a](docs/here.md) [b](../shared/design/DESIGN.md) [c](docs/gone.md) "
                   "[d](https://example.com/x)")
    assert broken_links(doc, tmp_path) == [
        "../shared/design/DESIGN.md leaves the repository",
        "docs/gone.md does not exist",
    ]


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_links_stay_inside_the_repository(doc: Path) -> None:
    assert broken_links(doc, ROOT) == []


def test_no_doc_points_at_the_design_outside_the_clone() -> None:
    mentions = [d.name for d in DOCS if "shared/design" in d.read_text()]
    assert mentions == []
