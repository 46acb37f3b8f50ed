"""Bad input gets a clear answer and the server keeps running."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcMethodNotFound

from polycoder_ls.config import Settings
from polycoder_ls.engine_state import NANO_DIRECTORY

URI = "file:///work/project/robust.py"
TEXT = (
    "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return handle.re"
)


async def test_request_for_a_document_never_opened(editor, tiny_model):
    await editor.start({"model": str(tiny_model)})
    assert await editor.texts("file:///nowhere.py", 0, 0) == []
    assert (await editor.status())["state"] == "ready"


async def test_positions_past_the_end_are_clamped(editor, tiny_model):
    await editor.start({"model": str(tiny_model)})
    editor.open(URI, TEXT)
    at_end = await editor.texts(URI, 5, len("        return handle.re"))
    assert at_end
    assert await editor.texts(URI, 5, 500) == at_end
    assert await editor.texts(URI, 40, 3) == at_end


async def test_edit_outside_the_document_is_clamped_not_lost(editor, tiny_model, reference):
    await editor.start({"model": str(tiny_model)})
    editor.open(URI, "import os\n")
    editor.edit(URI, (50, 7), (60, 0), "\n\ndef read_file(path):\n    with open(path) as handle:")
    editor.edit(URI, (99, 0), (99, 0), "\n        return handle.re")
    expected_document = TEXT
    expected = reference.suggestion(
        expected_document, len(expected_document), Settings(model=str(tiny_model))
    )
    assert expected is not None
    assert await editor.texts(URI, 5, len("        return handle.re")) == [expected.text]


async def test_change_for_a_closed_document_is_ignored(editor, tiny_model):
    await editor.start({"model": str(tiny_model)})
    editor.open(URI, TEXT)
    editor.client.text_document_did_close(
        types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri=URI))
    )
    editor.versions[URI] = 1
    editor.edit(URI, (0, 0), (0, 0), "x")
    assert await editor.texts(URI, 0, 1) == []
    assert (await editor.status())["state"] == "ready"


async def test_invalid_settings_are_reported_and_the_previous_values_kept(editor, tiny_model):
    await editor.start({"model": str(tiny_model), "contextTokens": 1024})
    editor.configure({"contextTokens": "a lot", "temperature": -3, "maxNewTokens": 8})
    message = await editor.client.wait_for_notification(types.WINDOW_SHOW_MESSAGE)
    assert message.type == types.MessageType.Warning
    assert "contextTokens" in message.message
    await asyncio.sleep(0.2)
    status = await editor.status()
    assert status["contextTokens"] == 1024
    editor.open(URI, TEXT)
    await editor.texts(URI, 5, 24)
    assert (await editor.status())["last"]["generatedTokens"] <= 8


async def test_invalid_initialization_options_are_reported(editor, tiny_model):
    await editor.start({"model": str(tiny_model), "multiline": "sometimes"})
    messages = editor.client.messages
    assert any("multiline" in message.message for message in messages)
    assert (await editor.status())["state"] == "ready"


async def test_unknown_method_is_an_error_not_a_crash(editor, tiny_model):
    await editor.start({"model": str(tiny_model)})
    with pytest.raises(JsonRpcMethodNotFound):
        await editor.client.protocol.send_request_async("polycoder/noSuchThing", {})
    assert (await editor.status())["state"] == "ready"


async def comes_true(condition, seconds: float = 30) -> bool:
    """Whether `condition()` holds within `seconds` (notifications arrive on their own time)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def message_shown(editor, kind: types.MessageType, *words: str) -> bool:
    """Whether a window/showMessage of `kind` containing all `words` arrives."""
    return await comes_true(
        lambda: any(
            message.type == kind and all(word in message.message for word in words)
            for message in editor.client.messages
        )
    )


async def test_model_that_cannot_load_is_reported_and_the_server_stays_up(editor, tmp_path):
    settings = {"model": str(tmp_path / "missing-model"), "fallbackModel": None}
    await editor.start(settings, wait_ready=False)
    status = await editor.wait_for_state("error")
    assert "missing-model" in status["error"]

    assert await message_shown(editor, types.MessageType.Error, "missing-model")
    editor.open(URI, TEXT)
    assert await editor.texts(URI, 5, 24) == []


async def test_a_model_that_cannot_load_falls_back_and_says_so(editor, tiny_model, tmp_path):
    missing = str(tmp_path / "missing-model")
    await editor.start({"model": missing, "fallbackModel": str(tiny_model)}, wait_ready=False)
    status = await editor.wait_for_state("ready", "error")
    assert status["state"] == "ready"
    assert status["model"] == str(tiny_model)
    assert status["fallbackFrom"] == missing
    assert "missing-model" in status["error"]
    assert await message_shown(editor, types.MessageType.Warning, "missing-model", "fallbackModel")
    editor.open(URI, TEXT)
    await editor.texts(URI, 5, 24)
    assert (await editor.status())["totals"]["completed"] == 1


