"""The in-process engine on a CUDA device, in float16 and bfloat16: CUDA graphs of the decode
step against transformers' own forward and generate on the same GPU, cancellation, memory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from polycoder_ls.config import Settings
from polycoder_ls.engine.generate import DecodeParams, Generator
from polycoder_ls.engine.graph_step import GraphStep
from polycoder_ls.engine.loading import gpu_fit, load_model
from polycoder_ls.engine_state import NANO_DIRECTORY

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = {"float16": 2e-2, "bfloat16": 1.5e-1}
"""Largest logit difference allowed between a graph replay and an eager forward of the same
tokens (the attention reads more rows, masked, in another order of summation)."""
PROMPTS = [
    "def fibonacci(n):\n    ",
    "import os\nimport sys\n\n\ndef main():\n    args = sys.argv[1:]\n    ",
    "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    ",
]


def load(model: Path, dtype: str):
    loaded = load_model(Settings(model=str(model), device="cuda", dtype=dtype))
    assert loaded.device == "cuda" and loaded.notices == ()
    assert isinstance(loaded.token_step, GraphStep)
    return loaded


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_text_equals_transformers_generate_on_the_gpu(dtype):
    loaded = load(NANO_DIRECTORY, dtype)
    oracle = AutoModelForCausalLM.from_pretrained(NANO_DIRECTORY, dtype=DTYPES[dtype]).cuda()
    generator = Generator(loaded)
    params = DecodeParams(max_new_tokens=48, temperature=0.0, top_p=1.0)
    never = list(range(loaded.vocab_limit, oracle.config.vocab_size))
    for prompt_text in PROMPTS:
        prompt = loaded.tokenize(prompt_text)[0]
        text, stats = generator.generate(prompt_text, prompt, params, lambda _: False, bool)
        with torch.inference_mode():
            output = oracle.generate(
                torch.tensor([prompt], device="cuda"),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device="cuda"),
                max_new_tokens=48,
                do_sample=False,
                suppress_tokens=never,
                eos_token_id=sorted(loaded.special_ids),
                pad_token_id=0,
            )
        assert text == loaded.decode(output[0, len(prompt) :].tolist()), prompt_text
        assert stats.generated_tokens > 1
    assert loaded.token_step.captures >= 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_replayed_steps_give_the_logits_of_eager_forwards_across_buckets(tiny_model, dtype):
    loaded = load(tiny_model, dtype)
    step = loaded.token_step
    model = loaded.model
    ids = torch.randint(1, loaded.vocab_limit, (262,), generator=torch.Generator().manual_seed(0))
    recorded = step.captures
    assert recorded == 4 * step.slots  # 256, 512, 1024 and 2048 rows, when it loaded
    cache = step.new_cache(model.config.num_hidden_layers, 262)
    with torch.inference_mode():
        full = model(input_ids=ids[None].cuda()).logits[0].float()
        model(input_ids=ids[None, :250].cuda(), cache=cache, use_cache=True)
        for position in range(250, 262):
            logits = step(int(ids[position]), cache).float()
            difference = (logits - full[position]).abs().max().item()
            assert difference <= TOLERANCE[dtype], (position, difference)
    assert step.captures == recorded, "a step never waits for a recording"


def test_documents_after_the_load_decode_without_a_recording():
    loaded = load(NANO_DIRECTORY, "float16")
    step = loaded.token_step
    recorded = step.captures
    generator = Generator(loaded)
    params = DecodeParams(max_new_tokens=16, temperature=0.0, top_p=1.0)
    for index, text in enumerate(PROMPTS * 3):
        prompt = loaded.tokenize(text * (1 + 40 * index))[0][-1900:]
        replays = step.replays
        _, stats = generator.generate(f"doc{index}", prompt, params, lambda _: False, bool)
        assert step.replays - replays >= stats.generated_tokens - 1, "decoded from graphs"
    assert step.captures == recorded


def test_a_cancel_stops_the_gpu_generation_and_keeps_the_cache_exact():
    # nano: a trained model's greedy text has no near-ties for float16 rounding to flip
    loaded = load(NANO_DIRECTORY, "float16")
    generator = Generator(loaded)
    prompt = loaded.tokenize(Path(__file__).read_text() * 4)[0][-1500:]
    long = DecodeParams(max_new_tokens=400, temperature=0.0, top_p=1.0)
    cancel = threading.Event()
    tokens_seen = threading.Event()

    def finished(text: str) -> bool:
        if len(text) > 20:
            tokens_seen.set()
            cancel.wait()
        return False

    done: list = []
    worker = threading.Thread(
        target=lambda: done.append(generator.generate("doc", prompt, long, finished, cancel.is_set))
    )
    worker.start()
    assert tokens_seen.wait(60)
    cancel.set()
    worker.join(60)
    text, stats = done[0]
    assert stats.cancelled and text == ""
    short = DecodeParams(max_new_tokens=24, temperature=0.0, top_p=1.0)
    again, reused = generator.generate("doc", prompt, short, lambda _: False, bool)
    fresh, _ = Generator(loaded).generate("other", prompt, short, lambda _: False, bool)
    assert reused.reused_tokens > 0
    assert again == fresh


def test_a_model_larger_than_the_gpu_is_refused_with_its_need_named():
    huge = GPTNeoXConfig(hidden_size=16384, num_hidden_layers=256, num_attention_heads=128)
    notice = gpu_fit("huge", huge, Settings(dtype="float16"), "cuda:0")
    assert notice is not None and "running on the CPU" in notice
    assert notice.startswith(
        "model 'huge' needs 963.2 GiB on cuda:0 (weights 899.2 GiB, KV caches of 2"
    )
    small = GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    assert gpu_fit("small", small, Settings(dtype="float16"), "cuda:0") is None
