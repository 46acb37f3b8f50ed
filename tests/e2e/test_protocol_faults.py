"""Every request gets an answer, whatever its params: never a request an editor waits on
forever (pygls alone logs and drops what does not deserialize)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest
from rpc import RawServer, read_message

URI = "file:///work/faults.py"
TEXT = "def add(a, b):\n    return a + b\n"
INVALID_PARAMS, PARSE_ERROR, INVALID_REQUEST, NOT_INITIALIZED = -32602, -32700, -32600, -32002


def position(**overrides: Any) -> dict[str, Any]:
    return {
        "textDocument": {"uri": URI},
        "position": {"line": 1, "character": 4},
        "context": {"triggerKind": 2},
        **overrides,
    }


BAD_PARAMS = {
    "negative line": position(position={"line": -1, "character": 0}),
    "negative character": position(position={"line": 0, "character": -5}),
    "line 2^31": position(position={"line": 2**31, "character": 0}),
    "position a string": position(position="x"),
    "no textDocument": {"position": {"line": 0, "character": 0}, "context": {"triggerKind": 2}},
    "params null": None,
}


@pytest.fixture
def server(tiny_model):
    server = RawServer()
    # A request left unanswered would block the read for ever: the server is ended instead,
    # and the read fails.
    watchdog = threading.Timer(
        int(os.environ.get("POLYCODER_TEST_WATCHDOG", "120")), server.process.kill
    )
    watchdog.start()
    yield server
    watchdog.cancel()
    server.process.kill()
    server.process.wait()


def send_raw(server: RawServer, body: bytes) -> None:
    assert server.process.stdin is not None
    server.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    server.process.stdin.flush()


def answer(server: RawServer, msg_id: Any) -> dict[str, Any]:
    while (message := read_message(server.process.stdout)).get("id") != msg_id or (
        "method" in message
    ):
        if "method" in message and "id" in message:
            server.reply(message["id"], None)
    return message


def test_a_request_before_initialize_is_answered_not_initialized(server):
    msg_id = server.send("polycoder/status", {})
    assert answer(server, msg_id)["error"]["code"] == NOT_INITIALIZED


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_params_that_do_not_deserialize_get_invalid_params(server, tiny_model, case):
    server.initialize({"model": str(tiny_model)})
    document = {"uri": URI, "languageId": "python", "version": 1, "text": TEXT}
    server.send("textDocument/didOpen", {"textDocument": document}, request=False)
    msg_id = server.send("textDocument/inlineCompletion", BAD_PARAMS[case])
    error = answer(server, msg_id)["error"]
    assert error["code"] == INVALID_PARAMS and "textDocument/inlineCompletion" in error["message"]
    # And the server goes on answering.
    assert server.request("polycoder/status", {})["state"] in ("loading", "ready")


def test_bad_json_with_a_readable_id_gets_a_parse_error(server, tiny_model):
    server.initialize({"model": str(tiny_model)})
    send_raw(server, b'{"jsonrpc": "2.0", "id": 77, "method": "polycoder/status", "params": {')
    assert answer(server, 77)["error"]["code"] == PARSE_ERROR
    assert server.request("polycoder/status", {})["state"] in ("loading", "ready")


def test_a_request_after_shutdown_is_an_invalid_request(server, tiny_model):
    server.initialize({"model": str(tiny_model)})
    assert "result" in answer(server, server.send("shutdown", None))
    msg_id = server.send("polycoder/status", {})
    reply = answer(server, msg_id)
    assert reply["error"]["code"] == INVALID_REQUEST, json.dumps(reply)


@pytest.mark.parametrize("error", [-12, -1, 3, 40])
def test_a_wrong_content_length_leaves_the_server_answering(server, tiny_model, error):
    server.initialize({"model": str(tiny_model)})
    request = {"jsonrpc": "2.0", "id": 500, "method": "polycoder/status", "params": {}}
    body = json.dumps(request).encode()
    assert server.process.stdin is not None
    server.process.stdin.write(b"Content-Length: %d\r\n\r\n" % (len(body) + error) + body)
    server.process.stdin.flush()
    if error > 0:  # a length too long: the body is still read as the JSON value it is
        assert "result" in answer(server, 500)
    later = [server.send("polycoder/status", {}) for _ in range(25)]
    answered = [answer(server, msg_id) for msg_id in later]
    assert all("result" in message for message in answered)
