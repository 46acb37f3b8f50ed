"""A KV cache that grows without copying itself on every decode step.

transformers' DynamicLayer appends with torch.cat, copying the whole cache for each new token
(~46 % of decode time at 1900 tokens of context on a 2-core CPU). These layers write into a
buffer with room to spare and hand attention a view of the filled part; cropping only moves the
end, so the kept prefix of the next request costs nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

GROWTH_STEP_TOKENS = 256
KEPT_DOCUMENT_CACHES = 4
KEPT_CACHES_BUDGET_BYTES = 1024 * 1024 * 1024
"""A generator keeps the caches of the most recently used documents, at most this many and
(beyond the newest) this many bytes."""


def allocated_rows(tokens: int) -> int:
    """The rows a layer allocates for `tokens`: whole growth steps."""
    return -(-tokens // GROWTH_STEP_TOKENS) * GROWTH_STEP_TOKENS


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in a buffer of `[batch, heads, capacity, head_dim]`, stored
    as the model computes them or as `storage` (float16: half the bytes for a decode step to
    read; torch's attention then gets float32 copies). `zeroed`: rows not written yet hold
    zeros, not whatever the memory held (a step that attends over masked rows needs them finite:
    NaN times a zero weight is NaN)."""

    def __init__(
        self, capacity: int, storage: torch.dtype | None = None, zeroed: bool = False
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self.storage = storage
        self.zeroed = zeroed
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self.buffer_pointers = (0, 0, 0)
        """Where the first sequence's keys and values start, and the elements between two
        heads' rows (zeros before the first update); a new tuple whenever the buffers move."""
        self.sequences = 0
        """The batch size (0 before the first update)."""
        self.stored_dtype: torch.dtype | None = None
        """The buffers' type (None before the first update)."""

    @classmethod
    def over(cls, keys: torch.Tensor, values: torch.Tensor) -> PreallocatedLayer:
        """An empty layer over buffers allocated before (`[batch, heads, capacity, dim]`),
        zero-filled now."""
        keys.zero_()
        values.zero_()
        layer = cls(keys.shape[2], keys.dtype, zeroed=True)
        layer.device = keys.device
        layer._use_buffers(keys, values)
        layer.is_initialized = True
        return layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.length = 0
        self._allocate(key_states, value_states, allocated_rows(max(self.capacity, 1)))
        self.is_initialized = True

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        batch, heads, _, key_dim = keys.shape
        dtype = self.storage or keys.dtype
        make = keys.new_zeros if self.zeroed else keys.new_empty
        key_buffer = make(batch, heads, capacity, key_dim, dtype=dtype)
        value_buffer = make(batch, heads, capacity, values.shape[-1], dtype=dtype)
        if self._key_buffer is not None and self._value_buffer is not None:
            key_buffer[..., : self.length, :] = self._key_buffer[..., : self.length, :]
            value_buffer[..., : self.length, :] = self._value_buffer[..., : self.length, :]
        self._use_buffers(key_buffer, value_buffer)
        self.capacity = capacity

    def _use_buffers(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._key_buffer, self._value_buffer = keys, values
        self.buffer_pointers = (keys.data_ptr(), values.data_ptr(), keys.stride(1))
        self.sequences, self.stored_dtype = keys.shape[0], keys.dtype

    # The filled rows are views made when read: a decode step that only moves the end (grow)
    # makes none (24 views a token for 12 layers cost ~70 us of a ~3 ms step).
    @property
    def keys(self) -> torch.Tensor | None:
        buffer = self._key_buffer
        return None if buffer is None else buffer.narrow(2, 0, self.length)

    @keys.setter
    def keys(self, keys: torch.Tensor | None) -> None:
        _refuse_to_replace(keys)

    @property
    def values(self) -> torch.Tensor | None:
        buffer = self._value_buffer
        return None if buffer is None else buffer.narrow(2, 0, self.length)

    @values.setter
    def values(self, values: torch.Tensor | None) -> None:
        _refuse_to_replace(values)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._allocate(key_states, value_states, allocated_rows(max(end, 2 * self.capacity)))
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., self.length : end, :] = key_states
        self._value_buffer[..., self.length : end, :] = value_states
        self.length = end
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        return keys.to(key_states.dtype), values.to(value_states.dtype)

    @property
    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole key and value buffers, `[batch, heads, capacity, dim]`, filled or not."""
        assert self._key_buffer is not None and self._value_buffer is not None
        return self._key_buffer, self._value_buffer

    def grow(self, count: int = 1) -> None:
        """Room for `count` more tokens, counted as filled: the caller must write their rows
        (at buffer_pointers, which may have moved)."""
        if self.length + count > self.capacity:
            assert self._key_buffer is not None and self._value_buffer is not None
            capacity = allocated_rows(max(self.length + count, 2 * self.capacity))
            self._allocate(self._key_buffer, self._value_buffer, capacity)
        self.length += count

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the number of tokens to remove, as a negative number")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)

    def truncate(self, length: int) -> None:
        """Forget everything after `length` tokens (a forward interrupted midway leaves some
        layers one chunk longer than others)."""
        if self.is_initialized and self.length > length:
            self.length = length

    def nbytes(self) -> int:
        if self._key_buffer is None or self._value_buffer is None:
            return 0
        return self._key_buffer.nbytes + self._value_buffer.nbytes


def _refuse_to_replace(tensor: torch.Tensor | None) -> None:
    """DynamicLayer's own code sets keys and values to None when it starts; a layer that
    grows in place has no other tensors to take."""
    if tensor is not None:
        raise NotImplementedError("a preallocated layer's keys and values live in its buffers")


def preallocated_cache(
    num_layers: int, capacity: int, storage: torch.dtype | None = None, zeroed: bool = False
) -> DynamicCache:
    """A DynamicCache whose layers grow in place, sized for `capacity` tokens to start with,
    stored as `storage` (None: as computed), zero-filled where `zeroed`."""
    cache = DynamicCache()
    cache.layers = [PreallocatedLayer(capacity, storage, zeroed) for _ in range(num_layers)]
    return cache


def truncate_cache(cache: DynamicCache, length: int) -> None:
    for layer in cache.layers:
        if isinstance(layer, PreallocatedLayer):
            layer.truncate(length)


def most_caches_alive(cache_bytes: int) -> int:
    """The most document caches of `cache_bytes` each that a generator holds at once: those it
    keeps, and a new document's, filled before the least recently used is let go."""
    kept = min(KEPT_DOCUMENT_CACHES, KEPT_CACHES_BUDGET_BYTES // max(1, cache_bytes))
    return max(1, kept) + 1


def cache_nbytes(cache: DynamicCache) -> int:
    return sum(layer.nbytes() for layer in cache.layers if isinstance(layer, PreallocatedLayer))
