"""Turn raw model text into the suggestion a user sees.

Pure functions of the raw text, the cursor and the settings. `finished` tells the decoder when
more tokens can no longer change the result, so generation stops early with exactly the
suggestion a full-length generation would have given.

A left-to-right model (PolyCoder) never sees the text after the cursor, so it is used to trim
and filter: the rest of the line (closers are replaced through the item's range, anything else
means no mid-line suggestion unless the model saw it in a fill-in-the-middle prompt), the next
lines (never repeated, closing lines never duplicated).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .documents import Cursor
from .indentation import IndentStyle, reindent, style_of_lines
from .languages import Language

CLOSERS_AND_PUNCTUATION = set(")]}>\"'`;,.: \t")
CLOSING_LINE_CHARS = set(")]}>;, \t")
OPENING_BRACKETS, CLOSING_BRACKETS = "([{", ")]}"
REPLACEMENT_CHARACTER = "\ufffd"
SPECIAL_TOKEN_TEXT = ("<|endoftext|>", "<|padding|>", "<|separator|>", "<fim_", "<|fim")
REPEATED_BLOCK_LINES = (1, 2, 3)
# A piece of up to 16 characters ending in a non-blank, then 6 or more copies of it in a row.
REPEATED_RUN = re.compile(r"((?:\s*\S){1,16}?)\1{6,}")


@dataclass(frozen=True)
class Suggestion:
    """Text to insert at the cursor, replacing `replaced_chars` characters after it."""

    text: str
    replaced_chars: int = 0


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _is_closers_only(text: str) -> bool:
    return set(text) <= CLOSERS_AND_PUNCTUATION


def _is_closing_line(line: str, language: Language) -> bool:
    stripped = line.strip()
    if language.block_closer and stripped == language.block_closer:
        return True
    return bool(stripped) and set(stripped) <= CLOSING_LINE_CHARS


def _in_line_comment(cursor: Cursor) -> bool:
    comment = cursor.language.line_comment
    return bool(comment) and cursor.line_prefix.lstrip().startswith(comment)


def _opens_block(cursor: Cursor) -> bool:
    return bool(cursor.language.opens_block.search(cursor.line_prefix.rstrip()))


def wants_multiline(cursor: Cursor, mode: str) -> bool:
    """Several lines for an empty line or after a block opener, and between braces the editor
    closed (`{|}`); one line elsewhere."""
    if mode != "auto":
        return mode == "always"
    if _in_line_comment(cursor):
        return False
    if cursor.line_suffix.strip():
        return _is_closers_only(cursor.line_suffix) and cursor.line_prefix.rstrip().endswith("{")
    return not cursor.line_prefix.strip() or _opens_block(cursor)


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


def bracket_delta(line: str, language: Language) -> tuple[int, int]:
    """(depth at the end, lowest depth) of `line`'s brackets outside strings and comments."""
    depth = lowest = 0
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if quote:
            escaped = not escaped and char == "\\"
            if char == quote and not escaped:
                quote = ""
            continue
        if language.line_comment and line.startswith(language.line_comment, index):
            break
        if char in language.quotes:
            quote, escaped = char, False
        elif char in OPENING_BRACKETS:
            depth += 1
        elif char in CLOSING_BRACKETS:
            depth -= 1
            lowest = min(lowest, depth)
    return depth, lowest


def _block_lines(lines: list[str], cursor: Cursor) -> tuple[list[str], bool]:
    """Keep the lines inside the cursor's block; True when a later line ended it.

    A block ends at a blank line after content, at a line indented less than the cursor's
    line (or not more, after a block opener), at a new top-level definition after a block body,
    and, in bracket languages, at a bracket closing a block opened before the cursor. The line
    closing the block the cursor's line opened is kept."""
    language = cursor.language
    line_indent = _indent(cursor.line_prefix)
    if not cursor.line_prefix.strip() and lines[0].strip():
        line_indent = _indent(cursor.line_prefix + lines[0])
    opens = _opens_block(cursor)
    depth = bracket_delta(lines[0], language)[0]
    seen_content = bool(lines[0].strip())
    seen_body = line_indent > 0
    for number, line in enumerate(lines[1:], start=1):
        if not line.strip():
            if seen_content:
                return lines[:number], True
            continue
        indent = _indent(line)
        closes_own_block = opens and indent == line_indent and _is_closing_line(line, language)
        if language.braces:
            change, lowest = bracket_delta(line, language)
            if depth + lowest < 0:
                return (lines[: number + 1] if closes_own_block else lines[:number]), True
            depth += change
        if closes_own_block:
            return lines[: number + 1], True
        if indent < line_indent or (opens and indent <= line_indent):
            return lines[:number], True
        if indent == 0 and seen_body and language.top_level.match(line):
            return lines[:number], True
        seen_content = True
        seen_body = seen_body or indent > 0
    return lines, False