async def test_changing_the_model_reloads_it_with_progress(editor, tiny_model, slow_model):
    await editor.start({"model": str(tiny_model)})
    editor.configure({"model": str(slow_model)})
    status = await editor.wait_for_status(
        lambda status: status["model"] == str(slow_model) and status["state"] != "loading"
    )
    assert status["state"] == "ready"
    if editor.name == "vscode":  # its capabilities include window.workDoneProgress
        reports = editor.client.progress_reports.values
        # the status turns ready on the model's thread; `end` follows from the event loop
        assert await comes_true(lambda: all(report[-1].kind == "end" for report in reports()))
        reports = list(reports())
        assert len(reports) == 2
        assert all(report[0].kind == "begin" for report in reports)
        assert str(slow_model) in reports[-1][0].title
    editor.open(URI, TEXT)
    await editor.texts(URI, 5, 24)
    assert (await editor.status())["totals"]["completed"] == 1


async def test_the_default_fallback_is_the_packaged_nano(editor, tmp_path):
    missing = str(tmp_path / "missing-model")
    await editor.start({"model": missing}, wait_ready=False)
    status = await editor.wait_for_state("ready", "error")
    assert status["state"] == "ready", status
    assert status["model"] == str(NANO_DIRECTORY)
    assert status["fallbackFrom"] == missing


def warnings_shown(editor) -> list[str]:
    return [
        message.message
        for message in editor.client.messages
        if message.type in (types.MessageType.Warning, types.MessageType.Error)
    ]


async def test_a_device_that_is_not_there_runs_on_the_cpu_with_one_warning(editor, tiny_model):
    await editor.start({"model": str(tiny_model)})
    editor.open(URI, TEXT)
    before = await editor.texts(URI, 5, 24)
    editor.configure({"model": str(tiny_model), "device": "cuda:3"})
    status = await editor.wait_for_status(lambda status: status["state"] != "loading")
    assert status["state"] == "ready" and status["device"] == "cpu"
    assert await message_shown(editor, types.MessageType.Warning, "cuda:3", "CPU")
    assert len(warnings_shown(editor)) == 1, warnings_shown(editor)
    assert "\n" not in warnings_shown(editor)[0]
    assert await editor.texts(URI, 5, 24) == before


async def test_a_live_change_that_cannot_load_keeps_the_model_that_works(
    editor, tiny_model, tmp_path
):
    await editor.start({"model": str(tiny_model)})
    editor.open(URI, TEXT)
    before = await editor.texts(URI, 5, 24)
    missing = str(tmp_path / "missing-model")
    editor.configure({"model": missing, "fallbackModel": None})
    status = await editor.wait_for_status(lambda status: "fallbackFrom" in status)
    assert status["state"] == "ready" and status["model"] == str(tiny_model)
    assert status["fallbackFrom"] == missing and "missing-model" in status["error"]
    assert status["label"].startswith("tiny-model")
    assert await message_shown(editor, types.MessageType.Warning, "missing-model")
    editor.edit(URI, (5, 24), (5, 24), "")  # a new version: no cache hit
    assert await editor.texts(URI, 5, 24) == before


async def test_an_invalid_value_is_reported_once_though_sent_twice(editor, tiny_model):
    settings = {"model": str(tiny_model), "maxNewTokens": 0, "topP": 3}
    editor.client.set_configuration(settings, section="polycoder")  # pulled after initialize
    await editor.start(settings)
    await editor.wait_for_state("ready")
    await asyncio.sleep(0)  # messages sent before the status answer have arrived with it
    shown = warnings_shown(editor)
    assert sorted(shown) == sorted(set(shown)) and len(shown) == 2, shown
    assert all("\n" not in message for message in shown)


async def test_a_lone_surrogate_in_a_document_still_gets_suggestions(editor, tiny_model):
    # The two documents are compared: neither may be in the other's prompt.
    await editor.start({"model": str(tiny_model), "context": {"otherFilesTokens": 0}})
    broken = "name = 'x\ud83d'  # half an emoji\n" + TEXT
    editor.open(URI, broken)
    line, column = broken.count("\n"), len(broken.split("\n")[-1])
    mid_line = len("name = 'x\ud83d")
    with_surrogate = await editor.texts(URI, line, column)
    after_it = await editor.texts(URI, 0, mid_line)
    other = "file:///work/project/replaced.py"
    editor.open(other, broken.replace("\ud83d", "\ufffd"))
    assert with_surrogate == await editor.texts(other, line, column)
    assert after_it == await editor.texts(other, 0, mid_line)
    assert (await editor.status())["state"] == "ready"


async def test_a_window_beyond_the_model_is_clamped_with_one_message(editor, tiny_model, reference):
    await editor.start({"model": str(tiny_model), "contextTokens": 8192, "maxNewTokens": 4000})
    status = await editor.status()
    assert (status["contextTokens"], status["maxNewTokens"]) == (2048, 1024)
    assert await message_shown(editor, types.MessageType.Warning, "maxNewTokens 4000", "1024")
    assert len(warnings_shown(editor)) == 1, warnings_shown(editor)
    editor.open(URI, TEXT)
    await editor.texts(URI, 5, 24)
    last = (await editor.status())["last"]
    assert last["promptTokens"] == len(reference.healed_prompt(TEXT, Settings())[0])
