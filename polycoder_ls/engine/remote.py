"""The remote engine: a vLLM server generates, through its OpenAI-compatible API.

Only `model`'s tokenizer is loaded here: the prompt is the token ids the in-process engine
would send to its model (the same budget and clipping, so the server's prefix cache hits while
the user types), and the streamed tokens are judged with the same "finished" rule; a finished
or cancelled request's stream is closed, which makes the server abort it. A server that
cannot be reached puts the engine in "error" and is asked again, with backoff, until it
answers. Nothing here runs on the LSP event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
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
from .healing import pending_text
from .hub import first_line
from .loading import LoadedModel, ModelLoadError, NotDownloaded, load_tokenizer
from .remote_http import Closed, Endpoint, Exchange, RemoteError
from .request import CompletionPlan, plan_completion

log = logging.getLogger(__name__)

API_KEY_VARIABLE = "POLYCODER_API_KEY"
RETRY_DELAYS_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
REMOTE_THREADS = 8

TokenizerLoader = Callable[[Settings], LoadedModel]
TokenizerDownloader = Callable[[str], object]


def _download_tokenizer(source: str) -> object:
    from .hub import download

    return download(source, lambda done, total: None, weights=False)


class _Connection:
    """What one load set up: where to send, what to ask for, and the tokenizer."""

    def __init__(self, settings: Settings, vocabulary: LoadedModel, generation: int) -> None:
        remote = settings.remote
        assert remote.url is not None
        self.endpoint = Endpoint(
            remote.url,
            remote.api_key or os.environ.get(API_KEY_VARIABLE) or None,
            remote.timeout_seconds,
        )
        self.served_model = remote.served_model or settings.model
        self.vocabulary = vocabulary
        self.generation = generation
        self.allowed_json = json.dumps(list(range(vocabulary.vocab_limit)))
        """Every id the tokenizer has: the model's extra (untrained) rows are never emitted."""
        self.stop_token_ids = sorted(vocabulary.special_ids)
        self.ended = threading.Event()
        """Set when a newer load, a switch to the local engine or shutdown supersedes it."""
        self.retrying = False
        self.failures = 0
        """Losses since a completion last succeeded: a server that answers its model list but
        fails every completion is asked less and less often."""


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
        self._connection: _Connection | None = None
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
        connection = _Connection(settings, vocabulary, generation)
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

    def _connect(self, connection: _Connection, announce: bool) -> EngineStatus:
        """Ask the server for its models: "ready", or "error" and retries in the background."""
        try:
            limit = self._served_model_limit(connection)
        except RemoteError as error:
            return self._lost(connection, error, announce)
        vocabulary = connection.vocabulary
        if limit is not None and (vocabulary.max_positions or limit) >= limit:
            connection.vocabulary = dataclasses.replace(vocabulary, max_positions=limit)
        status = dataclasses.replace(
            self._status,
            state="ready",
            error=None,
            max_positions=connection.vocabulary.max_positions,
        )
        if self._publish(connection.generation, status):
            log.info("remote %s serves %s", connection.endpoint.url, connection.served_model)
            if announce:
                self._events.status_changed(status)
        return status

    def _served_model_limit(self, connection: _Connection) -> int | None:
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

    def _lost(self, connection: _Connection, error: RemoteError, announce: bool) -> EngineStatus:
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

    def _retry_in_background(self, connection: _Connection) -> None:
        with self._lock:
            if connection.retrying or connection.ended.is_set():
                return
            connection.retrying = True
        threading.Thread(
            target=self._retry, args=(connection,), name="polycoder-remote-retry", daemon=True
        ).start()

    def _retry(self, connection: _Connection) -> None:
        attempt = min(connection.failures, len(RETRY_DELAYS_SECONDS) - 1)
        connection.failures += 1
        while not connection.ended.wait(RETRY_DELAYS_SECONDS[attempt]):
            attempt = min(attempt + 1, len(RETRY_DELAYS_SECONDS) - 1)
            try:
                self._served_model_limit(connection)
            except RemoteError as error:
                log.debug("remote %s still failing: %s", connection.endpoint.url, error.reason)
                continue
            with self._lock:
                connection.retrying = False
            self._connect(connection, announce=True)
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
        run = _RemoteRun(connection, plan, cancel, self._tokenizer_lock)
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


