"""The remote backend against a real vLLM server (CPU, started here): the same suggestions as
a local greedy generation, aborts on the server, its prefix cache, a server lost and back."""

from __future__ import annotations

import asyncio
import sysconfig
import time
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from lsprotocol import types
from test_robustness import comes_true, message_shown
from vllm_server import API_KEY, SERVED_NAME, VllmServer

from polycoder_ls.config import Settings, apply_settings

URI = "file:///work/project/remote_example.py"
SOURCE = (Path(__file__).resolve().parents[2] / "polycoder_ls" / "prompt.py").read_text()
RUNNING = "vllm:num_requests_running"


def remote_settings(model: Path, server: VllmServer | FaultProxy, **extra) -> dict:
    remote = {"url": server.url, "servedModel": SERVED_NAME, "apiKey": API_KEY}
    return {"model": str(model), "remote": remote, "cache": {"size": 0}, **extra}


def line_ends(text: str, count: int) -> list[int]:
    """Offsets of `count` line ends spread over `text`, on lines with code."""
    ends = [index for index, char in enumerate(text) if char == "\n" and text[index - 1] != "\n"]
    step = max(1, len(ends) // count)
    return ends[step // 2 :: step][:count]


def position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset)
    return line, offset - (text.rfind("\n", 0, offset) + 1)


async def test_remote_suggestions_equal_a_local_greedy_generation(
    editor, remote_model, remote_reference, vllm
):
    wire = remote_settings(remote_model, vllm, multiline="never")
    settings, _ = apply_settings(Settings(), wire)
    await editor.start(wire)
    status = await editor.status()
    assert status["backend"] == "remote"
    assert status["remote"] == {"url": vllm.url, "servedModel": SERVED_NAME}
    assert status["label"] == f"{SERVED_NAME} @ 127.0.0.1:{vllm.port}"
    assert status["device"] == "remote"
    text = SOURCE
    editor.open(URI, text)
    suggested = 0
    for offset in line_ends(text, 6):
        expected = remote_reference.suggestion(text, offset, settings)
        texts = await editor.texts(URI, *position(text, offset))
        assert texts == ([expected.text] if expected else []), f"at offset {offset}"
        suggested += bool(texts)
    # Keystrokes: typed one by one at the end of a line, each followed by a request.
    offset = line_ends(text, 6)[2]
    for char in "re":
        editor.edit(URI, position(text, offset), position(text, offset), char)
        text = text[:offset] + char + text[offset:]
        offset += 1
        expected = remote_reference.suggestion(text, offset, settings)
        texts = await editor.texts(URI, *position(text, offset))
        assert texts == ([expected.text] if expected else []), f"after typing {char!r}"
        suggested += bool(texts)
    assert suggested >= 3, "too few cursors with a suggestion to compare"
    status = await editor.status()
    assert status["last"]["promptTokens"] > 0 and status["last"]["generatedTokens"] > 0
    assert 0 < status["last"]["firstTokenMs"] <= status["last"]["latencyMs"]


async def test_the_next_keystroke_hits_the_servers_prefix_cache(editor, remote_model, vllm):
    await editor.start(remote_settings(remote_model, vllm, multiline="never"))
    text = f"# {time.time_ns()}: a prompt this server has not seen\n" + SOURCE
    editor.open(URI, text)
    offset = line_ends(text, 4)[-1]
    hits = vllm.metric("vllm:prefix_cache_hits_total")
    await editor.inline(URI, *position(text, offset))
    first = (await editor.status())["last"]
    editor.edit(URI, position(text, offset), position(text, offset), "x")
    await editor.inline(URI, *position(text, offset + 1))
    second = (await editor.status())["last"]
    assert first["promptTokens"] > 256
    assert vllm.metric("vllm:prefix_cache_hits_total") > hits
    # The server's own count, when its stream ran to the end (a one-line suggestion does).
    assert second["reusedTokens"] is not None and second["reusedTokens"] >= 128
    assert second["reusedTokens"] <= second["promptTokens"]


LONG_TOKENS = 300


def _candidate_documents():
    """Short documents (no clipping) that end at the cursor, in a string just begun."""
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        end = text.find("\n", len(text) // 2)
        yield text[max(0, end - 3000) : end] + "\n    x = '"


async def _long_generation(editor) -> tuple[str, str, int]:
    """A document (uri, text) whose generation is long, and its tokens: greedy decoding of a
    random-weight model mostly ends soon (its own repetition, a block end, a newline); a few
    run on."""
    for number, text in enumerate(_candidate_documents()):
        uri = f"file:///work/project/candidate_{number}.py"
        editor.open(uri, text)
        await editor.inline(uri, *position(text, len(text)))
        if (tokens := (await editor.status())["last"]["generatedTokens"]) >= LONG_TOKENS:
            return uri, text, tokens
    raise AssertionError(f"no generation of {LONG_TOKENS} tokens or more: nothing to cancel")


async def _wait_metric(server: VllmServer, name: str, condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition(server.metric(name)):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _next_stream(vllm: VllmServer, since: int, earlier: int = 0) -> str:
    """The id of the stream that comes after `earlier` streams the server received after
    `since` bytes of its log (token-healing requests of one token are not streams)."""
    assert await comes_true(lambda: len(vllm.streams_received(since)) > earlier), "no stream came"
    return vllm.streams_received(since)[earlier]


def _assert_stopped_early(vllm: VllmServer, generated_before: float, suggestions: int) -> None:
    """The server generated fewer tokens since `generated_before` than the suggestions it was
    asked for would take (they were cancelled: it no longer generated for them)."""
    since = vllm.metric("vllm:generation_tokens_total") - generated_before
    assert since < suggestions, f"{since} tokens of {suggestions}: generated to their end"


@pytest.mark.parametrize("how", ["edit", "cancelRequest", "newer"])
async def test_a_cancelled_generation_is_aborted_on_the_server(editor, remote_model, vllm, how):
    """The stream is cancelled as soon as the server has it, hundreds of tokens before the
    suggestion would end: polycoder-ls stops reading it and the server aborts it rather than
    generating its 1000 tokens. (Watched in the server's log, which a loaded machine does not
    slow as it slows /metrics.)"""
    await editor.start(remote_settings(remote_model, vllm, multiline="always", maxNewTokens=1000))
    uri, text, whole = await _long_generation(editor)
    since, generated = vllm.log_size(), vllm.metric("vllm:generation_tokens_total")
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(*position(text, len(text))),
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Automatic
        ),
    )
    pending = asyncio.wrap_future(
        editor.client.protocol.send_request(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=f"long-{how}"
        )
    )
    stream = await _next_stream(vllm, since)
    if how == "newer":  # the same cursor asked again: the first stream closes, a new one runs
        newer = editor.inline_request(uri, *position(text, len(text)))
        newer_stream = await _next_stream(vllm, since, earlier=1)
        assert await comes_true(lambda: vllm.aborted(stream)), "the first stream was not aborted"
        result = await asyncio.wait_for(pending, 30)
        assert result is None or list(result.items) == []
        editor.edit(uri, (0, 0), (0, 0), "# edited\n")  # and the newer one is stopped too
        await newer
        assert await comes_true(lambda: vllm.aborted(newer_stream)), "never aborted"
        _assert_stopped_early(vllm, generated, 2 * whole)
        return
    if how == "edit":
        editor.edit(uri, (0, 0), (0, 0), "# edited\n")
    else:
        editor.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=f"long-{how}"))
    assert await comes_true(lambda: vllm.aborted(stream)), "never aborted: it ran to its end"
    _assert_stopped_early(vllm, generated, whole)
    try:
        result = await asyncio.wait_for(pending, 30)
        assert result is None or list(result.items) == []
    except Exception as error:  # $/cancelRequest: answered with RequestCancelled
        assert "cancel" in str(error).lower()
    last = (await editor.status())["last"]
    assert last["cancelled"] is True
    assert last["generatedTokens"] < whole, "the stream was read to the suggestion's end"