def _trimmed_lines(
    raw: str, cursor: Cursor, multiline: bool, final: bool
) -> tuple[list[str], bool]:
    """The suggestion's lines before filtering, and whether they can no longer grow."""
    lines = _to_document_indent(raw.replace("\r\n", "\n").split("\n"), cursor)
    if not multiline:
        return lines[:1], len(lines) > 1
    complete_lines = lines if final else lines[:-1]
    kept, ended = _block_lines(complete_lines or [""], cursor)
    if not ended:
        return [line.rstrip() for line in complete_lines] + lines[len(complete_lines) :], False
    return [line.rstrip() for line in kept], True


def _repetition_start(lines: list[str], language: Language) -> int | None:
    """Where a line or block of lines starts repeating itself (whitespace aside), if anywhere.
    Closing lines may follow each other (`}` `}`)."""
    stripped = [line.strip() for line in lines]
    for start in range(1, len(lines)):
        for size in REPEATED_BLOCK_LINES:
            block = stripped[start - size : start]
            if (
                start >= size
                and block == stripped[start : start + size]
                and not all(_is_closing_line(line, language) for line in block)
            ):
                return start
    return None


def _repeated_run_end(line: str) -> int | None:
    """Where a run of one short piece repeated over and over in `line` (`n, n, n, ...`)
    should end: after its first copy."""
    match = REPEATED_RUN.search(line)
    return None if match is None else match.start() + len(match.group(1))


def _cut_repeated_runs(lines: list[str]) -> tuple[list[str], bool]:
    for number, line in enumerate(lines):
        end = _repeated_run_end(line)
        if end is not None:
            return [*lines[:number], line[:end].rstrip()], True
    return lines, False


def _lines_below(cursor: Cursor) -> list[str]:
    """The non-blank lines after the cursor's line."""
    return [line.rstrip() for line in cursor.following_text.split("\n")[1:] if line.strip()]


def _repeats_code_below(lines: list[str], below: list[str], cursor: Cursor) -> int | None:
    """The first suggested line (after the first) that is the next line of the document.
    Closing lines are left to _without_duplicate_closers, which compares indentation too."""
    if not below or _is_closing_line(below[0], cursor.language):
        return None
    for number, line in enumerate(lines[1:], start=1):
        if line.strip() == below[0].strip():
            return number
    return None


def _without_duplicate_closers(lines: list[str], below: list[str], cursor: Cursor) -> list[str]:
    """Drop trailing closing lines that the document already has right below."""
    for count in range(len(lines) - 1, 0, -1):
        tail = lines[-count:]
        if all(_is_closing_line(line, cursor.language) for line in tail) and (
            tail == below[:count]
        ):
            return lines[:-count]
    return lines


def _filtered(lines: list[str], cursor: Cursor, final: bool) -> tuple[list[str], bool]:
    """Cut repetition and code that is already below; True when the cut is final."""
    lines, run_cut = _cut_repeated_runs(lines)
    complete = lines if final or run_cut else lines[:-1]
    whole_lines = [cursor.line_prefix + line for line in complete[:1]] + complete[1:]
    below = _lines_below(cursor)
    repeats = (
        _repetition_start(whole_lines, cursor.language),
        _repeats_code_below(whole_lines, below, cursor),
    )
    cuts = [cut for cut in repeats if cut is not None]
    if cuts:
        return lines[: min(cuts)], True
    if run_cut:
        return lines, True
    if final:
        lines = _without_duplicate_closers(lines, below, cursor)
    return lines, False


def _equals_next_line(text: str, cursor: Cursor) -> bool:
    below = _lines_below(cursor)
    whole_line = (cursor.line_prefix + text.split("\n")[0]).strip()
    return bool(below) and "\n" not in text.strip("\n") and whole_line == below[0].strip()


