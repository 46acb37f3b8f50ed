"""A decoder model's whole decode step in one call of the CPU kernels.

Around its matrix products, transformers' forward runs some thirty small tensor operations and
module calls per layer and token (views, slices and concatenations for the rotary embedding,
dropout, norms, the cache update) and opens one thread team per product: ~3.4 ms of a
160M-shaped GPT-NeoX model's ~23 ms decode step on a 2-core CPU (`bench/decode_cache.py
--profile`). For new tokens after a preallocated cache, this step computes the same function
with the model's own weights in one C call and one thread team: embedding rows, per layer the
norms, projections, rotary embedding, KV-cache writes, attention (grouped-query where the model
has fewer key-value heads) and MLP, then the final norm and the LM head. It covers GPT-NeoX
(PolyCoder), Llama and Qwen2 (RMSNorm, SwiGLU) and Starcoder2 (layer norms, tanh GELU); prefill
chunks, batches and every other model run transformers' forward.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from operator import attrgetter
from typing import Any

import torch
from transformers import DynamicCache

from .cpu_kernels import (
    CpuKernels,
    DecoderShape,
    QuantizedWeight,
    int_array,
    pointer_array,
    weight_bits,
    weight_pointers,
)
from .kv_cache import PreallocatedLayer, allocated_rows

Getter = Callable[[Any], Any]


class Norm(IntEnum):
    """`enum norm` of cpu_kernels.c."""

    LAYER = 0
    RMS = 1


class Activation(IntEnum):
    """`enum activation` of cpu_kernels.c."""

    GELU_EXACT = 0
    GELU_TANH = 1
    SILU_GATED = 2


def _absent(_: Any) -> None:
    return None


def _decode_weight(path: str) -> Callable[[Any], torch.Tensor | QuantizedWeight]:
    """The weight a linear layer's single-row products read (quantized where it has one)."""
    module = attrgetter(path)
    return lambda layer: getattr(module(layer), "decode_weight", module(layer).weight)


def _linear(path: str) -> tuple[Getter, Getter]:
    """A linear layer's decode weight and its bias (None if it has none)."""
    return _decode_weight(path), attrgetter(f"{path}.bias")


def _norm(path: str, bias: bool) -> tuple[Getter, Getter]:
    return attrgetter(f"{path}.weight"), attrgetter(f"{path}.bias") if bias else _absent


@dataclass(frozen=True)
class Family:
    """Where a family of models keeps what the step reads, and what it computes."""

    base: str
    """The decoder inside the causal LM (its layers, final norm and rotary embedding)."""
    final_norm: str
    attention: str
    tensors: tuple[Getter, ...]
    """Each layer's tensors in the order of `enum layer_pointer` in cpu_kernels.c, up to the
    scales (None where the family has none)."""
    norm: Norm
    activation: Activation
    hidden_act: str
    fused_qkv: bool


_SELF_ATTENTION = (
    *_linear("self_attn.q_proj"),
    *_linear("self_attn.k_proj"),
    *_linear("self_attn.v_proj"),
    *_linear("self_attn.o_proj"),
)
"""Llama's and Starcoder2's attention: separate query, key and value matrices, then the output."""

_NEOX = Family(
    base="gpt_neox",
    final_norm="final_layer_norm",
    attention="attention",
    tensors=(
        *_norm("input_layernorm", bias=True),
        *_linear("attention.query_key_value"),
        *(_absent,) * 4,
        *_linear("attention.dense"),
        *_norm("post_attention_layernorm", bias=True),
        *_linear("mlp.dense_h_to_4h"),
        _absent,
        _absent,
        *_linear("mlp.dense_4h_to_h"),
    ),
    norm=Norm.LAYER,
    activation=Activation.GELU_EXACT,
    hidden_act="gelu",
    fused_qkv=True,
)
_LLAMA = Family(
    base="model",
    final_norm="norm",
    attention="self_attn",
    tensors=(
        *_norm("input_layernorm", bias=False),
        *_SELF_ATTENTION,
        *_norm("post_attention_layernorm", bias=False),
        *_linear("mlp.up_proj"),
        *_linear("mlp.gate_proj"),
        *_linear("mlp.down_proj"),
    ),
    norm=Norm.RMS,
    activation=Activation.SILU_GATED,
    hidden_act="silu",
    fused_qkv=False,
)
_STARCODER2 = Family(
    base="model",
    final_norm="norm",
    attention="self_attn",
    tensors=(
        *_norm("input_layernorm", bias=True),
        *_SELF_ATTENTION,
        *_norm("post_attention_layernorm", bias=True),
        *_linear("mlp.c_fc"),
        _absent,
        _absent,
        *_linear("mlp.c_proj"),
    ),
    norm=Norm.LAYER,
    activation=Activation.GELU_TANH,
    hidden_act="gelu_pytorch_tanh",
    fused_qkv=False,
)
FAMILIES = {
    "GPTNeoXForCausalLM": _NEOX,
    "LlamaForCausalLM": _LLAMA,
    "Qwen2ForCausalLM": _LLAMA,
    "Starcoder2ForCausalLM": _STARCODER2,
}
"""The causal LMs the step computes, by class name."""

