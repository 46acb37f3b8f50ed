"""Input-major weights compute what nn.Linear computes, and only widening layers change."""

from __future__ import annotations

import torch
from torch import nn

from polycoder_ls.engine.linear_layout import InputMajorLinear, use_input_major_weights


def test_input_major_linear_matches_nn_linear_for_rows_and_sequences():
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(16, 48, bias=bias)
        swapped = InputMajorLinear(linear)
        for shape in ((1, 16), (2, 5, 16), (1, 1, 16)):
            hidden = torch.randn(*shape)
            torch.testing.assert_close(swapped(hidden), linear(hidden))
        assert torch.equal(swapped.weight, linear.weight)


def test_only_widening_linears_are_swapped():
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8), nn.Linear(8, 8))
    assert use_input_major_weights(model) == 1
    assert [type(layer).__name__ for layer in model] == [
        "InputMajorLinear",
        "GELU",
        "Linear",
        "Linear",
    ]
