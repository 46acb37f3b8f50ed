"""Completion cache and type-through.

Exact hits: the same left context and text after the cursor as an earlier request.
Type-through: the left context grew by text that is a prefix of an earlier suggestion, so the
rest of that suggestion is the answer, without running the model.
Keys hold digests, not the (possibly large) texts themselves.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from cachetools import TTLCache

from .documents import Cursor
from .postprocess import Suggestion

RECENT_PER_DOCUMENT = 4


def _digest(*parts: str) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogatepass"))
        hasher.update(b"\0")
    return hasher.digest()


@dataclass(frozen=True)
class _Shown:
    prefix_length: int
    prefix_digest: bytes
    line_suffix: str
    suggestion: Suggestion


class CompletionCache:
    """Bounded, expiring, thread-safe."""

    def __init__(self, size: int, ttl_seconds: float) -> None:
        self._lock = threading.Lock()
        capacity = max(size, 1)
        self._enabled = size > 0
        self._exact: TTLCache[bytes, Suggestion | None] = TTLCache(capacity, ttl_seconds)
        self._recent: TTLCache[str, tuple[_Shown, ...]] = TTLCache(capacity, ttl_seconds)

    @staticmethod
    def _key(cursor: Cursor) -> bytes:
        # The language too: the same text is post-processed by its language's rules; the
        # other files' snippets: they are in the prompt.
        snippets = (part for snippet in cursor.snippets for part in (snippet.path, snippet.text))
        return _digest(
            cursor.language.name,
            cursor.prefix,
            cursor.line_suffix,
            cursor.following_text,
            *snippets,
        )

    def lookup(self, uri: str, cursor: Cursor) -> tuple[bool, Suggestion | None]:
        """(hit, suggestion): a hit may be a cached "no suggestion"."""
        if not self._enabled:
            return False, None
        with self._lock:
            key = self._key(cursor)
            if key in self._exact:
                return True, self._exact[key]
            for shown in self._recent.get(uri, ()):
                if (rest := _type_through(shown, cursor)) is not None:
                    return True, rest
        return False, None

    def store(self, uri: str, cursor: Cursor, suggestion: Suggestion | None) -> None:
        if not self._enabled:
            return
        with self._lock:
            self._exact[self._key(cursor)] = suggestion
            if suggestion is None:
                return
            shown = _Shown(
                len(cursor.prefix), _digest(cursor.prefix), cursor.line_suffix, suggestion
            )
            self._recent[uri] = (shown, *self._recent.get(uri, ()))[:RECENT_PER_DOCUMENT]

    def forget_document(self, uri: str) -> None:
        with self._lock:
            self._recent.pop(uri, None)

    def clear(self) -> None:
        with self._lock:
            self._exact.clear()
            self._recent.clear()


def _type_through(shown: _Shown, cursor: Cursor) -> Suggestion | None:
    typed = cursor.prefix[shown.prefix_length :]
    text = shown.suggestion.text
    if (
        not typed
        or cursor.line_suffix != shown.line_suffix
        or len(typed) >= len(text)
        or not text.startswith(typed)
        or _digest(cursor.prefix[: shown.prefix_length]) != shown.prefix_digest
    ):
        return None
    return Suggestion(text[len(typed) :], shown.suggestion.replaced_chars)
