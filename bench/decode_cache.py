"""Decode time per token at long context: transformers' DynamicCache (torch.cat per step) vs
polycoder-ls's in-place KV layers, and the in-place cache without the fused GPT-NeoX decode step
(transformers' layers around the same kernels), same model, same process, against the
memory-bandwidth floor (weights + KV read per step / measured bandwidth).

    python bench/decode_cache.py [--shape 160m] [--context 1900] [--steps 20] [--profile]

--profile adds where one decode step's time goes (in-place cache): the CPU kernels' share, timed
around each call, and torch's other operators (torch.profiler, self time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import bandwidth_gbps, bytes_per_decode_step
from typing_replay import SHAPES, build

from polycoder_ls.config import Settings
from polycoder_ls.engine.cpu_kernels import CpuKernels
from polycoder_ls.engine.kv_cache import preallocated_cache
from polycoder_ls.engine.loading import load_model
from polycoder_ls.engine.neox_decode import NeoXDecodeStep


def decode_ms(model, cache, ids: torch.Tensor, steps: int, runs: int = 3) -> float:
    """Milliseconds per decode step after `ids`: the best of `runs` runs of `steps` steps, each
    from the same context length (measured like the bandwidth: the best this machine gives)."""
    best = float("inf")
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        token = torch.tensor([[5]])
        for _ in range(3):
            model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        start_length = cache.get_seq_length()
        for _ in range(runs):
            cache.crop(start_length - cache.get_seq_length())
            started = time.perf_counter()
            for _ in range(steps):
                model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            best = min(best, (time.perf_counter() - started) / steps * 1000)
    return best


def _timing_kernels(seconds: dict[str, float], vocab_rows: int) -> None:
    """Wrap the CPU kernels so each call adds its time to `seconds` (LM head, other linear
    layers, attention)."""
    gemv, attend, attend_step = CpuKernels.gemv, CpuKernels.attend, CpuKernels.neox_attend_step

    def timed_gemv(self, weight, row, bias):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = gemv(self, weight, row, bias)
        name = "kernel: LM head" if weight.shape[0] == vocab_rows else "kernel: linear layers"
        seconds[name] += time.perf_counter() - started
        return out

    def timed_attend(self, *args):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = attend(self, *args)
        seconds["kernel: attention"] += time.perf_counter() - started
        return out

    def timed_attend_step(self, *args):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = attend_step(self, *args)
        seconds["kernel: rotary + KV write + attention"] += time.perf_counter() - started
        return out

    CpuKernels.gemv, CpuKernels.attend = timed_gemv, timed_attend  # type: ignore[method-assign]
    CpuKernels.neox_attend_step = timed_attend_step  # type: ignore[method-assign]


def profile(model, cache, ids: torch.Tensor, steps: int) -> None:
    """Milliseconds per decode step: the CPU kernels, the top torch operators, and the rest
    (Python and module overhead), on stderr."""
    seconds: dict[str, float] = defaultdict(float)
    _timing_kernels(seconds, model.get_output_embeddings().weight.shape[0])
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        token = torch.tensor([[5]])
        seconds.clear()
        started = time.perf_counter()
        for _ in range(steps):
            model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        total = time.perf_counter() - started
        kernel_seconds = dict(seconds)
        with torch.profiler.profile() as profiler:
            for _ in range(steps):
                model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
    torch_ops = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    torch_ms = sum(event.self_cpu_time_total for event in torch_ops) / 1000 / steps
    rows = [(name, value * 1000 / steps) for name, value in sorted(kernel_seconds.items())]
    rows += [(e.key, e.self_cpu_time_total / 1000 / steps) for e in torch_ops[:5]]
    rows.append(("torch operators, all", torch_ms))
    rows.append(
        (
            "the rest (Python, modules)",
            total * 1000 / steps
            - torch_ms
            - sum(value * 1000 / steps for value in kernel_seconds.values()),
        )
    )
    rows.append(("total", total * 1000 / steps))
    for name, ms in rows:
        print(f"{name:55s} {ms:7.2f} ms/step", file=sys.stderr)


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
    fused_applies = NeoXDecodeStep.applies
    NeoXDecodeStep.applies = lambda *_: False  # type: ignore[method-assign, assignment]
    without_fused = decode_ms(
        loaded.model, preallocated_cache(layers, args.context + 64), ids, args.steps
    )
    NeoXDecodeStep.applies = fused_applies  # type: ignore[method-assign]
    bandwidth = bandwidth_gbps()
    floor_ms = sum(bytes_per_decode_step(loaded.model, args.context)) / bandwidth["best"] / 1e6
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
                "inPlaceWithoutFusedStepMsPerToken": round(without_fused, 2),
                "bandwidthGBps": bandwidth,
                "floorMsPerToken": round(floor_ms, 2),
                "inPlaceVsFloor": round(in_place / floor_ms, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
