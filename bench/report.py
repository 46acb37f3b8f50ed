"""Render typing-replay result files as the markdown tables of BENCHMARKS.md.

python bench/report.py bench/results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _ms2(value: Any) -> str:
    return "- (no type-through in this run)" if value is None else f"{value:.2f} ms"


def _censored(summary: dict[str, Any], key: str) -> bool:
    """Unanswered pauses are recorded as the pause length: a percentile that falls on one is
    only a lower bound."""
    pause = summary["pauseToSuggestionMs"]
    rank = min(pause["n"] - 1, int({"p50": 0.5, "p95": 0.95}[key] * pause["n"]))
    return rank >= pause["n"] - pause["unanswered"]


def _pause(summary: dict[str, Any], key: str) -> str:
    return ("≥ " if _censored(summary, key) else "") + _ms(summary["pauseToSuggestionMs"][key])


def _ratio(result: dict[str, Any], key: str) -> str:
    bound = "≤ " if _censored(result["naive"], key) else ""
    return f"{bound}{result['ratios'][f'pause{key.upper()}VsNaive']:.2f} x"


def render(result: dict[str, Any]) -> str:
    model, machine = result["model"], result["machine"]
    ours, naive, engine = result["polycoderLs"], result["naive"], result["engine"]
    rows = [
        (
            "pause-to-suggestion p50",
            _pause(ours, "p50"),
            _pause(naive, "p50"),
            _ratio(result, "p50"),
        ),
        (
            "pause-to-suggestion p95",
            _pause(ours, "p95"),
            _pause(naive, "p95"),
            _ratio(result, "p95"),
        ),
        (
            "pauses left unanswered",
            f"{ours['pauseToSuggestionMs']['unanswered']} / {ours['pauseToSuggestionMs']['n']}",
            f"{naive['pauseToSuggestionMs']['unanswered']} / {naive['pauseToSuggestionMs']['n']}",
            "",
        ),
        (
            "prefill tokens computed / prompt tokens, p50",
            f"{ours['prefillShareOfPrompt']['p50']:.1%}",
            "100% (no reuse)",
            "",
        ),
        (
            "prompt tokens p50",
            str(ours["promptTokens"]["p50"]),
            str(naive["promptTokens"]["p50"] or "-"),
            "",
        ),
        (
            "decode per token p50 (server)",
            _ms(ours["decodeMsPerToken"]["p50"]),
            _ms(naive["decodeMsPerToken"]["p50"]),
            "",
        ),
        (
            "type-through answer p50 (in the server)",
            _ms2(ours["typeThroughServerMs"]["p50"]),
            "-",
            "",
        ),
        ("cache hit rate", f"{ours['cacheHitRate']:.1%}", f"{naive['cacheHitRate']:.1%}", ""),
        (
            "requests sent / cancelled by the client",
            f"{ours['requests']} / {ours['cancelsSent']}",
            f"{naive['requests']} / {naive['cancelsSent']}",
            "",
        ),
        (
            "peak server memory (VmHWM)",
            f"{ours['peakMemoryMiB']:.0f} MiB",
            f"{naive['peakMemoryMiB']:.0f} MiB",
            "",
        ),
    ]
    shape = f"{model['shape']} shape ({model['layers']} layers, hidden {model['hidden']})"
    gpu = machine["gpu"] or "none"
    cancel = engine["cancelToStopMs"]
    decode = f"{engine['decodeMsPerTokenAt1900']} ms/token ({engine['decodeVsFloor']} x the floor)"
    readers = engine.get("bandwidthByReaderGBps", {})
    by_reader = ", ".join(f"{name} {value}" for name, value in readers.items() if name != "best")
    bandwidth = f"{engine['bandwidthGBps']} GB/s" + (f" (best of {by_reader})" if by_reader else "")
    lines = [
        f"### {shape}, {model['dtype']}, {model['threads']} threads",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, GPU: {gpu}; "
        f"torch {machine['torch']}, Python {machine['python']}.",
        f"Command: `{result['command']}`",
        "",
        "| measure | polycoder-ls | naive baseline | ratio |",
        "|---|---|---|---|",
        *[f"| {name} | {a} | {b} | {r} |" for name, a, b, r in rows],
        "",
        "Engine, in process, 1900 tokens of context:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| measured memory bandwidth | {bandwidth} |",
        "| decode floor (weights + KV read / bandwidth) | "
        f"{engine['decodeFloorMsAt1900']} ms/token |",
        f"| decode measured | {decode} |",
        f"| cancel-to-stop p50 / p95 (n={cancel['n']}) | {cancel['p50']} / {cancel['p95']} ms |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        print(render(json.loads(Path(path).read_text())))


if __name__ == "__main__":
    main()
