"""The GPU decode step's fixed-tensor form (graph_step.py), run on the CPU without recording:
its buckets, the cache rows it writes, its masks and its graph bookkeeping against plain
transformers' forward. Only the recording itself (torch.cuda.graph) needs a GPU: bench/gpu_check.sh
runs it there."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
)

from polycoder_ls.config import Settings
from polycoder_ls.engine.generate import DecodeParams, Generator
from polycoder_ls.engine.graph_step import FED_TOKENS, GraphStep, bucket_for, buckets, eager_capture
from polycoder_ls.engine.kv_cache import most_caches_alive, preallocated_cache
from polycoder_ls.engine.loading import (
    MemoryNeed,
    gpu_fit_notice,
    graph_capacity,
    load_model,
    other_gpus_notice,
)

CAPACITY = 512


@pytest.mark.parametrize(
    ("length", "capacity", "bucket"),
    [
        (0, 2048, 256),
        (255, 2048, 256),
        (256, 2048, 512),
        (1000, 2048, 1024),
        (1024, 2048, 2048),
        (2047, 2048, 2048),
        (2048, 2048, None),
        (300, 400, 400),
        (100, 64, None),
    ],
)
def test_a_bucket_is_the_smallest_power_of_two_that_holds_the_new_token(length, capacity, bucket):
    assert bucket_for(length, capacity) == bucket


def test_the_buckets_recorded_are_every_bucket_a_cache_can_need():
    for capacity in (64, 256, 400, 2048):
        needed = {bucket_for(length, capacity) for length in range(capacity)}
        assert buckets(capacity) == sorted(needed)


def plain_model(directory: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def reference_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """The logits after each of `ids`, from one forward over all of them."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


def step_logits(step: GraphStep, model: torch.nn.Module, ids: list[int], prefill: int):
    """Feed ids[:prefill] eagerly into a cache of `step`'s, the rest one token a step."""
    cache = step.new_cache(model.config.num_hidden_layers, prefill)
    rows = []
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids[:prefill]]), cache=cache, use_cache=True)
        for token in ids[prefill:]:
            assert step.applies(cache, 1)
            rows.append(step(token, cache))
    return torch.stack(rows), cache


def random_ids(count: int, vocab: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (count,), generator=generator).tolist()


def test_steps_across_bucket_edges_give_the_logits_of_a_plain_forward(tiny_model: Path):
    model = plain_model(tiny_model)
    step = GraphStep(model, CAPACITY, eager_capture)
    assert step.captures == 2 * 2  # each slot's 256- and 512-row buckets, when it is made
    ids = random_ids(262, 900)
    # tokens at rows 250..261: the 256-row bucket, then 512 from row 256 on
    logits, cache = step_logits(step, model, ids, prefill=250)
    expected = reference_logits(model, ids)[249:-1]
    # each step's logits are those after the token before it was fed
    assert torch.allclose(logits[:-1], expected[1:], atol=1e-4)
    assert torch.allclose(logits[-1], reference_logits(model, ids)[-1], atol=1e-4)
    assert cache.get_seq_length() == len(ids)
    assert step.captures == 4, "a request never waits for a recording"


def test_a_few_tokens_are_fed_one_replay_each(tiny_model: Path):
    model = plain_model(tiny_model)
    step = GraphStep(model, CAPACITY, eager_capture)
    ids = random_ids(40, 900, seed=5)
    cache = step.new_cache(model.config.num_hidden_layers, 40)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids[:36]]), cache=cache, use_cache=True)
        assert step.applies(cache, FED_TOKENS) and not step.applies(cache, FED_TOKENS + 1)
        logits = step(ids[36:], cache)
    assert logits.shape[0] == 4
    assert torch.allclose(logits, reference_logits(model, ids)[36:], atol=1e-4)
    assert cache.get_seq_length() == 40


def llama() -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(config)


def gpt2() -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4))


