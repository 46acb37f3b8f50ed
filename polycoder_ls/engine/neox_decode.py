"""A GPT-NeoX model's whole single-token decode step in one call of the CPU kernels.

Around its matrix products, transformers' GPT-NeoX forward runs some thirty small tensor
operations and module calls per layer and token (views, slices and concatenations for the
rotary embedding, dropout, layer norms, the cache update) and opens one thread team per
product: ~3.4 ms of a 160M-shaped model's ~23 ms decode step on a 2-core CPU
(`bench/decode_cache.py --profile`). For one new token after a preallocated cache, this step
computes the same function with the model's own weights in one C call and one thread team:
embedding row, per layer the layer norms, projections, rotary embedding, KV-cache write,
attention and exact GELU, then the final norm and the LM head. Prefill chunks, batches and every
other call run transformers' forward.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

import torch
from transformers import DynamicCache

from .cpu_kernels import CpuKernels, NeoXShape, QuantizedWeight, weight_bits, weight_pointers
from .kv_cache import PreallocatedLayer


def _decode_weight(path: str) -> Callable[[Any], torch.Tensor | QuantizedWeight]:
    """The weight a linear layer's single-row products read (quantized where it has one)."""
    module = attrgetter(path)
    return lambda layer: getattr(module(layer), "decode_weight", module(layer).weight)


# Each layer's tensors in the order of `enum layer_pointer` in cpu_kernels.c (then its keys and
# values); a missing bias is None.
_LAYER_TENSORS = (
    attrgetter("input_layernorm.weight"),
    attrgetter("input_layernorm.bias"),
    _decode_weight("attention.query_key_value"),
    attrgetter("attention.query_key_value.bias"),
    _decode_weight("attention.dense"),
    attrgetter("attention.dense.bias"),
    attrgetter("post_attention_layernorm.weight"),
    attrgetter("post_attention_layernorm.bias"),
    _decode_weight("mlp.dense_h_to_4h"),
    attrgetter("mlp.dense_h_to_4h.bias"),
    _decode_weight("mlp.dense_4h_to_h"),
    attrgetter("mlp.dense_4h_to_h.bias"),
)
_MATRICES = (2, 4, 8, 10)


def _layer_pointers(tensors: list[Any]) -> list[int | None]:
    """A layer's pointers in the C order up to its keys and values: its tensors, then the
    scales of its matrices (None for float32 ones)."""
    pointers = [None if tensor is None else weight_pointers(tensor)[0] for tensor in tensors]
    return pointers + [weight_pointers(tensors[index])[1] for index in _MATRICES]


class NeoXTokenStep:
    """Logits for one new token after the tokens in a preallocated cache (which it extends),
    computed by the CPU kernels for a float32 GPTNeoXForCausalLM with exact GELU. It runs on the
    weights the model had when the step was made."""

    def __init__(self, model: Any, kernels: CpuKernels) -> None:
        self.model = model
        self.kernels = kernels
        base, config = model.gpt_neox, model.config
        self.layers = list(base.layers)
        # The tensors stay referenced, so their pointers stay valid for the step's lifetime.
        self._weights = [[tensor(layer) for tensor in _LAYER_TENSORS] for layer in self.layers]
        self._weight_pointers = list(map(_layer_pointers, self._weights))
        head = model.get_output_embeddings()
        self._head = (getattr(head, "decode_weight", head.weight), head.bias)
        attention = self.layers[0].attention
        self.shape = dict(
            layers=len(self.layers),
            hidden=config.hidden_size,
            heads=config.num_attention_heads,
            head_dim=attention.head_size,
            intermediate=config.intermediate_size,
            rotary_dim=attention.rotary_ndims,
            vocab=model.get_output_embeddings().out_features,
            eps=config.layer_norm_eps,
            scale=attention.scaling,
            parallel_residual=int(config.use_parallel_residual),
            bits=self._bits(),
        )

    def _bits(self) -> int:
        """The quantized matrices' bits (they all have the same), 0 if all are float32."""
        matrices = [weights[index] for weights in self._weights for index in _MATRICES]
        return max(map(weight_bits, [*matrices, self._head[0]]))

    @classmethod
    def for_model(cls, model: Any, kernels: CpuKernels) -> NeoXTokenStep | None:
        """The step for `model`, or None where the kernels do not compute what it computes."""
        from transformers import GPTNeoXForCausalLM

        if not isinstance(model, GPTNeoXForCausalLM) or model.config.hidden_act != "gelu":
            return None
        if not all(
            parameter.dtype == torch.float32
            and parameter.device.type == "cpu"
            and parameter.is_contiguous()
            for parameter in model.parameters()
        ):
            return None
        return cls(model, kernels)

    def applies(self, cache: Any) -> bool:
        if self.model.training or not isinstance(cache, DynamicCache):
            return False
        layers = [
            layer
            for layer in cache.layers
            if isinstance(layer, PreallocatedLayer) and layer.is_initialized
        ]
        stored = {(layer.length, layer.sequences, layer.stored_dtype) for layer in layers}
        return (
            len(layers) == len(cache.layers) == len(self.layers)
            and len(stored) == 1
            and stored.pop()[1:] in {(1, torch.float32), (1, torch.float16)}
        )

    def __call__(self, tokens: int | list[int], cache: DynamicCache) -> torch.Tensor:
        """The logits after `tokens`, whose keys and values are appended to `cache`: [vocab]
        after one token, [len(tokens), vocab] after a list (each after the ones before it)."""
        ids = [tokens] if isinstance(tokens, int) else tokens
        position = cache.get_seq_length()
        embeddings = self.model.get_input_embeddings().weight[ids]
        positions = torch.arange(position, position + len(ids))[None]
        cos, sin = self.model.gpt_neox.rotary_emb(embeddings, positions)
        pointers: list[int | None] = []
        head_strides = []
        for layer_pointers, cache_layer in zip(self._weight_pointers, cache.layers, strict=True):
            assert isinstance(cache_layer, PreallocatedLayer)
            keys, values = cache_layer.append_rows(len(ids))
            pointers += [*layer_pointers, keys.data_ptr(), values.data_ptr()]
            head_strides.append(keys.stride(0))
        kv_half = int(keys.dtype == torch.float16)
        final_norm = self.model.gpt_neox.final_layer_norm
        logits = self.kernels.neox_step(
            NeoXShape(**self.shape, position=position, kv_half=kv_half),
            embeddings,
            pointers,
            head_strides,
            (cos.reshape(len(ids), -1).contiguous(), sin.reshape(len(ids), -1).contiguous()),
            (final_norm.weight, final_norm.bias),
            self._head,
        )
        return logits[0] if isinstance(tokens, int) else logits
