"""Decode time per token at long context: transformers' DynamicCache (torch.cat per step) vs
polycoder-ls's in-place KV layers, each through transformers' forward (on the CPU kernels), and
the in-place cache with the whole-model decode step the server uses, same model, same process,
against the memory-bandwidth floor (weights + KV read per step / the bandwidth measured right
before and after the server's step).

    python bench/decode_cache.py [--shape 160m] [--context 1900] [--steps 20] [--profile]

--profile adds where one server decode step's time goes: the kernel call and the Python around it.
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

from memory import bandwidth_around, bytes_per_decode_step
from typing_replay import SHAPES, build

from polycoder_ls.config import Settings
from polycoder_ls.engine.cpu_kernels import CpuKernels
from polycoder_ls.engine.kv_cache import preallocated_cache
from polycoder_ls.engine.loading import load_model


def _forward_step(model):  # type: ignore[no-untyped-def]
    """One decode step through transformers' forward."""

    def step(token: int, cache) -> torch.Tensor:  # type: ignore[no-untyped-def]
        inputs = torch.tensor([[token]])
        return model(input_ids=inputs, cache=cache, use_cache=True, logits_to_keep=1).logits

    return step


def decode_ms(model, step, cache, ids: torch.Tensor, steps: int, runs: int = 3) -> float:
    """Milliseconds per decode `step` after `ids`: the best of `runs` runs of `steps` steps,
    each from the same context length (measured like the bandwidth: the best this machine
    gives)."""
    best = float("inf")
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        for _ in range(3):
            step(5, cache)
        start_length = cache.get_seq_length()
        for _ in range(runs):
            cache.crop(start_length - cache.get_seq_length())
            started = time.perf_counter()
            for _ in range(steps):
                step(5, cache)
            best = min(best, (time.perf_counter() - started) / steps * 1000)
    return best


def profile(loaded, cache, ids: torch.Tensor, steps: int) -> None:
    """Milliseconds per server decode step: the whole-step kernel call and the Python around it
    (rotary cos/sin, cache rows, pointers), on stderr."""
    kernel_seconds = [0.0]
    token_step = CpuKernels.neox_token_step

    def timed(self, *args):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = token_step(self, *args)
        kernel_seconds[0] += time.perf_counter() - started
        return out

    CpuKernels.neox_token_step = timed  # type: ignore[method-assign]
    with torch.inference_mode():
        loaded.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        started = time.perf_counter()
        for _ in range(steps):
            loaded.token_step(5, cache)
        total = time.perf_counter() - started
    CpuKernels.neox_token_step = token_step  # type: ignore[method-assign]
    kernel_ms, total_ms = kernel_seconds[0] * 1000 / steps, total * 1000 / steps
    for name, ms in (("kernel call", kernel_ms), ("Python", total_ms - kernel_ms)):
        print(f"{name:20s} {ms:7.2f} ms/step", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="160m")
    parser.add_argument("--context", type=int, default=1900)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, default=Path("/tmp/polycoder-bench-models"))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    loaded = load_model(Settings(model=str(build(args.shape, args.models)), threads=args.threads))
    if loaded.token_step is None:
        raise SystemExit("the CPU kernels' decode step does not run here (see the log)")
    model, ids = loaded.model, torch.tensor([[3 + (i * 7919) % 8000 for i in range(args.context)]])

    def in_place_cache():  # type: ignore[no-untyped-def]
        return preallocated_cache(model.config.num_hidden_layers, args.context + 64)

    dynamic = decode_ms(
        model, _forward_step(model), DynamicCache(config=model.config), ids, args.steps
    )
    forward = decode_ms(model, _forward_step(model), in_place_cache(), ids, args.steps)
    server, bandwidth = bandwidth_around(
        lambda: decode_ms(model, loaded.token_step, in_place_cache(), ids, args.steps)
    )
    floor_ms = sum(bytes_per_decode_step(model, args.context)) / bandwidth["best"] / 1e6
    if args.profile:
        profile(loaded, in_place_cache(), ids, args.steps)
    print(
        json.dumps(
            {
                "shape": args.shape,
                "context": args.context,
                "dynamicCacheMsPerToken": round(dynamic, 2),
                "inPlaceForwardMsPerToken": round(forward, 2),
                "inPlaceVsDynamic": round(forward / dynamic, 3),
                "serverStepMsPerToken": round(server, 2),
                "bandwidthGBps": bandwidth,
                "floorMsPerToken": round(floor_ms, 2),
                "serverStepVsFloor": round(server / floor_ms, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
