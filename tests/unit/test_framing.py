"""Framing that resynchronises after a wrong Content-Length (pygls's reader went deaf)."""

import json

import pytest

from polycoder_ls.framing import Broken, Message, MessageFramer, Skipped


def body(request_id: int, text: str = "x") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "m", "params": text}).encode()


def framed(data: bytes, declared: int | None = None) -> bytes:
    length = len(data) if declared is None else declared
    return b"Content-Length: %d\r\n\r\n" % length + data


def messages(events) -> list[int]:
    return [json.loads(event.body)["id"] for event in events if isinstance(event, Message)]


def test_well_framed_messages_in_any_pieces():
    stream = b"".join(framed(body(i, "é" * i)) for i in range(5))
    stream += b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n" + framed(body(5))
    for piece in (1, 7, len(stream)):
        framer = MessageFramer()
        events = []
        for start in range(0, len(stream), piece):
            events += framer.feed(stream[start : start + piece], drained=False)
        assert messages(events) == [0, 1, 2, 3, 4, 5]
        assert not [event for event in events if not isinstance(event, Message)]


@pytest.mark.parametrize("error", [-10, -1, 1, 25])
def test_a_wrong_length_costs_no_later_message(error):
    first = body(0, "a longer text, so that the length can be too short")
    stream = framed(first, len(first) + error) + b"".join(framed(body(i)) for i in range(1, 26))
    events = MessageFramer().feed(stream)
    assert messages(events) == list(range(26))


def test_a_length_too_long_is_answered_when_nothing_follows():
    framer = MessageFramer()
    assert messages(framer.feed(framed(body(7), len(body(7)) + 40), drained=True)) == [7]
    assert messages(framer.feed(framed(body(8)))) == [8]


def test_a_partial_body_waits_for_its_rest():
    framer = MessageFramer()
    data = body(3, "{nested}")
    assert framer.feed(framed(data)[:-1], drained=True) == []
    assert messages(framer.feed(data[-1:])) == [3]


def test_garbage_between_messages_is_skipped_and_bad_json_handed_on_whole():
    framer = MessageFramer()
    bad = b'{"id": 4, nope}'
    events = framer.feed(b"garbage\r\n" + framed(bad) + framed(b"[1, oops") + framed(body(5)))
    assert isinstance(events[0], Skipped) and not events[0].blank
    assert events[1] == Message(bad)  # its reader answers ParseError with id 4
    assert isinstance(events[2], Broken) and events[2].body == b"[1, oops"
    assert messages(events[3:]) == [5]


def test_a_broken_header_is_skipped():
    events = MessageFramer().feed(b"Content-Length: lots\r\n\r\n{}" + framed(body(9)))
    assert messages(events) == [9]


def test_bytes_with_no_header_are_not_kept_without_bound():
    framer = MessageFramer()
    for _ in range(100):
        framer.feed(b"z" * 10_000)
    assert len(framer._buffer) <= 256
    assert messages(framer.feed(framed(body(1)))) == [1]
