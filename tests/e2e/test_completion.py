"""Suggestions over real stdio equal a direct greedy generation, post-processed."""

from __future__ import annotations

import pytest
from lsprotocol import types
from reference import multiline_consistent

from polycoder_ls.config import Settings, apply_settings

URI = "file:///work/project/example.py"
SOURCE = (
    "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return handle.re"
)


def settings_for(model, **extra) -> dict:
    return {"model": str(model), **extra}


def expected_text(reference, model, text: str, offset: int, **extra) -> str:
    settings, problems = apply_settings(Settings(), settings_for(model, **extra))
    assert not problems
    suggestion = reference.suggestion(text, offset, settings)
    assert suggestion is not None, "the reference gives no suggestion: pick another cursor"
    return suggestion.text


async def test_single_line_suggestion_equals_greedy_generation(editor, tiny_model, reference):
    await editor.start(settings_for(tiny_model))
    editor.open(URI, SOURCE)
    texts = await editor.texts(URI, 5, len("        return handle.re"))
    assert texts == [expected_text(reference, tiny_model, SOURCE, len(SOURCE))]
    status = await editor.status()
    assert status["last"]["generatedTokens"] > 0
    assert status["last"]["cacheHit"] is False


async def test_multiline_suggestion_is_the_greedy_generations_first_lines(
    editor, tiny_model, reference
):
    await editor.start(settings_for(tiny_model, multiline="always", maxNewTokens=48))
    text = SOURCE + "ad()\n\n\nclass Reader:\n    def __init__(self):\n        "
    editor.open(URI, text)
    lines = text.split("\n")
    texts = await editor.texts(URI, len(lines) - 1, len(lines[-1]))
    settings, _ = apply_settings(Settings(), settings_for(tiny_model, maxNewTokens=48))
    raw = reference.raw_suggestion(text, settings)
    assert raw is not None and len(texts) == 1
    assert multiline_consistent(texts[0], raw), (texts[0], raw)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8"])
async def test_incremental_edits_with_non_ascii_text(editor, tiny_model, reference, encoding):
    """Columns are UTF-16 code units, or UTF-8 bytes when the client negotiates utf-8."""
    await editor.start(settings_for(tiny_model), encodings=[encoding])
    editor.open(URI, "name = 'Zoë 😀'\nprint(name)\n")

    def column(line_text: str, characters: int) -> int:
        if encoding == "utf-8":
            return len(line_text[:characters].encode("utf-8"))
        return len(line_text[:characters].encode("utf-16-le")) // 2

    first = "name = 'Zoë 😀'"
    after_emoji = column(first, first.index("😀") + 1)
    editor.edit(URI, (0, after_emoji), (0, after_emoji), " ✓ é")
    editor.edit(URI, (1, 0), (1, 5), "show")
    editor.edit(URI, (2, 0), (2, 0), "values = {'é': 1, '😀': 2}\nfor key in values")
    document = "name = 'Zoë 😀 ✓ é'\nshow(name)\nvalues = {'é': 1, '😀': 2}\nfor key in values"

    line_zero = document.split("\n")[0]
    cursor = line_zero.index("é'") + 1
    texts = await editor.texts(URI, 0, column(line_zero, cursor))
    assert texts == [expected_text(reference, tiny_model, document, cursor)]
    assert (await editor.status())["last"]["promptTokens"] == len(
        reference.healed_prompt(document[:cursor], Settings())[0]
    )

    texts = await editor.texts(URI, 3, len("for key in values"))
    assert texts == [expected_text(reference, tiny_model, document, len(document))]
    assert (await editor.status())["last"]["promptTokens"] == len(
        reference.healed_prompt(document, Settings())[0]
    )


async def test_completion_request_gives_the_same_suggestion(editor, tiny_model):
    await editor.start(settings_for(tiny_model))
    editor.open(URI, SOURCE)
    position = types.Position(5, len("        return handle.re"))
    inline = await editor.texts(URI, position.line, position.character)
    result = await editor.client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI), position=position
        )
    )
    items = result.items if isinstance(result, types.CompletionList) else result
    assert [item.text_edit.new_text for item in items] == inline
    assert items[0].text_edit.range.start == position


async def test_identical_request_is_answered_from_the_cache(editor, tiny_model):
    await editor.start(settings_for(tiny_model))
    editor.open(URI, SOURCE)
    first = await editor.texts(URI, 5, 24)
    second = await editor.texts(URI, 5, 24)
    status = await editor.status()
    assert first == second
    assert status["last"]["cacheHit"] is True
    assert status["totals"]["cacheHits"] == 1


async def test_typing_through_a_suggestion_needs_no_model_run(editor, tiny_model):
    await editor.start(settings_for(tiny_model))
    editor.open(URI, SOURCE)
    column = len("        return handle.re")
    [suggestion] = await editor.texts(URI, 5, column)
    typed = suggestion[:2]
    editor.edit(URI, (5, column), (5, column), typed)
    texts = await editor.texts(URI, 5, column + len(typed))
    status = await editor.status()
    assert texts == [suggestion[2:]]
    assert status["last"]["cacheHit"] is True
    assert status["last"]["generatedTokens"] == 0
    assert status["totals"]["requests"] == 2
    assert status["totals"]["completed"] == 2
    assert status["totals"]["cacheHits"] == 1


async def test_document_longer_than_the_context_window(editor, tiny_model, reference):
    context = {"contextTokens": 512, "maxNewTokens": 16}
    await editor.start(settings_for(tiny_model, **context))
    text = "".join(f"def handler_{n}(event):\n    return event.value + {n}\n\n" for n in range(200))
    text += "def last(event):\n    return event.va"
    editor.open(URI, text)
    lines = text.split("\n")
    texts = await editor.texts(URI, len(lines) - 1, len(lines[-1]))
    status = await editor.status()
    settings, _ = apply_settings(Settings(), settings_for(tiny_model, **context))
    assert status["last"]["promptTokens"] == len(reference.healed_prompt(text, settings)[0])
    assert status["last"]["promptTokens"] <= 512 - 16
    assert texts == [expected_text(reference, tiny_model, text, len(text), **context)]


async def test_disabled_language_gets_nothing(editor, tiny_model):
    await editor.start(settings_for(tiny_model, disabledLanguages=["markdown"]))
    editor.open("file:///work/README.md", "# Title\n\nSome text", language="markdown")
    assert await editor.texts("file:///work/README.md", 2, 9) == []


async def test_acceptance_is_counted_locally(editor, tiny_model):
    await editor.start(settings_for(tiny_model))
    editor.open(URI, SOURCE)
    [item] = await editor.inline(URI, 5, len("        return handle.re"))
    # The editor runs the item's command when the whole suggestion is accepted...
    assert item.command is not None
    await editor.client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=item.command.command, arguments=item.command.arguments)
    )
    # ...and plugins report a partial acceptance (a word, a line) with a notification.
    editor.client.protocol.notify(
        "polycoder/didAccept", {"length": len(item.insert_text), "acceptedLength": 1}
    )
    totals = (await editor.status())["totals"]
    assert totals["shown"] == 1
    assert totals["accepted"] == 1
    assert totals["partiallyAccepted"] == 1
    assert totals["acceptedChars"] == len(item.insert_text) + 1
