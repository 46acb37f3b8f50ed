"""How fast the operators of one decode step stream memory on this CPU: a matrix-vector product
per weight shape (torch in nn.Linear's layout [out, in], torch with the matrix stored [in, out],
and polycoder-ls's kernel) and single-query attention over 1900 cached tokens (torch's SDPA and
the kernel), next to a plain reduction of 512 MiB. The measurement behind
polycoder_ls/engine/cpu_kernels.py.

    python bench/decode_kernels.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.nn import functional

from polycoder_ls.engine.cpu_kernels import CpuKernels

SHAPES = [(768, 2304), (768, 3072), (3072, 768), (1024, 4096), (4096, 1024), (768, 50304)]
BYTES_PER_SHAPE = 400e6  # enough matrices that they do not fit in any cache
HEADS, HEAD_DIM, CONTEXT, LAYERS = 12, 64, 1900, 12


def gb_per_s(run: Callable[[], object], nbytes: float, repeats: int = 20) -> float:
    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return nbytes * repeats / (time.perf_counter() - started) / 1e9


def matrix_vector(kernels: CpuKernels, inputs: int, outputs: int) -> tuple[float, float, float]:
    """GB/s of weight streamed: nn.Linear's layout, input-major, the kernel."""
    count = max(1, int(BYTES_PER_SHAPE / (inputs * outputs * 4)))
    weights = [torch.randn(outputs, inputs) for _ in range(count)]
    transposed = [weight.t().contiguous() for weight in weights]
    bias, row = torch.randn(outputs), torch.randn(1, inputs)
    nbytes = sum(weight.nbytes for weight in weights)
    linear = gb_per_s(lambda: [functional.linear(row, w, bias) for w in weights], nbytes)
    input_major = gb_per_s(lambda: [torch.addmm(bias, row, w) for w in transposed], nbytes)
    kernel = gb_per_s(lambda: [kernels.gemm(w, row[0], bias) for w in weights], nbytes)
    return linear, input_major, kernel


def attention(kernels: CpuKernels, cached: torch.dtype) -> tuple[float, float]:
    """GB/s of keys and values (of type `cached`) streamed by 12 layers' attention: SDPA, the
    kernel."""
    caches = [
        (
            torch.randn(1, HEADS, 2048, HEAD_DIM).to(cached)[:, :, :CONTEXT],
            torch.randn(1, HEADS, 2048, HEAD_DIM).to(cached)[:, :, :CONTEXT],
        )
        for _ in range(LAYERS)
    ]
    query = torch.randn(1, HEADS, 1, HEAD_DIM).to(cached)
    flat_query = query[0, :, 0].float().contiguous()
    nbytes = sum(keys.nbytes + values.nbytes for keys, values in caches)
    sdpa = gb_per_s(
        lambda: [functional.scaled_dot_product_attention(query, k, v) for k, v in caches], nbytes
    )
    kernel = gb_per_s(
        lambda: [kernels.attend(flat_query, k[0], v[0], HEAD_DIM**-0.5) for k, v in caches],
        nbytes,
    )
    return sdpa, kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = CpuKernels.load()
    buffer = torch.ones(128 * 1024 * 1024)
    print(
        f"plain reduction (torch sum of 512 MiB): {gb_per_s(buffer.sum, buffer.nbytes, 5):.1f} GB/s"
    )
    del buffer
    print("| in -> out | torch, [out, in] (nn.Linear) | torch, [in, out] | kernel |")
    print("|---|---|---|---|")
    for inputs, outputs in SHAPES:
        linear, input_major, kernel = matrix_vector(kernels, inputs, outputs)
        print(f"| {inputs} -> {outputs} | {linear:.1f} | {input_major:.1f} | {kernel:.1f} |")
    for cached in (torch.float32, torch.float16):
        sdpa, kernel = attention(kernels, cached)
        what = f"attention, {CONTEXT} tokens x {LAYERS} layers, {cached}"
        print(f"| {what} | SDPA {sdpa:.1f} | | {kernel:.1f} |")


if __name__ == "__main__":
    main()
