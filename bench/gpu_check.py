"""The GPU path checked and measured in one run on a CUDA machine (bench/gpu_check.sh sets it up).

1. Tests on CUDA: tests/gpu (float16 and bfloat16: greedy text against transformers' generate on
   the GPU, graph replays against eager forwards, cancellation, the memory check) and the e2e
   cancellation, background and context tests, their servers on the GPU in float16.
2. Per shape (PolyCoder's 160M, 0.4B and 2.7B, random weights, float16), in process: decode
   ms/token after 1900 tokens of context with the CUDA graphs and without them, against the HBM
   floor (the bytes a step reads / the copy bandwidth measured here); cancel-to-stop against one
   step; peak GPU memory.
3. Per shape, at the server (the real LSP over stdio): one typed character, then the request for
   a 16-token suggestion after ~1900 tokens of the document, keystroke to answer.

Each phase adds to the JSON as it ends (a run cut short keeps what it measured); a table is
printed at the end. `--device cpu` runs the same script on a CPU (float32, no graphs, memory
read bandwidth), to check the script itself where no GPU is.

    python bench/gpu_check.py --out bench/results/gpu-check.json [--shapes 160m,0.4b,2.7b]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from memory import bandwidth_gbps, bytes_per_decode_step  # noqa: E402
from typing_replay import (  # noqa: E402
    POLYCODER_EMBEDDING_ROWS,
    SHAPES,
    _cancel_to_stop_ms,
    _percentile,
    _uncancelled_seconds,
    start_server,
    stop_server,
)

CONTEXT = 1900
LINE_TOKENS = 16
TESTS = [
    "tests/gpu",
    "tests/e2e/test_cancellation.py",
    "tests/e2e/test_background.py",
    "tests/e2e/test_context.py",
]
DTYPES = {"cuda": "float16", "cpu": "float32"}
GOALS = {"2.7b": 50.0, "160m": 15.0}
"""Keystroke-to-suggestion goal at the server for a 16-token line, ms (issue 17)."""


def gpu_facts() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"gpu": None, "torch": torch.__version__}
    properties = torch.cuda.get_device_properties(0)
    import transformers

    return {
        "gpu": properties.name,
        "gpus": torch.cuda.device_count(),
        "memoryGiB": round(properties.total_memory / 1024**3, 1),
        "multiprocessors": properties.multi_processor_count,
        "capability": f"{properties.major}.{properties.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }


def copy_bandwidth_gbps(gib: int = 4, repeats: int = 10) -> float:
    """Device-to-device copy: bytes read and written / time (the HBM bandwidth a step can use)."""
    source = torch.empty(gib * 1024**3, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        target.copy_(source)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1000
    del source, target
    torch.cuda.empty_cache()
    return round(2 * gib * 1024**3 * repeats / seconds / 1e9, 1)


def run_tests(budget_s: float) -> dict[str, Any]:
    """pytest on CUDA; the counts from its summary line, and the failures' names."""
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rf"]
    command += ["--durations=8", *TESTS]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=budget_s, check=False
        )
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as timeout:
        output = (timeout.stdout or b"").decode(errors="replace") if timeout.stdout else ""
        returncode = None
    print(output[-6000:], file=sys.stderr)
    counts = {
        word: int(number)
        for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", output)
    }
    return {
        "command": " ".join(command[1:]),
        "returncode": returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "counts": counts,
        "failed": re.findall(r"^FAILED (\S+)", output, flags=re.MULTILINE),
    }


def build_shape(shape: str, directory: Path, device: str) -> Path:
    """A random-weight model of PolyCoder's `shape`, drawn on `device` (float16 on a GPU)."""
    from model_factory import build_model

    dtype = DTYPES[device]
    out = directory / f"polycoder-{shape}-shape-{dtype}"
    if not (out / "config.json").exists():
        build_model(
            out,
            vocab_size=8192,
            embedding_rows=POLYCODER_EMBEDDING_ROWS,
            dtype=getattr(torch, dtype),
            device=device,
            **SHAPES[shape],
        )
    return out


