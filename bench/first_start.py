"""The first minutes of a new user, measured from outside (numbers for BENCHMARKS.md):

1. `initialize` to the first non-empty suggestion with the default settings on a machine that
   cannot reach the model hub (PolyCoder-160M not downloaded: the fallback nano serves);
2. `polycoder-ls complete --model nano` wall time, warm (kernels built, files in the page
   cache), and where it goes: interpreter + imports of torch, transformers and the GPT-NeoX
   model code, each timed in a fresh interpreter.

    python bench/first_start.py [--runs 5] [--out bench/results/first-start.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from rpc import RawServer  # noqa: E402

TEXT = "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return handle."
IMPORTS = {
    "interpreter": "pass",
    "torch": "import torch",
    "transformers": "import torch, transformers",
    "gpt-neox model code": "import torch, transformers.models.gpt_neox.modeling_gpt_neox",
}


def first_suggestion_seconds(hf_home: str) -> float:
    env = {**os.environ, "HF_HOME": hf_home}
    started = time.perf_counter()
    server = RawServer(env=env)
    try:
        server.initialize({}, capabilities={"textDocument": {"inlineCompletion": {}}})
        document = {"uri": "file:///bench.py", "languageId": "python", "version": 1, "text": TEXT}
        server.send("textDocument/didOpen", {"textDocument": document}, request=False)
        line = TEXT.split("\n")[-1]
        params = {
            "textDocument": {"uri": "file:///bench.py"},
            "position": {"line": 5, "character": len(line)},
            "context": {"triggerKind": 2},
        }
        while not server.request("textDocument/inlineCompletion", params)["items"]:
            pass
        return time.perf_counter() - started
    finally:
        server.process.kill()
        server.process.wait()


def wall_seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/first-start.json")
    args = parser.parse_args()
    complete = [
        sys.executable, "-m", "polycoder_ls", "complete", str(ROOT / "tests/data/example.py:10:21"),
        "--model", "nano", "--max-new-tokens", "24",
    ]  # fmt: skip
    wall_seconds(complete)  # warm: kernels built, files cached
    with tempfile.TemporaryDirectory() as hf_home:
        first = [first_suggestion_seconds(hf_home) for _ in range(args.runs)]
    completes = [wall_seconds(complete) for _ in range(args.runs)]
    imports = {
        name: min(wall_seconds([sys.executable, "-c", code]) for _ in range(3))
        for name, code in IMPORTS.items()
    }
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "runs": args.runs,
        "initializeToFirstSuggestionSeconds": {
            "median": round(statistics.median(first), 2),
            "all": [round(value, 2) for value in first],
        },
        "completeNanoWarmSeconds": {
            "median": round(statistics.median(completes), 2),
            "min": round(min(completes), 2),
            "all": [round(value, 2) for value in completes],
        },
        "importSecondsFreshInterpreter": {name: round(value, 2) for name, value in imports.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
