"""Context from other files: the snippets of the other open documents most like the lines
around the cursor (Jaccard similarity of identifier sets over sliding windows of lines, as
the best completion tools rank their "neighboring tabs"), with a bonus for regions edited
recently, and how a snippet reads in a prompt (comment lines in the cursor's language).

The choice depends only on the lines around the cursor, not on the cursor's own line, so it
stays the same while the user types on one line and the prompt's start stays stable.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from .documents import Document, Snippet
from .languages import Language

WINDOW_LINES = 20
WINDOW_STRIDE = 10
LINES_BEFORE = 20
LINES_AFTER = 5
MOST_SNIPPETS = 4
MIN_SIMILARITY = 0.1
RECENT_EDIT_BONUS = 0.1
RECENT_EDITS_KEPT = 4
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def identifiers(text: str) -> frozenset[str]:
    return frozenset(IDENTIFIER.findall(text))


def jaccard(first: frozenset[str], second: frozenset[str]) -> float:
    union = len(first | second)
    return len(first & second) / union if union else 0.0


def query_text(document: Document, line: int) -> str:
    """The lines around `line` (which is left out: typing on it changes nothing here)."""

    def start(of_line: int) -> int:
        return document.offset_at(max(0, of_line), 0, "utf-16")

    before = document.slice(start(line - LINES_BEFORE), start(line))
    after = document.slice(start(line + 1), start(line + 1 + LINES_AFTER))
    return before + after


def folder_of(uri: str, folders: Iterable[str]) -> str | None:
    """The workspace folder (URI) that holds `uri`: the longest that is a prefix of it."""
    holding = [f for f in folders if uri.startswith(f.rstrip("/") + "/")]
    return max(holding, key=len, default=None)


def relative_path(uri: str, folder: str | None) -> str:
    path = unquote(urlsplit(uri).path)
    if folder is None:
        return path
    return str(PurePosixPath(path).relative_to(unquote(urlsplit(folder).path)))


@dataclass(frozen=True)
class _Window:
    first_line: int
    text: str
    names: frozenset[str]


def _windows(text: str) -> list[_Window]:
    lines = text.split("\n")
    windows = []
    for start in range(0, max(1, len(lines) - WINDOW_LINES + WINDOW_STRIDE), WINDOW_STRIDE):
        chunk = "\n".join(lines[start : start + WINDOW_LINES])
        if chunk.strip():
            windows.append(_Window(start, chunk, identifiers(chunk)))
    return windows


class Neighbors:
    """Picks snippets of other documents; owns its index of their windows (kept per version)
    and the recent edit locations. Used from the event loop only."""

    def __init__(self) -> None:
        self._index: dict[str, tuple[int, list[_Window]]] = {}
        self._recent_edits: dict[str, deque[int]] = {}
        """Per document, so that typing in one does not push out the others' edits."""
        self._last: tuple[tuple[object, ...], tuple[Snippet, ...]] | None = None
        """The last choice and what it depended on: typing on one line asks the same again."""

    def edited(self, uri: str, line: int) -> None:
        self._recent_edits.setdefault(uri, deque(maxlen=RECENT_EDITS_KEPT)).append(line)

    def forget(self, uri: str) -> None:
        self._index.pop(uri, None)
        self._recent_edits.pop(uri, None)

    def _windows_of(self, document: Document) -> list[_Window]:
        kept = self._index.get(document.uri)
        if kept is None or kept[0] != document.version:
            kept = self._index[document.uri] = (document.version, _windows(document.text))
        return kept[1]

    def snippets(
        self,
        current: Document,
        line: int,
        others: Iterable[Document],
        folders: tuple[str, ...],
        disabled_languages: tuple[str, ...],
    ) -> tuple[Snippet, ...]:
        """The best windows of `others` for the cursor's `line` in `current`: only documents
        of the same workspace folder and of enabled languages, most similar first."""
        query = identifiers(query_text(current, line))
        if not query:
            return ()
        folder = folder_of(current.uri, folders)
        candidates = [
            document
            for document in others
            if document.uri != current.uri
            and document.language_id not in disabled_languages
            and folder_of(document.uri, folders) == folder
        ]
        key = (query, folder, tuple((document.uri, document.version) for document in candidates))
        if self._last is None or self._last[0] != key:
            self._last = (key, self._ranked(query, folder, candidates))
        return self._last[1]

    def _ranked(
        self, query: frozenset[str], folder: str | None, candidates: list[Document]
    ) -> tuple[Snippet, ...]:
        ranked: list[tuple[float, str, int, Snippet]] = []
        for document in candidates:
            path = relative_path(document.uri, folder)
            edited = set(self._recent_edits.get(document.uri, ()))
            for window in self._windows_of(document):
                score = jaccard(query, window.names)
                last_line = window.first_line + WINDOW_LINES
                if any(window.first_line <= line < last_line for line in edited):
                    score += RECENT_EDIT_BONUS
                if score >= MIN_SIMILARITY:
                    snippet = Snippet(path, window.text)
                    ranked.append((-score, path, window.first_line, snippet))
        return _without_overlaps(sorted(ranked, key=lambda entry: entry[:3]))


def _without_overlaps(ranked: list[tuple[float, str, int, Snippet]]) -> tuple[Snippet, ...]:
    chosen: list[tuple[str, int]] = []
    snippets: list[Snippet] = []
    for _, path, first_line, snippet in ranked:
        if any(p == path and abs(first_line - f) < WINDOW_LINES for p, f in chosen):
            continue
        chosen.append((path, first_line))
        snippets.append(snippet)
        if len(snippets) == MOST_SNIPPETS:
            break
    return tuple(snippets)


def render(snippet: Snippet, language: Language) -> str:
    """The snippet as comment lines of `language`, headed by its path."""
    comment = language.line_comment
    body = "\n".join(f"{comment} {line}".rstrip() for line in snippet.text.split("\n"))
    return f"{comment} {snippet.path}\n{body}\n"


def fit_snippets(
    snippets: tuple[Snippet, ...],
    language: Language,
    tokenize: Callable[[str], tuple[list[int], list[int]]],
    limit: int,
) -> str:
    """The rendered snippets that fit in `limit` tokens, taken most similar first and laid
    out most similar last (nearest the cursor); the first is cut by lines if it alone does
    not fit."""
    kept: list[str] = []
    used = 0
    for snippet in snippets:
        text = render(snippet, language)
        tokens = len(tokenize(text)[0])
        while used + tokens > limit and not kept and text.count("\n") > 2:
            text = text[: text.rstrip("\n").rfind("\n") + 1]
            tokens = len(tokenize(text)[0])
        if used + tokens > limit:
            break
        kept.append(text)
        used += tokens
    return "".join(reversed(kept))
