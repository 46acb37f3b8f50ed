"""Memory bandwidth and the decode floor it implies, shared by the benchmarks.

The bandwidth is the best of three 512 MiB reads by each of two readers: torch's sum (a plain
reduction) and polycoder-ls's matrix-vector kernel (falling back to the sum alone where the
kernel cannot run), read right before and right after the decode it is the floor of (the
bandwidth of this shared machine drifts by 20 % over minutes). Taking the best makes the floor
as low as this machine allows.

The reads run in a process of their own: torch's threads reading in the measuring process make
a second OpenMP thread team beside the engine's, and with more of libgomp's threads than cores
the engine's threads then wait between parallel regions asleep instead of spinning: its decode
steps (dozens of barriers each) took 25-35 % longer for the rest of the process.

    python bench/memory.py   prints the reads as JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

READ_BYTES = 512 * 1024 * 1024
TRIALS = 3
Result = TypeVar("Result")


def _best_gbps(read: Any, nbytes: int) -> float:
    read()
    best = 0.0
    for _ in range(TRIALS):
        started = time.perf_counter()
        read()
        best = max(best, nbytes / (time.perf_counter() - started) / 1e9)
    return best


def bandwidth_gbps() -> dict[str, float]:
    """GB/s read by a reduction, by the kernel, and the best of the two (in a process of its
    own)."""
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _read_bandwidth_gbps() -> dict[str, float]:
    from polycoder_ls.engine.cpu_kernels import CpuKernels, KernelUnavailable

    matrix = torch.ones(READ_BYTES // 4 // 1024, 1024)
    result = {"reduction": _best_gbps(matrix.sum, matrix.nbytes)}
    try:
        kernels = CpuKernels.load()
        row = torch.ones(1024)
        result["kernel"] = _best_gbps(lambda: kernels.gemm(matrix, row, None), matrix.nbytes)
    except KernelUnavailable:
        pass
    result["best"] = max(result.values())
    return {name: round(value, 2) for name, value in result.items()}


def bandwidth_around(measure: Callable[[], Result]) -> tuple[Result, dict[str, float]]:
    """`measure()`'s result, and the bandwidth by reader read right before and right after it
    (the best of the two)."""
    before = bandwidth_gbps()
    result = measure()
    after = bandwidth_gbps()
    return result, {name: max(before[name], after[name]) for name in before}


def bytes_per_decode_step(
    model: Any, context: int, kv_storage: torch.dtype | None = None
) -> tuple[int, int]:
    """Weight bytes and KV-cache bytes one decode step must read at `context` tokens (the input
    embedding contributes one row, so it is left out; a quantized matrix counts its bytes; the
    cache is stored as `kv_storage`, or as the model's parameters)."""
    config = model.config
    weights = sum(p.nbytes for name, p in model.named_parameters() if "embed_in" not in name)
    for module in model.modules():
        if getattr(module, "quantized", None) is not None:
            weights += module.quantized.nbytes - module.weight.nbytes
    element = (kv_storage or next(model.parameters()).dtype).itemsize
    kv = config.num_hidden_layers * 2 * context * config.hidden_size * element
    return weights, kv


if __name__ == "__main__":
    print(json.dumps(_read_bandwidth_gbps()))
