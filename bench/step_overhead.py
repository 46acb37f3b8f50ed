"""What a decode token costs around the C step: the server's engine (Generator) decodes after a
long prompt, and the C call (pcls_decoder_step) is timed inside it; the rest of each token's
time is Python (choosing the token, its text, the cache's bookkeeping, the step's arguments).
Also a full garbage collection with the model loaded, as the server leaves it (the model set
aside from full collections) and as Python would have it.

    python bench/step_overhead.py [--shape 160m] [--dtype int4] [--context 1900] [--tokens 64]
        [--rounds 3] --out bench/results/step-overhead-160m.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _never(*_: Any) -> bool:
    return False


def _full_collection_ms() -> float:
    started = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="160m")
    parser.add_argument("--dtype", default="int4")
    parser.add_argument("--context", type=int, default=1900)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", type=Path, default=Path("/tmp/polycoder-bench-models"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from typing_replay import build

    from polycoder_ls.config import Settings
    from polycoder_ls.engine import Engine
    from polycoder_ls.engine.generate import DecodeParams

    engine = Engine()
    settings = Settings(model=str(build(args.shape, args.models)), dtype=args.dtype, threads=2)
    engine.load(settings).result(timeout=600)
    generator = engine._generator
    assert generator is not None and generator.loaded.token_step is not None
    library = generator.loaded.token_step.kernels.library
    step, c_seconds = library.pcls_decoder_step, []

    def timed_step(*arguments: Any) -> None:
        started = time.perf_counter()
        step(*arguments)
        c_seconds.append(time.perf_counter() - started)

    library.pcls_decoder_step = timed_step
    prompt = [3 + (i * 7919) % 8000 for i in range(args.context)]
    params = DecodeParams(max_new_tokens=args.tokens, temperature=0.0, top_p=1.0)
    rounds = []
    for _ in range(args.rounds):
        c_seconds.clear()
        generation = engine._worker.submit(
            lambda: generator.generate("bench", prompt, params, _never, _never)
        )
        _, stats = generation.result()
        steps = stats.generated_tokens - 1
        token_ms = stats.decode_ms / steps
        c_ms = statistics.fmean(c_seconds[-steps:]) * 1000
        rounds.append(
            {"decodeMsPerToken": round(token_ms, 3), "cStepMs": round(c_ms, 3),
             "pythonMsPerToken": round(token_ms - c_ms, 3)}
        )  # fmt: skip
        print(rounds[-1], file=sys.stderr)
        generator.forget("bench")
    frozen_ms = _full_collection_ms()
    gc.unfreeze()
    unfrozen_ms = _full_collection_ms()
    engine.stop(wait=True)
    result = {
        "shape": args.shape,
        "dtype": args.dtype,
        "context": args.context,
        "tokens": args.tokens,
        "rounds": rounds,
        "pythonMsPerTokenMin": min(round_["pythonMsPerToken"] for round_ in rounds),
        "fullCollectionMs": {
            "modelSetAside": round(frozen_ms, 1),
            "asPython": round(unfrozen_ms, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