def _to_document_indent(lines: list[str], cursor: Cursor) -> list[str]:
    """Re-indent lines written with tabs for a spaces document, or the other way round. The
    first line too when the cursor stands in the line's indentation."""
    style = cursor.indent
    first = 0 if not cursor.line_prefix.strip() else 1
    if style is None:
        guess = IndentStyle(tabs="\t" in cursor.line_prefix)
        return _without_second_indent(lines, cursor, guess)
    if len(lines) <= first:
        return lines
    suggested = style_of_lines([line for line in lines[first:] if line.strip()])
    if suggested is None or suggested.tabs == style.tabs:
        suggested = IndentStyle(tabs=True, width=style.width) if not style.tabs else None
    converted = [
        _line_to_style(line, suggested, style) if number >= first else line
        for number, line in enumerate(lines)
    ]
    return _without_second_indent(converted, cursor, style)


def _line_to_style(line: str, source: IndentStyle | None, target: IndentStyle) -> str:
    leading = line[: _indent(line)]
    wrong = "\t" if not target.tabs else " "
    if wrong not in leading:
        return line
    if source is None or source.tabs == target.tabs:  # spaces in a tabs document, width unclear
        source = IndentStyle(tabs=target.tabs is False, width=target.width)
    return reindent(line, source, target)


def _columns(whitespace: str, style: IndentStyle) -> int:
    return sum(style.width if char == "\t" else 1 for char in whitespace)


def _without_second_indent(lines: list[str], cursor: Cursor, style: IndentStyle) -> list[str]:
    """After Enter the editor has indented the line already: a first line that indents it
    again loses that indentation (and the lines below it the same amount)."""
    line_prefix = cursor.line_prefix
    first_indent = lines[0][: _indent(lines[0])]
    if not line_prefix or line_prefix.strip() or not first_indent or not lines[0].strip():
        return lines
    previous = next(
        (line for line in reversed(cursor.prefix.split("\n")[:-1]) if line.strip()), None
    )
    if previous is None:
        return lines
    expected = _columns(previous[: _indent(previous)], style)
    if cursor.language.opens_block.search(previous.rstrip()):
        expected += style.width
    if _columns(line_prefix, style) < expected:
        return lines
    # Lines below that sit under the model's idea of the first line moved with it.
    excess = len(first_indent)
    deeper = int(bool(cursor.language.opens_block.search(lines[0].rstrip())))
    model_column = len(line_prefix) + excess + deeper
    rest = lines[1:]
    if all(_indent(line) >= model_column for line in rest if line.strip()):
        rest = [line[excess:] if line.strip() else line for line in rest]
    return [lines[0][excess:], *rest]


def _with_suffix(text: str, cursor: Cursor, fim: bool) -> Suggestion | None:
    """Fit the suggestion to the text after the cursor on its line. Without the suffix in the
    prompt (`fim`), a line whose rest is not closers gets no suggestion; with it, the end of
    the suggestion that the rest of the line already has is dropped."""
    suffix = cursor.line_suffix
    text = text.rstrip()
    if not text.strip():
        return None
    if not suffix.strip():
        return Suggestion(text, len(suffix))
    if not _is_closers_only(suffix):
        if not fim:
            return None
        text = _without_overlap(text, suffix.rstrip())
        return Suggestion(text) if text.strip() else None
    closers = suffix.replace(" ", "").replace("\t", "")
    if _is_subsequence(closers, text):
        return Suggestion(text, len(suffix))
    return Suggestion(text, 0)


def _without_overlap(text: str, suffix: str) -> str:
    """`text` without its longest end that `suffix` starts with."""
    for length in range(min(len(text), len(suffix)), 0, -1):
        if text.endswith(suffix[:length]):
            return text[:-length]
    return text


def _is_subsequence(needle: str, haystack: str) -> bool:
    characters = iter(haystack)
    return all(char in characters for char in needle)


def postprocess(
    raw: str,
    cursor: Cursor,
    multiline_mode: str,
    stops: Sequence[str],
    final: bool = True,
    fim: bool = False,
) -> tuple[Suggestion | None, bool]:
    """The suggestion for `raw`, and whether more raw text could not change it.

    `final` says no more text will come (the model stopped); while it is False, the last,
    incomplete line is not judged by the filters. `fim`: the text after the cursor was in
    the prompt."""
    raw, stopped = _cut_at_stop_strings(raw, (*SPECIAL_TOKEN_TEXT, *stops))
    raw, undecodable = _cut_at_undecodable(raw)
    multiline = wants_multiline(cursor, multiline_mode)
    lines, ended = _trimmed_lines(raw, cursor, multiline, final)
    lines, cut = _filtered(lines, cursor, final or ended)
    text = "\n".join(lines)
    if final and _equals_next_line(text, cursor):
        return None, True
    return _with_suffix(text, cursor, fim), stopped or undecodable or ended or cut
