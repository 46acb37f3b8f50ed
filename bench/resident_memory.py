"""Resident memory of the in-process engine per dtype: after loading, and after one suggestion
at a 1900-token prompt. Each dtype is measured in a process of its own (Linux /proc).

    python bench/resident_memory.py [--shape 160m] [--dtypes float32 int8 int4] --out FILE

Reported in MiB: VmRSS (what `top` shows), split into RssAnon (the process's own memory) and
RssFile (pages of mapped files: a float32 model's weights stay mapped from its checkpoint), and
VmHWM (the peak resident size, reached while loading).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
PROMPT_TOKENS = 1900


def resident_mib() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {
        field: int(match.group(1)) // 1024
        for field in FIELDS
        if (match := re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE))
    }


def measure(model: Path, dtype: str) -> dict[str, Any]:
    """In this process: load `model` as `dtype`, then suggest once after a long prompt."""
    from polycoder_ls.config import Settings
    from polycoder_ls.engine.generate import DecodeParams, Generator
    from polycoder_ls.engine.loading import load_model

    loaded = load_model(Settings(model=str(model), dtype=dtype, threads=2))
    after_load = resident_mib()
    prompt = [3 + (i * 7919) % 8000 for i in range(PROMPT_TOKENS)]
    params = DecodeParams(max_new_tokens=16, temperature=0.0, top_p=1.0)
    Generator(loaded).generate("doc", prompt, params, lambda _: False, lambda: False)
    return {"dtype": loaded.dtype_name, "afterLoad": after_load, "afterSuggestion": resident_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="160m")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "int8", "int4"])
    parser.add_argument("--models", type=Path, default=Path("/tmp/polycoder-bench-models"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.model, args.measure)))
        return
    from typing_replay import build

    model = build(args.shape, args.models)
    results = {}
    for dtype in args.dtypes:
        command = [sys.executable, __file__, "--measure", dtype, "--model", str(model)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[dtype] = json.loads(done.stdout.strip().splitlines()[-1])
        print(dtype, results[dtype], file=sys.stderr)
    result = {"command": "python " + " ".join(sys.argv), "shape": args.shape, "dtypes": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
