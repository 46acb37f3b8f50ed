"""Turn raw model text into the suggestion a user sees.

Pure functions of the raw text, the cursor and the settings. `finished` tells the decoder when
more tokens can no longer change the result, so generation stops early with exactly the
suggestion a full-length generation would have given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .documents import Cursor

BLOCK_OPENERS = (":", "{", "(", "[", "=>")
CLOSERS_AND_PUNCTUATION = set(")]}>\"'`;,.: \t")
CLOSING_LINE_CHARS = set(")]}>;, \t")
REPLACEMENT_CHARACTER = "\ufffd"


@dataclass(frozen=True)
class Suggestion:
    """Text to insert at the cursor, replacing `replaced_chars` characters after it."""

    text: str
    replaced_chars: int = 0


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def wants_multiline(cursor: Cursor, mode: str) -> bool:
    if mode != "auto":
        return mode == "always"
    if cursor.line_suffix.strip():
        return False
    before = cursor.line_prefix.rstrip()
    return not before or before.endswith(BLOCK_OPENERS)


def _cut_at_stop_strings(raw: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((index for stop in stops if (index := raw.find(stop)) >= 0), default=-1)
    return (raw, False) if cut < 0 else (raw[:cut], True)


def _cut_at_undecodable(raw: str) -> tuple[str, bool]:
    """Bytes that decode to no character (U+FFFD) end the text. Only a U+FFFD with valid text
    after it is final: at the end it may be the first bytes of a character still coming."""
    index = raw.find(REPLACEMENT_CHARACTER)
    if index < 0:
        return raw, False
    return raw[:index], bool(raw[index:].strip(REPLACEMENT_CHARACTER))


def _block_lines(lines: list[str], cursor: Cursor) -> tuple[list[str], bool]:
    """Keep the lines inside the cursor's block; True when a later line ended it."""
    line_indent = _indent(cursor.line_prefix)
    opens_block = cursor.line_prefix.rstrip().endswith(BLOCK_OPENERS)
    seen_content = bool(lines[0].strip())
    for number, line in enumerate(lines[1:], start=1):
        if not line.strip():
            if seen_content:
                return lines[:number], True
            continue
        indent = _indent(line)
        if opens_block and indent == line_indent and set(line) <= CLOSING_LINE_CHARS:
            return lines[: number + 1], True
        if indent < line_indent or (opens_block and indent <= line_indent):
            return lines[:number], True
        seen_content = True
    return lines, False


def _trimmed_text(raw: str, cursor: Cursor, multiline: bool) -> tuple[str, bool]:
    """The suggestion text before suffix handling, and whether it can no longer grow."""
    raw = raw.replace("\r\n", "\n")
    lines = raw.split("\n")
    complete_lines, partial = lines[:-1], lines[-1:]
    if not multiline:
        return lines[0], len(lines) > 1
    kept, ended = _block_lines(complete_lines or [""], cursor)
    if not ended:
        kept = complete_lines + partial
    return "\n".join(line.rstrip() for line in kept), ended


def _is_subsequence(needle: str, haystack: str) -> bool:
    characters = iter(haystack)
    return all(char in characters for char in needle)


def _with_suffix(text: str, cursor: Cursor) -> Suggestion | None:
    """Fit the suggestion to the text after the cursor on its line."""
    suffix = cursor.line_suffix
    text = text.rstrip()
    if not text.strip():
        return None
    if not suffix.strip():
        return Suggestion(text, len(suffix))
    if not set(suffix) <= CLOSERS_AND_PUNCTUATION:
        return None
    closers = suffix.replace(" ", "").replace("\t", "")
    if _is_subsequence(closers, text):
        return Suggestion(text, len(suffix))
    return Suggestion(text, 0)


def postprocess(
    raw: str, cursor: Cursor, multiline_mode: str, stops: Sequence[str]
) -> tuple[Suggestion | None, bool]:
    """The suggestion for `raw`, and whether more raw text could not change it."""
    raw, stopped = _cut_at_stop_strings(raw, stops)
    raw, undecodable = _cut_at_undecodable(raw)
    text, ended = _trimmed_text(raw, cursor, wants_multiline(cursor, multiline_mode))
    return _with_suffix(text, cursor), stopped or undecodable or ended
