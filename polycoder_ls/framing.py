"""Base-protocol framing (`Content-Length` headers, then a JSON body) that resynchronises.

pygls's reader trusts each header: one wrong Content-Length leaves it reading bodies from the
middle of messages for good. This reader takes the declared length as a hint: a body that is
not JSON is re-read as the JSON value that starts there (a length too short or too long), and
bytes that belong to no message are skipped up to the next header.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

HEADER = re.compile(
    rb"(?:Content-Type:[^\r\n]*\r\n)?Content-Length:[ \t]*(\d+)[ \t]*\r\n"
    rb"(?:[A-Za-z-]+:[^\r\n]*\r\n)*\r\n",
    re.I,
)
HEADER_NAME = re.compile(rb"Content-(?:Length|Type):", re.I)
# Bytes kept while no header is in sight: enough to hold a header that arrives in pieces.
KEPT_WITHOUT_HEADER = 256
ENCODING, ERRORS = "utf-8", "surrogateescape"
# Bytes looked at to judge where a body begins and ends.
EDGE = 64


@dataclass(frozen=True)
class Message:
    body: bytes


@dataclass(frozen=True)
class Broken:
    """Bytes framed as a message that are no JSON value (answered with ParseError if an id can
    be read from them)."""

    body: bytes
    reason: str


@dataclass(frozen=True)
class Skipped:
    """Bytes outside any message (`blank`: only whitespace, as after a length too long)."""

    size: int
    blank: bool


Event = Message | Broken | Skipped


def _json_value_length(data: bytes) -> int | None:
    """The byte length of the JSON value `data` starts with, or None if it holds none."""
    text = data.decode(ENCODING, ERRORS)
    stripped = len(text) - len(text.lstrip())
    try:
        _, end = json.JSONDecoder().raw_decode(text, stripped)
    except json.JSONDecodeError:
        return None
    return len(text[:end].encode(ENCODING, ERRORS))


class MessageFramer:
    """Bytes in (`feed`), framed messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes, drained: bool = True) -> list[Event]:
        """`drained`: no more bytes are waiting to be read now; only then is a body shorter
        than its declared length taken as complete (when it is a whole JSON value)."""
        self._buffer += data
        events: list[Event] = []
        while (event := self._next(drained)) is not None:
            events.append(event)
        return events

    def _next(self, drained: bool) -> Event | None:
        buffer = self._buffer
        header = HEADER.search(buffer)
        if header is None:
            return self._skip_without_header()
        if header.start() > 0:
            return self._consume_skipped(header.start())
        start, declared = header.end(), int(header.group(1))
        end = start + declared
        if len(buffer) < end:
            if drained and bytes(buffer[-EDGE:]).rstrip().endswith(b"}"):
                return self._recover(start, declared)
            return None  # the rest of the body is on its way
        if self._looks_whole(start, end):
            body = bytes(buffer[start:end])
            del buffer[:end]
            return Message(body)
        return self._recover(start, declared)

    def _looks_whole(self, start: int, end: int) -> bool:
        """The declared body is one JSON object, as far as its ends and what follows tell (a
        full parse is left to the reader of the message)."""
        buffer = self._buffer
        head = bytes(buffer[start : start + EDGE]).lstrip()
        tail = bytes(buffer[max(start, end - EDGE) : end]).rstrip()
        following = bytes(buffer[end : end + EDGE]).lstrip()
        return (
            head.startswith(b"{")
            and tail.endswith(b"}")
            and (not following or HEADER_NAME.match(following) is not None)
        )

    def _recover(self, start: int, declared: int) -> Event | None:
        """The body at `start` is not `declared` bytes of JSON: take the JSON value that
        starts there, else give up on it at the next header."""
        rest = bytes(self._buffer[start:])
        length = _json_value_length(rest)
        if length is not None:
            del self._buffer[: start + length]
            return Message(rest[:length])
        following = HEADER_NAME.search(rest)
        if following is not None:
            del self._buffer[: start + following.start()]
            return Broken(rest[: following.start()], f"declared {declared} bytes, no JSON")
        if len(rest) >= declared:
            del self._buffer[: start + declared]
            return Broken(rest[:declared], "no JSON")
        return None

    def _skip_without_header(self) -> Event | None:
        name = HEADER_NAME.search(self._buffer)
        if name is not None:
            return self._consume_skipped(name.start()) if name.start() > 0 else None
        extra = len(self._buffer) - KEPT_WITHOUT_HEADER
        return self._consume_skipped(extra) if extra > 0 else None

    def _consume_skipped(self, size: int) -> Skipped:
        blank = not bytes(self._buffer[:size]).strip()
        del self._buffer[:size]
        return Skipped(size, blank)