async def test_a_finished_suggestion_closes_the_stream(editor, remote_model, vllm):
    """The server cannot see a block's end: the stream is closed when the suggestion is
    complete, so it stops generating (not at maxNewTokens)."""
    limit = 1000
    await editor.start(remote_settings(remote_model, vllm, multiline="always", maxNewTokens=limit))
    editor.open(URI, SOURCE)
    aborted_before = vllm.aborted_requests()
    made: list[tuple[int, float]] = []
    for offset in line_ends(SOURCE, 8):
        generated = vllm.metric("vllm:generation_tokens_total")
        await editor.inline(URI, *position(SOURCE, offset))
        assert await _wait_metric(vllm, RUNNING, lambda v: v == 0, 60.0)
        ours = (await editor.status())["last"]["generatedTokens"]
        assert ours < limit
        made.append((ours, vllm.metric("vllm:generation_tokens_total") - generated))
    # Some tokens are made while the server notices the closed connection. On a busy machine
    # it can notice only after the last of a tiny model's tokens, but not for most streams.
    stopped = [theirs for _, theirs in made if theirs < limit]
    assert len(stopped) > len(made) / 2, f"(ours, theirs) per stream: {made}"
    assert vllm.aborted_requests() > aborted_before, "no suggestion ended before the server did"


async def test_bad_remote_settings_are_reported_and_nothing_breaks(editor, remote_model, vllm):
    await editor.start({"model": str(remote_model), "remote": {"url": "gpu-box:8000"}})
    assert await message_shown(editor, types.MessageType.Warning, "remote.url", "gpu-box:8000")
    status = await editor.status()
    assert status["backend"] == "local" and status["state"] == "ready"
    wire = remote_settings(remote_model, vllm)
    wire["remote"]["servedModel"] = "no-such-model"
    editor.configure(wire)
    assert await message_shown(editor, types.MessageType.Error, "no-such-model", "servedModel")
    status = await editor.wait_for_state("error")
    assert status["backend"] == "remote" and vllm.url in status["error"]
    editor.open(URI, SOURCE)
    assert await editor.inline(URI, *position(SOURCE, line_ends(SOURCE, 2)[0])) == []
    wire["remote"]["servedModel"] = None
    editor.configure(wire)
    await editor.wait_for_status(
        lambda status: status["state"] == "error" and SERVED_NAME in status["error"]
    )
    editor.configure(remote_settings(remote_model, vllm))
    assert (await editor.wait_for_state("ready"))["backend"] == "remote"


