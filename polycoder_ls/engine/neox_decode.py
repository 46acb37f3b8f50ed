"""GPT-NeoX decoder layers that take a single-token step in a dozen calls.

Around its matrix products, transformers' GPT-NeoX layer runs some twenty small tensor operations
and module calls per token (views, slices and concatenations for the rotary embedding, dropout,
layer norms): 1.3-3.2 ms of a 160M-shaped model's ~25 ms decode step on a 2-core CPU
(`bench/decode_cache.py`, with and without this step in one process). For one new token this
step computes the same function with the layer's own weights and activation: layer norms, the
four projections and the MLP on the CPU kernels, and one kernel for the rotary embedding, the
KV-cache write and attention. Every other call (prefill chunks, batches, masks, other caches,
training) runs transformers' own forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional
from transformers import DynamicCache

from .cpu_kernels import CpuKernels, KernelLinear
from .kv_cache import PreallocatedLayer


def _layer_norm(norm: nn.LayerNorm, hidden: torch.Tensor) -> torch.Tensor:
    return functional.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _project(linear: nn.Linear, kernels: CpuKernels, row: torch.Tensor) -> torch.Tensor:
    return kernels.gemv(linear.weight, row, linear.bias)


class NeoXDecodeStep:
    """The single-token forward of one GPTNeoXLayer; `applies` says whether a call is one."""

    def __init__(self, layer: Any, kernels: CpuKernels) -> None:
        self.layer = layer
        self.kernels = kernels
        attention = layer.attention
        self.layer_index: int = attention.layer_idx
        self.heads: int = attention.config.num_attention_heads
        self.scale: float = attention.scaling

    def applies(
        self, hidden: torch.Tensor, mask: Any, cache: Any, rotary: Any, kwargs: dict[str, Any]
    ) -> bool:
        return (
            not self.layer.training
            and hidden.shape[:2] == (1, 1)
            and hidden.dtype == torch.float32
            and hidden.device.type == "cpu"
            and mask is None
            and rotary is not None
            and not kwargs.get("output_attentions")
            and isinstance(cache, DynamicCache)
            and len(cache.layers) > self.layer_index
            and isinstance(cache_layer := cache.layers[self.layer_index], PreallocatedLayer)
            and cache_layer.is_initialized
        )

    def __call__(
        self, hidden: torch.Tensor, cache: DynamicCache, rotary: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        layer, kernels = self.layer, self.kernels
        attention, mlp = layer.attention, layer.mlp
        row = hidden.reshape(-1)
        qkv = _project(attention.query_key_value, kernels, _layer_norm(layer.input_layernorm, row))
        cache_layer = cache.layers[self.layer_index]
        assert isinstance(cache_layer, PreallocatedLayer)
        keys, values, position = cache_layer.append_row()
        cos, sin = (part.reshape(-1).contiguous() for part in rotary)
        heads_out = kernels.neox_attend_step(
            qkv.view(self.heads, -1), (cos, sin), (keys, values), position, self.scale
        )
        attended = _project(attention.dense, kernels, heads_out.view(-1))
        if layer.use_parallel_residual:
            mlp_input = _layer_norm(layer.post_attention_layernorm, row)
            residual = row + attended
        else:
            residual = row + attended
            mlp_input = _layer_norm(layer.post_attention_layernorm, residual)
        expanded = mlp.act(_project(mlp.dense_h_to_4h, kernels, mlp_input))
        out = residual + _project(mlp.dense_4h_to_h, kernels, expanded)
        return out.view_as(hidden)


def _stepping_forward(step: NeoXDecodeStep, original: Any) -> Any:
    def forward(
        hidden_states: torch.Tensor,
        attention_mask: Any = None,
        position_ids: Any = None,
        use_cache: bool | None = False,
        layer_past: Any = None,
        position_embeddings: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if step.applies(hidden_states, attention_mask, layer_past, position_embeddings, kwargs):
            return step(hidden_states, layer_past, position_embeddings)
        return original(
            hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            layer_past=layer_past,
            position_embeddings=position_embeddings,
            **kwargs,
        )

    return forward


def use_neox_decode_steps(model: nn.Module, kernels: CpuKernels) -> int:
    """Give every GPTNeoXLayer of `model` whose projections run on the kernels the single-token
    step; return how many layers got it."""
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

    layers = [
        layer
        for layer in model.modules()
        if isinstance(layer, GPTNeoXLayer)
        and isinstance(layer.attention.query_key_value, KernelLinear)
        and isinstance(layer.mlp.dense_4h_to_h, KernelLinear)
    ]
    for layer in layers:
        # An instance attribute: nn.Module.__call__ looks up self.forward.
        layer.forward = _stepping_forward(NeoXDecodeStep(layer, kernels), layer.forward)  # type: ignore[method-assign]
    return len(layers)
