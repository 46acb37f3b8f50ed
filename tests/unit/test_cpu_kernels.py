"""The CPU decode kernels, and the whole-model decode step built on them, compute what torch
and transformers compute; the model falls back to torch's operators when they cannot be built."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from reference import (
    ReferenceModel,
    as_quantized_server,
    cpu_has_bf16,
    float16_cache,
    quantized_activations,
    reference_quantized,
    with_bf16_prompts,
    with_quantized_activations,
)
from torch import nn
from torch.nn import functional
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    GPT2Config,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Starcoder2Config,
    Starcoder2ForCausalLM,
)

from polycoder_ls.config import Settings
from polycoder_ls.engine import cpu_kernels
from polycoder_ls.engine.cpu_kernels import (
    BF16_MIN_ROWS,
    QUANTIZED_BLOCK_ROWS,
    CpuKernels,
    KernelLinear,
    QuantizedWeight,
    cpu_flags,
    runnable_builds,
    use_cpu_kernels,
)
from polycoder_ls.engine.generate import DecodeParams, Generator
from polycoder_ls.engine.kv_cache import preallocated_cache
from polycoder_ls.engine.loading import load_model
from polycoder_ls.engine.token_step import TokenStep

BUILDS = {build.name: build for build in runnable_builds()}
"""Every build of the kernels this CPU runs: each is checked."""


@pytest.fixture(scope="module", params=list(BUILDS))
def kernels(request: pytest.FixtureRequest) -> CpuKernels:
    return CpuKernels.load(BUILDS[request.param])


@pytest.mark.parametrize(("inputs", "outputs"), [(64, 192), (768, 50), (13, 7), (3072, 768)])
def test_matrix_vector_product_matches_torch(kernels, inputs, outputs):
    torch.manual_seed(inputs)
    weight, row, bias = torch.randn(outputs, inputs), torch.randn(inputs), torch.randn(outputs)
    close = {"rtol": 1e-4, "atol": 1e-4}  # sums of up to 3072 products, in another order
    torch.testing.assert_close(kernels.gemm(weight, row, bias), weight @ row + bias, **close)
    torch.testing.assert_close(kernels.gemm(weight, row, None), weight @ row, **close)


@pytest.mark.parametrize("cached", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("heads", "length", "dim"),
    [(12, 1900, 64), (4, 1, 80), (2, 5, 128), (3, 37, 13), (3, 8, 64), (4, 17, 80), (2, 23, 128)],
)
def test_single_query_attention_matches_sdpa_over_a_cache_with_room_to_spare(
    kernels, heads, length, dim, cached
):
    torch.manual_seed(length)
    capacity = length + 9
    keys = torch.randn(1, heads, capacity, dim).to(cached)[:, :, :length]
    values = torch.randn(1, heads, capacity, dim).to(cached)[:, :, :length]
    query = torch.randn(1, heads, 1, dim) * 3
    expected = functional.scaled_dot_product_attention(query, keys.float(), values.float())
    got = kernels.attend(query[0, :, 0].contiguous(), keys[0], values[0], dim**-0.5)
    torch.testing.assert_close(got, expected[0, :, 0])


def test_kernel_linear_equals_nn_linear_for_rows_and_sequences(kernels):
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(24, 40, bias=bias)
        swapped = KernelLinear.wrap(linear, kernels, None, bf16_prefill=True)
        for shape in ((1, 1, 24), (24,), (2, 5, 24), (1, 40, 24)):
            hidden = torch.randn(*shape)
            torch.testing.assert_close(swapped(hidden), linear(hidden))
        assert swapped.weight is linear.weight


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_weights_follow_q8_0s_and_q4_0s_rules(bits):
    torch.manual_seed(3)
    weight = torch.randn(5, 96) * torch.tensor([1e-3, 1.0, 30.0]).repeat_interleave(32)
    weight[2, 32:64] = 0.0  # a group of zeros has scale 0
    weight[3, 64:96] = weight[3, 64:96].abs()  # the extreme weight positive: a negative scale
    quantized = QuantizedWeight.quantize(weight, bits)
    values, scales = reference_quantized(weight, bits)
    assert quantized.scales.dtype == torch.float16
    assert torch.equal(quantized.scales, scales)
    got = quantized.values().reshape(5, 96)
    # Ties (x.5) may round either way between the two; nothing else may differ.
    assert (got.int() - values.int()).abs().max() <= 1
    assert (got != values).float().mean() < 0.01
    error = (quantized.dequantize() - weight).abs()
    # q4_0 maps the extreme weight to -8; a weight near minus it is clipped from 8 to 7.
    steps = 0.51 if bits == 8 else 1.0
    assert (error <= scales.float().abs().repeat_interleave(32, dim=1) * steps).all()
    assert got.abs().max() == (127 if bits == 8 else 8)
    assert quantized.nbytes == 5 * 96 * bits // 8 + 5 * 3 * 2
    tall = torch.randn(QUANTIZED_BLOCK_ROWS + 37, 64)  # quantized in two blocks of rows
    tall_values, tall_scales = reference_quantized(tall, bits)
    quantized_tall = QuantizedWeight.quantize(tall, bits)
    assert torch.equal(quantized_tall.scales, tall_scales)
    assert (quantized_tall.values().reshape(tall.shape) != tall_values).float().mean() < 0.01
    own_values = quantized_tall.values().reshape(tall.shape).float()
    unpacked = own_values * quantized_tall.scales.float().repeat_interleave(32, 1)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(quantized_tall.dequantize(dtype), unpacked.to(dtype))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_weights_are_stored_as_the_kernels_read_them(bits):
    """Golden layout, position by position: a row's blocks of 8 groups (the last with fewer,
    `lanes`), value 4 k + j of group `lane` at byte (k * lanes + lane) * 4 + j of its block;
    4-bit values pack vectors k = 2 c and 2 c + 1 into the low and high nibbles of chunk c."""
    torch.manual_seed(5)
    groups = 11  # one block of 8 groups and one of 3
    weight = torch.randn(2, groups * 32)
    quantized = QuantizedWeight.quantize(weight, bits)
    values = reference_quantized(weight, bits)[0].int()
    stored = quantized.stored.int()
    assert quantized.stored.dtype == torch.uint8
    for row in range(2):
        for group in range(groups):
            block, lane = divmod(group, 8)
            lanes = 8 if block == 0 else groups - 8
            for index in range(32):
                k, j = divmod(index, 4)
                value = values[row, group * 32 + index].item()
                if bits == 8:
                    at = block * 256 + (k * lanes + lane) * 4 + j
                    assert stored[row, at].item() == value + 128
                else:
                    chunk, high = divmod(k, 2)
                    at = block * 128 + (chunk * lanes + lane) * 4 + j
                    assert (stored[row, at].item() >> 4 * high) & 15 == value + 8


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    ("inputs", "outputs"), [(96, 7), (768, 50), (352, 9), (3072, 768), (64, 1)]
)
def test_a_quantized_matrix_product_matches_its_float_values(kernels, bits, inputs, outputs):
    torch.manual_seed(inputs)
    weight, bias = torch.randn(outputs, inputs), torch.randn(outputs)
    quantized = QuantizedWeight.quantize(weight, bits)
    if inputs < 1000:
        values, scales = reference_quantized(weight, bits)
    else:
        values, scales = quantized.values().reshape(weight.shape), quantized.scales
    dequantized = values.double() * scales.double().repeat_interleave(32, 1)
    close = {"rtol": 1e-4, "atol": 1e-4}
    for rows in (torch.randn(inputs), torch.randn(5, inputs)):
        expected = (quantized_activations(rows).double() @ dequantized.T + bias.double()).float()
        torch.testing.assert_close(kernels.gemm(quantized, rows, bias), expected, **close)
        torch.testing.assert_close(kernels.gemm(quantized, rows, None), expected - bias, **close)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("bf16_prefill", [False, True])
def test_a_quantized_kernel_linear_computes_with_its_values_on_every_path(
    kernels, bits, bf16_prefill
):
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    original = linear.weight.detach().clone()
    swapped = KernelLinear.wrap(linear, kernels, bits, bf16_prefill)
    assert swapped.quantized is not None and swapped.quantized.bits == bits
    values, scales = reference_quantized(original, bits)
    dequantized = (values.float() * scales.float().repeat_interleave(32, 1)).reshape(40, 64)
    torch.testing.assert_close(swapped.quantized.dequantize(), dequantized, rtol=0, atol=1e-6)
    assert swapped.weight.numel() == 0, "the float32 weight is freed"
    reference = nn.Linear(64, 40)
    with torch.no_grad():
        reference.weight.copy_(dequantized)
        reference.bias.copy_(linear.bias)
    with_quantized_activations(reference, BF16_MIN_ROWS)
    if bf16_prefill:
        with_bf16_prompts(reference, BF16_MIN_ROWS)
    for shape in ((1, 1, 64), (64,), (2, 5, 64), (1, BF16_MIN_ROWS - 1, 64), (2, 40, 64)):
        hidden = torch.randn(*shape)
        torch.testing.assert_close(swapped(hidden), reference(hidden), rtol=1e-4, atol=1e-4)
    if bf16_prefill:  # a float32 product of many rows differs: the bfloat16 path was taken
        many = torch.randn(1, 40, 64)
        assert not torch.allclose(swapped(many), many @ dequantized.T + linear.bias, atol=1e-4)
    odd = KernelLinear.wrap(nn.Linear(24, 8), kernels, bits, bf16_prefill)
    assert odd.quantized is None and odd.prefill_weight is None, "inputs not a multiple of 32"


def test_a_weight_another_module_shares_becomes_its_quantized_values(kernels):
    torch.manual_seed(1)
    embedding, head = nn.Embedding(40, 64), nn.Linear(64, 40, bias=False)
    head.weight = embedding.weight
    tied = nn.ModuleDict({"embedding": embedding, "head": head})
    values, scales = reference_quantized(embedding.weight.detach(), 8)
    assert use_cpu_kernels(tied, 8) is not None
    assert isinstance(tied["head"], KernelLinear) and tied["head"].quantized is not None
    expected = values.float() * scales.float().repeat_interleave(32, 1)
    torch.testing.assert_close(tied["head"].weight.detach(), expected, rtol=0, atol=1e-6)
    assert tied["head"].weight is embedding.weight


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


def _assert_close(got: torch.Tensor, expected: torch.Tensor, bits: int | None) -> None:
    """Float32: equal up to summation order. Quantized activations: an activation within 1e-7 of
    a rounding boundary may round the other way in one of the two (their float32 sums differ in
    the last bits), which moves a logit of these models by up to ~1e-2 and the mean difference
    by up to a few 1e-3 (one such flip: 8e-3 and 2.2e-3 on a Xeon's AVX2 build; without one,
    ~1e-6 and ~3e-7); a wrong scale, group or offset moves them by far more."""
    if bits is None:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        return
    difference = (got - expected).abs()
    assert float(difference.max()) < 3e-2 and float(difference.mean()) < 5e-3


def _caches(plain: nn.Module, bits: int | None, tokens: int) -> tuple[DynamicCache, DynamicCache]:
    """The reference's cache and the kernels' (float16 with quantized weights, as served)."""
    if bits is None:
        return preallocated_cache(3, tokens), preallocated_cache(3, tokens)
    return float16_cache(plain), preallocated_cache(3, tokens, torch.float16)


def _on_the_kernels(plain: nn.Module, bits: int | None, build: str) -> tuple[nn.Module, CpuKernels]:
    """A copy of `plain` on the kernels (`build`) with `bits`-bit weights; `plain` then
    computes what they should (as_quantized_server)."""
    fast = copy.deepcopy(plain)
    kernels = use_cpu_kernels(fast, bits, BUILDS[build])
    assert kernels is not None
    if bits is not None:
        as_quantized_server(plain, bits, BF16_MIN_ROWS)
    return fast, kernels


Model = TypeVar("Model", bound=nn.Module)


def _with_norms_not_the_identity(model: Model) -> Model:
    """`model` with random norm weights and biases, so that a norm computed with another's
    weights gives other logits; in eval mode."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    return model.eval()


