"""The remote engine: a vLLM server generates, through its OpenAI-compatible API.

Only `model`'s tokenizer is loaded here: the prompt is the token ids the in-process engine
would send to its model (the same budget and clipping, so the server's prefix cache hits while
the user types), and the streamed tokens are judged with the same "finished" rule; a finished
or cancelled request's stream is closed, which makes the server abort it. A server that
cannot be reached puts the engine in "error" and is asked again, with backoff, until it
answers. Nothing here runs on the LSP event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..config import Settings
from ..documents import Cursor
from ..engine_state import (
    CancelSignal,
    CompletionOutcome,
    EngineStatus,
    GenerationStats,
    resolve_model,
)
from .events import LoadEvents
from .hub import first_line
from .loading import LoadedModel, ModelLoadError, NotDownloaded, load_tokenizer
from .remote_http import Closed, Exchange, RemoteError
from .remote_run import API_KEY_VARIABLE, Connection, RemoteRun
from .request import plan_completion

log = logging.getLogger(__name__)

RETRY_DELAYS_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
REMOTE_THREADS = 8

TokenizerLoader = Callable[[Settings], LoadedModel]
TokenizerDownloader = Callable[[str], object]


def _download_tokenizer(source: str) -> object:
    from .hub import download

    return download(source, lambda done, total: None, weights=False)


class RemoteEngine:
    """The CompletionEngine of a remote vLLM server; load/release/stop like Engine."""

    def __init__(
        self,
        tokenizer_loader: TokenizerLoader = load_tokenizer,
        downloader: TokenizerDownloader = _download_tokenizer,
    ) -> None:
        self._tokenizer_loader = tokenizer_loader
        self._downloader = downloader
        self._executor = ThreadPoolExecutor(REMOTE_THREADS, thread_name_prefix="polycoder-remote")
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        """Hugging Face tokenizers must not be used by two threads at once."""
        self._generation = 0
        self._connection: Connection | None = None
        self._events = LoadEvents()
        self._status = EngineStatus(state="loading", model="", backend="remote")

    @property
    def status(self) -> EngineStatus:
        return self._status

    # Loading and the connection's state ---------------------------------------------------

    def load(self, settings: Settings, events: LoadEvents | None = None) -> Future[EngineStatus]:
        """Load the tokenizer and ask the server which models it serves (in the background)."""
        with self._lock:
            self._end_connection()
            self._generation += 1
            generation = self._generation
            self._events = events or LoadEvents()
            self._status = self._remote_status(settings, "loading")
        return self._executor.submit(self._load, settings, generation)

    def release(self) -> None:
        """Another engine serves now: stop asking the server."""
        with self._lock:
            self._end_connection()
            self._generation += 1
            self._status = EngineStatus(state="loading", model="", backend="remote")

    def stop(self, wait: bool = False) -> None:
        self.release()
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def forget(self, key: str) -> None:
        """Nothing is kept here per document (the server keeps its prefix cache)."""

    def warm(
        self, key: str, cursor: Cursor, settings: Settings, cancel: threading.Event
    ) -> Future[bool]:
        """Nothing is fed ahead: a shared server's time is not spent on guesses."""
        done: Future[bool] = Future()
        done.set_result(False)
        return done

    def _end_connection(self) -> None:
        if self._connection is not None:
            self._connection.ended.set()
            self._connection = None

    def _remote_status(self, settings: Settings, state: str, **fields: Any) -> EngineStatus:
        return EngineStatus(
            state,
            resolve_model(settings.model),
            device="remote",
            dtype="server",
            backend="remote",
            remote_url=settings.remote.url,
            served_model=settings.remote.served_model or settings.model,
            **fields,
        )

    def _publish(self, generation: int, status: EngineStatus) -> bool:
        with self._lock:
            if generation != self._generation:
                return False
            self._status = status
            return True

    def _load(self, settings: Settings, generation: int) -> EngineStatus:
        try:
            vocabulary = self._load_vocabulary(settings)
        except Exception as failure:  # a tokenizer that cannot load: only a new setting helps
            reason = first_line(str(failure))
            log.error("%s", reason, exc_info=not isinstance(failure, ModelLoadError))
            status = self._remote_status(settings, "error", error=reason)
            self._publish(generation, status)
            return status
        connection = Connection(settings, vocabulary, generation)
        with self._lock:
            if generation != self._generation:
                return self._status
            self._connection = connection
        return self._connect(connection, announce=False)

    def _load_vocabulary(self, settings: Settings) -> LoadedModel:
        try:
            return self._tokenizer_loader(settings)
        except NotDownloaded:
            self._downloader(resolve_model(settings.model))  # tokenizer and config files only
            return self._tokenizer_loader(settings)

    def _connect(self, connection: Connection, announce: bool) -> EngineStatus:
        """Ask the server for its models: "ready", or "error" and retries in the background."""
        try:
            limit = self._served_model_limit(connection)
        except RemoteError as error:
            return self._lost(connection, error, announce)
        return self._ready(connection, limit, announce)

    def _ready(self, connection: Connection, limit: int | None, announce: bool) -> EngineStatus:
        """The server serves the model, with `limit` positions (None: it did not say)."""
        vocabulary = connection.vocabulary
        if limit is not None and (vocabulary.max_positions or limit) >= limit:
            connection.vocabulary = dataclasses.replace(vocabulary, max_positions=limit)
        status = dataclasses.replace(
            self._status,
            state="ready",
            error=None,
            max_positions=connection.vocabulary.max_positions,
            fim=None if vocabulary.fim is None else vocabulary.fim.format,
        )
        if self._publish(connection.generation, status):
            log.info("remote %s serves %s", connection.endpoint.url, connection.served_model)
            if announce:
                self._events.status_changed(status)
        return status

    def _served_model_limit(self, connection: Connection) -> int | None:
        """The server's context limit for the served model; RemoteError if it lacks it."""
        answer = Exchange(connection.endpoint).get_json("models")
        entries = answer.get("data") if isinstance(answer, dict) else None
        models = {entry.get("id"): entry for entry in entries or [] if isinstance(entry, dict)}
        if connection.served_model not in models:
            served = ", ".join(f"'{name}'" for name in models) or "no model"
            raise RemoteError(
                f"it serves {served}, not '{connection.served_model}' (remote.servedModel)", 404
            )
        limit = models[connection.served_model].get("max_model_len")
        return limit if isinstance(limit, int) and limit > 0 else None

    def _lost(self, connection: Connection, error: RemoteError, announce: bool) -> EngineStatus:
        """Go to "error" (said once, when `announce`), and ask again with backoff."""
        reason = error.reason
        if error.refused_key:
            reason += f": the server refused the API key; set remote.apiKey (or {API_KEY_VARIABLE})"
        status = dataclasses.replace(
            self._status, state="error", error=f"{connection.endpoint.url}: {reason}"
        )
        was_ready = self._status.state == "ready"
        if self._publish(connection.generation, status):
            log.warning("remote %s", status.error)
            if announce and was_ready:
                self._events.status_changed(status)
            self._retry_in_background(connection)
        return status

    def _retry_in_background(self, connection: Connection) -> None:
        with self._lock:
            if connection.retrying or connection.ended.is_set():
                return
            connection.retrying = True
        threading.Thread(
            target=self._retry, args=(connection,), name="polycoder-remote-retry", daemon=True
        ).start()

    def _retry(self, connection: Connection) -> None:
        attempt = min(connection.failures, len(RETRY_DELAYS_SECONDS) - 1)
        connection.failures += 1
        while not connection.ended.wait(RETRY_DELAYS_SECONDS[attempt]):
            attempt = min(attempt + 1, len(RETRY_DELAYS_SECONDS) - 1)
            try:
                limit = self._served_model_limit(connection)
            except RemoteError as error:
                log.debug("remote %s still failing: %s", connection.endpoint.url, error.reason)
                continue
            with self._lock:
                connection.retrying = False
            self._ready(connection, limit, announce=True)
            return

    # Completion ----------------------------------------------------------------------------

    def complete(
        self, key: str, cursor: Cursor, settings: Settings, cancel: CancelSignal
    ) -> Future[CompletionOutcome]:
        return self._executor.submit(self._complete, cursor, settings, cancel)

    def _complete(
        self, cursor: Cursor, settings: Settings, cancel: CancelSignal
    ) -> CompletionOutcome:
        connection = self._connection
        if cancel.is_set() or connection is None or self._status.state != "ready":
            return CompletionOutcome(None, GenerationStats(cancelled=cancel.is_set()))
        with self._tokenizer_lock:
            plan = plan_completion(cursor, connection.vocabulary, settings)
        run = RemoteRun(connection, plan, cancel, self._tokenizer_lock)
        try:
            text = run.generate()
        except Closed:
            return CompletionOutcome(None, run.stats(cancelled=True))
        except RemoteError as error:
            if cancel.is_set():
                return CompletionOutcome(None, run.stats(cancelled=True))
            if error.server_fault or error.refused_key or error.status == 404:
                self._lost(connection, error, announce=True)
            else:
                log.warning("remote %s refused a request: %s", connection.endpoint.url, error)
            return CompletionOutcome(None, run.stats(cancelled=False))
        connection.failures = 0
        return CompletionOutcome(plan.suggestion(text), run.stats(cancelled=False))
