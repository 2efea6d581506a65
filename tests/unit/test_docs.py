"""The project's documentation points only inside the repository, and its links hold.

Three checks: no code, test, schema or page cites a file outside the repository (the
citations go to `docs/` instead); every relative link in the README and in `docs/`
names a file that exists, and a heading that exists when it has an anchor; and the
generated API reference is what `schemas/openapi.json` renders to now.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service import apidoc

ROOT = Path(__file__).resolve().parents[2]

# Where citations are searched: the folders and file of the docs' own rule.
SEARCHED = ("service", "tests", "README.md", "docs", "schemas")
# Joined at run time, so that neither this file nor its bytecode matches itself.
_OUTSIDE = re.compile(
    "|".join(
        "".join(parts)
        for parts in (
            ("shared", "/"),
            ("DES", r"IGN\.md"),
            ("DES", r"IGN (§|\d)"),
            ("zns", "-domain"),
        )
    )
)
_TEXT_SUFFIXES = {".py", ".md", ".json", ".toml", ".txt", ".yml", ".yaml", ".cfg", ".sh", ""}

PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "service" / "receiver" / "THREAT_MODEL.md",
]
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _searched_files() -> list[Path]:
    """Every text file under the searched folders, caches and binaries left out."""
    files: list[Path] = []
    for name in SEARCHED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [
            f
            for f in candidates
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in _TEXT_SUFFIXES
        ]
    return files


def _prose(text: str) -> str:
    """The page without its code blocks and code spans, where links and headings are not."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def broken_links(page: Path) -> list[str]:
    """The relative links of a page whose file, or heading, does not exist."""
    broken: list[str] = []
    for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no such heading")
    return broken


def test_nothing_cites_a_file_outside_the_repository() -> None:
    hits = []
    for path in _searched_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert hits == [], "cite docs/ instead:\n" + "\n".join(hits)


def test_the_citation_check_sees_a_citation_outside_the_repository() -> None:
    assert _OUTSIDE.search("".join(("as DES", "IGN.md 4.7 says")))
    assert _OUTSIDE.search("".join(("(DES", "IGN 4.3)")))
    assert not _OUTSIDE.search("docs/rules.md#send-errors")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file_and_heading(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_sees_a_broken_file_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# The `b` page\n\n## Send errors\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#send-errors) [top](b.md#the-b-page) [web](https://example.com/x)\n"
        "[gone](c.md) [bad](b.md#nowhere) `[code](d.md)`\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["c.md: no such file", "b.md#nowhere: no such heading"]


def test_slug_follows_githubs_rule() -> None:
    assert slug("POST /v1/oas/{oa_id}/messages") == "post-v1oasoa_idmessages"
    assert slug("Tier (daily quota)") == "tier-daily-quota"
    assert slug("Night window: 22:00\u201306:00") == "night-window-22000600"


def test_api_reference_is_what_the_openapi_document_renders() -> None:
    committed = apidoc.REFERENCE.read_text(encoding="utf-8")
    assert committed == apidoc.current(), "run `python -m service.apidoc` and commit the page"


def test_api_reference_names_every_operation_and_its_scope() -> None:
    document = json.loads(apidoc.OPENAPI.read_text(encoding="utf-8"))
    page = apidoc.render(document)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert f"### {method.upper()} {path}\n" in page
            for requirement in operation.get("security", []):
                for scopes in requirement.values():
                    assert all(f"`{scope}`" in page for scope in scopes)


def test_the_reference_renders_an_operation_with_its_scope_body_fields_and_codes() -> None:
    ref = "#/components/schemas/"
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/v1/things": {
                "post": {
                    "summary": "Make a thing",
                    "security": [{"bearer": ["send"]}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": ref + "Body"}}},
                    },
                    "responses": {
                        "422": {"description": "Bad (`invalid_request`)", "content": {}},
                        "200": {"description": "OK", "content": {}},
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "Body": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "maxLength": 5}},
                }
            }
        },
    }
    page = apidoc.render(document)
    assert "### POST /v1/things\n\nMake a thing.\n\nScope: `send`." in page
    assert "| `name` | string | yes | length ≤ 5 |  |" in page
    assert page.index("| 200 | OK") < page.index("| 422 | Bad (`invalid_request`)")
    assert "### Body" in page



_CITATION = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def test_every_docs_citation_in_the_code_names_a_page_and_heading_that_exist() -> None:
    broken = []
    for path in _searched_files():
        if path.suffix != ".py":
            continue
        for page, anchor in _CITATION.findall(path.read_text(encoding="utf-8")):
            target = ROOT / "docs" / page
            if not target.exists() or (anchor and anchor not in anchors(target)):
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}#{anchor}")
    assert broken == []