def _neox(parallel_residual: bool, rotary_share: float, **config: Any) -> GPTNeoXForCausalLM:
    torch.manual_seed(7)
    model = GPTNeoXForCausalLM(
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
    )
    return _with_norms_not_the_identity(model)


@pytest.mark.parametrize(
    ("parallel_residual", "rotary_share", "attention_bias", "bits"),
    [
        (False, 1.0, True, None),
        (True, 0.25, True, None),
        (True, 1.0, False, None),
        (False, 1.0, True, 8),
        (True, 0.25, False, 8),
        (False, 0.25, True, 4),
        (True, 1.0, False, 4),
    ],
)
@pytest.mark.parametrize("build", list(BUILDS))
def test_the_whole_model_decode_step_computes_what_transformers_computes(
    parallel_residual, rotary_share, attention_bias, bits, build
):
    plain = _neox(parallel_residual, rotary_share, attention_bias=attention_bias)
    fast = _decodes_as_transformers(plain, bits, build, greedy_steps=12)
    linears = [module for module in fast.modules() if isinstance(module, KernelLinear)]
    assert all((module.quantized is not None) == bool(bits) for module in linears)


def _decodes_as_transformers(
    plain: nn.Module, bits: int | None, build: str, greedy_steps: int, chunk: tuple[int, ...] = ()
) -> nn.Module:
    """Check the step of `plain` on the kernels (returned) against `plain` in transformers:
    the logits of `greedy_steps` greedy tokens and then of `chunk` in one call, after a prompt
    of 250 tokens (the cache grows past its first allocation, 256), and the caches."""
    fast, kernels = _on_the_kernels(plain, bits, build)
    step = TokenStep.for_model(fast, kernels)
    assert step is not None
    prompt = [1 + (i * 13) % 290 for i in range(250)]
    expected_cache, cache = _caches(plain, bits, len(prompt))
    with torch.inference_mode():
        expected = plain(input_ids=torch.tensor([prompt]), cache=expected_cache).logits[0, -1]
        fast(input_ids=torch.tensor([prompt]), cache=cache)
        for _ in range(greedy_steps):
            token = int(expected.argmax())
            expected = plain(input_ids=torch.tensor([[token]]), cache=expected_cache).logits[0, -1]
            assert step.applies(cache)
            _assert_close(step(token, cache), expected, bits)
        if chunk:
            expected = plain(input_ids=torch.tensor([list(chunk)]), cache=expected_cache).logits[0]
            _assert_close(step(list(chunk), cache), expected, bits)
    length = len(prompt) + greedy_steps + len(chunk)
    assert cache.get_seq_length() == expected_cache.get_seq_length() == length
    for ours, theirs in zip(cache.layers, expected_cache.layers, strict=True):
        _assert_close(ours.keys, theirs.keys, bits)
        _assert_close(ours.values, theirs.values, bits)
    return fast


