"""What `polycoder/status` reports: the model's state, the last request and running totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .config import Settings, camel_case
from .engine_state import EngineStatus, GenerationStats
from .prompt import effective_window


@dataclass(frozen=True)
class LastRequest:
    prompt_tokens: int = 0
    reused_tokens: int | None = 0
    """Prompt tokens not computed again: the KV cache kept here, or the server's prefix
    cache (None: a remote server did not say, its stream was closed before its usage)."""
    generated_tokens: int = 0
    latency_ms: float = 0.0
    cache_hit: bool = False
    cancelled: bool = False
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    first_token_ms: float = 0.0
    """Time to the first generated token; latencyMs is the total."""
    decode_forwards: int = 0
    """Forward passes after the prefill (speculation keeps several tokens of one)."""

    @classmethod
    def of_generation(cls, stats: GenerationStats, latency_ms: float) -> LastRequest:
        rounded: dict[str, Any] = {
            name: round(value, 2) if isinstance(value, float) else value
            for name, value in asdict(stats).items()
        }
        return cls(**rounded, latency_ms=latency_ms)


@dataclass
class Totals:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    cache_hits: int = 0
    shown: int = 0
    accepted: int = 0
    partially_accepted: int = 0
    accepted_chars: int = 0
    prefetched: int = 0
    """Suggestions computed while the one before them was shown, ready when it is accepted."""
    warm_starts: int = 0
    """Prompts fed in the background after an open or a cursor jump, before any request."""
    anticipated: int = 0
    """Requests answered by a generation started before they arrived: by their edit, or by a
    prefetch still running when its suggestion was accepted."""


@dataclass
class Metrics:
    last: LastRequest = field(default_factory=LastRequest)
    totals: Totals = field(default_factory=Totals)

    def record_acceptance(self, accepted_length: int, length: int) -> None:
        """A client accepted `accepted_length` of a `length`-character suggestion."""
        accepted_length = max(0, min(accepted_length, length))
        if accepted_length == 0:
            return
        if accepted_length == length:
            self.totals.accepted += 1
        else:
            self.totals.partially_accepted += 1
        self.totals.accepted_chars += accepted_length

    def record(self, last: LastRequest) -> None:
        self.last = last
        self.totals.cancelled += last.cancelled
        self.totals.completed += not last.cancelled
        self.totals.cache_hits += last.cache_hit


def _camel(values: dict[str, Any]) -> dict[str, Any]:
    return {camel_case(key): value for key, value in values.items()}


def status_payload(engine: EngineStatus, settings: Settings, metrics: Metrics) -> dict[str, Any]:
    """The window values are those in use (the settings' within the model's limits)."""
    window = effective_window(
        settings.context_tokens, settings.max_new_tokens, engine.max_positions
    )
    payload: dict[str, Any] = {
        "state": engine.state,
        "backend": engine.backend,
        "model": engine.model,
        "device": engine.device,
        "dtype": engine.dtype,
        "contextTokens": window.context_tokens,
        "maxNewTokens": window.max_new_tokens,
        "fim": None if engine.fim is None else engine.fim.name,
        "fimOrder": None if engine.fim is None else engine.fim.order,
        "last": _camel(asdict(metrics.last)),
        "totals": _camel(asdict(metrics.totals)),
    }
    if engine.backend == "remote":
        payload["remote"] = {"url": engine.remote_url, "servedModel": engine.served_model}
    if engine.error is not None:
        payload["error"] = engine.error
    if engine.fallback_from is not None:
        payload["fallbackFrom"] = engine.fallback_from
        payload["fallbackReason"] = engine.fallback_reason
    payload["label"] = engine.label
    return payload
