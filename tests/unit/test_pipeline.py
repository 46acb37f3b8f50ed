"""The request pipeline against a fake engine: the version check, the replaced range, what is
cached, what closing a document forgets, who cancels. Milliseconds, no model, no pygls."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import pytest

from polycoder_ls.config import Settings
from polycoder_ls.documents import UTF8, UTF16, Cursor
from polycoder_ls.engine_state import CompletionOutcome, EngineStatus, GenerationStats
from polycoder_ls.pipeline import Change, CompletionPipeline
from polycoder_ls.postprocess import Suggestion

URI = "file:///work/p.py"
SETTINGS = Settings(prefetch=False)
"""Only the tests of background work see it: the others count the engine's calls."""


@dataclass
class Call:
    key: str
    cursor: Cursor
    settings: Settings
    cancel: threading.Event
    future: Future = field(default_factory=Future)

    def answer(self, text: str | None, replaced: int = 0, cancelled: bool = False) -> None:
        suggestion = None if text is None else Suggestion(text, replaced)
        stats = GenerationStats(generated_tokens=3, cancelled=cancelled)
        self.future.set_result(CompletionOutcome(suggestion, stats))


class FakeEngine:
    """Records each generation; the test answers it (or not) when it likes."""

    def __init__(self) -> None:
        self.status = EngineStatus("ready", "fake")
        self.calls: list[Call] = []
        self.forgotten: list[str] = []
        self.warms: list[Call] = []

    def complete(self, key, cursor, settings, cancel) -> Future:
        self.calls.append(Call(key, cursor, settings, cancel))
        return self.calls[-1].future

    def forget(self, key: str) -> None:
        self.forgotten.append(key)

    def warm(self, key, cursor, settings, cancel) -> Future:
        self.warms.append(Call(key, cursor, settings, cancel))
        return self.warms[-1].future


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def pipeline(engine) -> CompletionPipeline:
    return CompletionPipeline(engine, SETTINGS)


async def started(pipeline, position, settings=None, encoding=UTF16) -> asyncio.Task:
    """A completion request, run until it waits on the engine."""
    calls = len(pipeline.engine.calls)
    task = asyncio.ensure_future(pipeline.complete(URI, position, encoding, settings or SETTINGS))
    for _ in range(100):
        if len(pipeline.engine.calls) > calls or task.done():
            return task
        await asyncio.sleep(0)
    raise AssertionError("the request neither finished nor reached the engine")


async def answered(pipeline, position, text, replaced=0, encoding=UTF16):
    task = await started(pipeline, position, encoding=encoding)
    if not task.done():
        pipeline.engine.calls[-1].answer(text, replaced)
    return await task


def type_text(pipeline, version, position, text) -> None:
    pipeline.change(URI, version, [Change(text, (position, position))], UTF16)