@pytest.mark.parametrize("bits", [None, 8, 4])
@pytest.mark.parametrize("build", list(BUILDS))
def test_the_step_feeds_several_tokens_as_transformers_feeds_them(bits, build):
    plain = _neox(False, 0.25)
    fast, kernels = _on_the_kernels(plain, bits, build)
    step = TokenStep.for_model(fast, kernels)
    assert step is not None
    prompt = [1 + (i * 13) % 290 for i in range(250)]
    expected_cache, cache = _caches(plain, bits, len(prompt))
    with torch.inference_mode():
        plain(input_ids=torch.tensor([prompt]), cache=expected_cache)
        fast(input_ids=torch.tensor([prompt]), cache=cache)
        for chunk in ([7], [9, 250, 3], [5 + i for i in range(9)], [11, 12]):
            expected = plain(input_ids=torch.tensor([list(chunk)]), cache=expected_cache).logits[0]
            got = step(chunk, cache)
            assert got.shape == (len(chunk), 300)
            _assert_close(got, expected, bits)
    assert cache.get_seq_length() == expected_cache.get_seq_length() == len(prompt) + 15
    for ours, theirs in zip(cache.layers, expected_cache.layers, strict=True):
        _assert_close(ours.keys, theirs.keys, bits)
        _assert_close(ours.values, theirs.values, bits)


