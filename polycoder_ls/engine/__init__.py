"""The model side behind one interface: load, complete, forget, stop.

The LSP event loop calls these methods; the work itself runs on the inference worker.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ..config import Settings
from ..documents import Cursor
from ..postprocess import Suggestion, postprocess
from ..prompt import build_prompt, token_budget
from .generate import DecodeParams, GenerationStats, Generator
from .loading import LoadedModel, ModelLoadError, load_model, resolve_model
from .worker import InferenceWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStatus:
    state: str  # "loading" | "ready" | "error"
    model: str
    device: str = ""
    dtype: str = ""
    error: str | None = None
    fallback_from: str | None = None
    """The configured model, when it could not be loaded and `model` is the fallback."""


@dataclass(frozen=True)
class CompletionOutcome:
    suggestion: Suggestion | None
    stats: GenerationStats


class Engine:
    """Owns the inference worker and, through it, the model."""

    def __init__(
        self, loader: Callable[[Settings], LoadedModel] = load_model, naive: bool = False
    ) -> None:
        """`naive`: the benchmark's baseline, the design of the usual completion servers: no KV
        reuse, and a started generation always runs to its end (a cancelled request that has
        not started yet is still dropped)."""
        self._loader = loader
        self._naive = naive
        self._worker = InferenceWorker()
        self._generator: Generator | None = None
        self._cancel_events: dict[str, threading.Event] = {}
        self.status = EngineStatus(state="loading", model="")

    def load(self, settings: Settings) -> Future[EngineStatus]:
        """Replace the model (in the background); in-flight requests are cancelled."""
        self.cancel_all()
        self.status = EngineStatus(state="loading", model=resolve_model(settings.model))
        return self._worker.submit(lambda: self._load(settings))

    def _load(self, settings: Settings) -> EngineStatus:
        self._generator = None
        gc.collect()
        try:
            loaded, fallback_reason = self._load_or_fall_back(settings)
        except ModelLoadError as error:
            self.status = EngineStatus("error", resolve_model(settings.model), error=str(error))
            return self.status
        self._generator = Generator(loaded, reuse_kv=not self._naive)
        fallback_from = None if fallback_reason is None else settings.model
        self.status = EngineStatus(
            "ready", loaded.source, loaded.device, loaded.dtype_name, fallback_reason, fallback_from
        )
        log.info("model ready: %s", self.status)
        return self.status

    def _load_or_fall_back(self, settings: Settings) -> tuple[LoadedModel, str | None]:
        """The configured model; else the fallback model and why the configured one failed."""
        try:
            return self._loader(settings), None
        except ModelLoadError as failure:
            log.error("%s", failure)
            fallback = settings.fallback_model
            if fallback is None or resolve_model(fallback) == resolve_model(settings.model):
                raise
            try:
                return self._loader(dataclasses.replace(settings, model=fallback)), str(failure)
            except ModelLoadError as second:
                raise ModelLoadError(f"{failure}; fallback model: {second}") from second

    def complete(
        self, key: str, cursor: Cursor, settings: Settings
    ) -> tuple[Future[CompletionOutcome], threading.Event]:
        """Queue a completion for document `key`; a running one for `key` is cancelled.
        Set the returned event to cancel this one."""
        self.cancel(key)
        cancel = self._cancel_events[key] = threading.Event()
        future = self._worker.submit(lambda: self._complete(key, cursor, settings, cancel))
        return future, cancel

    def cancel(self, key: str) -> None:
        if (event := self._cancel_events.pop(key, None)) is not None:
            event.set()

    def cancel_all(self) -> None:
        for key in list(self._cancel_events):
            self.cancel(key)

    def forget(self, key: str) -> None:
        """Drop everything kept for document `key` (its KV cache)."""
        self.cancel(key)
        self._worker.submit(lambda: self._forget(key))

    def _forget(self, key: str) -> None:
        if self._generator is not None:
            self._generator.forget(key)

    def stop(self, wait: bool = False) -> None:
        self.cancel_all()
        self._worker.stop(wait)

    def _complete(
        self, key: str, cursor: Cursor, settings: Settings, cancel: threading.Event
    ) -> CompletionOutcome:
        generator = self._generator
        if cancel.is_set() or generator is None:
            return CompletionOutcome(None, GenerationStats(cancelled=cancel.is_set()))
        loaded = generator.loaded
        budget = token_budget(
            settings.context_tokens, settings.max_new_tokens, loaded.max_positions
        )
        prompt = build_prompt(cursor.prefix, loaded.tokenize, budget).token_ids
        if not prompt and loaded.eos_id is not None:
            prompt = [loaded.eos_id]
        if not prompt:
            return CompletionOutcome(None, GenerationStats())

        def finished(text: str) -> bool:
            return postprocess(text, cursor, settings.multiline, settings.stop, final=False)[1]

        params = DecodeParams(settings.max_new_tokens, settings.temperature, settings.top_p)
        cancelled = (lambda: False) if self._naive else cancel.is_set
        text, stats = generator.generate(key, prompt, params, finished, cancelled)
        if stats.cancelled:
            return CompletionOutcome(None, stats)
        return CompletionOutcome(
            postprocess(text, cursor, settings.multiline, settings.stop)[0], stats
        )
