"""Open documents and LSP positions, as pure functions over text.

LSP lines end at \\n, \\r\\n or \\r only (str.splitlines would also break at \\f and
\\u2028, shifting every position after them). Columns count UTF-16 code units unless the
client negotiated utf-8 or utf-32. Out-of-range positions are clamped, never fatal.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from functools import cached_property

from .indentation import IndentStyle, detect_indent
from .languages import PLAIN_TEXT, Language, language_of_document

LINE_BREAK = re.compile(r"\r\n|\r|\n")
UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
INDENT_SAMPLE_CHARS = 20000


def line_starts(text: str) -> list[int]:
    return [0] + [match.end() for match in LINE_BREAK.finditer(text)]


def _line_end(text: str, starts: list[int], line: int) -> int:
    """Offset of the end of `line`, before its line break."""
    if line + 1 >= len(starts):
        return len(text)
    end = starts[line + 1]
    return end - (2 if text.startswith("\r\n", end - 2) else 1)


def _units(char: str, encoding: str) -> int:
    if encoding == UTF8:
        return len(char.encode("utf-8", "surrogatepass"))  # a lone surrogate: 3, as U+FFFD
    if encoding == UTF16:
        return 2 if ord(char) > 0xFFFF else 1
    return 1


def _column_to_index(line_text: str, column: int, encoding: str) -> int:
    if encoding == UTF32 or line_text.isascii():
        return min(column, len(line_text))
    units = 0
    for index, char in enumerate(line_text):
        units += _units(char, encoding)
        if units > column:
            return index
    return len(line_text)


def index_to_column(line_text: str, index: int, encoding: str) -> int:
    """The LSP column of string index `index` of a line, in `encoding`'s code units."""
    prefix = line_text[:index]
    if encoding == UTF32 or prefix.isascii():
        return len(prefix)
    return sum(_units(char, encoding) for char in prefix)


@dataclass
class Document:
    """An open text document; `starts` caches its line-start offsets."""

    uri: str
    language_id: str
    version: int
    text: str
    starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.starts = line_starts(self.text)

    def offset_at(self, line: int, column: int, encoding: str) -> int:
        """The string index of an LSP position, clamped into the document."""
        if line < 0:
            return 0
        if line >= len(self.starts):
            return len(self.text)
        start = self.starts[line]
        end = _line_end(self.text, self.starts, line)
        return start + _column_to_index(self.text[start:end], max(column, 0), encoding)

    def position_at(self, offset: int, encoding: str) -> tuple[int, int]:
        """The LSP (line, column) of a string index."""
        offset = min(max(offset, 0), len(self.text))
        line = bisect.bisect_right(self.starts, offset) - 1
        start = self.starts[line]
        return line, index_to_column(self.text[start:offset], offset - start, encoding)

    def line_end_offset(self, offset: int) -> int:
        line = bisect.bisect_right(self.starts, offset) - 1
        return _line_end(self.text, self.starts, line)

    def replace(self, start: int, end: int, new_text: str) -> None:
        self.text = self.text[:start] + new_text + self.text[max(start, end) :]
        self.starts = line_starts(self.text)


@dataclass(frozen=True)
class Cursor:
    """What the pipeline needs to know about a cursor: its left context and its line."""

    prefix: str
    line_suffix: str
    following_text: str
    language: Language = PLAIN_TEXT

    @cached_property
    def indent(self) -> IndentStyle | None:
        """The document's indentation style, from the text around the cursor (computed only
        when a suggestion is post-processed, not for cache hits)."""
        around = self.prefix[-INDENT_SAMPLE_CHARS:] + self.line_suffix
        return detect_indent(around) or detect_indent(self.following_text)

    @property
    def line_prefix(self) -> str:
        return self.prefix[max(self.prefix.rfind("\n"), self.prefix.rfind("\r")) + 1 :]


FOLLOWING_TEXT_CHARS = 4000


def cursor_at(document: Document, offset: int) -> Cursor:
    line_end = document.line_end_offset(offset)
    return Cursor(
        prefix=document.text[:offset],
        line_suffix=document.text[offset:line_end],
        following_text=document.text[line_end : line_end + FOLLOWING_TEXT_CHARS],
        language=language_of_document(document.language_id, document.uri),
    )


class DocumentStore:
    """The open documents, by URI."""

    def __init__(self) -> None:
        self._documents: dict[str, Document] = {}

    def open(self, uri: str, language_id: str, version: int, text: str) -> None:
        self._documents[uri] = Document(uri, language_id, version, text)

    def get(self, uri: str) -> Document | None:
        return self._documents.get(uri)

    def version(self, uri: str) -> int | None:
        document = self._documents.get(uri)
        return None if document is None else document.version

    def close(self, uri: str) -> None:
        self._documents.pop(uri, None)

    def __len__(self) -> int:
        return len(self._documents)
