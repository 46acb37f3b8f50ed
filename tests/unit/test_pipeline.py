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

    def complete(self, key, cursor, settings, cancel) -> Future:
        self.calls.append(Call(key, cursor, settings, cancel))
        return self.calls[-1].future

    def forget(self, key: str) -> None:
        self.forgotten.append(key)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def pipeline(engine) -> CompletionPipeline:
    return CompletionPipeline(engine, Settings())


async def started(pipeline, position, settings=None, encoding=UTF16) -> asyncio.Task:
    """A completion request, run until it waits on the engine."""
    calls = len(pipeline.engine.calls)
    task = asyncio.ensure_future(pipeline.complete(URI, position, encoding, settings or Settings()))
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
    other = asyncio.ensure_future(pipeline.complete("file:///other.py", (0, 4), UTF16, Settings()))
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
    assert await pipeline.complete(URI, (0, 4), UTF16, Settings()) is None
    assert len(engine.calls) == 1
    assert pipeline.metrics.totals.cache_hits == 1


async def test_typing_through_a_suggestion_needs_no_engine(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    await answered(pipeline, (0, 4), "compute()")
    type_text(pipeline, 2, (0, 4), "co")
    completion = await pipeline.complete(URI, (0, 6), UTF16, Settings())
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
    assert await pipeline.complete("file:///never.py", (0, 0), UTF16, Settings()) is None
    assert engine.calls == []


async def test_a_change_to_a_document_not_open_is_refused(pipeline):
    assert not pipeline.change(URI, 2, [Change("x")], UTF16)


async def test_a_request_read_before_an_edit_it_had_not_seen_runs_no_model(pipeline, engine):
    pipeline.open(URI, "python", 1, "x = \n")
    type_text(pipeline, 2, (0, 4), "1")  # read after the request, handled before it started
    request = pipeline.complete(URI, (0, 4), UTF16, Settings(), version=1)
    assert await asyncio.wait_for(request, 30) is None  # the fake engine would never answer
    assert engine.calls == []
