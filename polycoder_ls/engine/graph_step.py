"""The single-token decode step on a GPU, replayed from CUDA graphs.

On a GPU an eager decode step is bound by launches, not by memory: a 160M model's step is some
three hundred small kernels (~15 us of Python and launch each) against ~0.1 ms of HBM reads. A
CUDA graph launches a whole step at once. A graph replays fixed addresses and shapes, so the
captured step reads its token and position from tensors of its own, writes the new keys and
values at that position (index_copy_ into a cache's buffers) and attends over a fixed number of
cache rows, a bucket: the smallest power of two from BUCKET_MIN_TOKENS that holds the new token,
under a mask that hides the rows after it.

The buffers are slots allocated when the model loads, one for each document cache the generator
can hold at once (kv_cache.most_caches_alive), each for the whole context and zero-filled when a
document takes it; every slot's graph of every bucket is recorded then too. A request never
waits for a recording, which takes a 2.7B model hundreds of milliseconds a graph and cannot be
cancelled. A few tokens after a slot's cache (a prompt's tail after the kept prefix) are fed one
replay each; longer prefill chunks, caches off the slots and every other forward stay eager
(SDPA picks flash attention for them). A recording that fails leaves the step off for that
model, with a warning: it then runs eagerly.

A cancel lands between steps, as on the CPU: a replay is one step, launched at once.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from .kv_cache import PreallocatedLayer, preallocated_cache

log = logging.getLogger(__name__)

BUCKET_MIN_TOKENS = 256
FED_TOKENS = 4
"""At most this many new tokens are fed one replay each (more: one eager forward, which costs
a small model's launches some 6 replays and a 2.7B model's some 5)."""
WARMUP_RUNS = 2
"""Eager runs before a capture, on a side stream: cuBLAS and the attention kernels choose and
allocate what they need outside the graph."""

Replay = Callable[[], None]
Capture = Callable[[Callable[[], None]], Replay]
"""Records `work` (one step over fixed tensors) and returns what replays it."""
Buffers = list[tuple[torch.Tensor, torch.Tensor]]
"""Each layer's key and value buffers, `[1, heads, rows, dim]`."""


def bucket_for(length: int, capacity: int) -> int | None:
    """The cache rows a step after `length` cached tokens attends over: the smallest power of
    two from BUCKET_MIN_TOKENS that holds the new token, at most `capacity`; None when the new
    token does not fit in `capacity` rows."""
    needed = length + 1
    if needed > capacity:
        return None
    bucket = BUCKET_MIN_TOKENS
    while bucket < needed:
        bucket *= 2
    return min(bucket, capacity)


def buckets(capacity: int) -> list[int]:
    """Every bucket of a `capacity`-row cache, smallest first."""
    found, bucket = [], BUCKET_MIN_TOKENS
    while bucket < capacity:
        found.append(bucket)
        bucket *= 2
    return [*found, capacity]


def cuda_graph_capture(pool: Any) -> Capture:
    """Capture on the current CUDA device into graphs that share the memory pool `pool` (graphs
    replay one at a time, so their temporaries may overlap)."""

    def capture(work: Callable[[], None]) -> Replay:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                work()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            work()
        return graph.replay

    return capture


def eager_capture(work: Callable[[], None]) -> Replay:
    """No recording: a replay runs `work` again. The same fixed tensors and bookkeeping as a
    graph, so CPU tests check everything but the recording."""
    return work


class _BucketView(DynamicCache):
    """The cache as a captured step sees it: the new token's keys and values go to row
    `position` (a tensor, read at replay) of each layer's buffers, and attention reads their
    first `bucket` rows."""

    def __init__(self, buffers: Buffers, position: torch.Tensor, bucket: int):
        super().__init__()
        self.buffers = buffers
        self.position = position
        self.bucket = bucket

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.buffers[layer_idx]
        keys.index_copy_(2, self.position, key_states.to(keys.dtype))
        values.index_copy_(2, self.position, value_states.to(values.dtype))
        window = (slice(None), slice(None), slice(0, self.bucket))
        return keys[window].to(key_states.dtype), values[window].to(value_states.dtype)


class _Slot:
    """One document cache's buffers, allocated once, and the cache that holds them now."""

    def __init__(self, buffers: Buffers) -> None:
        self.buffers = buffers
        self._holder: weakref.ref[DynamicCache] | None = None

    def holds(self, cache: DynamicCache) -> bool:
        return self._holder is not None and self._holder() is cache

    def lend(self) -> DynamicCache | None:
        """A new empty cache over these buffers (zero-filled), None while another holds them."""
        if self._holder is not None and self._holder() is not None:
            return None
        cache = DynamicCache()
        cache.layers = [PreallocatedLayer.over(keys, values) for keys, values in self.buffers]
        self._holder = weakref.ref(cache)
        return cache