def decode_ms(generator: Any, prompt: list[int], tokens: int, runs: int = 5) -> float:
    """Median decode ms/token of `runs` generations after the same prompt (one token to feed)."""
    from polycoder_ls.engine.generate import DecodeParams

    params = DecodeParams(max_new_tokens=tokens, temperature=0.0, top_p=1.0)
    generator.generate("measure", prompt, params, lambda _: False, lambda: False)
    per_token = []
    for _ in range(runs):
        _, stats = generator.generate("measure", prompt, params, lambda _: False, lambda: False)
        per_token.append(stats.decode_ms / max(1, stats.generated_tokens - 1))
    return statistics.median(per_token)


def measure_engine(
    model: Path, device: str, bandwidth: float, cancel_trials: int
) -> dict[str, Any]:
    from dataclasses import replace

    from polycoder_ls.config import Settings
    from polycoder_ls.engine.generate import DecodeParams, Generator
    from polycoder_ls.engine.loading import load_model

    gpu = device == "cuda"
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    loaded = load_model(Settings(model=str(model), device=device, dtype=DTYPES[device]))
    assert loaded.device == device, loaded.notices
    load_s = time.perf_counter() - started
    prompt = [3 + (i * 7919) % (loaded.vocab_limit - 3) for i in range(CONTEXT)]
    weight_bytes, kv_bytes = bytes_per_decode_step(loaded.model, CONTEXT)
    floor_ms = (weight_bytes + kv_bytes) / (bandwidth * 1e9) * 1000
    graphs = Generator(loaded)
    graph_ms = decode_ms(graphs, prompt, 64)
    eager_ms = decode_ms(Generator(replace(loaded, token_step=None)), prompt, 64)
    rng = random.Random(0)
    long = DecodeParams(max_new_tokens=400, temperature=0.0, top_p=1.0)
    window_s = min(2.0, _uncancelled_seconds(graphs, prompt[:1000], long))
    trials = [
        _cancel_to_stop_ms(graphs, prompt[: 1000 + n], long, rng.uniform(0.05, 0.95) * window_s)
        for n in range(cancel_trials)
    ]
    stops = [ms for ms in trials if ms is not None]
    step = loaded.token_step
    result = {
        "loadSeconds": round(load_s, 1),
        "weightBytes": weight_bytes,
        "kvBytesAt1900": kv_bytes,
        "hbmFloorMsAt1900": round(floor_ms, 3),
        "decodeMsPerTokenGraphs": round(graph_ms, 3),
        "decodeMsPerTokenEager": round(eager_ms, 3),
        "graphsVsFloor": round(graph_ms / floor_ms, 2),
        "eagerVsGraphs": round(eager_ms / graph_ms, 2),
        "graphCaptures": getattr(step, "captures", None),
        "graphSlots": getattr(step, "slots", None),
        "cancelToStopMs": {
            "p50": _percentile(stops, 0.5),
            "max": round(max(stops), 2) if stops else None,
            "n": len(stops),
            "each": [round(ms, 2) for ms in stops],
        },
        "cancelToStopMinusStepMs": round(max(stops) - graph_ms, 2) if stops else None,
        "peakGpuMemoryGiB": round(torch.cuda.max_memory_allocated() / 1024**3, 2) if gpu else None,
    }
    del graphs, loaded
    if gpu:
        torch.cuda.empty_cache()
    return result


def document_text(min_chars: int = 12000) -> str:
    """Real code of this machine's Python, long enough for ~1900 tokens of prompt."""
    text = (Path(os.__file__).parent / "argparse.py").read_text()
    return text[:min_chars].rsplit("\n", 1)[0] + "\n"


