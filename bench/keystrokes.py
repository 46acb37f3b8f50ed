"""What one keystroke (an incremental didChange of one character) costs in a large document.

In process: `CompletionPipeline.change` (piece table) beside the design it replaced (rebuild
the string and every line start per change), on documents of 1, 10 and 50 MB. Over the real
server: didChange followed at once by `polycoder/status`, the time to its answer, in a 50 MB
document and in a small one (the status round trip alone).

    python bench/keystrokes.py [--out bench/results/keystrokes.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from rpc import RawServer  # noqa: E402

from polycoder_ls.config import Settings  # noqa: E402
from polycoder_ls.documents import UTF16  # noqa: E402
from polycoder_ls.pipeline import Change, CompletionPipeline  # noqa: E402

LINE = "    total = compute(values[index], weights) + offset  # a typical line of code\n"
KEYSTROKES = 200


def document_text(megabytes: float) -> str:
    return LINE * int(megabytes * 1e6 / len(LINE))


def keystrokes(text: str, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Random (line, column) positions where one character is typed."""
    rng = random.Random(seed)
    lines = text.count("\n")
    return [(rng.randrange(lines), rng.randrange(len(LINE) - 1)) for _ in range(count)]


class _NoEngine:
    status = None

    def forget(self, key: str) -> None:
        pass


def pipeline_ms(text: str) -> list[float]:
    pipeline = CompletionPipeline(_NoEngine(), Settings())  # type: ignore[arg-type]
    pipeline.open("file:///big.py", "python", 0, text)
    times = []
    for version, (line, column) in enumerate(keystrokes(text, KEYSTROKES), 1):
        change = Change("x", ((line, column), (line, column)))
        started = time.perf_counter()
        pipeline.change("file:///big.py", version, [change], UTF16)
        times.append((time.perf_counter() - started) * 1000)
    return times


def rebuild_ms(text: str) -> list[float]:
    """The design replaced: a new string and all line starts per change."""
    breaks = re.compile(r"\r\n|\r|\n")
    starts = [0] + [match.end() for match in breaks.finditer(text)]
    times = []
    for line, column in keystrokes(text, KEYSTROKES // 10):
        started = time.perf_counter()
        offset = starts[line] + column
        text = text[:offset] + "x" + text[offset:]
        starts = [0] + [match.end() for match in breaks.finditer(text)]
        times.append((time.perf_counter() - started) * 1000)
    return times


def server_ms(text: str) -> list[float]:
    """didChange of one character, then polycoder/status: the time to the status answer."""
    server = RawServer()
    try:
        server.initialize({"model": "nano"})
        uri = "file:///big.py"
        document = {"uri": uri, "languageId": "python", "version": 0, "text": text}
        server.send("textDocument/didOpen", {"textDocument": document}, request=False)
        server.request("polycoder/status", {})
        times = []
        for version, (line, column) in enumerate(keystrokes(text, KEYSTROKES), 1):
            where = {"line": line, "character": column}
            change = {"range": {"start": where, "end": where}, "text": "x"}
            started = time.perf_counter()
            params = {"textDocument": {"uri": uri, "version": version}, "contentChanges": [change]}
            server.send("textDocument/didChange", params, request=False)
            server.request("polycoder/status", {})
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        server.process.kill()
        server.process.wait()


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "medianMs": round(statistics.median(ordered), 3),
        "p95Ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "count": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/keystrokes.json")
    args = parser.parse_args()
    results: dict[str, object] = {"machine": f"{platform.machine()} {platform.processor()}"}
    in_process = {}
    for megabytes in (1, 10, 50):
        text = document_text(megabytes)
        in_process[f"{megabytes} MB"] = {
            "pieceTable": summary(pipeline_ms(text)),
            "rebuild": summary(rebuild_ms(text)),
        }
        print(megabytes, "MB", in_process[f"{megabytes} MB"], file=sys.stderr)
    results["inProcess"] = in_process
    results["server"] = {
        "small document": summary(server_ms(document_text(0.01))),
        "50 MB": summary(server_ms(document_text(50))),
    }
    print(json.dumps(results, indent=2))
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
