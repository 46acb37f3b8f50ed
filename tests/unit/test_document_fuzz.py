"""The document model against an independent one (a plain string, positions recomputed from
scratch), over random edit sequences that cross piece boundaries, \r\n pairs and surrogates."""

from __future__ import annotations

import random
import re

import pytest

from polycoder_ls import documents
from polycoder_ls.documents import UTF8, UTF16, UTF32, Document

SEQUENCES = 10_000
PIECES = ["a", "b", " ", "\n", "\r", "\r\n", "é", "😀", "\f", "\u2028", "\ud83d"]
ENCODINGS = (UTF8, UTF16, UTF32)


def units(char: str, encoding: str) -> int:
    if encoding == UTF32:
        return 1
    if encoding == UTF16:
        return len(char.encode("utf-16-le", "surrogatepass")) // 2
    return len(char.encode("utf-8", "surrogatepass"))


def reference_lines(text: str) -> list[tuple[int, int]]:
    """(start, end before the break) of each LSP line: breaks are \r\n, \r and \n only."""
    lines, start = [], 0
    for match in re.finditer(r"\r\n|\r|\n", text):
        lines.append((start, match.start()))
        start = match.end()
    return [*lines, (start, len(text))]


def reference_offset(text: str, line: int, column: int, encoding: str) -> int:
    lines = reference_lines(text)
    if line < 0:
        return 0
    if line >= len(lines):
        return len(text)
    start, end = lines[line]
    seen = 0
    for index in range(start, end):
        seen += units(text[index], encoding)
        if seen > column:
            return index
    return end


def reference_position(text: str, offset: int, encoding: str) -> tuple[int, int]:
    for number, (start, _end) in reversed(list(enumerate(reference_lines(text)))):
        if start <= offset:
            return number, sum(units(char, encoding) for char in text[start:offset])
    raise AssertionError


def random_text(rng: random.Random, most: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randrange(most)))


def random_position(rng: random.Random, text: str) -> tuple[int, int]:
    lines = len(reference_lines(text))
    return rng.randrange(-1, lines + 2), rng.randrange(-1, 12)


@pytest.mark.parametrize("piece_chars", [1, 3, 16384])
def test_random_edit_sequences_match_an_independent_model(monkeypatch, piece_chars):
    monkeypatch.setattr(documents, "PIECE_CHARS", piece_chars)
    rng = random.Random(piece_chars)
    for _ in range(SEQUENCES // 3 + 1):
        text = random_text(rng, 30)
        document = Document("file:///fuzz", "python", 0, text)
        for _ in range(rng.randrange(1, 6)):
            encoding = rng.choice(ENCODINGS)
            start, end = sorted(
                (random_position(rng, text), random_position(rng, text)),
                key=lambda position: reference_offset(text, *position, encoding),
            )
            new = random_text(rng, 8)
            start_offset = reference_offset(text, *start, encoding)
            end_offset = reference_offset(text, *end, encoding)
            assert document.offset_at(*start, encoding) == start_offset
            assert document.offset_at(*end, encoding) == end_offset
            document.replace(start_offset, end_offset, new)
            text = text[:start_offset] + new + text[end_offset:]
            assert document.text == text
            assert len(document) == len(text)
        for offset in rng.sample(range(len(text) + 1), min(4, len(text) + 1)):
            encoding = rng.choice(ENCODINGS)
            assert document.position_at(offset, encoding) == reference_position(
                text, offset, encoding
            )
            low, high = sorted((offset, rng.randrange(len(text) + 1)))
            assert document.slice(low, high) == text[low:high]
