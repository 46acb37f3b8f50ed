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

from ..config import Settings
from ..documents import Cursor
from ..engine_state import CompletionOutcome, EngineStatus, GenerationStats
from .events import LoadEvents
from .generate import DecodeParams, Generator
from .hub import ByteProgress, download, first_line
from .loading import (
    LoadedModel,
    ModelLoadError,
    NotDownloaded,
    load_model,
    resolve_model,
    use_threads,
)
from .request import model_prompt, plan_completion
from .worker import InferenceWorker

__all__ = ["Engine", "LoadEvents", "model_prompt"]

log = logging.getLogger(__name__)


Downloader = Callable[[str, ByteProgress], str]


class Engine:
    """Owns the inference worker and, through it, the model."""

    def __init__(
        self,
        loader: Callable[[Settings], LoadedModel] = load_model,
        naive: bool = False,
        downloader: Downloader = download,
    ) -> None:
        """`naive`: the benchmark's baseline, the design of the usual completion servers: no KV
        reuse, and a started generation always runs to its end (a cancelled request that has
        not started yet is still dropped)."""
        self._loader = loader
        self._downloader = downloader
        self._naive = naive
        self._worker = InferenceWorker()
        self._generator: Generator | None = None
        self._status_lock = threading.Lock()
        self._load_generation = 0
        self._status = EngineStatus(state="loading", model="")

    @property
    def status(self) -> EngineStatus:
        return self._status

    def load(self, settings: Settings, events: LoadEvents | None = None) -> Future[EngineStatus]:
        """Replace the model (in the background); in-flight requests are cancelled. The
        future ends once something serves: the model, or the fallback while the model is
        downloaded and loaded on another thread (then `events` hears of it). Requests
        queued before it are the caller's to cancel."""
        with self._status_lock:
            self._load_generation += 1
            generation = self._load_generation
            self._status = EngineStatus(state="loading", model=resolve_model(settings.model))
        return self._worker.submit(lambda: self._load(settings, generation, events or LoadEvents()))

    def _publish(self, generation: int, status: EngineStatus) -> bool:
        """Make `status` the engine's, unless a newer load has started since `generation`."""
        with self._status_lock:
            if generation != self._load_generation:
                return False
            self._status = status
            return True

    def _is_current(self, generation: int) -> bool:
        return generation == self._load_generation

    def _load(self, settings: Settings, generation: int, events: LoadEvents) -> EngineStatus:
        if not self._is_current(generation):
            return self._status  # a newer load is queued behind this one
        try:
            loaded = self._loader(settings)
        except NotDownloaded:
            status = self._fall_back(settings, generation, "looking it up on the hub", final=False)
            thread = threading.Thread(
                target=self._fetch,
                args=(settings, generation, events),
                name="polycoder-download",
                daemon=True,
            )
            thread.start()
            return status
        except Exception as failure:  # any failure: out of memory, a kernel set-up, .to()...
            log.error("%s", failure, exc_info=not isinstance(failure, ModelLoadError))
            return self._fall_back(settings, generation, first_line(str(failure)), final=True)
        return self._install(loaded, settings, generation)

    def _install(
        self,
        loaded: LoadedModel,
        settings: Settings,
        generation: int,
        fallback_from: str | None = None,
        reason: str | None = None,
        final: bool = True,
    ) -> EngineStatus:
        """Serve `loaded` (on the worker thread), unless a newer load has started."""
        if not self._is_current(generation):
            return self._status
        use_threads(settings, loaded.device)
        gc.unfreeze()  # the model being replaced is collected (its modules and hooks hold cycles)
        self._generator = Generator(loaded, reuse_kv=not self._naive)
        gc.collect()
        # What is alive now lives long: a full collection no longer walks the model's hundreds
        # of thousands of objects (~180 ms, in the middle of some suggestion, for a 160M model).
        gc.freeze()
        status = _serving(loaded, fallback_from, reason, final)
        self._publish(generation, status)
        log.info("model ready: %s", status.label)
        return status

    def _fall_back(
        self, settings: Settings, generation: int, reason: str, final: bool
    ) -> EngineStatus:
        """Keep serving the model that works, else load the fallback model. `final`: the
        configured model will not come (else it is on its way)."""
        configured = resolve_model(settings.model)
        if self._generator is not None:
            status = _serving(self._generator.loaded, settings.model, reason, final)
            self._publish(generation, status)
            return status
        fallback = settings.fallback_model
        if fallback is None or resolve_model(fallback) == configured:
            status = EngineStatus(
                "error" if final else "loading", configured, error=reason if final else None
            )
            self._publish(generation, status)
            return status
        try:
            loaded = self._loader(dataclasses.replace(settings, model=fallback))
        except Exception as second:
            log.error("fallback model: %s", second)
            error = f"{reason}; fallback model: {first_line(str(second))}"
            status = EngineStatus("error", configured, error=error)
            self._publish(generation, status)
            return status
        return self._install(loaded, settings, generation, settings.model, reason, final)

    def _fetch(self, settings: Settings, generation: int, events: LoadEvents) -> None:
        """Download and load the configured model on this thread, then serve it."""
        source = resolve_model(settings.model)

        def report(done: int, total: int) -> None:
            if self._is_current(generation):
                self._set_reason(
                    generation, f"downloading, {done / 1e6:.0f} of {total / 1e6:.0f} MB"
                )
                events.download_progress(done, total)

        try:
            self._downloader(source, report)
            self._set_reason(generation, "loading it")
            loaded = self._loader(settings)
        except Exception as failure:
            reason = first_line(str(failure))
            log.warning("%s", reason)
            with self._status_lock:
                current = self._is_current(generation)
                if current:
                    self._status = dataclasses.replace(
                        self._status,
                        state="error" if self._status.state == "loading" else self._status.state,
                        error=reason,
                        fallback_reason=reason if self._status.fallback_from else None,
                    )
            if current:
                events.background_load_ended(self._status)
            return
        future = self._worker.submit(lambda: self._install(loaded, settings, generation))
        future.add_done_callback(lambda done: self._announce(generation, done, events))

    def _announce(self, generation: int, done: Future[EngineStatus], events: LoadEvents) -> None:
        if self._is_current(generation) and done.exception() is None:
            events.background_load_ended(done.result())

    def _set_reason(self, generation: int, reason: str) -> None:
        with self._status_lock:
            if self._is_current(generation):
                self._status = dataclasses.replace(self._status, fallback_reason=reason)

    def complete(
        self,
        key: str,
        cursor: Cursor,
        settings: Settings,
        cancel: threading.Event | None = None,
    ) -> Future[CompletionOutcome]:
        """Queue a completion for document `key`; it stops within one decode step once
        `cancel` is set (the naive baseline: only before it starts)."""
        cancel = cancel or threading.Event()
        return self._worker.submit(lambda: self._complete(key, cursor, settings, cancel))

    def forget(self, key: str) -> None:
        """Drop everything kept for document `key` (its KV cache)."""
        self._worker.submit(lambda: self._forget(key))

    def warm(
        self,
        key: str,
        cursor: Cursor,
        settings: Settings,
        cancel: threading.Event,
    ) -> Future[bool]:
        """Queue the prefill of `cursor`'s prompt into document `key`'s KV cache, stopped
        within one matrix product once `cancel` is set (what was fed is kept). Not for the
        naive baseline."""
        return self._worker.submit(lambda: self._warm(key, cursor, settings, cancel))

    def _warm(self, key: str, cursor: Cursor, settings: Settings, cancel: threading.Event) -> bool:
        generator = self._generator
        if cancel.is_set() or generator is None or self._naive:
            return False
        plan = plan_completion(cursor, generator.loaded, settings)
        if not plan.prompt.token_ids:
            return False
        return generator.prefill(key, plan.prompt.token_ids, plan.max_new_tokens, cancel.is_set)

    def _forget(self, key: str) -> None:
        if self._generator is not None:
            self._generator.forget(key)

    def stop(self, wait: bool = False) -> None:
        """End the worker after the jobs queued (the caller cancels those it no longer wants)."""
        self._worker.stop(wait)

    def _complete(
        self, key: str, cursor: Cursor, settings: Settings, cancel: threading.Event
    ) -> CompletionOutcome:
        generator = self._generator
        if cancel.is_set() or generator is None:
            return CompletionOutcome(None, GenerationStats(cancelled=cancel.is_set()))
        plan = plan_completion(cursor, generator.loaded, settings)
        if not plan.prompt.token_ids:
            return CompletionOutcome(None, GenerationStats())
        params = DecodeParams(
            plan.max_new_tokens, settings.temperature, settings.top_p, settings.draft_tokens
        )
        cancelled = (lambda: False) if self._naive else cancel.is_set
        text, stats = generator.generate(
            key, plan.prompt.token_ids, params, plan.finished, cancelled, plan.prompt.removed_text
        )
        if stats.cancelled:
            return CompletionOutcome(None, stats)
        return CompletionOutcome(plan.suggestion(text), stats)

    def release(self) -> None:
        """Free the model (another engine serves now); a later load brings one back."""
        with self._status_lock:
            self._load_generation += 1
            self._status = EngineStatus(state="loading", model="")
        self._worker.submit(self._drop_model)

    def _drop_model(self) -> None:
        gc.unfreeze()
        self._generator = None
        gc.collect()


def _serving(
    loaded: LoadedModel, fallback_from: str | None, reason: str | None, final: bool
) -> EngineStatus:
    """The status of `loaded` serving, in place of `fallback_from` when that is set."""
    return EngineStatus(
        "ready",
        loaded.source,
        loaded.device,
        loaded.dtype_name,
        error=reason if final else None,
        fallback_from=fallback_from,
        fallback_reason=reason,
        notices=loaded.notices,
        max_positions=loaded.max_positions,
        fim=None if loaded.fim is None else loaded.fim.format,
    )