_MATRICES = (2, 4, 6, 8, 12, 14, 16)
"""The positions of the matrices in Family.tensors (whose scales follow the tensors)."""


def _layer_pointers(tensors: list[Any]) -> list[int | None]:
    """A layer's pointers in the C order up to its keys and values: its tensors, then the
    scales of its matrices (None for float32 ones and absent ones)."""
    pointers = [None if tensor is None else weight_pointers(tensor)[0] for tensor in tensors]
    scales = [None if tensors[i] is None else weight_pointers(tensors[i])[1] for i in _MATRICES]
    return pointers + scales


def sliding_window(config: Any) -> int | None:
    """The tokens each attends back over, where the model limits them."""
    if not getattr(config, "use_sliding_window", True):
        return None
    return getattr(config, "sliding_window", None)


class RotaryTables:
    """The cos and sin [positions, rotary_dim] that the model's rotary module computes for
    positions, kept where they do not depend on the sequence's length (the default rope type):
    rows for whole growth steps of positions at a time, then read in place (the module's call
    took ~150 us of each token's step). Otherwise computed for each step's positions."""

    def __init__(self, rotary_module: Any, like: torch.Tensor) -> None:
        self.module = rotary_module
        self.like = like
        self.kept = getattr(rotary_module, "rope_type", None) == "default"
        self.start = self.end = self.row_bytes = 0
        self._tables: tuple[torch.Tensor, torch.Tensor] = (like, like)
        """Kept alive: the C step reads them where _starts says."""
        self._starts = (0, 0)
        self.rotary_dim = self._compute(0, 1)

    def _compute(self, start: int, end: int) -> int:
        positions = torch.arange(start, end)[None]
        cos, sin = self.module(self.like, positions)
        cos, sin = self._tables = (cos[0].contiguous(), sin[0].contiguous())
        self.start, self.end = start, end
        self.row_bytes = cos.stride(0) * cos.element_size()
        self._starts = (cos.data_ptr(), sin.data_ptr())
        return int(cos.shape[-1])

    def pointers(self, position: int, tokens: int) -> tuple[int, int]:
        """Where the cos and sin rows of `tokens` positions from `position` start."""
        end = position + tokens
        if not self.kept:
            self._compute(position, end)
        elif end > self.end:
            self._compute(0, allocated_rows(max(end, 2 * self.end)))
        assert self.start <= position
        offset = (position - self.start) * self.row_bytes
        return self._starts[0] + offset, self._starts[1] + offset


