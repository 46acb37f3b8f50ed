"""Token-by-token decoding that reuses each document's KV cache across requests.

Runs only on the inference worker thread. Each document keeps the token ids and KV cache
of its last prompt; a new prompt keeps the longest common token-id prefix and feeds only
the rest. The cancel check runs between prefill chunks and between decode steps.

Decoding may speculate (prompt lookup): where the last tokens occurred earlier in the prompt or
the text so far, the tokens that followed them there are fed with the new token in one forward
pass. Greedy decoding keeps them as far as they are what it would have chosen; sampling keeps
each with the probability the model gives it and, at the first it rejects, draws from the
model's distribution without it (speculative sampling with a draft that is certain of its
tokens): each token is distributed exactly as without drafts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from ..engine_state import GenerationStats
from .graph_step import GraphStep
from .healing import pending_text
from .kv_cache import (
    KEPT_CACHES_BUDGET_BYTES,
    KEPT_DOCUMENT_CACHES,
    cache_nbytes,
    preallocated_cache,
    truncate_cache,
)
from .loading import LoadedModel
from .token_step import TokenStep

PREFILL_CHUNK_TOKENS = 256
STEP_TOKENS = 9
"""At most this many new tokens go through the CPU kernels' whole-model step in one call (one
token and 8 drafted ones; a cancel waits for the call), more through transformers' forward."""


@dataclass(frozen=True)
class DecodeParams:
    max_new_tokens: int
    temperature: float
    top_p: float
    draft_tokens: int = 0
    """Prompt-lookup speculation: at most this many drafted tokens checked per forward pass
    (0: off)."""


LOOKUP_NGRAM = 3


class PromptLookup:
    """Drafts for speculative decoding from the tokens so far: the tokens that followed the
    most recent earlier occurrence of the longest of the last 3, 2 or 1 tokens."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self._followed_at: dict[tuple[int, ...], int] = {}
        """An n-gram -> where the tokens after its most recent occurrence start."""
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens)
            for n in range(1, min(LOOKUP_NGRAM, end) + 1):
                self._followed_at[tuple(self.tokens[end - n :])] = end
            self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        for n in range(min(LOOKUP_NGRAM, len(self.tokens)), 0, -1):
            start = self._followed_at.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + limit]
        return []


@dataclass
class _KeptState:
    token_ids: list[int]
    cache: DynamicCache
    logits: torch.Tensor | None = None
    """The logits after all of token_ids, where a prefill ahead of a request left them."""


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    length = min(len(a), len(b))
    for index in range(length):
        if a[index] != b[index]:
            return index
    return length


def _nucleus(logits: torch.Tensor, params: DecodeParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens by probability (temperature applied), and their probabilities with those
    outside the top-p nucleus set to 0 (not renormalised)."""
    probabilities = torch.softmax(logits.float() / params.temperature, dim=-1)
    sorted_probabilities, order = torch.sort(probabilities, descending=True)
    outside_nucleus = (
        torch.cumsum(sorted_probabilities, dim=-1) - sorted_probabilities > params.top_p
    )
    sorted_probabilities[outside_nucleus] = 0.0
    return sorted_probabilities, order