@pytest.mark.parametrize("bits", [None, 8, 4])
@pytest.mark.parametrize("build", list(BUILDS))
def test_several_tokens_in_one_step_get_the_logits_of_one_step_each_bit_for_bit(bits, build):
    """What keeps speculation's greedy text that of plain greedy decoding: verifying drafts k
    at a time computes each token's logits exactly as a step of its own would."""
    fast, kernels = _on_the_kernels(_neox(True, 0.25), bits, build)
    step = TokenStep.for_model(fast, kernels)
    assert step is not None
    prompt = [1 + (i * 13) % 290 for i in range(40)]
    chunks = ([7, 9, 250, 3, 5, 6, 8, 10, 11, 12, 13], [2, 4], [20, 21, 22, 23, 24])
    tokens = [token for chunk in chunks for token in chunk]
    together_cache, alone_cache = (_caches(fast, bits, len(prompt))[1] for _ in range(2))
    with torch.inference_mode():
        for cache in (together_cache, alone_cache):
            fast(input_ids=torch.tensor([prompt]), cache=cache)
        together = torch.cat([step(chunk, together_cache) for chunk in chunks])
        alone = torch.stack([step(token, alone_cache) for token in tokens])
    assert torch.equal(together, alone)


def _llama_family(kind: str) -> nn.Module:
    """A tiny model of the Llama family: grouped-query attention (4 query heads, 2 key-value
    heads), heads wider than hidden / heads for Llama, biases on q, k and v for Qwen2, and
    Starcoder2's layer norms, biases and tanh GELU. Weights large enough that the GELUs differ
    and norms that are not the identity."""
    torch.manual_seed(11)
    common = dict(
        vocab_size=300,
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=192,
        max_position_embeddings=512,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
    )
    if kind == "llama":
        config = LlamaConfig(**common, head_dim=32, attention_bias=True, tie_word_embeddings=True)
        model = LlamaForCausalLM(config)
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = Starcoder2ForCausalLM(Starcoder2Config(**common, sliding_window=None))
    return _with_norms_not_the_identity(model)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "starcoder2"])
