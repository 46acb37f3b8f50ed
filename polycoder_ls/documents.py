"""Open documents and LSP positions, as pure functions over text.

LSP lines end at \\n, \\r\\n or \\r only (str.splitlines would also break at \\f and
\\u2028, shifting every position after them). Columns count UTF-16 code units unless the
client negotiated utf-8 or utf-32. Out-of-range positions are clamped, never fatal.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass
from functools import cached_property

from .indentation import IndentStyle, detect_indent
from .languages import PLAIN_TEXT, Language, language_of_document

LINE_BREAK = re.compile(r"\r\n|\r|\n")
UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
INDENT_SAMPLE_CHARS = 20000
PIECE_CHARS = 16384


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


class _Pieces:
    """The text as pieces of about PIECE_CHARS, with the line breaks of each: an edit costs
    the pieces it touches plus a pass over the per-piece counts, not the whole text.

    Invariant: no piece ends with \r while the next starts with \n (a \r\n is one break)."""

    def __init__(self, text: str) -> None:
        self._pieces = [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]
        self._pieces = self._pieces or [""]
        self._breaks: list[list[int] | None] = [None] * len(self._pieces)
        self._mend(0, len(self._pieces))
        self._reindex()

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def line_count(self) -> int:
        return self._lines_before[-1] + 1

    def _reindex(self) -> None:
        """Piece starts and line breaks before each piece; the last entry is the total."""
        self._starts = [0, *itertools.accumulate(len(piece) for piece in self._pieces)]
        counts = (len(self._breaks_of(index)) for index in range(len(self._pieces)))
        self._lines_before = [0, *itertools.accumulate(counts)]

    def _breaks_of(self, index: int) -> list[int]:
        """Offsets in piece `index` just after each of its line breaks."""
        breaks = self._breaks[index]
        if breaks is None:
            breaks = [match.end() for match in LINE_BREAK.finditer(self._pieces[index])]
            self._breaks[index] = breaks
        return breaks

    def _mend(self, first: int, last: int) -> None:
        """Drop empty pieces and restore the \r\n invariant, for pieces first..last."""
        index, last = max(first, 0), min(last, len(self._pieces) - 1)
        while index <= last:
            piece = self._pieces[index]
            if not piece and len(self._pieces) > 1:
                del self._pieces[index], self._breaks[index]
                last -= 1
            elif index > 0 and self._pieces[index - 1].endswith("\r") and piece.startswith("\n"):
                self._pieces[index - 1] += "\n"
                self._pieces[index] = piece[1:]
                self._breaks[index - 1] = self._breaks[index] = None
            else:
                index += 1

    def slice(self, start: int, end: int) -> str:
        start, end = max(0, start), min(end, len(self))
        if start >= end:
            return ""
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_left(self._starts, end) - 1
        parts = self._pieces[first : last + 1]
        head, tail = start - self._starts[first], end - self._starts[last]
        if first == last:
            return parts[0][head:tail]
        return parts[0][head:] + "".join(parts[1:-1]) + parts[-1][:tail]

    def replace(self, start: int, end: int, text: str) -> None:
        length = len(self)
        start = min(max(start, 0), length)
        end = min(max(end, start), length)
        first = min(bisect.bisect_right(self._starts, start) - 1, len(self._pieces) - 1)
        last = min(max(bisect.bisect_left(self._starts, end) - 1, first), len(self._pieces) - 1)
        head = self._pieces[first][: start - self._starts[first]]
        tail = self._pieces[last][end - self._starts[last] :]
        joined = head + text + tail
        pieces = [joined[i : i + PIECE_CHARS] for i in range(0, len(joined), PIECE_CHARS)]
        if not pieces and last - first + 1 == len(self._pieces):
            pieces = [""]  # the whole text deleted
        self._pieces[first : last + 1] = pieces
        self._breaks[first : last + 1] = [None] * len(pieces)
        self._mend(first, first + len(pieces))
        self._reindex()

    def line_start(self, line: int) -> int:
        """The offset where `line` starts (`line` within 0..line_count-1)."""
        if line <= 0:
            return 0
        index = bisect.bisect_left(self._lines_before, line) - 1
        return self._starts[index] + self._breaks_of(index)[line - self._lines_before[index] - 1]

    def line_of(self, offset: int) -> int:
        index = min(bisect.bisect_right(self._starts, offset) - 1, len(self._pieces) - 1)
        local = offset - self._starts[index]
        return self._lines_before[index] + bisect.bisect_right(self._breaks_of(index), local)

    def line_end(self, line: int) -> int:
        """The offset of the end of `line`, before its line break."""
        if line + 1 >= self.line_count:
            return len(self)
        next_start = self.line_start(line + 1)
        return next_start - (2 if self.slice(next_start - 2, next_start) == "\r\n" else 1)


class Document:
    """An open text document; edits cost time in proportion to the edit, not the document."""

    def __init__(self, uri: str, language_id: str, version: int, text: str) -> None:
        self.uri, self.language_id, self.version = uri, language_id, version
        self._table = _Pieces(text)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def text(self) -> str:
        """The whole text (a copy: costs the document's length)."""
        return self._table.slice(0, len(self._table))

    def slice(self, start: int, end: int) -> str:
        return self._table.slice(start, end)

    def offset_at(self, line: int, column: int, encoding: str) -> int:
        """The string index of an LSP position, clamped into the document."""
        if line < 0:
            return 0
        if line >= self._table.line_count:
            return len(self)
        start, end = self._table.line_start(line), self._table.line_end(line)
        return start + _column_to_index(self.slice(start, end), max(column, 0), encoding)

    def position_at(self, offset: int, encoding: str) -> tuple[int, int]:
        """The LSP (line, column) of a string index."""
        offset = min(max(offset, 0), len(self))
        line = self._table.line_of(offset)
        start = self._table.line_start(line)
        return line, index_to_column(self.slice(start, offset), offset - start, encoding)

    def line_end_offset(self, offset: int) -> int:
        return self._table.line_end(self._table.line_of(offset))

    def replace(self, start: int, end: int, new_text: str) -> None:
        self._table.replace(start, end, new_text)


@dataclass(frozen=True)
class Snippet:
    """A piece of another open document, for the prompt's context."""

    path: str
    """The document's path relative to its workspace folder (else its URI's path)."""
    text: str


@dataclass(frozen=True)
class Cursor:
    """What the pipeline needs to know about a cursor: its left context and its line."""

    prefix: str
    line_suffix: str
    following_text: str
    language: Language = PLAIN_TEXT
    snippets: tuple[Snippet, ...] = ()
    """Of other open documents, most similar first."""

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
        prefix=document.slice(0, offset),
        line_suffix=document.slice(offset, line_end),
        following_text=document.slice(line_end, line_end + FOLLOWING_TEXT_CHARS),
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

    def all(self) -> list[Document]:
        return list(self._documents.values())
