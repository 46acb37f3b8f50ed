"""The request pipeline, free of pygls: open documents, the cache and type-through, each
document's job (its one cancellation owner), generation, the stale-answer check, the range an
item replaces, and the metrics. The LSP handlers only translate to and from lsprotocol."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from .cache import CompletionCache
from .config import Settings
from .documents import UTF8, Cursor, Document, DocumentStore, cursor_at
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

    def warm(
        self, key: str, cursor: Cursor, settings: Settings, cancel: CancelSignal
    ) -> Future[bool]:
        """Compute the prompt's part of the work for `cursor` ahead of a request (kept as far
        as it got when `cancel` is set); True: the whole prompt was fed."""
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

    def start(self, uri: str, version: int, cancel: CancelSignal | None = None) -> Job:
        """The document's new job (its earlier one cancelled); with `cancel`, the signal of a
        generation it takes over."""
        self.cancel(uri)
        job = Job(uri, version, next(self._numbers), cancel or CancelSignal())
        self._running[uri] = job
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
class Anticipation:
    """A suggestion started before any request: for the cursor after an edit, or after a shown
    suggestion once it is accepted (a prefetch)."""

    job: Job
    cursor: Cursor
    outcome: asyncio.Future[CompletionOutcome]
    cache: CompletionCache
    """The cache of the settings and model it runs under."""
    prefetch: bool
    """Started for the cursor after a shown suggestion (counted as prefetched when done)."""


class Background:
    """The one piece of work done before it is asked for: an anticipation, a prefetch or a
    warm start. Every request, edit, open, close or model load stops it first, so it never
    delays what a user waits for by more than one decode step; but a request for the cursor it
    works for takes it over, and an edit that leaves the cursor there lets it go on."""

    def __init__(self) -> None:
        self._job: Job | None = None
        self._cursor: Cursor | None = None
        """The cursor the running job works for."""
        self._anticipation: Anticipation | None = None
        self._numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, uri: str, version: int, cursor: Cursor) -> Job:
        """The job of background work for `cursor` (the one before it stopped)."""
        self.cancel()
        self._job, self._cursor = Job(uri, version, next(self._numbers)), cursor
        return self._job

    def anticipating(self, anticipation: Anticipation) -> None:
        """The running job (`anticipation.job`) is an anticipation."""
        self._anticipation = anticipation

    def works_on(self, uri: str) -> bool:
        """Whether a job runs for document `uri`."""
        return self._job is not None and self._job.uri == uri

    def runs_for(self, uri: str, cursor: Cursor) -> bool:
        """Whether the running job works for `cursor` of document `uri` (the text around it
        included)."""
        return self.works_on(uri) and self._cursor == cursor

    def take_over(self, uri: str, cursor: Cursor) -> tuple[Job, Anticipation | None] | None:
        """The running job and its anticipation (None for a warm start), if it works for
        `cursor`: a request for it takes it over, and it is no longer the background's to
        stop."""
        if not self.runs_for(uri, cursor):
            return None
        assert self._job is not None
        taken = self._job, self._anticipation
        self._job = self._cursor = self._anticipation = None
        return taken

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel.set()
            self._job = None
        self._cursor = self._anticipation = None

    def run(self, work: Coroutine[None, None, None]) -> None:
        """Run `work` on the event loop; its task is kept until it ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until the background work started so far has ended (for tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


JUMP_LINES = 2
"""An edit further than this many lines from the last edit or request moved the cursor."""


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
        self.background = Background()
        self._cursor_lines: dict[str, int] = {}
        """The line of each document's last edit or request: where its cursor is."""
        self.metrics = Metrics()
        self._cache_settings = settings.cache
        self.cache = self._new_cache()
        self._model_loaded: asyncio.Future[EngineStatus] | None = None

    # Documents -------------------------------------------------------------------------------

    def open(
        self,
        uri: str,
        language_id: str,
        version: int,
        text: str,
        settings: Settings | None = None,
        folders: tuple[str, ...] = (),
    ) -> None:
        """With `settings` whose `warmStart` is on: the prompt for a cursor at the end of the
        document is fed to the model in the background (see `change`)."""
        self.background.cancel()
        self.jobs.cancel(uri)
        self.documents.open(uri, language_id, version, text)
        document = self.documents.get(uri)
        if settings is not None and document is not None:
            self._cursor_lines[uri] = document.position_at(len(document), UTF8)[0]
            cursor = self._cursor_after_edit(document, len(document), settings, folders)
            self._warm(document, cursor, settings)

    def change(
        self,
        uri: str,
        version: int,
        changes: Sequence[Change],
        encoding: str,
        settings: Settings | None = None,
        folders: tuple[str, ...] = (),
    ) -> bool:
        """Apply edits in order (positions out of range are clamped); False: not open. With
        `settings` whose `warmStart` is on, an edit more than JUMP_LINES lines from the last
        edit or request (the cursor jumped) warms the prompt for a cursor after it; with
        `anticipate` on, a nearer one starts the suggestion for a cursor after it. Background
        work for the cursor after the edit (accepting a suggestion whose follower is being
        prefetched) goes on; any other stops."""
        document = self.documents.get(uri)
        if document is None:
            return False
        self.jobs.cancel(uri)
        edited: tuple[int, int] | None = None
        """The last edit's line and the offset after its text."""
        for change in changes:
            if change.range is None:
                document.replace(0, len(document), change.text)
                edited = None
            else:
                (start_line, start_char), (end_line, end_char) = change.range
                start = document.offset_at(start_line, start_char, encoding)
                end = document.offset_at(end_line, end_char, encoding)
                document.replace(start, end, change.text)
                self.neighbors.edited(uri, start_line)
                edited = (start_line, start + len(change.text))
        document.version = version
        if edited is None or settings is None:
            self.background.cancel()
            return True
        line, offset = edited
        jumped = abs(line - self._cursor_lines.get(uri, line)) > JUMP_LINES
        self._cursor_lines[uri] = line
        anticipates = not jumped and settings.anticipate and self._works_ahead(document, settings)
        if not (jumped or anticipates or self.background.works_on(uri)):
            self.background.cancel()  # no cursor to build on this keystroke
            return True
        cursor = self._cursor_after_edit(document, offset, settings, folders)
        if self.background.runs_for(uri, cursor):  # e.g. the prefetch of an accepted suggestion
            return True
        self.background.cancel()
        if jumped:
            self._warm(document, cursor, settings)
        elif anticipates:
            self._suggest_ahead(document, cursor, settings, prefetch=False)
        return True

    def close(self, uri: str) -> None:
        self.background.cancel()
        self._cursor_lines.pop(uri, None)
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
        self.background.cancel()
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
            self.background.cancel()
            log.warning("completion requested for a document that is not open: %s", uri)
            return None
        self._cursor_lines[uri] = position[0]
        stale = version is not None and version != document.version
        offset = document.offset_at(*position, encoding)
        cursor = self._with_snippets(
            cursor_at(document, offset), document, position[0], settings, folders
        )
        taken = None if stale else self.background.take_over(uri, cursor)
        self.background.cancel()
        # The request owns what it took over: stopping the request stops it.
        job = self.jobs.start(uri, document.version, None if taken is None else taken[0].cancel)
        anticipated = None if taken is None else taken[1]
        try:
            if stale:
                log.debug("request for %s v%d arrived before an edit: dropped", uri, version)
                return None
            if document.language_id in settings.disabled_languages:
                return None
            suggestion = await self._suggestion(job, cursor, settings, started, anticipated)
            if job.cancelled:  # an edit, a newer request, close or a model load ended it
                log.debug("request %d (%s v%d) was cancelled", job.number, uri, job.version)
                return None
            if suggestion is None:
                return None
            start = document.position_at(offset, encoding)
            end = document.position_at(offset + suggestion.replaced_chars, encoding)
            if settings.prefetch and suggestion.text and self.engine.status.backend == "local":
                self._prefetch(document, offset, suggestion, settings, folders)
            return Completion(suggestion, start, end)
        finally:
            self.jobs.end(job)

    def _prefetch(
        self,
        document: Document,
        offset: int,
        shown: Suggestion,
        settings: Settings,
        folders: tuple[str, ...],
    ) -> None:
        """Start the suggestion that follows `shown` at `offset` once it is accepted."""
        accepted = Document(document.uri, document.language_id, document.version, document.text)
        accepted.replace(offset, offset + shown.replaced_chars, shown.text)
        cursor = self._cursor_after_edit(accepted, offset + len(shown.text), settings, folders)
        self._suggest_ahead(accepted, cursor, settings, prefetch=True)

    def _suggest_ahead(
        self, document: Document, cursor: Cursor, settings: Settings, prefetch: bool
    ) -> None:
        """Start the suggestion for `cursor` in the background: cached when done, taken over
        by a request for that cursor before."""
        if not self._works_ahead(document, settings) or self.cache.lookup(document.uri, cursor)[0]:
            return
        job = self.background.start(document.uri, document.version, cursor)
        outcome = asyncio.wrap_future(self.engine.complete(job.uri, cursor, settings, job.cancel))
        anticipation = Anticipation(job, cursor, outcome, self.cache, prefetch)
        self.background.anticipating(anticipation)
        self.background.run(self._keep(anticipation))

    def _works_ahead(self, document: Document, settings: Settings) -> bool:
        """Whether suggestions for `document` may be computed before they are asked for: an
        in-process model, ready, and the document's language not disabled."""
        return (
            self.engine.status.backend == "local"
            and self.engine.status.state == "ready"
            and document.language_id not in settings.disabled_languages
        )

    async def _keep(self, anticipation: Anticipation) -> None:
        """Cache an anticipation's suggestion, unless it was stopped."""
        outcome = await asyncio.shield(anticipation.outcome)
        if outcome.stats.cancelled or anticipation.job.cancelled:
            return
        anticipation.cache.store(anticipation.job.uri, anticipation.cursor, outcome.suggestion)
        self.metrics.totals.prefetched += anticipation.prefetch

    def _warm(self, document: Document, cursor: Cursor, settings: Settings) -> None:
        """Feed the prompt for `cursor` to the model in the background."""
        if settings.warm_start and document.language_id not in settings.disabled_languages:
            job = self.background.start(document.uri, document.version, cursor)
            self.background.run(self._feed_prompt(job, cursor, settings))

    async def _feed_prompt(self, job: Job, cursor: Cursor, settings: Settings) -> None:
        if not await self._worth_starting(job, cursor):
            return
        if await asyncio.wrap_future(self.engine.warm(job.uri, cursor, settings, job.cancel)):
            self.metrics.totals.warm_starts += 1

    def _cursor_after_edit(
        self, document: Document, offset: int, settings: Settings, folders: tuple[str, ...]
    ) -> Cursor:
        """The cursor a request at `offset` will have (background work guesses it)."""
        line = document.position_at(offset, UTF8)[0]
        return self._with_snippets(cursor_at(document, offset), document, line, settings, folders)

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
        self,
        job: Job,
        cursor: Cursor,
        settings: Settings,
        started: float,
        anticipated: Anticipation | None,
    ) -> Suggestion | None:
        hit, suggestion = self.cache.lookup(job.uri, cursor)
        if hit:
            self.metrics.record(LastRequest(cache_hit=True, latency_ms=_ms_since(started)))
            return suggestion
        if anticipated is not None:
            self.metrics.totals.anticipated += 1
            cache, running = anticipated.cache, asyncio.shield(anticipated.outcome)
        elif not await self._model_ready() or job.cancelled:
            return None
        else:
            cache = self.cache
            running = asyncio.wrap_future(
                self.engine.complete(job.uri, cursor, settings, job.cancel)
            )
        try:
            outcome = await running
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

    async def _worth_starting(self, job: Job, cursor: Cursor) -> bool:
        """Background work for `cursor`: not if its answer is cached, nor once it is stopped."""
        if self.cache.lookup(job.uri, cursor)[0]:
            return False
        return await self._model_ready() and not job.cancelled

    async def _model_ready(self) -> bool:
        if self.engine.status.state == "loading" and self._model_loaded is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._model_loaded), LOAD_WAIT_SECONDS)
            except TimeoutError:
                log.warning("model still loading after %.0f s; no suggestion", LOAD_WAIT_SECONDS)
        return self.engine.status.state == "ready"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
