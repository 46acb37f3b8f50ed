"""What the engine reports, without torch: model names and aliases, the engine's status and
a generation's statistics (so `polycoder/status` and the clients' code need no torch)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .fim import FimFormat

if TYPE_CHECKING:
    from .postprocess import Suggestion

NANO_DIRECTORY = Path(__file__).resolve().parent / "models" / "nano"
MODEL_ALIASES = {
    "nano": str(NANO_DIRECTORY),
    "polycoder-nano": str(NANO_DIRECTORY),
    "polycoder-160m": "NinedayWang/PolyCoder-160M",
    "polycoder-0.4b": "NinedayWang/PolyCoder-0.4B",
    "polycoder-2.7b": "NinedayWang/PolyCoder-2.7B",
}


def resolve_model(name: str) -> str:
    """An alias's Hugging Face id; a local path with ~ expanded; otherwise `name`."""
    if name.lower() in MODEL_ALIASES:
        return MODEL_ALIASES[name.lower()]
    return os.path.expanduser(name) if name.startswith("~") else name


@dataclass(frozen=True)
class EngineStatus:
    state: str  # "loading" | "ready" | "error"
    model: str
    device: str = ""
    dtype: str = ""
    error: str | None = None
    """Why the configured model is not served (final), in one line."""
    fallback_from: str | None = None
    """The configured model, when `model` is served in its place (the fallback model, or the
    model that was serving before a change that could not be honoured)."""
    fallback_reason: str | None = None
    """Why `model` is served instead: the error, or what is under way (downloading...)."""
    notices: tuple[str, ...] = ()
    """Settings that could not be honoured, and what was done instead (shown once)."""
    max_positions: int | None = None
    """The serving model's limit of positions (its context window)."""
    backend: str = "local"
    """"local" (in-process) or "remote" (a vLLM server generates)."""
    remote_url: str | None = None
    served_model: str | None = None
    fim: FimFormat | None = None
    """The fill-in-the-middle format the prompts use (None: left context only)."""

    @property
    def label(self) -> str:
        """What a status bar shows: "nano (fallback for PolyCoder-160M: <reason>)", or for a
        remote server "polycoder-2.7b @ gpu-box:8000"."""
        if self.backend == "remote" and self.remote_url and self.served_model:
            return f"{short_model_name(self.served_model)} @ {urlsplit(self.remote_url).netloc}"
        name = short_model_name(self.model)
        if self.fallback_from is None:
            return name
        configured = short_model_name(resolve_model(self.fallback_from))
        return f"{name} (fallback for {configured}: {self.fallback_reason})"


def short_model_name(model: str) -> str:
    return next((part for part in reversed(model.replace("\\", "/").split("/")) if part), model)


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int | None = 0
    generated_tokens: int = 0
    cancelled: bool = False
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    first_token_ms: float = 0.0
    """From the start of the generation to its first token (a remote one: the first token
    received); the pipeline's latencyMs is the total."""
    decode_forwards: int = 0
    """Forward passes after the prefill (fewer than the tokens after the first where
    speculation kept drafted tokens)."""


@dataclass(frozen=True)
class CompletionOutcome:
    suggestion: Suggestion | None
    stats: GenerationStats


class CancelSignal(threading.Event):
    """A request's cancel flag, which can also call back at once when it is set (a remote
    engine closes its HTTP stream from the callback)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the flag is set (now, if it already is)."""
        with self._callbacks_lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def set(self) -> None:
        with self._callbacks_lock:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