@pytest.mark.parametrize("bits", [None, 8, 4])
@pytest.mark.parametrize("build", list(BUILDS))
def test_the_step_computes_what_transformers_computes_for_the_llama_family(kind, bits, build):
    _decodes_as_transformers(_llama_family(kind), bits, build, greedy_steps=6, chunk=(5, 9, 250, 3))


def test_the_step_computes_the_rotation_of_a_rope_that_depends_on_the_length():
    """Dynamic NTK scaling: the rotary angles change once the sequence is longer than the
    model's positions (128 here, before a 250-token prompt), so the step cannot keep them from
    one token to the next as it keeps the default rope's."""
    torch.manual_seed(11)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        initializer_range=0.1,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    )
    plain = _with_norms_not_the_identity(LlamaForCausalLM(config))
    _decodes_as_transformers(plain, None, next(iter(BUILDS)), greedy_steps=6, chunk=(5, 9, 3))


def test_a_token_outside_the_embeddings_is_refused_and_the_cache_left_as_it_was():
    fast, kernels = _on_the_kernels(_neox(False, 0.25), None, next(iter(BUILDS)))
    step = TokenStep.for_model(fast, kernels)
    assert step is not None
    cache = preallocated_cache(3, 8)
    rows = len(fast.get_input_embeddings().weight)
    with torch.inference_mode():
        fast(input_ids=torch.tensor([[1, 2, 3]]), cache=cache)
        for outside in (rows, -1):
            with pytest.raises(IndexError):
                step([4, outside], cache)
        assert cache.get_seq_length() == 3
        assert step(rows - 1, cache).shape == (300,)


def test_the_decode_step_is_left_to_transformers_where_it_would_differ():
    kernels = CpuKernels.load()
    other_activation = _neox(False, 1.0, hidden_act="relu")
    assert TokenStep.for_model(other_activation, kernels) is None
    windowed = Starcoder2Config(
        vocab_size=64,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        sliding_window=8,
    )
    windowed_step = TokenStep.for_model(Starcoder2ForCausalLM(windowed).eval(), kernels)
    assert windowed_step is not None
    cache = preallocated_cache(1, 16)
    with torch.inference_mode():
        windowed_step.model(input_ids=torch.tensor([[1, 2, 3, 4, 5, 6]]), cache=cache)
    assert windowed_step.applies(cache, 2) and not windowed_step.applies(cache, 3)
    gelu_llama = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_act="gelu",
    )
    assert TokenStep.for_model(LlamaForCausalLM(gelu_llama), kernels) is None
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=64, n_head=2))
    assert TokenStep.for_model(gpt2, kernels) is None
    step = TokenStep.for_model(_neox(False, 1.0), kernels)
    assert step is not None
    assert not step.applies(DynamicCache())
    assert not step.applies(preallocated_cache(3, 16)), "an empty cache has no prompt in it"


