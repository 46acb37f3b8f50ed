"""How fast one matrix-vector product streams a weight matrix on this CPU, in nn.Linear's layout
([out, in]) and stored input-major ([in, out]): the measurement behind
polycoder_ls/engine/linear_layout.py.

    python bench/gemv_layout.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

SHAPES = [(768, 2304), (768, 3072), (3072, 768), (1024, 4096), (4096, 1024), (768, 50304)]
BYTES_PER_SHAPE = 400e6  # enough matrices that they do not fit in any cache


def gb_per_s(run, nbytes: float, repeats: int = 20) -> float:
    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return nbytes * repeats / (time.perf_counter() - started) / 1e9


def measure(inputs: int, outputs: int) -> tuple[float, float]:
    """GB/s of weight streamed: nn.Linear's layout, then input-major."""
    count = max(1, int(BYTES_PER_SHAPE / (inputs * outputs * 4)))
    weights = [torch.randn(outputs, inputs) for _ in range(count)]
    transposed = [weight.t().contiguous() for weight in weights]
    bias, row = torch.randn(outputs), torch.randn(1, inputs)
    nbytes = sum(weight.nbytes for weight in weights)
    linear = gb_per_s(lambda: [torch.nn.functional.linear(row, w, bias) for w in weights], nbytes)
    input_major = gb_per_s(lambda: [torch.addmm(bias, row, w) for w in transposed], nbytes)
    return linear, input_major


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| in -> out | [out, in] (nn.Linear) GB/s | [in, out] GB/s |")
    print("|---|---|---|")
    for inputs, outputs in SHAPES:
        linear, input_major = measure(inputs, outputs)
        print(f"| {inputs} -> {outputs} | {linear:.1f} | {input_major:.1f} |")


if __name__ == "__main__":
    main()