class GraphStep:
    """The next tokens' logits after a cache, replayed from graphs recorded over `slots` caches
    of `capacity` rows, one per bucket (same interface as token_step.TokenStep)."""

    verifies_drafts = False
    """Drafts are not checked here: replays feed one token each, so a draft saves nothing."""

    def __init__(self, model: Any, capacity: int, capture: Capture, slots: int = 2) -> None:
        self.model = model
        self.capacity = capacity
        self.capture = capture
        self.enabled = True
        device = model.get_input_embeddings().weight.device
        self._token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self._position = torch.zeros(1, dtype=torch.long, device=device)
        self._rows = torch.arange(capacity, device=device)
        self._graphs: dict[tuple[int, int], tuple[Replay, torch.Tensor]] = {}
        """(slot, bucket) -> the replay and the logits it writes."""
        self.captures = 0
        self.replays = 0
        with torch.no_grad():  # not inference_mode: a cache takes the buffers outside it
            self._slots = [_Slot(self._new_buffers()) for _ in range(slots)]
            self._record()

    @classmethod
    def for_model(cls, model: Any, capacity: int, slots: int) -> GraphStep | None:
        """The step for a model on a CUDA device, None elsewhere."""
        device = model.get_input_embeddings().weight.device
        if device.type != "cuda":
            return None
        with torch.cuda.device(device):
            pool = torch.cuda.graph_pool_handle()
        return cls(model, capacity, cuda_graph_capture(pool), slots)

    def _new_buffers(self) -> Buffers:
        """A cache's buffers for `capacity` rows, shaped by the model's own first forward."""
        layers = self.model.config.get_text_config().num_hidden_layers
        cache = preallocated_cache(layers, self.capacity, zeroed=True)
        self.model(input_ids=self._token, cache=cache, use_cache=True, logits_to_keep=1)
        return [layer.buffers for layer in cache.layers if isinstance(layer, PreallocatedLayer)]

    def _record(self) -> None:
        """Every slot's graph of every bucket; the step is off if one fails."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        for index, slot in enumerate(self._slots):
            for bucket in buckets(self.capacity):
                logits = self._rows.new_zeros(vocab, dtype=self.model.dtype)
                try:
                    replay = self.capture(self._work(slot.buffers, bucket, logits))
                except Exception:
                    self.enabled = False
                    log.warning(
                        "recording the decode step failed: decoding without graphs", exc_info=True
                    )
                    return
                self.captures += 1
                self._graphs[index, bucket] = (replay, logits)

    def _work(self, buffers: Buffers, bucket: int, logits: torch.Tensor) -> Callable[[], None]:
        view = _BucketView(buffers, self._position, bucket)
        mask = self._rows[:bucket]

        def work() -> None:
            visible = (mask <= self._position).view(1, 1, 1, bucket)
            output = self.model(
                input_ids=self._token,
                position_ids=self._position.view(1, 1),
                attention_mask=visible,
                cache=view,
                use_cache=True,
                logits_to_keep=1,
            )
            logits.copy_(output.logits[0, -1])

        return work

    @property
    def slots(self) -> int:
        return len(self._slots)

    def new_cache(self, num_layers: int, tokens: int) -> DynamicCache:
        """A cache for a document, with room for `tokens`: a free slot's, else one of its own
        (which decodes eagerly)."""
        for slot in self._slots:
            if (cache := slot.lend()) is not None:
                return cache
        return preallocated_cache(num_layers, max(tokens, self.capacity), zeroed=True)

    def _slot_of(self, cache: Any) -> int | None:
        """The slot whose buffers `cache` holds (None: none, or it has outgrown them)."""
        for index, slot in enumerate(self._slots):
            if slot.holds(cache):
                layers = cache.layers
                same = len(layers) == len(slot.buffers) and all(
                    isinstance(layer, PreallocatedLayer) and layer.buffers[0] is keys
                    for layer, (keys, _) in zip(layers, slot.buffers, strict=False)
                )
                return index if same else None
        return None

    def applies(self, cache: Any, tokens: int = 1) -> bool:
        """Whether replays compute what the model computes for `tokens` new tokens after
        `cache`: a few, after a slot's cache of equal-length layers with room for them."""
        if not self.enabled or not 1 <= tokens <= FED_TOKENS or self.model.training:
            return False
        if self._slot_of(cache) is None:
            return False
        lengths = {layer.length for layer in cache.layers}
        return len(lengths) == 1 and lengths.pop() + tokens <= self.capacity

    def __call__(self, tokens: int | list[int], cache: DynamicCache) -> torch.Tensor:
        """The logits [vocab] after one token (a list: [len(tokens), vocab], after each), whose
        keys and values are appended to `cache`."""
        ids = [tokens] if isinstance(tokens, int) else tokens
        slot = self._slot_of(cache)
        assert slot is not None
        rows = [self._replay(slot, token, cache) for token in ids]
        return rows[0] if isinstance(tokens, int) else torch.stack(rows)

    def _replay(self, slot: int, token: int, cache: DynamicCache) -> torch.Tensor:
        length = cache.get_seq_length()
        bucket = bucket_for(length, self.capacity)
        assert bucket is not None
        self._token.fill_(token)
        self._position.fill_(length)
        replay, logits = self._graphs[slot, bucket]
        replay()
        self.replays += 1
        for layer in cache.layers:
            assert isinstance(layer, PreallocatedLayer)
            layer.grow(1)
        return logits.clone()