async def measure_server(model: Path, device: str, trials: int) -> dict[str, Any]:
    """Keystroke to a 16-token suggestion at the server, KV cache warm."""
    from lsprotocol import types

    settings = {
        "model": str(model),
        "device": device,
        "dtype": DTYPES[device],
        "maxNewTokens": LINE_TOKENS,
        "multiline": "always",
        "cache": {"size": 0},
    }
    client = await start_server(settings)
    uri = "file:///gpu-check/document.py"
    text = document_text()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        )
    )
    lines = text.split("\n")

    def request() -> Any:
        position = types.Position(len(lines) - 1, len(lines[-1]))
        return client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=position,
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Invoked
                ),
            )
        )

    await request()  # the cold prompt: prefill of the whole document
    latencies, lasts = [], []
    for version in range(2, 2 + trials):
        end = types.Position(len(lines) - 1, len(lines[-1]))
        typed = "xyzw"[version % 4]
        started = time.perf_counter()
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[
                    types.TextDocumentContentChangePartial(range=types.Range(end, end), text=typed)
                ],
            )
        )
        lines[-1] += typed
        await request()
        latencies.append((time.perf_counter() - started) * 1000)
        status = await client.protocol.send_request_async("polycoder/status", {})
        lasts.append({key: getattr(status.last, key) for key in status.last._fields})
    await stop_server(client)
    generated = [last["generatedTokens"] for last in lasts]
    return {
        "keystrokeToSuggestionMs": {
            "p50": _percentile(latencies, 0.5),
            "min": round(min(latencies), 2),
            "n": len(latencies),
        },
        **{
            f"server{name[0].upper()}{name[1:]}": {
                "p50": _percentile([last[name] for last in lasts], 0.5)
            }
            for name in ("latencyMs", "prefillMs", "decodeMs", "decodeForwards")
        },
        "generatedTokens": {"p50": _percentile(generated, 0.5), "min": min(generated)},
        "promptTokens": {"p50": _percentile([last["promptTokens"] for last in lasts], 0.5)},
        "reusedTokens": {"p50": _percentile([last["reusedTokens"] or 0 for last in lasts], 0.5)},
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        "| shape | decode ms/token, graphs | eager | HBM floor | graphs vs floor | "
        "cancel-to-stop max, ms | 16-token line at the server, p50 ms (goal) | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, figures in result.get("shapes", {}).items():
        engine, server = figures.get("engine", {}), figures.get("server", {})
        line = server.get("keystrokeToSuggestionMs", {}).get("p50")
        rows.append(
            f"| {shape} | {engine.get('decodeMsPerTokenGraphs')} | "
            f"{engine.get('decodeMsPerTokenEager')} | {engine.get('hbmFloorMsAt1900')} | "
            f"{engine.get('graphsVsFloor')} x | {engine.get('cancelToStopMs', {}).get('max')} | "
            f"{line} ({GOALS.get(shape, '-')}) | {engine.get('peakGpuMemoryGiB')} |"
        )
    tests = result.get("tests", {})
    rows.append(f"\ntests on CUDA: {tests.get('counts')} failed: {tests.get('failed')}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", default="160m,0.4b,2.7b")
    parser.add_argument("--models", type=Path, default=Path("/tmp/polycoder-gpu-models"))
    parser.add_argument("--tests-budget", type=float, default=200.0, help="seconds")
    parser.add_argument("--cancel-trials", type=int, default=10)
    parser.add_argument("--server-trials", type=int, default=8)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--device", choices=sorted(DTYPES), default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device here")
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv), **gpu_facts()}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    if args.device == "cuda":
        result["copyBandwidthGBps"] = copy_bandwidth_gbps()
    else:
        result["copyBandwidthGBps"] = bandwidth_gbps()["best"]
    save()
    if not args.skip_tests:
        result["tests"] = run_tests(args.tests_budget)
        save()
    result["shapes"] = {}
    for shape in args.shapes.split(","):
        model = build_shape(shape, args.models, args.device)
        figures: dict[str, Any] = result["shapes"].setdefault(shape, {})
        bandwidth = result["copyBandwidthGBps"]
        figures["engine"] = measure_engine(model, args.device, bandwidth, args.cancel_trials)
        save()
        figures["server"] = asyncio.run(measure_server(model, args.device, args.server_trials))
        save()
        print(f"{shape}: {json.dumps(figures)}", file=sys.stderr)
    print(table(result))


if __name__ == "__main__":
    main()
