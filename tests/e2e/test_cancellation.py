"""Stale work stops: $/cancelRequest and a newer request for the same document."""

from __future__ import annotations

import asyncio
import concurrent.futures

from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

URI = "file:///work/project/long.py"
# ~4000 tokens: with contextTokens 2048 the prompt is ~1900 tokens; on the slow test model its
# prefill alone takes far longer than the few milliseconds between the requests below.
LONG_SOURCE = "".join(
    f"def handler_{n}(event, context):\n    value = event.get('key_{n}', {n})\n    return value\n\n"
    for n in range(200)
)
SETTINGS = {"multiline": "always", "maxNewTokens": 200, "cache": {"size": 0}}


async def _await(future):
    if isinstance(future, concurrent.futures.Future):
        future = asyncio.wrap_future(future)
    return await future


async def test_newer_request_for_the_same_document_cancels_the_running_one(editor, slow_model):
    await editor.start({"model": str(slow_model), **SETTINGS})
    editor.open(URI, LONG_SOURCE + "def tail(x):\n    ")
    last_line = LONG_SOURCE.count("\n") + 1
    stale = editor.inline_request(URI, last_line, 4)
    await asyncio.sleep(0.05)
    fresh = editor.inline_request(URI, last_line - 1, 0)
    stale_result = await _await(stale)
    await _await(fresh)
    status = await editor.status()
    assert list(stale_result.items) == []
    assert status["totals"]["cancelled"] == 1
    assert status["totals"]["completed"] == 1
    assert status["last"]["cancelled"] is False


async def test_cancel_request_stops_the_generation(editor, slow_model):
    await editor.start({"model": str(slow_model), **SETTINGS})
    editor.open(URI, LONG_SOURCE + "def tail(x):\n    ")
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI),
        position=types.Position(LONG_SOURCE.count("\n") + 1, 4),
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Invoked
        ),
    )
    protocol = editor.client.protocol
    pending = protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me"
    )
    await asyncio.sleep(0.1)
    protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
    try:
        result = await _await(pending)
    except JsonRpcRequestCancelled:
        result = None
    assert result is None or list(result.items) == []
    status = await editor.status()
    assert status["totals"]["cancelled"] == 1
    assert status["last"]["cancelled"] is True
    # The same request again reuses only the part of the prompt the cancelled one had
    # computed: it stopped in the middle of its prefill instead of running to the end.
    await editor.inline(URI, params.position.line, params.position.character)
    last = (await editor.status())["last"]
    assert last["cancelled"] is False
    assert last["reusedTokens"] < last["promptTokens"] - 1


async def test_server_answers_while_a_generation_runs(editor, slow_model):
    await editor.start({"model": str(slow_model), **SETTINGS})
    editor.open(URI, LONG_SOURCE + "def tail(x):\n    ")
    running = editor.inline_request(URI, LONG_SOURCE.count("\n") + 1, 4)
    await asyncio.sleep(0.05)
    status = await editor.status()
    assert status["state"] == "ready"
    assert not running.done(), "status must not wait for the generation"
    editor.edit(URI, (0, 0), (0, 0), "# edited\n")
    result = await _await(running)
    # The edit made the running request stale: it stops and returns nothing.
    assert list(result.items) == []
    assert (await editor.status())["totals"]["cancelled"] == 1