def _argmax(logits: torch.Tensor) -> int:
    """The first index of the largest logit. For float32 on the CPU through numpy: ~4 us over
    a 50k vocabulary where torch's reduction takes ~45 (a decode step is ~5 ms)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return int(logits.numpy().argmax())
    return int(torch.argmax(logits))


def _choose(logits: torch.Tensor, params: DecodeParams) -> int:
    if params.temperature <= 0:
        return _argmax(logits)
    sorted_probabilities, order = _nucleus(logits, params)
    return int(order[torch.multinomial(sorted_probabilities, 1)])


def _verify(logits: torch.Tensor, drafted: int, params: DecodeParams) -> int:
    """The token decoding chooses after `logits` where `drafted` was drafted: greedy, the
    argmax; sampling, `drafted` with the probability p(drafted) the model gives it, else a token
    drawn from p without it. Each token t comes out with probability p(t), as from _choose."""
    if params.temperature <= 0 or drafted >= logits.shape[-1]:
        return _choose(logits, params)
    sorted_probabilities, order = _nucleus(logits, params)
    rank = int((order == drafted).nonzero()[0])
    kept = sorted_probabilities[rank] / sorted_probabilities.sum()
    if float(torch.rand(())) < float(kept):
        return drafted
    sorted_probabilities[rank] = 0.0
    return int(order[torch.multinomial(sorted_probabilities, 1)])


class Generator:
    """Greedy or top-p decoding over one loaded model, with per-document KV reuse."""

    def __init__(self, loaded: LoadedModel, reuse_kv: bool = True) -> None:
        self.loaded = loaded
        self.reuse_kv = reuse_kv
        self._kept: OrderedDict[str, _KeptState] = OrderedDict()
        self._cancelled: Callable[[], bool] = _never
        """The running generation's cancel test: checked between prefill chunks and decode
        steps, and (the hooks) before every decoder layer and matrix product."""
        # The cancel check also runs before every decoder layer and every matrix product in
        # one: a cancel lands within one product's work even in the middle of a prefill chunk.
        for layer in _decoder_layers(loaded.model):
            for module in (layer, *_linear_layers(layer)):
                module.register_forward_pre_hook(self._check_cancel)

    def _check_cancel(self, *_: object) -> None:
        if self._cancelled():
            raise _Cancelled

    def forget(self, key: str) -> None:
        self._kept.pop(key, None)

    def _take_state(self, key: str, prompt: list[int], new_tokens: int) -> _KeptState:
        """The document's cache cropped to its common prefix with `prompt` (at least one
        prompt token is left to feed, for the logits, unless they were kept with it)."""
        kept = self._kept.pop(key, None)
        if kept is None:
            return _KeptState([], self._new_cache(len(prompt) + new_tokens))
        if kept.token_ids == prompt and kept.logits is not None:
            return kept
        keep = min(_common_prefix_length(kept.token_ids, prompt), len(prompt) - 1)
        kept.cache.crop(keep - kept.cache.get_seq_length())
        return _KeptState(kept.token_ids[:keep], kept.cache)

    def _new_cache(self, tokens: int) -> DynamicCache:
        """An empty cache with room for `tokens`, laid out as the decode step needs."""
        layers = self.loaded.model.config.get_text_config().num_hidden_layers
        step = self.loaded.token_step
        if isinstance(step, GraphStep):
            return step.new_cache(layers, tokens)
        return preallocated_cache(layers, tokens, self.loaded.kv_storage)

    def _keep_state(self, key: str, state: _KeptState) -> None:
        """Keep `state` as the most recent; evict the least recently used beyond the limits."""
        self._kept[key] = state
        while len(self._kept) > 1 and (
            len(self._kept) > KEPT_DOCUMENT_CACHES
            or sum(cache_nbytes(kept.cache) for kept in self._kept.values())
            > KEPT_CACHES_BUDGET_BYTES
        ):
            self._kept.popitem(last=False)

    def _forward(
        self, state: _KeptState, token_ids: list[int], every_position: bool = False
    ) -> torch.Tensor:
        """The logits after `token_ids` (with `every_position`: after each of them)."""
        state.logits = None
        try:
            logits = self._logits(state.cache, token_ids, every_position)
        except _Cancelled:
            truncate_cache(state.cache, len(state.token_ids))
            raise
        state.token_ids.extend(token_ids)
        return logits[..., : self.loaded.vocab_limit]

    def _decode_step(
        self,
        state: _KeptState,
        token: int,
        lookup: PromptLookup | None,
        draft_limit: int,
        params: DecodeParams,
    ) -> list[tuple[torch.Tensor, int | None]]:
        """The logits after `token`; with a draft from `lookup`, also those after each drafted
        token that decoding keeps (_verify), each with the token chosen after it where a draft
        decided it (the rest of the draft leaves the cache)."""
        draft = lookup.draft(draft_limit) if lookup is not None and draft_limit > 0 else []
        if not draft or not self._step_computes(state.cache, 1 + len(draft)):
            return [(self._forward(state, [token]), None)]
        rows = self._forward(state, [token, *draft], every_position=True)
        choices: list[tuple[torch.Tensor, int | None]] = []
        for row, drafted in zip(rows, draft, strict=False):
            chosen = _verify(row, drafted, params)
            choices.append((row, chosen))
            if chosen != drafted:
                break
        else:
            choices.append((rows[len(draft)], None))
        accepted = len(choices) - 1
        kept = len(state.token_ids) - (len(draft) - accepted)
        truncate_cache(state.cache, kept)
        del state.token_ids[kept:]
        return choices

    def _constrained(self, logits: torch.Tensor, required_start: str, text: str) -> torch.Tensor:
        """`logits` with only the tokens that go on spelling `required_start` left."""
        pending = pending_text(required_start, text)
        texts = self.loaded.token_texts
        if not pending or texts is None:
            return logits
        allowed = [token for token in texts.allowed(pending) if token < logits.shape[-1]]
        if not allowed:
            return logits
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, device=logits.device)
        masked[index] = logits[index]
        return masked

    def _step_computes(self, cache: DynamicCache, tokens: int) -> bool:
        """Whether the whole-model step computes `tokens` new tokens after `cache`: each one's
        logits then equal those of a step of its own, bit for bit, so verifying a draft keeps
        plain greedy decoding's text (a batched forward elsewhere may round otherwise)."""
        step = self.loaded.token_step
        return step is not None and tokens <= STEP_TOKENS and step.applies(cache, tokens)

    def _logits(
        self, cache: DynamicCache, token_ids: list[int], every_position: bool = False
    ) -> torch.Tensor:
        """The logits after `token_ids`, fed after the cached tokens (which they extend);
        with `every_position`, [len(token_ids), vocab]: after each of them."""
        step = self.loaded.token_step
        if step is not None and self._step_computes(cache, len(token_ids)):
            logits = self._whole_step(step, token_ids, cache)
            return logits if every_position else logits[-1]
        inputs = torch.tensor([token_ids], device=self.loaded.device)
        keep = 0 if every_position else 1
        output = self.loaded.model(
            input_ids=inputs, cache=cache, use_cache=True, logits_to_keep=keep
        )
        return output.logits[0] if every_position else output.logits[0, -1]

    def _whole_step(
        self, step: TokenStep | GraphStep, token_ids: list[int], cache: DynamicCache
    ) -> torch.Tensor:
        """`step` on `token_ids`, uninterrupted: a cancel lands after it (a step runs as one
        call or one graph; a capture that a cancel broke would be lost)."""
        cancelled, self._cancelled = self._cancelled, _never
        try:
            return step(token_ids, cache)
        finally:
            self._cancelled = cancelled

    def _prefill(self, state: _KeptState, prompt: list[int]) -> torch.Tensor:
        """Feed the prompt tokens the cache lacks, in chunks, checking for a cancel."""
        logits = state.logits
        for start in range(len(state.token_ids), len(prompt), PREFILL_CHUNK_TOKENS):
            self._check_cancel()
            logits = self._forward(state, prompt[start : start + PREFILL_CHUNK_TOKENS])
        assert logits is not None, "_take_state leaves a token to feed or the logits after all"
        return logits

    def prefill(
        self, key: str, prompt: list[int], new_tokens: int, cancelled: Callable[[], bool]
    ) -> bool:
        """Feed `prompt` into document `key`'s cache ahead of a request (room kept for
        `new_tokens` more); True: all of it, False: cancelled (what was fed is kept)."""
        state = self._take_state(key, prompt, new_tokens)
        self._cancelled = cancelled
        try:
            with torch.inference_mode():
                state.logits = self._prefill(state, prompt)
            fed = True
        except _Cancelled:
            fed = False
        finally:
            self._cancelled = _never
        if self.reuse_kv:
            self._keep_state(key, state)
        return fed

    def generate(
        self,
        key: str,
        prompt: list[int],
        params: DecodeParams,
        finished: Callable[[str], bool],
        cancelled: Callable[[], bool],
        required_start: str = "",
    ) -> tuple[str, GenerationStats]:
        """Decode after `prompt` until end-of-text, `finished(text)`, the token limit or a
        cancel; return the text and what it cost. The text starts with `required_start`
        (token healing): the first tokens are chosen among those that spell it."""
        started = time.perf_counter()
        state = self._take_state(key, prompt, params.max_new_tokens)
        reused = len(state.token_ids)
        generated: list[int] = []
        text, was_cancelled, prefilled, forwards = "", False, started, 0
        text_of = self.loaded.growing_text_after(prompt)
        step = self.loaded.token_step
        drafts = params.draft_tokens > 0 and step is not None and step.verifies_drafts
        lookup = PromptLookup(prompt) if drafts else None
        verified: list[tuple[torch.Tensor, int | None]] = []
        """Logits already computed for the next tokens (kept drafts), each with the token
        chosen after it where a draft decided it."""
        self._cancelled = cancelled
        try:
            with torch.inference_mode():
                logits, chosen = self._prefill(state, prompt), None
                prefilled = time.perf_counter()
                while (
                    token := chosen
                    if chosen is not None
                    else _choose(self._constrained(logits, required_start, text), params)
                ) not in self.loaded.special_ids:
                    generated.append(token)
                    text = text_of(generated)
                    if finished(text) or len(generated) >= params.max_new_tokens:
                        break
                    self._check_cancel()
                    if lookup is not None:
                        lookup.extend([token])
                    if not verified:
                        drafting = lookup if not pending_text(required_start, text) else None
                        room = params.max_new_tokens - len(generated) - 1
                        limit = min(params.draft_tokens, room)
                        verified = self._decode_step(state, token, drafting, limit, params)
                        forwards += 1
                    logits, chosen = verified.pop(0)
        except _Cancelled:
            was_cancelled = True
        finally:
            self._cancelled = _never
        if self.reuse_kv:
            self._keep_state(key, state)
        ended = time.perf_counter()
        prefill_ms = (max(prefilled, started) - started) * 1000
        stats = GenerationStats(
            prompt_tokens=len(prompt),
            reused_tokens=reused,
            generated_tokens=len(generated),
            cancelled=was_cancelled,
            prefill_ms=prefill_ms,
            decode_ms=(ended - max(prefilled, started)) * 1000 if prefilled > started else 0.0,
            first_token_ms=prefill_ms if generated else 0.0,
            decode_forwards=forwards,
        )
        return ("" if was_cancelled else text), stats


def _never() -> bool:
    return False


def _decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's decoder blocks (GPT-NeoX: gpt_neox.layers; GPT-2 style: transformer.h)."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def _linear_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [child for child in module.modules() if isinstance(child, torch.nn.Linear)]


class _Cancelled(Exception):
    """Raised inside the decode loop when the request was cancelled."""
