"""One remote completion: the connection a load set up, and the requests of one suggestion
(constrained single tokens while token healing spells the text taken back from the prompt, then
one stream judged as it arrives and closed once the suggestion is complete or cancelled)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any

from ..config import RemoteSettings, Settings
from ..engine_state import CancelSignal, GenerationStats
from .healing import pending_text
from .loading import LoadedModel
from .remote_http import Endpoint, Exchange
from .request import CompletionPlan

API_KEY_VARIABLE = "POLYCODER_API_KEY"


def endpoint(remote: RemoteSettings) -> Endpoint:
    """Where to send and how to authenticate: `apiKey`, else $POLYCODER_API_KEY."""
    assert remote.url is not None
    api_key = remote.api_key or os.environ.get(API_KEY_VARIABLE) or None
    return Endpoint(remote.url, api_key, remote.timeout_seconds)


class Connection:
    """What one load set up: where to send, what to ask for, and the tokenizer."""

    def __init__(self, settings: Settings, vocabulary: LoadedModel, generation: int) -> None:
        self.endpoint = endpoint(settings.remote)
        self.served_model = settings.remote.served_model or settings.model
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


class RemoteRun:
    """One completion's requests: constrained single tokens while token healing spells the
    text taken back from the prompt, then one stream for the rest, closed once finished."""

    def __init__(
        self,
        connection: Connection,
        plan: CompletionPlan,
        cancel: CancelSignal,
        tokenizer_lock: threading.Lock,
    ) -> None:
        self._connection = connection
        self._plan = plan
        self._cancel = cancel
        self._tokenizer_lock = tokenizer_lock
        self._vocabulary = connection.vocabulary
        self._text_of = connection.vocabulary.growing_text_after(plan.prompt.token_ids)
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
