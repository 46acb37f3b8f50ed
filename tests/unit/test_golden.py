"""The golden post-processing cases in tests/golden (format: tests/golden/README.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from polycoder_ls.documents import Document, cursor_at
from polycoder_ls.languages import LANGUAGES, language_named
from polycoder_ls.postprocess import postprocess

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CURSOR, TAB = "█", "⇥"
RULES = set(re.findall(r"[a-z-]+", (GOLDEN / "README.md").read_text().split("Rules:")[1]))
EXTENSION = {language.name: language.extensions[0] for language in LANGUAGES}


@dataclass
class Case:
    title: str
    source: str
    headers: dict[str, str] = field(default_factory=dict)
    blocks: dict[str, list[str]] = field(default_factory=dict)

    def block(self, name: str) -> str:
        return "\n".join(self.blocks[name]).replace(TAB, "\t")


def parse(path: Path) -> list[Case]:
    cases: list[Case] = []
    block: list[str] | None = None
    for number, line in enumerate(path.read_text().split("\n"), start=1):
        if line.startswith("=== "):
            cases.append(Case(line[4:], f"{path.name}:{number}"))
            block = None
        elif line.startswith("--- "):
            block = cases[-1].blocks.setdefault(line[4:], [])
        elif block is not None:
            block.append(line)
        elif line.strip():
            key, _, value = line.partition(":")
            cases[-1].headers[key.strip()] = value.strip()
    return cases


CASES = [case for path in sorted(GOLDEN.glob("*.txt")) for case in parse(path)]


@pytest.mark.parametrize("case", CASES, ids=[case.source for case in CASES])
def test_golden_case(case: Case):
    language = language_named(case.headers["language"])
    assert language is not None, f"{case.source}: unknown language"
    assert case.headers["rule"] in RULES, f"{case.source}: unknown rule"
    document_text = case.block("document")
    offset = document_text.index(CURSOR)
    text = document_text.replace(CURSOR, "", 1)
    uri = f"file:///golden/case{EXTENSION[language.name]}"
    cursor = cursor_at(Document(uri, language.language_ids[0], 0, text), offset)
    assert cursor.language == language
    mode = case.headers.get("mode", "auto")
    suggestion, _ = postprocess(case.block("raw"), cursor, mode, ())
    expected = case.block("expect").rstrip()
    if expected == "(none)":
        assert suggestion is None, f"{case.source} {case.title}"
        return
    assert suggestion is not None, f"{case.source} {case.title}"
    assert suggestion.text == expected, f"{case.source} {case.title}"
    replaced = text[offset : offset + suggestion.replaced_chars]
    assert replaced.strip() == case.headers.get("replaces", ""), f"{case.source} {case.title}"


def test_golden_cases_cover_every_language_and_rule():
    assert len(CASES) >= 60
    assert {case.headers["language"] for case in CASES} == {lang.name for lang in LANGUAGES}
    assert {case.headers["rule"] for case in CASES} == RULES