class _RemoteRun:
    """One completion's requests: constrained single tokens while token healing spells the
    text taken back from the prompt, then one stream for the rest, closed once finished."""

    def __init__(
        self,
        connection: _Connection,
        plan: CompletionPlan,
        cancel: CancelSignal,
        tokenizer_lock: threading.Lock,
    ) -> None:
        self._connection = connection
        self._plan = plan
        self._cancel = cancel
        self._tokenizer_lock = tokenizer_lock
        self._vocabulary = connection.vocabulary
        self._text_of = connection.vocabulary.text_after(plan.prompt.token_ids)
        self.generated: list[int] = []
        self.text = ""
        self.cached_tokens: int | None = None
        self._started = time.perf_counter()
        self._first_token_at: float | None = None
        self._done = False

    def stats(self, cancelled: bool) -> GenerationStats:
        ended = time.perf_counter()
        first = self._first_token_at or ended
        return GenerationStats(
            prompt_tokens=len(self._plan.prompt.token_ids),
            reused_tokens=self.cached_tokens,
            generated_tokens=len(self.generated),
            cancelled=cancelled,
            prefill_ms=(first - self._started) * 1000,
            decode_ms=(ended - first) * 1000,
            first_token_ms=(first - self._started) * 1000 if self._first_token_at else 0.0,
        )

    def generate(self) -> str:
        """The generated text (raises Closed when cancelled, RemoteError when it fails)."""
        while not self._done and (allowed := self._healing_choices()):
            self._take(self._one_token(allowed))
        if not self._done:
            self._stream()
        return self.text

    def _healing_choices(self) -> list[int]:
        pending = pending_text(self._plan.prompt.removed_text, self.text)
        texts, limit = self._vocabulary.token_texts, self._vocabulary.vocab_limit
        if not pending or texts is None:
            return []
        return [token for token in texts.allowed(pending) if token < limit]

    def _take(self, token: int | None) -> None:
        """Add a generated token; `_done` once the suggestion can no longer change."""
        if token is None or token in self._vocabulary.special_ids:
            self._done = True
            return
        if self._first_token_at is None:
            self._first_token_at = time.perf_counter()
        self.generated.append(token)
        with self._tokenizer_lock:
            self.text = self._text_of(self.generated)
        self._done = self._plan.finished(self.text) or (
            len(self.generated) >= self._plan.max_new_tokens
        )

    def _exchange(self) -> Exchange:
        exchange = Exchange(self._connection.endpoint)
        self._cancel.on_set(exchange.close)
        return exchange

    def _fields(self, max_tokens: int, stream: bool) -> dict[str, Any]:
        settings = self._plan.settings
        return {
            "model": self._connection.served_model,
            "prompt": self._plan.prompt.token_ids + self.generated,
            "max_tokens": max_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "stop_token_ids": self._connection.stop_token_ids,
            "return_token_ids": True,
            "stream": stream,
        }

    def _one_token(self, allowed: list[int]) -> int | None:
        fields = self._fields(1, stream=False) | {"allowed_token_ids": allowed}
        answer = self._exchange().post_json("completions", json.dumps(fields).encode())
        self._note_usage(answer)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        tokens = choices[0].get("token_ids") if choices else None
        return int(tokens[0]) if tokens else None

    def _stream(self) -> None:
        settings = self._plan.settings
        stop = list(settings.stop)
        if not self._plan.multiline and not self._healing_choices():
            stop.append("\n")  # a one-line suggestion ends there: the server stops by itself
        fields = self._fields(self._plan.max_new_tokens - len(self.generated), stream=True)
        fields |= {"stop": stop, "stream_options": {"include_usage": True}}
        body = json.dumps(fields)[:-1] + ', "allowed_token_ids": ' + self._connection.allowed_json
        exchange = self._exchange()
        with contextlib.closing(exchange.events("completions", (body + "}").encode())) as events:
            for event in events:
                self._note_usage(event)
                for choice in event.get("choices") or ():
                    for token in choice.get("token_ids") or ():
                        self._take(int(token))
                        if self._done:
                            exchange.close()  # the server aborts the rest
                            return

    def _note_usage(self, answer: Any) -> None:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if isinstance(cached, int):
            self.cached_tokens = cached