async def test_an_answer_for_an_older_version_is_dropped(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    task = await started(pipeline, (0, 4))
    type_text(pipeline, 2, (0, 4), "1")
    engine.calls[-1].answer("42")  # an engine that finishes in spite of the cancel
    assert await task is None


async def test_the_edit_cancels_the_running_generation(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    await started(pipeline, (0, 4))
    assert not engine.calls[-1].cancel.is_set()
    type_text(pipeline, 2, (0, 4), "1")
    assert engine.calls[-1].cancel.is_set()


async def test_a_new_request_cancels_the_older_one_of_its_document_only(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    pipeline.open("file:///other.py", "python", 1, "y = \n")
    await started(pipeline, (0, 4))
    other = asyncio.ensure_future(pipeline.complete("file:///other.py", (0, 4), UTF16, SETTINGS))
    await asyncio.sleep(0)
    await started(pipeline, (0, 3))
    first, second_document, latest = engine.calls
    assert first.cancel.is_set()
    assert not second_document.cancel.is_set() and not latest.cancel.is_set()
    second_document.answer("1")
    assert (await other).suggestion.text == "1"


async def test_the_range_covers_the_closers_replaced_in_the_negotiated_units(pipeline):
    pipeline.open(URI, "python", 1, "s = f('😀', )\n")
    completion = await answered(pipeline, (0, 12), "x)", replaced=1)
    assert (completion.start, completion.end) == ((0, 12), (0, 13))
    completion = await answered(pipeline, (0, 14), "y)", replaced=1, encoding=UTF8)
    assert (completion.start, completion.end) == ((0, 14), (0, 15))


async def test_a_cancelled_generation_is_not_cached(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    task = await started(pipeline, (0, 4))
    engine.calls[-1].answer(None, cancelled=True)
    assert await task is None
    completion = await answered(pipeline, (0, 4), "1")
    assert len(engine.calls) == 2 and completion.suggestion.text == "1"


async def test_no_suggestion_is_cached_and_a_repeat_needs_no_engine(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    assert await answered(pipeline, (0, 4), None) is None
    assert await pipeline.complete(URI, (0, 4), UTF16, SETTINGS) is None
    assert len(engine.calls) == 1
    assert pipeline.metrics.totals.cache_hits == 1


async def test_typing_through_a_suggestion_needs_no_engine(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    await answered(pipeline, (0, 4), "compute()")
    type_text(pipeline, 2, (0, 4), "co")
    completion = await pipeline.complete(URI, (0, 6), UTF16, SETTINGS)
    assert completion.suggestion.text == "mpute()" and len(engine.calls) == 1


async def test_closing_forgets_the_kv_cache_and_the_type_through(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    await answered(pipeline, (0, 4), "compute()")
    pipeline.close(URI)
    assert engine.forgotten == [URI]
    pipeline.open(URI, "python", 1, "x = co\n")
    task = await started(pipeline, (0, 6))
    assert len(engine.calls) == 2
    engine.calls[-1].answer("de")
    assert (await task).suggestion.text == "de"


async def test_closing_cancels_the_running_generation(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    task = await started(pipeline, (0, 4))
    pipeline.close(URI)
    assert engine.calls[-1].cancel.is_set()
    engine.calls[-1].answer("1")
    assert await task is None


async def test_a_model_load_cancels_every_job_and_drops_the_cache(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    await answered(pipeline, (0, 4), "1")
    task = await started(pipeline, (0, 3))
    loaded = asyncio.get_running_loop().create_future()
    pipeline.model_loading(loaded)
    assert engine.calls[-1].cancel.is_set()
    engine.calls[-1].answer("late")
    assert await task is None
    loaded.set_result(engine.status)
    await started(pipeline, (0, 4))
    assert len(engine.calls) == 3, "the answer of the old model was not kept"


async def test_an_answer_under_settings_since_replaced_is_not_cached(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    task = await started(pipeline, (0, 4))
    pipeline.settings_changed(Settings(max_new_tokens=7))
    engine.calls[-1].answer("1")
    assert (await task).suggestion.text == "1"
    await started(pipeline, (0, 4))
    assert len(engine.calls) == 2


async def test_a_request_cancelled_by_the_client_cancels_the_generation(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    task = await started(pipeline, (0, 4))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.calls[-1].cancel.is_set()
    assert pipeline.metrics.totals.cancelled == 1
    assert len(pipeline.jobs) == 0


async def test_a_disabled_language_or_unknown_document_gets_nothing(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    settings = Settings(disabled_languages=("python",))
    assert await pipeline.complete(URI, (0, 4), UTF16, settings) is None
    assert await pipeline.complete("file:///never.py", (0, 0), UTF16, SETTINGS) is None
    assert engine.calls == []


async def test_a_change_to_a_document_not_open_is_refused(pipeline):
    assert not pipeline.change(URI, 2, [Change("x")], UTF16)


async def test_a_request_read_before_an_edit_it_had_not_seen_runs_no_model(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    type_text(pipeline, 2, (0, 4), "1")  # read after the request, handled before it started
    request = pipeline.complete(URI, (0, 4), UTF16, SETTINGS, version=1)
    assert await asyncio.wait_for(request, 30) is None  # the fake engine would never answer
    assert engine.calls == []


# Work done before it is asked for -----------------------------------------------------------

BACKGROUND = Settings(prefetch=True, warm_start=True, anticipate=False)
ANTICIPATING = Settings(prefetch=False, anticipate=True)


async def until(condition) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def shown(pipeline, engine, text, position, suggestion, replaced=0):
    """Open `text`, answer a request at `position` with `suggestion` under BACKGROUND
    settings and wait for the prefetch's call to the engine."""
    pipeline.open(URI, "python", 1, text)
    task = await started(pipeline, position, BACKGROUND)
    engine.calls[-1].answer(suggestion, replaced)
    completion = await task
    await until(lambda: len(engine.calls) == 2)
    return completion


async def test_the_suggestion_after_an_accepted_one_is_ready_when_it_is_accepted(pipeline, engine):
    await shown(pipeline, engine, "total = \nprint(total)\n", (0, 8), "price * count")
    prefetch = engine.calls[1]
    assert prefetch.cursor.prefix == "total = price * count"
    assert prefetch.cursor.following_text == "\nprint(total)\n"
    prefetch.answer("  # the bill")
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert pipeline.metrics.totals.prefetched == 1
    type_text(pipeline, 2, (0, 8), "price * count")  # Tab
    completion = await pipeline.complete(URI, (0, 21), UTF16, SETTINGS)
    assert completion.suggestion.text == "  # the bill"
    assert len(engine.calls) == 2 and pipeline.metrics.last.cache_hit


async def test_the_prefetch_accepts_the_closers_the_suggestion_retypes(pipeline, engine):
    await shown(pipeline, engine, "f(a, )\n", (0, 5), "b)", replaced=1)
    assert engine.calls[1].cursor.prefix == "f(a, b)"
    assert engine.calls[1].cursor.line_suffix == ""


@pytest.mark.parametrize("interruption", ["edit", "request elsewhere", "close", "open"])
async def test_anything_the_user_does_stops_the_prefetch_and_its_answer_is_not_kept(
    pipeline, engine, interruption
):
    await shown(pipeline, engine, "total = \n", (0, 8), "price")
    prefetch = engine.calls[1]
    if interruption == "edit":
        type_text(pipeline, 2, (0, 8), "q")
    elif interruption == "request elsewhere":
        pipeline.open("file:///other.py", "python", 1, "y = \n")
        await started_at(pipeline, "file:///other.py", (0, 4))
    elif interruption == "close":
        pipeline.close(URI)
    else:
        pipeline.open("file:///other.py", "python", 1, "y = \n")
    assert prefetch.cancel.is_set()
    prefetch.answer(" + tax")  # an engine that finishes in spite of the cancel
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert pipeline.metrics.totals.prefetched == 0


async def started_at(pipeline, uri, position) -> asyncio.Task:
    calls = len(pipeline.engine.calls)
    task = asyncio.ensure_future(pipeline.complete(uri, position, UTF16, SETTINGS))
    await until(lambda: len(pipeline.engine.calls) > calls)
    return task


async def test_no_prefetch_when_it_is_off_or_nothing_was_suggested(pipeline, engine):
    pipeline.open(URI, "python", 1, "total = \n")
    await answered(pipeline, (0, 8), "price")  # SETTINGS: prefetch off
    task = await started(pipeline, (0, 7), BACKGROUND)
    engine.calls[-1].answer(None)
    assert await task is None
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert len(engine.calls) == 2


async def test_opening_a_document_warms_the_prompt_at_its_end(pipeline, engine):
    text = "def f(x):\n    return x\n\nprint(f(2))\n"
    pipeline.open(URI, "python", 1, text, BACKGROUND)
    await until(lambda: engine.warms)
    assert engine.warms[0].cursor.prefix == text and engine.warms[0].key == URI
    engine.warms[0].answer(None)
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert pipeline.metrics.totals.warm_starts == 1


async def test_a_request_stops_the_warm_start(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = 1\ny = \n", BACKGROUND)
    await until(lambda: engine.warms)
    await started(pipeline, (1, 4))
    assert engine.warms[0].cancel.is_set()
    engine.warms[0].future.set_result(False)
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert pipeline.metrics.totals.warm_starts == 0


async def test_an_edit_far_from_the_cursor_warms_the_prompt_after_it(pipeline, engine):
    lines = [f"line_{number} = {number}\n" for number in range(40)]
    pipeline.open(URI, "python", 1, "".join(lines))
    await answered(pipeline, (30, 0), None)
    near = Change("x", ((32, 0), (32, 0)))
    pipeline.change(URI, 2, [near], UTF16, BACKGROUND)
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert engine.warms == []
    far = Change("y = ", ((5, 0), (5, 0)))
    pipeline.change(URI, 3, [far], UTF16, BACKGROUND)
    await until(lambda: engine.warms)
    assert engine.warms[0].cursor.prefix == "".join(lines[:5]) + "y = "
    off = Settings(warm_start=False)
    pipeline.change(URI, 4, [Change("z", ((20, 0), (20, 0)))], UTF16, off)
    assert engine.warms[0].cancel.is_set()
    engine.warms[0].future.set_result(False)
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert len(engine.warms) == 1


async def test_a_shared_server_is_not_asked_for_guesses(pipeline, engine):
    engine.status = EngineStatus("ready", "fake", backend="remote")
    pipeline.open(URI, "python", 1, "total = \n")
    task = await started(pipeline, (0, 8), BACKGROUND)
    engine.calls[-1].answer("price")
    assert (await task).suggestion.text == "price"
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert len(engine.calls) == 1


def typed(pipeline, version, position, text, settings=ANTICIPATING) -> None:
    pipeline.change(URI, version, [Change(text, (position, position))], UTF16, settings)


async def test_a_typed_edit_starts_the_suggestion_its_request_then_takes_over(pipeline, engine):
    pipeline.open(URI, "python", 1, "total = \nprint(total)\n")
    typed(pipeline, 2, (0, 8), "p")
    assert len(engine.calls) == 1, "the edit started a generation before any request"
    anticipated = engine.calls[0]
    assert anticipated.cursor.prefix == "total = p"
    assert anticipated.cursor.line_suffix == ""
    request = asyncio.ensure_future(pipeline.complete(URI, (0, 9), UTF16, ANTICIPATING, 2))
    await until(lambda: pipeline.metrics.totals.anticipated == 1)
    assert not anticipated.cancel.is_set()
    anticipated.answer("rice * count")
    completion = await asyncio.wait_for(request, 10)
    assert completion.suggestion.text == "rice * count" and completion.start == (0, 9)
    assert len(engine.calls) == 1
    assert pipeline.metrics.last.generated_tokens == 3


async def test_an_anticipated_suggestion_finished_before_the_request_is_cached(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    typed(pipeline, 2, (0, 4), "4")
    engine.calls[0].answer("2")
    await asyncio.wait_for(pipeline.background.idle(), 10)
    completion = await pipeline.complete(URI, (0, 5), UTF16, ANTICIPATING, 2)
    assert completion.suggestion.text == "2" and pipeline.metrics.last.cache_hit
    assert len(engine.calls) == 1
    assert pipeline.metrics.totals.prefetched == 0, "it followed an edit, not a suggestion"


@pytest.mark.parametrize("interruption", ["request elsewhere", "edit", "close", "stale request"])
async def test_what_is_not_the_anticipated_request_stops_the_anticipation(
    pipeline, engine, interruption
):
    pipeline.open(URI, "python", 1, "x = \ny = \n")
    typed(pipeline, 2, (0, 4), "1")
    anticipated = engine.calls[0]
    if interruption == "request elsewhere":
        request = await started(pipeline, (1, 4), ANTICIPATING)
        engine.calls[1].answer("2")
        assert (await request).suggestion.text == "2"
    elif interruption == "edit":
        typed(pipeline, 3, (1, 4), "2")
        assert engine.calls[1].cursor.prefix == "x = 1\ny = 2"
        engine.calls[1].answer(None)
    elif interruption == "close":
        pipeline.close(URI)
    else:  # a request for the text before the edit
        assert await pipeline.complete(URI, (0, 5), UTF16, ANTICIPATING, 1) is None
    assert anticipated.cancel.is_set()
    anticipated.answer("0")  # an engine that finishes in spite of the cancel
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert pipeline.metrics.totals.anticipated == 0
    assert pipeline.cache.lookup(URI, anticipated.cursor) == (False, None)


async def test_cancelling_the_request_that_took_over_stops_the_generation(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    typed(pipeline, 2, (0, 4), "1")
    request = asyncio.ensure_future(pipeline.complete(URI, (0, 5), UTF16, ANTICIPATING, 2))
    await until(lambda: pipeline.metrics.totals.anticipated == 1)
    request.cancel()  # $/cancelRequest
    with pytest.raises(asyncio.CancelledError):
        await request
    assert engine.calls[0].cancel.is_set()


@pytest.mark.parametrize("why", ["off", "shared server", "loading", "far edit", "no settings"])
async def test_no_anticipation_where_it_does_not_belong(pipeline, engine, why):
    pipeline.open(URI, "python", 1, "x = \n" * 20)
    await answered(pipeline, (0, 4), None)
    settings, line = ANTICIPATING, 0
    if why == "off":
        settings = Settings(prefetch=False, anticipate=False)
    elif why == "shared server":
        engine.status = EngineStatus("ready", "fake", backend="remote")
    elif why == "loading":
        engine.status = EngineStatus("loading", "fake")
    elif why == "far edit":  # a cursor jump: warm start's work
        settings, line = Settings(prefetch=False, anticipate=True, warm_start=False), 10
    if why == "no settings":
        type_text(pipeline, 2, (line, 4), "1")
    else:
        typed(pipeline, 2, (line, 4), "1", settings)
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert len(engine.calls) == 1 and pipeline.metrics.totals.anticipated == 0


async def test_accepting_while_the_prefetch_runs_takes_it_over(pipeline, engine):
    await shown(pipeline, engine, "total = \nprint(total)\n", (0, 8), "price * count")
    prefetch = engine.calls[1]
    typed(pipeline, 2, (0, 8), "price * count", SETTINGS)  # Tab, before the prefetch is done
    request = asyncio.ensure_future(pipeline.complete(URI, (0, 21), UTF16, SETTINGS))
    await until(lambda: pipeline.metrics.totals.anticipated == 1)
    assert not prefetch.cancel.is_set() and len(engine.calls) == 2
    prefetch.answer("  # the bill")
    assert (await asyncio.wait_for(request, 10)).suggestion.text == "  # the bill"
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert pipeline.metrics.totals.prefetched == 1


async def test_a_request_at_the_warm_starts_cursor_lets_it_finish_first(pipeline, engine):
    text = "x = 1\ny = "
    pipeline.open(URI, "python", 1, text, BACKGROUND)
    await until(lambda: engine.warms)
    request = await started(pipeline, (1, 4))
    assert not engine.warms[0].cancel.is_set(), "the request needs the prompt it feeds"
    assert engine.calls[-1].cursor == engine.warms[0].cursor
    engine.warms[0].future.set_result(True)
    engine.calls[-1].answer("2")
    assert (await request).suggestion.text == "2"
    await asyncio.wait_for(pipeline.background.idle(), 10)
    assert pipeline.metrics.totals.warm_starts == 1


async def test_cancelling_the_request_at_the_warm_starts_cursor_stops_the_warm_start(
    pipeline, engine
):
    pipeline.open(URI, "python", 1, "x = 1\ny = ", BACKGROUND)
    await until(lambda: engine.warms)
    request = await started(pipeline, (1, 4))
    request.cancel()  # $/cancelRequest
    with pytest.raises(asyncio.CancelledError):
        await request
    assert engine.warms[0].cancel.is_set() and engine.calls[-1].cancel.is_set()
    engine.warms[0].future.set_result(False)
    await asyncio.wait_for(pipeline.background.idle(), 10)
