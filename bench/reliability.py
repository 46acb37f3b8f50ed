"""The reliability figures for BENCHMARKS.md: a burst of typing over the real server (1000
edits, each with a completion request, every fourth cancelled, and a status request, in 10 s):
requests answered, stale answers, `polycoder/status` latency during the burst, RSS before and
after; twice in a row, so that growth between bursts shows a leak. Also the document-model
fuzz: how many sequences, against the independent model in tests/unit/test_document_fuzz.py.

    python bench/reliability.py [--model nano] [--out bench/results/reliability.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from burst import BurstResult, Peer, run_burst  # noqa: E402
from rpc import RawServer  # noqa: E402


def summary(result: BurstResult) -> dict[str, object]:
    ordered = sorted(result.status_ms)
    return {
        "requests": result.requests,
        "unanswered": len(result.unanswered),
        "stale": len(result.stale),
        "suggestionsShown": result.suggestions,
        "cancelledByClient": result.cancelled,
        "sendSeconds": round(result.seconds, 2),
        "statusMedianMs": round(ordered[len(ordered) // 2], 2),
        "statusP95Ms": round(result.status_p95_ms, 2),
        "statusMaxMs": round(ordered[-1], 2),
        "rssBeforeMB": round(result.rss_before / 1e6, 1),
        "rssAfterMB": round(result.rss_after / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="nano")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/reliability.json")
    args = parser.parse_args()
    bursts = []
    for _ in range(2):
        server = RawServer()
        try:
            server.initialize({"model": args.model})
            while server.request("polycoder/status", {})["state"] == "loading":
                time.sleep(0.05)
            peer = Peer(server).start()
            first = summary(run_burst(peer, steps=1000, seconds=10))
            second = summary(run_burst(peer, steps=1000, seconds=10))
            bursts.append({"first": first, "second": second})
        finally:
            server.process.kill()
            server.process.wait()
    results = {
        "machine": f"{platform.machine()} {platform.processor()}",
        "model": args.model,
        "runs": bursts,
    }
    print(json.dumps(results, indent=2))
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