@pytest.mark.parametrize("family", [llama, gpt2], ids=["llama-gqa", "gpt2"])
def test_other_families_step_through_the_same_view_of_the_cache(family):
    torch.manual_seed(0)
    model = family().eval()
    step = GraphStep(model, CAPACITY, eager_capture)
    ids = random_ids(40, 300, seed=1)
    logits, _ = step_logits(step, model, ids, prefill=30)
    expected = reference_logits(model, ids)[30:]
    assert torch.allclose(logits, expected, atol=1e-4)


def test_each_document_cache_replays_its_own_slots_graphs(tiny_model: Path):
    model = plain_model(tiny_model)
    step = GraphStep(model, CAPACITY, eager_capture)
    first, second = random_ids(20, 900, seed=2), random_ids(20, 900, seed=3)
    layers = model.config.num_hidden_layers
    caches = [step.new_cache(layers, 20), step.new_cache(layers, 20)]
    rows: list[list[torch.Tensor]] = [[], []]
    with torch.inference_mode():
        for cache, ids in zip(caches, (first, second), strict=True):
            model(input_ids=torch.tensor([ids[:10]]), cache=cache, use_cache=True)
        for position in range(10, 20):
            for index, ids in enumerate((first, second)):
                assert step.applies(caches[index], 1)
                rows[index].append(step(ids[position], caches[index]))
    for ids, got in zip((first, second), rows, strict=True):
        assert torch.allclose(torch.stack(got), reference_logits(model, ids)[10:], atol=1e-4)


def test_a_slot_is_lent_again_zero_filled_once_its_cache_is_gone(tiny_model: Path):
    model = plain_model(tiny_model)
    step = GraphStep(model, CAPACITY, eager_capture, slots=1)
    layers = model.config.num_hidden_layers
    ids = random_ids(30, 900, seed=6)
    cache = step.new_cache(layers, 30)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        beside = step.new_cache(layers, 30)
        model(input_ids=torch.tensor([ids[:-1]]), cache=beside, use_cache=True)
        assert step.applies(cache, 1) and not step.applies(beside, 1), "one slot, held"
        keys = cache.layers[0].buffers[0]
        del cache
        again = step.new_cache(layers, 30)
        assert again.layers[0].buffers[0] is keys and not keys.any()
        model(input_ids=torch.tensor([ids[:-1]]), cache=again, use_cache=True)
        assert torch.allclose(step(ids[-1], again), reference_logits(model, ids)[-1], atol=1e-4)


def test_a_generator_holds_no_more_caches_than_the_gpu_makes_slots_for():
    gib = 1024**3
    assert most_caches_alive(gib) == 2  # a 2.7B model's 2048 tokens: one kept, one new
    assert most_caches_alive(75 * 1024**2) == 5  # 160M: four kept, one new
    assert most_caches_alive(3 * gib) == 2


def test_a_step_needs_a_few_tokens_after_a_slots_cache_with_room(tiny_model: Path):
    model = plain_model(tiny_model)
    step = GraphStep(model, 64, eager_capture)
    layers = model.config.num_hidden_layers
    cache = step.new_cache(layers, 8)
    with torch.inference_mode():
        model(input_ids=torch.tensor([random_ids(62, 900)]), cache=cache, use_cache=True)
        assert not step.applies(cache, 3), "rows 63 and 64 fit the graphs' 64, a 65th does not"
        assert step.applies(cache, 2)
        step([5, 6], cache)
        assert not step.applies(cache, 1)
        plain_cache = preallocated_cache(layers, 8, zeroed=True)
        model(input_ids=torch.tensor([[1, 2, 3]]), cache=plain_cache, use_cache=True)
        assert not step.applies(plain_cache, 1), "not a slot's buffers"


def failing_capture(_work):
    raise RuntimeError("operation not permitted when stream is capturing")


