"""The CPU decode kernels, and the whole-model decode step built on them, compute what torch
and transformers compute; the model falls back to torch's operators when they cannot be built."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from reference import ReferenceModel, reference_int8, with_int8_values
from torch import nn
from torch.nn import functional
from transformers import AutoModelForCausalLM, DynamicCache, GPTNeoXConfig, GPTNeoXForCausalLM

from polycoder_ls.config import Settings
from polycoder_ls.engine import cpu_kernels
from polycoder_ls.engine.cpu_kernels import (
    CpuKernels,
    Int8Weight,
    KernelLinear,
    use_cpu_kernels,
)
from polycoder_ls.engine.generate import DecodeParams, Generator
from polycoder_ls.engine.kv_cache import preallocated_cache
from polycoder_ls.engine.loading import load_model
from polycoder_ls.engine.neox_decode import NeoXTokenStep


@pytest.fixture(scope="module")
def kernels() -> CpuKernels:
    return CpuKernels.load()


@pytest.mark.parametrize(("inputs", "outputs"), [(64, 192), (768, 50), (13, 7), (3072, 768)])
def test_matrix_vector_product_matches_torch(kernels, inputs, outputs):
    torch.manual_seed(inputs)
    weight, row, bias = torch.randn(outputs, inputs), torch.randn(inputs), torch.randn(outputs)
    close = {"rtol": 1e-4, "atol": 1e-4}  # sums of up to 3072 products, in another order
    torch.testing.assert_close(kernels.gemv(weight, row, bias), weight @ row + bias, **close)
    torch.testing.assert_close(kernels.gemv(weight, row, None), weight @ row, **close)


@pytest.mark.parametrize(
    ("heads", "length", "dim"), [(12, 1900, 64), (4, 1, 80), (2, 5, 128), (3, 37, 13)]
)
def test_single_query_attention_matches_sdpa_over_a_cache_with_room_to_spare(
    kernels, heads, length, dim
):
    torch.manual_seed(length)
    capacity = length + 9
    keys = torch.randn(1, heads, capacity, dim)[:, :, :length]
    values = torch.randn(1, heads, capacity, dim)[:, :, :length]
    query = torch.randn(1, heads, 1, dim) * 3
    expected = functional.scaled_dot_product_attention(query, keys, values)[0, :, 0]
    got = kernels.attend(query[0, :, 0].contiguous(), keys[0], values[0], dim**-0.5)
    torch.testing.assert_close(got, expected)


def test_kernel_linear_equals_nn_linear_for_rows_and_sequences(kernels):
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(24, 40, bias=bias)
        swapped = KernelLinear.wrap(linear, kernels, int8=False)
        for shape in ((1, 1, 24), (24,), (2, 5, 24)):
            hidden = torch.randn(*shape)
            torch.testing.assert_close(swapped(hidden), linear(hidden))
        assert swapped.weight is linear.weight


def test_int8_weights_follow_q8_0s_rule():
    torch.manual_seed(3)
    weight = torch.randn(5, 96) * torch.tensor([1e-3, 1.0, 30.0]).repeat_interleave(32)
    weight[2, 32:64] = 0.0  # a group of zeros has scale 0
    quantized = Int8Weight.quantize(weight)
    values, scales = reference_int8(weight)
    assert quantized.values.dtype == torch.int8 and quantized.scales.dtype == torch.float16
    assert torch.equal(quantized.scales, scales)
    # Ties (x.5) may round either way between the two; nothing else may differ.
    assert (quantized.values.int() - values.int()).abs().max() <= 1
    assert (quantized.values != values).float().mean() < 0.01
    error = (quantized.dequantize() - weight).abs()
    assert (error <= scales.float().repeat_interleave(32, dim=1) * 0.51).all()
    assert quantized.values.abs().max() == 127
    assert quantized.nbytes == 5 * 96 + 5 * 3 * 2


@pytest.mark.parametrize(("inputs", "outputs"), [(96, 7), (768, 50), (3072, 768), (64, 1)])
def test_int8_matrix_vector_product_matches_its_float_values(kernels, inputs, outputs):
    torch.manual_seed(inputs)
    weight, row, bias = torch.randn(outputs, inputs), torch.randn(inputs), torch.randn(outputs)
    quantized = Int8Weight.quantize(weight)
    values, scales = reference_int8(weight) if inputs < 1000 else (None, None)
    dequantized = quantized.values.double() * quantized.scales.double().repeat_interleave(32, 1)
    expected = (dequantized @ row.double() + bias.double()).float()
    close = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(kernels.gemv(quantized, row, bias), expected, **close)
    torch.testing.assert_close(kernels.gemv(quantized, row, None), expected - bias, **close)
    if values is not None:
        from_reference = values.double() * scales.double().repeat_interleave(32, 1)
        torch.testing.assert_close(
            kernels.gemv(quantized, row, None), (from_reference @ row.double()).float(), **close
        )


def test_an_int8_kernel_linear_computes_with_its_int8_values_on_every_path(kernels):
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    original = linear.weight.detach().clone()
    swapped = KernelLinear.wrap(linear, kernels, int8=True)
    assert swapped.int8 is not None
    values, scales = reference_int8(original)
    dequantized = (values.float() * scales.float().repeat_interleave(32, 1)).reshape(40, 64)
    torch.testing.assert_close(swapped.weight.detach(), dequantized, rtol=0, atol=1e-6)
    reference = nn.Linear(64, 40)
    with torch.no_grad():
        reference.weight.copy_(dequantized)
        reference.bias.copy_(linear.bias)
    for shape in ((1, 1, 64), (64,), (2, 5, 64)):
        hidden = torch.randn(*shape)
        torch.testing.assert_close(swapped(hidden), reference(hidden), rtol=1e-4, atol=1e-4)
    odd = KernelLinear.wrap(nn.Linear(24, 8), kernels, int8=True)
    assert odd.int8 is None, "inputs not a multiple of 32 stay float32"


def _decode_logits(model, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """Logits of a prefill in two chunks (the second one after cached tokens, as when a
    document's cache is reused), then of `steps` single-token steps on the growing cache (sized
    for the prompt: it grows while decoding)."""
    cache = preallocated_cache(model.config.num_hidden_layers, len(prompt))
    logits = []
    with torch.inference_mode():
        half = len(prompt) // 2
        model(input_ids=torch.tensor([prompt[:half]]), cache=cache, use_cache=True)
        out = model(input_ids=torch.tensor([prompt[half:]]), cache=cache, use_cache=True)
        logits.extend(out.logits[0])
        for _ in range(steps):
            token = torch.tensor([[int(logits[-1].argmax())]])
            logits.append(model(input_ids=token, cache=cache, use_cache=True).logits[0, -1])
    return logits


def test_a_model_on_the_kernels_decodes_what_torch_decodes(tiny_model: Path):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    fast = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    assert use_cpu_kernels(fast)
    assert any(isinstance(module, KernelLinear) for module in fast.modules())
    prompt = [5 + (i * 37) % 500 for i in range(90)]
    expected, got = _decode_logits(plain, prompt, 8), _decode_logits(fast, prompt, 8)
    for step_expected, step_got in zip(expected, got, strict=True):
        torch.testing.assert_close(step_got, step_expected, rtol=1e-4, atol=1e-4)


def _neox(parallel_residual: bool, rotary_share: float, **config: Any) -> GPTNeoXForCausalLM:
    torch.manual_seed(7)
    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=300,
            hidden_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=384,
            max_position_embeddings=512,
            use_parallel_residual=parallel_residual,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": rotary_share,
            },
            **config,
        )
    ).eval()


@pytest.mark.parametrize(
    ("parallel_residual", "rotary_share", "attention_bias", "int8"),
    [
        (False, 1.0, True, False),
        (True, 0.25, True, False),
        (True, 1.0, False, False),
        (False, 1.0, True, True),
        (True, 0.25, False, True),
    ],
)
def test_the_whole_model_decode_step_computes_what_transformers_computes(
    parallel_residual, rotary_share, attention_bias, int8
):
    plain = _neox(parallel_residual, rotary_share, attention_bias=attention_bias)
    fast = copy.deepcopy(plain)
    if int8:
        plain = with_int8_values(plain)
    kernels = use_cpu_kernels(fast, int8=int8)
    assert kernels is not None
    linears = [module for module in fast.modules() if isinstance(module, KernelLinear)]
    assert all((module.int8 is not None) == int8 for module in linears)
    step = NeoXTokenStep.for_model(fast, kernels)
    assert step is not None
    # 250 prompt tokens: the cache grows past its first allocation (256) while decoding.
    prompt = [1 + (i * 13) % 290 for i in range(250)]
    expected_cache, cache = preallocated_cache(3, len(prompt)), preallocated_cache(3, len(prompt))
    with torch.inference_mode():
        expected = plain(input_ids=torch.tensor([prompt]), cache=expected_cache).logits[0, -1]
        fast(input_ids=torch.tensor([prompt]), cache=cache)
        for _ in range(12):
            token = int(expected.argmax())
            expected = plain(input_ids=torch.tensor([[token]]), cache=expected_cache).logits[0, -1]
            assert step.applies(cache)
            torch.testing.assert_close(step(token, cache), expected, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == expected_cache.get_seq_length() == len(prompt) + 12
    for ours, theirs in zip(cache.layers, expected_cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.values, theirs.values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("int8", [False, True])
def test_the_step_feeds_several_tokens_as_transformers_feeds_them(int8):
    plain = _neox(False, 0.25)
    fast = copy.deepcopy(plain)
    if int8:
        plain = with_int8_values(plain)
    kernels = use_cpu_kernels(fast, int8=int8)
    assert kernels is not None
    step = NeoXTokenStep.for_model(fast, kernels)
    assert step is not None
    prompt = [1 + (i * 13) % 290 for i in range(250)]
    expected_cache, cache = preallocated_cache(3, len(prompt)), preallocated_cache(3, len(prompt))
    with torch.inference_mode():
        plain(input_ids=torch.tensor([prompt]), cache=expected_cache)
        fast(input_ids=torch.tensor([prompt]), cache=cache)
        for chunk in ([7], [9, 250, 3], [5 + i for i in range(9)], [11, 12]):
            expected = plain(input_ids=torch.tensor([chunk]), cache=expected_cache).logits[0]
            got = step(chunk, cache)
            assert got.shape == (len(chunk), 300)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == expected_cache.get_seq_length() == len(prompt) + 15
    for ours, theirs in zip(cache.layers, expected_cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.values, theirs.values, rtol=1e-4, atol=1e-4)


def test_the_decode_step_is_left_to_transformers_where_it_would_differ():
    kernels = CpuKernels.load()
    other_activation = _neox(False, 1.0, hidden_act="relu")
    assert NeoXTokenStep.for_model(other_activation, kernels) is None
    step = NeoXTokenStep.for_model(_neox(False, 1.0), kernels)
    assert step is not None
    assert not step.applies(DynamicCache())
    assert not step.applies(preallocated_cache(3, 16)), "an empty cache has no prompt in it"


def test_the_generator_decodes_with_the_whole_model_step(tiny_model: Path, monkeypatch):
    loaded = load_model(Settings(model=str(tiny_model)))
    assert loaded.token_step is not None
    calls = []
    step = NeoXTokenStep.__call__
    monkeypatch.setattr(
        NeoXTokenStep, "__call__", lambda self, *args: calls.append(args[0]) or step(self, *args)
    )
    greedy = DecodeParams(max_new_tokens=10, temperature=0.0, top_p=1.0)
    text, stats = Generator(loaded).generate(
        "doc", list(range(5, 60)), greedy, lambda _: False, lambda: False
    )
    assert stats.generated_tokens == 10
    assert all(len(call) == 1 for call in calls), "one token a call"
    assert len(calls) == 9, "every token after the first comes from the step"
    fed = [call[0] for call in calls]
    assert loaded.decode(fed) == text[: len(loaded.decode(fed))]
    generator = Generator(loaded)
    generator.generate("doc", list(range(5, 60)), greedy, lambda _: False, lambda: False)
    calls.clear()
    typed = list(range(5, 65))
    generator.generate("doc", typed, greedy, lambda _: False, lambda: False)
    assert calls[0] == typed[55:], "a few typed tokens after the cached ones: one call"


def test_int8_serves_the_greedy_text_of_transformers_on_the_int8_values(tiny_model: Path):
    loaded = load_model(Settings(model=str(tiny_model), dtype="int8"))
    assert loaded.dtype_name == "int8" and loaded.token_step is not None
    linears = [module for module in loaded.model.modules() if isinstance(module, KernelLinear)]
    assert linears and all(module.int8 is not None for module in linears)
    reference = ReferenceModel(tiny_model)
    with_int8_values(reference.model)
    greedy = DecodeParams(max_new_tokens=24, temperature=0.0, top_p=1.0)
    for start in (5, 200):
        prompt = [start + (i * 37) % 400 for i in range(70)]
        text, _ = Generator(loaded).generate(
            f"doc{start}", prompt, greedy, lambda _: False, lambda: False
        )
        assert text == reference.raw_generation(prompt, 24)


def test_a_failed_build_leaves_the_model_on_torch(tiny_model, tmp_path, monkeypatch, caplog):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    assert not use_cpu_kernels(model)
    assert "compiling broken.c failed" in caplog.text
    assert not any(isinstance(module, KernelLinear) for module in model.modules())
    assert model.config._attn_implementation != cpu_kernels.ATTENTION_NAME


def test_the_kernel_cache_tells_compilers_apart_without_running_them(tmp_path):
    from polycoder_ls.engine.cpu_kernels import _compiler_identity

    compiler = tmp_path / "cc"
    compiler.write_text("#!/bin/sh\ntouch ran\n")
    first = _compiler_identity(str(compiler))
    assert first == _compiler_identity(str(compiler))
    compiler.write_text("#!/bin/sh\ntouch ran # upgraded\n")
    assert _compiler_identity(str(compiler)) != first
    assert not (tmp_path / "ran").exists() and not Path("ran").exists()
