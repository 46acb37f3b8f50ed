"""The single-token decode step on a GPU, replayed from CUDA graphs.

On a GPU an eager decode step is bound by launches, not by memory: a 160M model's step is some
three hundred small kernels (~15 us of Python and launch each) against ~0.1 ms of HBM reads. A
CUDA graph launches a whole step at once. A graph replays fixed addresses and shapes, so the
captured step reads its token and position from tensors of its own, writes the new keys and
values at that position (index_copy_ into the document's cache buffers, allocated once at the
model's context and zero-filled) and attends over a fixed number of cache rows, a bucket: the
smallest power of two from BUCKET_MIN_TOKENS that holds the new token, under a mask that hides
the rows after it. One graph per cache buffer and bucket, the KEPT_GRAPHS most recently used
kept. Prefill chunks, drafts and every other forward stay eager (SDPA picks flash attention for
them); a capture that fails leaves the step off for that model, with a warning, and that step
runs eagerly.

A cancel lands between steps, as on the CPU: a replay is one step, launched at once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from .kv_cache import PreallocatedLayer, preallocated_cache

log = logging.getLogger(__name__)

BUCKET_MIN_TOKENS = 256
KEPT_GRAPHS = 16
WARMUP_RUNS = 2
"""Eager runs before a capture, on a side stream: cuBLAS and the attention kernels choose and
allocate what they need outside the graph."""

Replay = Callable[[], None]
Capture = Callable[[Callable[[], None]], Replay]
"""Records `work` (one step over fixed tensors) and returns what replays it."""


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

    def __init__(self, layers: list[PreallocatedLayer], position: torch.Tensor, bucket: int):
        super().__init__()
        self.layers = list(layers)
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
        layer = self.layers[layer_idx]
        assert isinstance(layer, PreallocatedLayer)
        keys, values = layer.buffers
        keys.index_copy_(2, self.position, key_states.to(keys.dtype))
        values.index_copy_(2, self.position, value_states.to(values.dtype))
        window = (slice(None), slice(None), slice(0, self.bucket))
        return keys[window].to(key_states.dtype), values[window].to(value_states.dtype)


class GraphStep:
    """The next token's logits after a cache of `capacity`-row zero-filled buffers, replayed from
    a graph per cache and bucket (same interface as token_step.TokenStep)."""

    def __init__(self, model: Any, capacity: int, capture: Capture) -> None:
        self.model = model
        self.capacity = capacity
        self.capture = capture
        self.enabled = True
        device = model.get_input_embeddings().weight.device
        self._token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self._position = torch.zeros(1, dtype=torch.long, device=device)
        self._rows = torch.arange(capacity, device=device)
        self._graphs: OrderedDict[tuple[Any, ...], tuple[Replay, torch.Tensor]] = OrderedDict()
        self.captures = 0

    @classmethod
    def for_model(cls, model: Any, capacity: int) -> GraphStep | None:
        """The step for a model on a CUDA device, None elsewhere."""
        device = model.get_input_embeddings().weight.device
        if device.type != "cuda":
            return None
        with torch.cuda.device(device):
            pool = torch.cuda.graph_pool_handle()
        return cls(model, capacity, cuda_graph_capture(pool))

    def new_cache(self, num_layers: int, tokens: int) -> DynamicCache:
        """A cache this step runs on, with room for `tokens` (and at least `capacity`)."""
        return preallocated_cache(num_layers, max(tokens, self.capacity), zeroed=True)

    def applies(self, cache: Any, tokens: int = 1) -> bool:
        """Whether one replay computes what the model computes for `tokens` new tokens after
        `cache`: one token, after a zero-filled cache of one sequence with room for it."""
        if not self.enabled or tokens != 1 or self.model.training:
            return False
        if not isinstance(cache, DynamicCache) or not cache.layers:
            return False
        layers = [layer for layer in cache.layers if isinstance(layer, PreallocatedLayer)]
        if len(layers) != len(cache.layers) or not all(
            layer.is_initialized and layer.zeroed for layer in layers
        ):
            return False
        stored = {(layer.length, layer.capacity, layer.sequences) for layer in layers}
        return len(stored) == 1 and layers[0].sequences == 1 and self._bucket(layers[0]) is not None

    def _bucket(self, layer: PreallocatedLayer) -> int | None:
        """The rows a step after `layer`'s tokens attends over (bucket_for within the graphs')."""
        return bucket_for(layer.length, min(layer.capacity, self.capacity))

    def __call__(self, tokens: int | list[int], cache: DynamicCache) -> torch.Tensor:
        """The logits [vocab] after one token ([1, vocab] for a list of one), whose keys and
        values are appended to `cache`."""
        ids = [tokens] if isinstance(tokens, int) else tokens
        assert len(ids) == 1, "a graph step feeds one token"
        layers = [layer for layer in cache.layers if isinstance(layer, PreallocatedLayer)]
        bucket = self._bucket(layers[0])
        assert bucket is not None
        self._token.fill_(ids[0])
        self._position.fill_(layers[0].length)
        graph = self._graph(layers, bucket)
        if graph is None:
            return self._eager(tokens, cache)
        replay, logits = graph
        replay()
        for layer in layers:
            layer.append_rows(1)
        result = logits.clone()
        return result if isinstance(tokens, int) else result[None]

    def _eager(self, tokens: int | list[int], cache: DynamicCache) -> torch.Tensor:
        output = self.model(
            input_ids=self._token.clone(), cache=cache, use_cache=True, logits_to_keep=1
        )
        return output.logits[0, -1] if isinstance(tokens, int) else output.logits[0]

    def _graph(
        self, layers: list[PreallocatedLayer], bucket: int
    ) -> tuple[Replay, torch.Tensor] | None:
        """The replay for `layers`' buffers and `bucket`, and the logits it writes; captured
        now if it is not kept. None: the capture failed (the step is off from then on)."""
        key = (bucket, *(pointer for layer in layers for pointer in _addresses(layer)))
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        vocab = self.model.get_output_embeddings().weight.shape[0]
        logits = self._rows.new_zeros(vocab, dtype=self.model.dtype)
        view = _BucketView(layers, self._position, bucket)
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

        try:
            replay = self.capture(work)
        except Exception:
            self.enabled = False
            log.warning("capturing the decode step failed: decoding without graphs", exc_info=True)
            return None
        self.captures += 1
        self._graphs[key] = (replay, logits)
        while len(self._graphs) > KEPT_GRAPHS:
            self._graphs.popitem(last=False)
        return replay, logits


def _addresses(layer: PreallocatedLayer) -> tuple[int, int, int]:
    keys, values = layer.buffers
    return keys.data_ptr(), values.data_ptr(), keys.shape[2]
