"""Decode time per token at long context: transformers' DynamicCache (torch.cat per step) vs
polycoder-ls's in-place KV layers, same model, same process.

    python bench/decode_cache.py [--shape 160m] [--context 1900] [--steps 20] [--profile]

--profile adds where one decode step's time goes (torch.profiler, in-place cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing_replay import SHAPES, build

from polycoder_ls.config import Settings
from polycoder_ls.engine.kv_cache import preallocated_cache
from polycoder_ls.engine.loading import load_model


def decode_ms(model, cache, ids: torch.Tensor, steps: int) -> float:
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        token = torch.tensor([[5]])
        for _ in range(3):
            model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        started = time.perf_counter()
        for _ in range(steps):
            model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
    return (time.perf_counter() - started) / steps * 1000


def profile(model, cache, ids: torch.Tensor, steps: int) -> None:
    """Milliseconds per decode step by operator (self CPU time), on stderr."""
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        token = torch.tensor([[5]])
        with torch.profiler.profile() as profiler:
            for _ in range(steps):
                model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
    for event in sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]:
        print(
            f"{event.key:55s} {event.self_cpu_time_total / 1000 / steps:7.2f} ms/step",
            file=sys.stderr,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="160m")
    parser.add_argument("--context", type=int, default=1900)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--models", type=Path, default=Path("/tmp/polycoder-bench-models"))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    model = str(build(args.shape, args.models))
    loaded = load_model(Settings(model=model, threads=args.threads, dtype=args.dtype))
    ids = torch.tensor([[3 + (i * 7919) % 8000 for i in range(args.context)]])
    layers = loaded.model.config.num_hidden_layers
    dynamic = decode_ms(loaded.model, DynamicCache(config=loaded.model.config), ids, args.steps)
    in_place = decode_ms(
        loaded.model, preallocated_cache(layers, args.context + 64), ids, args.steps
    )
    if args.profile:
        profile(loaded.model, preallocated_cache(layers, args.context + 64), ids, args.steps)
    print(
        json.dumps(
            {
                "shape": args.shape,
                "context": args.context,
                "dynamicCacheMsPerToken": round(dynamic, 2),
                "inPlaceMsPerToken": round(in_place, 2),
                "ratio": round(in_place / dynamic, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