@pytest.mark.parametrize("capture", [eager_capture, failing_capture], ids=["replays", "failed"])
def test_greedy_text_through_the_step_is_plain_generates(tiny_model: Path, capture):
    loaded = load_model(Settings(model=str(tiny_model), threads=1, dtype="float32"))
    model = plain_model(tiny_model)
    step = GraphStep(model, CAPACITY, capture)
    assert step.enabled == (capture is eager_capture)
    loaded = replace(loaded, model=model, token_step=step)
    prompt = loaded.tokenize(Path(__file__).read_text())[0][:240]
    params = DecodeParams(max_new_tokens=24, temperature=0.0, top_p=1.0, draft_tokens=2)
    generator = Generator(loaded)
    text, stats = generator.generate("doc", prompt, params, lambda _: False, lambda: False)
    oracle = plain_model(tiny_model)
    never = list(range(loaded.vocab_limit, oracle.config.vocab_size))
    with torch.inference_mode():
        output = oracle.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            suppress_tokens=never,
            eos_token_id=sorted(loaded.special_ids),
            pad_token_id=0,
        )
    assert text == loaded.decode(output[0, len(prompt) :].tolist())
    assert stats.generated_tokens > 16  # crossed the 256-row bucket edge
    assert step.captures == (4 if step.enabled else 0)
    assert (step.replays > 0) == step.enabled


def test_graphs_cover_the_context_window_in_use(tiny_model: Path):
    config = plain_model(tiny_model).config
    assert graph_capacity(Settings(context_tokens=1024), config) == 1024
    assert graph_capacity(Settings(context_tokens=8192), config) == 2048
    windowed = Qwen2Config(
        max_position_embeddings=16384, sliding_window=4096, use_sliding_window=True
    )
    assert graph_capacity(Settings(context_tokens=8192), windowed) == 4096
    windowed.use_sliding_window = False
    assert graph_capacity(Settings(context_tokens=8192), windowed) == 8192


def test_the_memory_need_counts_the_weights_and_each_documents_whole_context(tiny_model: Path):
    model = plain_model(tiny_model)
    need = MemoryNeed.of(model.config, torch.float16, 2048)
    assert need.weight_bytes == 2 * sum(parameter.numel() for parameter in model.parameters())
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    assert need.documents == 5  # a tiny cache: four kept and a new one
    assert need.kv_bytes == 5 * 2 * layers * 2048 * hidden * 2
    llama = LlamaConfig(
        hidden_size=256, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=3
    )
    # 1000 tokens take 1024 rows (whole growth steps)
    assert MemoryNeed.of(llama, torch.bfloat16, 1000).kv_bytes == 5 * 2 * 3 * 1024 * 2 * 32 * 2


def test_a_model_too_big_for_the_gpu_runs_on_the_cpu_with_its_need_named():
    gib = 1024**3
    need = MemoryNeed(weight_bytes=5 * gib + gib // 2, kv_bytes=gib, context=2048, documents=2)
    assert gpu_fit_notice("polycoder-2.7b", need, "cuda:0", free=80 * gib, total=80 * gib) is None
    notice = gpu_fit_notice("polycoder-2.7b", need, "cuda:1", free=4 * gib, total=8 * gib)
    assert notice == (
        "model 'polycoder-2.7b' needs 6.5 GiB on cuda:1 (weights 5.5 GiB, KV caches of 2 x 2048 "
        "tokens 1.0 GiB) and 0.5 GiB of headroom; cuda:1 has 4.0 GiB free of 8.0: running on "
        "the CPU"
    )
    # the headroom counts: 6.5 GiB of need does not fit in 6.7 GiB free
    assert gpu_fit_notice("m", need, "cuda:0", free=6 * gib + 7 * gib // 10, total=8 * gib)


def test_several_gpus_are_named_and_the_one_in_use_said():
    assert other_gpus_notice(1) is None
    assert other_gpus_notice(4) == (
        "4 GPUs here: the model runs on cuda:0 alone (set device to cuda:N for another; a "
        "model is never split across GPUs)"
    )