class TokenStep:
    """Logits for new tokens after the tokens in a preallocated cache (which it extends),
    computed by the CPU kernels for a float32 model of one of FAMILIES. It runs on the weights
    the model had when the step was made."""

    verifies_drafts = True
    """A call computes each of several tokens exactly as alone: drafts checked in one call."""

    def __init__(self, model: Any, kernels: CpuKernels, family: Family) -> None:
        self.model = model
        self.kernels = kernels
        self.family = family
        self.base = getattr(model, family.base)
        config = model.config
        self.layers = list(self.base.layers)
        # The tensors stay referenced, so their pointers stay valid for the step's lifetime.
        self._weights = [[tensor(layer) for tensor in family.tensors] for layer in self.layers]
        self._weight_pointers = list(map(_layer_pointers, self._weights))
        head = model.get_output_embeddings()
        self._head = (getattr(head, "decode_weight", head.weight), head.bias)
        final_norm = getattr(self.base, family.final_norm)
        self._final_norm = (final_norm.weight, getattr(final_norm, "bias", None))
        self._embeddings = model.get_input_embeddings().weight
        self._rows = len(self._embeddings)
        self._rotary = RotaryTables(self.base.rotary_emb, self._embeddings[:1])
        self._placed: tuple[Any, ctypes.Array[Any], ctypes.Array[Any]] | None = None
        """The cache buffers' places last seen (PreallocatedLayer.buffer_pointers) and the
        arrays the C step reads them from."""
        self.window = sliding_window(config)
        """Tokens a token attends to at most (None: all before it): the step attends to all."""
        attention = getattr(self.layers[0], family.attention)
        norm = self.layers[0].input_layernorm
        heads = config.num_attention_heads
        self.shape = dict(
            layers=len(self.layers),
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(attention, "head_dim", None) or attention.head_size,
            intermediate=config.intermediate_size,
            vocab=head.out_features,
            eps=getattr(norm, "eps", None) or norm.variance_epsilon,
            scale=attention.scaling,
            parallel_residual=int(getattr(config, "use_parallel_residual", False)),
            bits=self._bits(),
            norm=int(family.norm),
            activation=int(family.activation),
            fused_qkv=int(family.fused_qkv),
        )

    def _bits(self) -> int:
        """The quantized matrices' bits (they all have the same), 0 if all are float32."""
        matrices = [weights[i] for weights in self._weights for i in _MATRICES]
        present = [matrix for matrix in matrices if matrix is not None]
        return max(map(weight_bits, [*present, self._head[0]]))

    @classmethod
    def for_model(cls, model: Any, kernels: CpuKernels) -> TokenStep | None:
        """The step for `model`, or None where the kernels do not compute what it computes."""
        family = FAMILIES.get(type(model).__name__)
        config = model.config
        if family is None or config.hidden_act != family.hidden_act:
            return None
        if not all(
            parameter.dtype == torch.float32
            and parameter.device.type == "cpu"
            and parameter.is_contiguous()
            for parameter in model.parameters()
        ):
            return None
        return cls(model, kernels, family)

    def applies(self, cache: Any, tokens: int = 1) -> bool:
        """Whether the step computes what the model computes for `tokens` new tokens after
        `cache`."""
        if self.model.training or not isinstance(cache, DynamicCache):
            return False
        layers = [
            layer
            for layer in cache.layers
            if isinstance(layer, PreallocatedLayer) and layer.is_initialized
        ]
        stored = {(layer.length, layer.sequences, layer.stored_dtype) for layer in layers}
        if len(layers) != len(cache.layers) or len(layers) != len(self.layers) or len(stored) != 1:
            return False
        length, sequences, dtype = stored.pop()
        within_window = self.window is None or length + tokens <= self.window
        return sequences == 1 and dtype in {torch.float32, torch.float16} and within_window

    def __call__(self, tokens: int | list[int], cache: DynamicCache) -> torch.Tensor:
        """The logits after `tokens`, whose keys and values are appended to `cache`: [vocab]
        after one token, [len(tokens), vocab] after a list (each after the ones before it)."""
        ids = [tokens] if isinstance(tokens, int) else tokens
        if not all(0 <= token < self._rows for token in ids):
            raise IndexError(f"token ids {ids} outside the {self._rows} embeddings")
        position = cache.get_seq_length()
        layers = [layer for layer in cache.layers if isinstance(layer, PreallocatedLayer)]
        assert len(layers) == len(cache.layers)
        for layer in layers:
            layer.grow(len(ids))
        rotary = self._rotary.pointers(position, len(ids))
        shape = DecoderShape(
            **self.shape,
            rotary_dim=self._rotary.rotary_dim,
            position=position,
            kv_half=int(layers[0].stored_dtype == torch.float16),
        )
        logits = self.kernels.decoder_step(
            shape,
            self._embeddings,
            int_array(ids),
            *self._cache_pointers(layers),
            rotary,
            self._final_norm,
            self._head,
        )
        return logits[0] if isinstance(tokens, int) else logits

    def _cache_pointers(
        self, layers: list[PreallocatedLayer]
    ) -> tuple[ctypes.Array[Any], ctypes.Array[Any]]:
        """Each layer's pointers in the C order with its cache rows, and the elements between
        two heads' rows of each layer's cache: built again only when the cache's buffers move."""
        placed = tuple(layer.buffer_pointers for layer in layers)
        if self._placed is None or self._placed[0] != placed:
            pointers: list[int | None] = []
            for weights, (keys, values, _) in zip(self._weight_pointers, placed, strict=True):
                pointers += [*weights, keys, values]
            strides = [stride for _, _, stride in placed]
            self._placed = (placed, pointer_array(pointers), int_array(strides))
        return self._placed[1], self._placed[2]