def test_the_generator_decodes_with_the_whole_model_step(tiny_model: Path, monkeypatch):
    loaded = load_model(Settings(model=str(tiny_model)))
    assert loaded.token_step is not None
    calls = []
    step = TokenStep.__call__
    monkeypatch.setattr(
        TokenStep, "__call__", lambda self, *args: calls.append(args[0]) or step(self, *args)
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


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_weights_serve_the_greedy_text_of_transformers_on_their_values(
    tiny_model: Path, bits
):
    loaded = load_model(Settings(model=str(tiny_model), dtype=f"int{bits}"))
    assert loaded.dtype_name == f"int{bits}" and loaded.token_step is not None
    linears = [module for module in loaded.model.modules() if isinstance(module, KernelLinear)]
    assert linears and all(module.quantized is not None for module in linears)
    assert all((module.prefill_weight is not None) == cpu_has_bf16() for module in linears)
    reference = ReferenceModel(tiny_model, bits=None)
    as_quantized_server(reference.model, bits, BF16_MIN_ROWS)
    reference.float16_kv = True
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


def test_without_kernels_auto_serves_float32_and_only_an_asked_for_int8_says_so(
    tiny_model, tmp_path, monkeypatch
):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    auto = load_model(Settings(model=str(tiny_model)))
    assert auto.dtype_name == "float32" and auto.notices == () and auto.kv_storage is None
    asked = load_model(Settings(model=str(tiny_model), dtype="int4"))
    assert asked.dtype_name == "float32"
    assert asked.notices == (
        "dtype int4 needs the CPU decode kernels (see the log): using float32",
    )


def test_the_kernel_cache_tells_compilers_apart_without_running_them(tmp_path):
    from polycoder_ls.engine.cpu_kernels import _compiler_identity

    compiler = tmp_path / "cc"
    compiler.write_text("#!/bin/sh\ntouch ran\n")
    first = _compiler_identity(str(compiler))
    assert first == _compiler_identity(str(compiler))
    compiler.write_text("#!/bin/sh\ntouch ran # upgraded\n")
    assert _compiler_identity(str(compiler)) != first
    assert not (tmp_path / "ran").exists() and not Path("ran").exists()


def test_the_build_is_chosen_by_the_cpus_flags_and_each_is_cached_apart(monkeypatch, tmp_path):
    avx2 = {"sse4_2", "avx", "avx2", "fma", "f16c"}
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: frozenset(avx2))
    assert [build.name for build in runnable_builds()] == ["avx2"]
    vnni = avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: frozenset(vnni))
    assert [build.name for build in runnable_builds()] == ["avx512-vnni", "avx2"]
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: frozenset({"sse4_2"}))
    assert runnable_builds() == []
    monkeypatch.undo()
    assert {build.name for build in runnable_builds()} == {
        build.name for build in cpu_kernels.BUILDS if build.needs <= cpu_flags()
    }
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for build in runnable_builds():
        assert CpuKernels.load(build).build == build
    libraries = list(tmp_path.rglob("cpu_kernels-*.so"))
    assert len(libraries) == len(runnable_builds()), "one library per build"


def test_auto_picks_int8_weights_on_a_cpu_and_says_so(tiny_model: Path):
    loaded = load_model(Settings(model=str(tiny_model)))
    assert loaded.dtype_name == "int8" and loaded.notices == ()
    linears = [module for module in loaded.model.modules() if isinstance(module, KernelLinear)]
    assert linears and all(module.quantized.bits == 8 for module in linears)
    exact = load_model(Settings(model=str(tiny_model), dtype="float32"))
    assert exact.dtype_name == "float32"
    assert not any(isinstance(m, KernelLinear) and m.quantized for m in exact.model.modules())
    greedy = DecodeParams(max_new_tokens=4, temperature=0.0, top_p=1.0)
    for model, stored in ((loaded, torch.float16), (exact, torch.float32)):
        generator = Generator(model)
        generator.generate("doc", list(range(5, 50)), greedy, lambda _: False, lambda: False)
        kept = generator._kept["doc"].cache.layers
        assert {layer.stored_dtype for layer in kept} == {stored}, "quantized: a float16 cache"
