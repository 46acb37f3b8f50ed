"""The request pipeline, free of pygls: open documents, the cache and type-through, each
document's job (its one cancellation owner), generation, the stale-answer check, the range an
item replaces, and the metrics. The LSP handlers only translate to and from lsprotocol."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from .cache import CompletionCache
from .config import Settings
from .documents import Cursor, Document, DocumentStore, cursor_at
from .engine_state import CancelSignal, CompletionOutcome, EngineStatus
from .neighbors import Neighbors
from .postprocess import Suggestion
from .status import LastRequest, Metrics

log = logging.getLogger(__name__)

# How long a request that arrives while the model loads waits for it.
LOAD_WAIT_SECONDS = 300.0

Position = tuple[int, int]
"""An LSP (line, character) in the negotiated position encoding."""


class CompletionEngine(Protocol):
    """What the pipeline needs of a model: in-process or remote."""

    @property
    def status(self) -> EngineStatus: ...

    def complete(
        self, key: str, cursor: Cursor, settings: Settings, cancel: CancelSignal
    ) -> Future[CompletionOutcome]:
        """Generate for document `key`; stop early (stats.cancelled) once `cancel` is set."""
        ...

    def forget(self, key: str) -> None:
        """Drop what is kept for document `key` (its KV cache)."""
        ...


@dataclass
class Job:
    """One completion request's claim on its document. Ended by the next request for the
    document, an edit, closing it, a model load or shutdown: whoever ends it sets `cancel`."""

    uri: str
    version: int
    number: int
    cancel: CancelSignal = field(default_factory=CancelSignal)

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


class Jobs:
    """The running job of each document; the only place a job is made or cancelled."""

    def __init__(self) -> None:
        self._running: dict[str, Job] = {}
        self._numbers = itertools.count(1)

    def start(self, uri: str, version: int) -> Job:
        self.cancel(uri)
        job = self._running[uri] = Job(uri, version, next(self._numbers))
        return job

    def cancel(self, uri: str) -> None:
        if (job := self._running.get(uri)) is not None:
            self.cancel_job(job)

    def cancel_job(self, job: Job) -> None:
        job.cancel.set()
        self.end(job)

    def cancel_all(self) -> None:
        for uri in list(self._running):
            self.cancel(uri)

    def end(self, job: Job) -> None:
        if self._running.get(job.uri) is job:
            del self._running[job.uri]

    def __len__(self) -> int:
        return len(self._running)


@dataclass(frozen=True)
class Change:
    """A didChange content change: `range` None replaces the whole text."""

    text: str
    range: tuple[Position, Position] | None = None


@dataclass(frozen=True)
class Completion:
    suggestion: Suggestion
    start: Position
    end: Position
    """The range the suggestion replaces: the cursor to the end of the closers it retypes."""


class CompletionPipeline:
    def __init__(self, engine: CompletionEngine, settings: Settings) -> None:
        self.engine = engine
        self.documents = DocumentStore()
        self.neighbors = Neighbors()
        self.jobs = Jobs()
        self.metrics = Metrics()
        self._cache_settings = settings.cache
        self.cache = self._new_cache()
        self._model_loaded: asyncio.Future[EngineStatus] | None = None

    # Documents -------------------------------------------------------------------------------

    def open(self, uri: str, language_id: str, version: int, text: str) -> None:
        self.jobs.cancel(uri)
        self.documents.open(uri, language_id, version, text)

    def change(self, uri: str, version: int, changes: Sequence[Change], encoding: str) -> bool:
        """Apply edits in order (positions out of range are clamped); False: not open."""
        document = self.documents.get(uri)
        if document is None:
            return False
        self.jobs.cancel(uri)
        for change in changes:
            if change.range is None:
                document.replace(0, len(document), change.text)
            else:
                (start_line, start_char), (end_line, end_char) = change.range
                start = document.offset_at(start_line, start_char, encoding)
                end = document.offset_at(end_line, end_char, encoding)
                document.replace(start, end, change.text)
                self.neighbors.edited(uri, start_line)
        document.version = version
        return True

    def close(self, uri: str) -> None:
        self.jobs.cancel(uri)
        self.documents.close(uri)
        self.cache.forget_document(uri)
        self.neighbors.forget(uri)
        self.engine.forget(uri)

    # Settings and model ----------------------------------------------------------------------

    def _new_cache(self) -> CompletionCache:
        return CompletionCache(self._cache_settings.size, self._cache_settings.ttl_seconds)

    def settings_changed(self, settings: Settings) -> None:
        """Answers given under other settings are no longer valid."""
        self._cache_settings = settings.cache
        self.cache = self._new_cache()

    def model_loading(self, loaded: asyncio.Future[EngineStatus]) -> None:
        """A new model is on its way: running jobs end, earlier answers are dropped, requests
        wait for `loaded`."""
        self.jobs.cancel_all()
        self.cache = self._new_cache()
        self._model_loaded = loaded

    def model_replaced(self) -> None:
        """The configured model took over from the fallback: the fallback's answers go."""
        self.cache = self._new_cache()

    # Completion ------------------------------------------------------------------------------

    async def complete(
        self,
        uri: str,
        position: Position,
        encoding: str,
        settings: Settings,
        version: int | None = None,
        folders: tuple[str, ...] = (),
    ) -> Completion | None:
        """The suggestion at `position`, or None: nothing to suggest, the request was
        cancelled, or the document changed while the model ran (a stale answer). `version`:
        the document's version when the request arrived; if it has changed since, the
        position is of a text that is gone. `folders`: the workspace folders' URIs (other
        files' snippets come only from the folder of `uri`)."""
        started = time.perf_counter()
        self.metrics.totals.requests += 1
        document = self.documents.get(uri)
        if document is None:
            log.warning("completion requested for a document that is not open: %s", uri)
            return None
        job = self.jobs.start(uri, document.version)
        try:
            if version is not None and version != document.version:
                log.debug("request for %s v%d arrived before an edit: dropped", uri, version)
                return None
            if document.language_id in settings.disabled_languages:
                return None
            offset = document.offset_at(*position, encoding)
            cursor = self._with_snippets(
                cursor_at(document, offset), document, position[0], settings, folders
            )
            suggestion = await self._suggestion(job, cursor, settings, started)
            if job.cancelled:  # an edit, a newer request, close or a model load ended it
                log.debug("request %d (%s v%d) was cancelled", job.number, uri, job.version)
                return None
            if suggestion is None:
                return None
            start = document.position_at(offset, encoding)
            end = document.position_at(offset + suggestion.replaced_chars, encoding)
            return Completion(suggestion, start, end)
        finally:
            self.jobs.end(job)

    def _with_snippets(
        self,
        cursor: Cursor,
        document: Document,
        line: int,
        settings: Settings,
        folders: tuple[str, ...],
    ) -> Cursor:
        if settings.context.other_files_tokens == 0 or not cursor.language.line_comment:
            return cursor
        snippets = self.neighbors.snippets(
            document, line, self.documents.all(), folders, settings.disabled_languages
        )
        return dataclasses.replace(cursor, snippets=snippets)

    async def _suggestion(
        self, job: Job, cursor: Cursor, settings: Settings, started: float
    ) -> Suggestion | None:
        hit, suggestion = self.cache.lookup(job.uri, cursor)
        if hit:
            self.metrics.record(LastRequest(cache_hit=True, latency_ms=_ms_since(started)))
            return suggestion
        if not await self._model_ready() or job.cancelled:
            return None
        cache = self.cache
        future = self.engine.complete(job.uri, cursor, settings, job.cancel)
        try:
            outcome = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # $/cancelRequest
            self.jobs.cancel_job(job)
            self.metrics.record(LastRequest(cancelled=True, latency_ms=_ms_since(started)))
            raise
        self.metrics.record(LastRequest.of_generation(outcome.stats, _ms_since(started)))
        if outcome.stats.cancelled:
            return None
        if cache is self.cache:  # not answered under settings or a model since replaced
            cache.store(job.uri, cursor, outcome.suggestion)
        return outcome.suggestion

    async def _model_ready(self) -> bool:
        if self.engine.status.state == "loading" and self._model_loaded is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._model_loaded), LOAD_WAIT_SECONDS)
            except TimeoutError:
                log.warning("model still loading after %.0f s; no suggestion", LOAD_WAIT_SECONDS)
        return self.engine.status.state == "ready"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
