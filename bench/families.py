"""Decode ms/token of each model family the whole-model step covers, at one size (PolyCoder
160M's width and depth, random weights, 2 threads, int8, 1900-token context): the step (one C
call a token) beside transformers' forward on the same int8 kernels, in one process, the two
taking turns token by token.

    python bench/families.py [--context 1900] [--tokens 24] [--rounds 3]
        --out bench/results/families-160m.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Starcoder2Config,
    Starcoder2ForCausalLM,
)

from polycoder_ls.engine.cpu_kernels import use_cpu_kernels
from polycoder_ls.engine.kv_cache import preallocated_cache
from polycoder_ls.engine.token_step import TokenStep

THREADS = 2
SIZE = dict(
    vocab_size=50304,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=2048,
)
# SwiGLU's three matrices of 2048 hold what GELU's two of 3072 hold; 4 key-value heads.
FAMILIES = {
    "gpt-neox (PolyCoder)": lambda: GPTNeoXForCausalLM(
        GPTNeoXConfig(**SIZE, intermediate_size=3072, rotary_pct=0.25)
    ),
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(**SIZE, intermediate_size=2048, num_key_value_heads=4)
    ),
    "qwen2": lambda: Qwen2ForCausalLM(
        Qwen2Config(**SIZE, intermediate_size=2048, num_key_value_heads=4)
    ),
    "starcoder2": lambda: Starcoder2ForCausalLM(
        Starcoder2Config(**SIZE, intermediate_size=3072, num_key_value_heads=4)
    ),
}


def measure(build: Any, context: int, tokens: int, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build().eval()
    kernels = use_cpu_kernels(model, 8)
    assert kernels is not None, "the CPU kernels could not be built"
    step = TokenStep.for_model(model, kernels)
    assert step is not None
    layers = model.config.num_hidden_layers
    cache = preallocated_cache(layers, context + tokens + 8, torch.float16)
    times: dict[str, list[float]] = {"step": [], "transformers": []}
    with torch.inference_mode():
        prompt = torch.tensor([[3 + (i * 7919) % 8000 for i in range(context)]])
        model(input_ids=prompt, cache=cache, logits_to_keep=1)
        ways = {
            "step": lambda token: step(token, cache),
            "transformers": lambda token: model(input_ids=torch.tensor([[token]]), cache=cache),
        }
        for _ in range(rounds):
            for index in range(tokens):
                for name, run in ways.items():
                    started = time.perf_counter()
                    run(5 + index)
                    times[name].append((time.perf_counter() - started) * 1000)
                    cache.crop(-1)
    summary = {
        name: {"min": round(min(values), 2), "median": round(statistics.median(values), 2)}
        for name, values in times.items()
    }
    summary["transformersVsStep"] = round(
        summary["transformers"]["median"] / summary["step"]["median"], 2
    )
    summary["parameters"] = sum(parameter.numel() for parameter in model.parameters())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--context", type=int, default=1900)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "families": {}}
    for name, build in FAMILIES.items():
        print(f"  {name}", file=sys.stderr)
        result["families"][name] = measure(build, args.context, args.tokens, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| family | step ms/token min / median | transformers' forward, same kernels | ratio |")
    print("|---|---|---|---|")
    for name, figures in result["families"].items():
        step, forward = figures["step"], figures["transformers"]
        print(
            f"| {name} | {step['min']} / {step['median']} | {forward['min']} / "
            f"{forward['median']} | {figures['transformersVsStep']} x |"
        )


if __name__ == "__main__":
    main()
