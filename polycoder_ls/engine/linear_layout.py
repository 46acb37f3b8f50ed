"""Weight layout for fast CPU decoding.

A decode step multiplies one row by every weight matrix, so it is bound by how fast the weights
stream from memory. On CPU, torch's matrix-vector kernels stream an `nn.Linear` weight
([out, in]) at ~16 GB/s when out > in, but the same matrix stored input-major ([in, out]) at
~23-30 GB/s (bench/decode_cache.py; the language-model head gains most). Matrices with out <= in
are as fast or faster in the usual layout, so only the widening ones are converted.
"""

from __future__ import annotations

import torch
from torch import nn


class InputMajorLinear(nn.Module):
    """`nn.Linear` with its weight stored transposed, [in_features, out_features]."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """The weight as `nn.Linear` holds it ([out, in]), a view."""
        return self.weight_t.t()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, self.in_features)
        if self.bias is None:
            out = rows @ self.weight_t
        else:
            out = torch.addmm(self.bias, rows, self.weight_t)
        return out.view(*hidden.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, input-major"


def use_input_major_weights(model: nn.Module) -> int:
    """Swap every widening `nn.Linear` of `model` for an InputMajorLinear; return how many."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.out_features > child.in_features
    ]
    for parent, name, child in swaps:
        setattr(parent, name, InputMajorLinear(child))
    return len(swaps)