async def test_a_refused_api_key_is_named(editor, remote_model, vllm):
    wire = remote_settings(remote_model, vllm)
    wire["remote"]["apiKey"] = "not-the-key"
    await editor.start(wire, wait_ready=False)
    status = await editor.wait_for_state("error")
    assert "HTTP 401" in status["error"] and "remote.apiKey" in status["error"]
    assert await message_shown(editor, types.MessageType.Error, "remote.apiKey", vllm.url)
    editor.configure(remote_settings(remote_model, vllm))
    assert (await editor.wait_for_state("ready"))["backend"] == "remote"


FAULTS = {
    "http503": "HTTP 503: upstream is restarting",
    "reset_streams": "the connection was reset",
    "silent": "no answer within 2 s (remote.timeoutSeconds)",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_failing_server_is_reported_once_and_served_again(
    editor, remote_model, remote_reference, proxy, fault
):
    wire = remote_settings(remote_model, proxy, multiline="never")
    wire["remote"]["timeoutSeconds"] = 2
    settings, _ = apply_settings(Settings(), wire)
    await editor.start(wire)
    editor.open(URI, SOURCE)
    cursors = [
        offset
        for offset in line_ends(SOURCE, 12)
        if remote_reference.suggestion(SOURCE, offset, settings) is not None
    ]
    expected = [remote_reference.suggestion(SOURCE, cursors[0], settings).text]
    assert await editor.texts(URI, *position(SOURCE, cursors[0])) == expected
    proxy.mode = fault
    pending = editor.inline_request(URI, *position(SOURCE, cursors[1]))
    if fault == "silent":  # the server answers while the request waits on the network
        assert (await editor.status())["state"] == "ready" and not pending.done()
    result = await pending
    assert result is None or list(result.items) == []
    status = await editor.wait_for_state("error")
    assert status["error"] == f"{proxy.url}: {FAULTS[fault]}"
    assert await message_shown(editor, types.MessageType.Error, proxy.url, FAULTS[fault])
    assert await editor.texts(URI, *position(SOURCE, cursors[2])) == []  # not asked while down
    proxy.mode = "pass"
    await editor.wait_for_state("ready")
    assert await message_shown(editor, types.MessageType.Info, proxy.url, "answers again")
    errors = [m for m in editor.client.messages if m.type == types.MessageType.Error]
    assert len(errors) == 1, errors
    assert await editor.texts(URI, *position(SOURCE, cursors[0])) == expected


async def test_a_server_down_at_start_is_served_once_it_answers(editor, remote_model, proxy):
    proxy.mode = "http503"
    await editor.start(remote_settings(remote_model, proxy), wait_ready=False)
    status = await editor.wait_for_state("error")
    assert status["error"] == f"{proxy.url}: {FAULTS['http503']}"
    proxy.mode = "pass"
    assert (await editor.wait_for_state("ready"))["backend"] == "remote"


async def test_a_lost_server_is_reported_and_found_again(
    editor, remote_model, remote_reference, vllm
):
    """Last in this file: it restarts the shared server."""
    wire = remote_settings(remote_model, vllm, multiline="never")
    settings, _ = apply_settings(Settings(), wire)
    await editor.start(wire)
    editor.open(URI, SOURCE)
    offset = next(
        offset
        for offset in line_ends(SOURCE, 12)
        if remote_reference.suggestion(SOURCE, offset, settings) is not None
    )
    expected = [remote_reference.suggestion(SOURCE, offset, settings).text]
    assert await editor.texts(URI, *position(SOURCE, offset)) == expected
    vllm.kill()
    assert await editor.texts(URI, *position(SOURCE, offset)) == []
    status = await editor.wait_for_state("error")
    assert vllm.url in status["error"]
    assert await message_shown(editor, types.MessageType.Error, vllm.url)
    errors = [m for m in editor.client.messages if m.type == types.MessageType.Error]
    assert await editor.texts(URI, *position(SOURCE, offset)) == []  # not asked while down
    vllm.start()
    vllm.wait_ready()
    assert (await editor.wait_for_state("ready", timeout=120))["backend"] == "remote"
    assert await message_shown(editor, types.MessageType.Info, "answers again")
    # One message for the loss, however many requests met it.
    assert [m for m in editor.client.messages if m.type == types.MessageType.Error] == errors
    assert len(errors) == 1
    assert await editor.texts(URI, *position(SOURCE, offset)) == expected
