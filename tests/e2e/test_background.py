"""Over real stdio, work done before it is asked for: the suggestion after an accepted one is
ready when it is accepted, and opening a document feeds its prompt to the model ahead of the
first request. Neither changes what is suggested."""

from __future__ import annotations

URI, COLD = "file:///work/ledger.py", "file:///work/ledger-cold.py"
TEXT = "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return "
LONG_TEXT = (
    "".join(f"def read_{n}(path):\n    return open(path).read()[{n}:]\n\n" for n in range(40))
    + TEXT
)


def end_of(text: str) -> tuple[int, int]:
    return text.count("\n"), len(text.rsplit("\n", 1)[-1])


async def test_an_accepted_suggestion_is_followed_at_once_by_the_next(editor, tiny_model):
    await editor.start({"model": str(tiny_model), "maxNewTokens": 12, "warmStart": False})
    editor.open(URI, TEXT)
    [shown] = await editor.texts(URI, *end_of(TEXT))
    await editor.wait_for_status(lambda status: status["totals"]["prefetched"] == 1)
    editor.edit(URI, end_of(TEXT), end_of(TEXT), shown)  # Tab
    accepted = TEXT + shown
    following = await editor.texts(URI, *end_of(accepted))
    status = await editor.status()
    assert status["last"]["cacheHit"] is True and status["totals"]["requests"] == 2
    editor.configure({"model": str(tiny_model), "maxNewTokens": 12, "prefetch": False})
    await editor.wait_for_state("ready")
    assert await editor.texts(URI, *end_of(accepted)) == following
    assert (await editor.status())["last"]["cacheHit"] is False


async def test_an_opened_document_is_fed_to_the_model_before_it_is_asked(editor, tiny_model):
    await editor.start({"model": str(tiny_model), "maxNewTokens": 12, "prefetch": False})
    editor.open(URI, LONG_TEXT)
    await editor.wait_for_status(lambda status: status["totals"]["warmStarts"] == 1)
    warm = await editor.texts(URI, *end_of(LONG_TEXT))
    last = (await editor.status())["last"]
    assert last["promptTokens"] > 512 and last["reusedTokens"] == last["promptTokens"]
    editor.configure({"model": str(tiny_model), "maxNewTokens": 12, "warmStart": False})
    await editor.wait_for_state("ready")
    editor.close(URI)  # else its text would be a snippet in the prompt
    editor.open(COLD, LONG_TEXT)
    assert await editor.texts(COLD, *end_of(LONG_TEXT)) == warm
    last = (await editor.status())["last"]
    assert last["reusedTokens"] == 0 and (await editor.status())["totals"]["warmStarts"] == 1


async def test_a_typed_edit_starts_the_suggestion_that_its_request_takes_over(editor, slow_model):
    settings = {"model": str(slow_model), "maxNewTokens": 12, "cache": {"size": 0}}
    await editor.start({**settings, "prefetch": False, "warmStart": False})
    editor.open(URI, LONG_TEXT)
    typed = LONG_TEXT + "h"
    # The slow model's prefill of the ~1000-token prompt outlasts the request's way here.
    editor.edit(URI, end_of(LONG_TEXT), end_of(LONG_TEXT), "h")
    anticipated = await editor.texts(URI, *end_of(typed))
    assert anticipated and anticipated[0]
    status = await editor.status()
    assert status["totals"]["anticipated"] == 1 and status["totals"]["requests"] == 1
    assert status["last"]["promptTokens"] > 512 and status["last"]["cacheHit"] is False
    editor.configure({**settings, "anticipate": False})
    await editor.wait_for_state("ready")
    editor.edit(URI, end_of(LONG_TEXT), end_of(typed), "h")  # the same text, a new version
    assert await editor.texts(URI, *end_of(typed)) == anticipated
    assert (await editor.status())["totals"]["anticipated"] == 1
