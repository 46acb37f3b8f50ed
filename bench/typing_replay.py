"""Typing replay: real source files typed keystroke by keystroke through the real LSP over stdio.

The client behaves like VS Code: a didChange per keystroke, an inline completion request after a
debounce, $/cancelRequest for a superseded request, pauses at line ends. The same replay runs
against polycoder-ls and against its naive baseline (`--naive`: no KV reuse, no completion cache,
no cancellation: the design of the usual HTTP-backend completion servers), in one run.

    python bench/typing_replay.py --shape 160m --out bench/results/160m.json

Models: random-weight GPT-NeoX with PolyCoder's shapes (timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from memory import bandwidth_around, bytes_per_decode_step
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SHAPES = {
    "160m": {"hidden": 768, "layers": 12, "heads": 12},
    "0.4b": {"hidden": 1024, "layers": 24, "heads": 16},
    "2.7b": {"hidden": 2560, "layers": 32, "heads": 32},
}
POLYCODER_EMBEDDING_ROWS = 50304
DEBOUNCE_S = 0.075  # VS Code / Copilot
KEY_DELAY_S = (0.08, 0.16)
LINE_END_PAUSE_S = 3.0  # default of --line-end-pause


def source_files() -> list[tuple[str, Path]]:
    """Real code that ships on this machine: Python stdlib, C headers, JavaScript from npm."""
    stdlib = Path(os.__file__).parent
    candidates = [
        ("python", stdlib / "argparse.py"),
        ("python", stdlib / "json" / "decoder.py"),
        ("c", Path("/usr/include/stdio.h")),
        ("c", Path("/usr/include/stdlib.h")),
        (
            "javascript",
            ROOT / "editors/vscode/node_modules/vscode-languageclient/lib/common/client.js",
        ),
        (
            "javascript",
            ROOT / "editors/vscode/node_modules/vscode-jsonrpc/lib/common/connection.js",
        ),
    ]
    return [(language, path) for language, path in candidates if path.exists()]


@dataclass
class Replay:
    """What one server configuration did during the replay."""

    pause_s: float = LINE_END_PAUSE_S
    pause_latencies_ms: list[float] = field(default_factory=list)
    unanswered_pauses: int = 0
    server_lasts: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    cancels_sent: int = 0
    request_seconds: list[float] = field(default_factory=list)
    """Each request's life at the server: sent to answered (a suggestion, or cancelled)."""


class Typist:
    def __init__(self, client: LanguageClient, uri: str, text: str, replay: Replay) -> None:
        self.client, self.uri, self.text, self.replay = client, uri, text, replay
        self.version = 1
        self.pending: tuple[str, asyncio.Future[Any]] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def position(self) -> types.Position:
        lines = self.text.split("\n")
        return types.Position(len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2)

    def type_char(self, char: str) -> float:
        start = self.position()
        self.text += char
        self.version += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(
                    uri=self.uri, version=self.version
                ),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(start, start), text=char
                    )
                ],
            )
        )
        self.cancel_pending()
        return time.perf_counter()

    def cancel_pending(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.pending is not None and not self.pending[1].done():
            self.client.protocol.notify(
                types.CANCEL_REQUEST, types.CancelParams(id=self.pending[0])
            )
            self.replay.cancels_sent += 1
        self.pending = None

    def schedule_request(self, keystroke_at: float, measure: bool) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(DEBOUNCE_S, lambda: self.send_request(keystroke_at, measure))

    def send_request(self, keystroke_at: float, measure: bool) -> None:
        msg_id = str(uuid.uuid4())
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=self.uri),
            position=self.position(),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
            ),
        )
        future = asyncio.wrap_future(
            self.client.protocol.send_request(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id
            )
        )
        self.replay.requests += 1
        self.pending = (msg_id, future)
        sent_at = time.perf_counter()
        future.add_done_callback(
            lambda done: self.replay.request_seconds.append(time.perf_counter() - sent_at)
        )
        future.add_done_callback(
            lambda done: asyncio.ensure_future(self.answered(done, keystroke_at, measure))
        )

    async def answered(
        self, future: asyncio.Future[Any], keystroke_at: float, measure: bool
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            if measure:  # the pause ended (the user typed on) before the suggestion came
                self.replay.unanswered_pauses += 1
                self.replay.pause_latencies_ms.append(self.replay.pause_s * 1000)
            return
        latency = (time.perf_counter() - keystroke_at) * 1000
        status = await self.client.protocol.send_request_async("polycoder/status", {})
        last = {key: getattr(status.last, key) for key in status.last._fields}
        self.replay.server_lasts.append(last)
        if measure:
            self.replay.pause_latencies_ms.append(latency)


async def replay_file(
    client: LanguageClient,
    path: Path,
    language: str,
    replay: Replay,
    rng: random.Random,
    context_lines: int,
    typed_lines: int,
) -> None:
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    start = min(context_lines, max(0, len(lines) - typed_lines - 1))
    while start < len(lines) - typed_lines and not lines[start].strip():
        start += 1
    uri = path.as_uri()
    prefix = "\n".join(lines[:start]) + "\n"
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id=language, version=1, text=prefix)
        )
    )
    typist = Typist(client, uri, prefix, replay)
    # Opening the file and placing the cursor: the editor asks once and the user waits for it.
    await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=typist.position(),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Invoked
            ),
        )
    )
    for line in lines[start : start + typed_lines]:
        for index, char in enumerate(line + "\n"):
            at_line_end = index == len(line) - 1 or (not line and char == "\n")
            keystroke_at = typist.type_char(char)
            typist.schedule_request(keystroke_at, measure=at_line_end)
            await asyncio.sleep(replay.pause_s if at_line_end else rng.uniform(*KEY_DELAY_S))
    typist.cancel_pending()
    await asyncio.sleep(0.5)
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri=uri))
    )


async def start_server(settings: dict[str, Any], *flags: str) -> LanguageClient:
    """A polycoder-ls over stdio, initialised with `settings`, once its model has loaded."""
    client = LanguageClient("typing-replay", "1")

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show_message(params: types.ShowMessageParams) -> None:
        print(f"  server says: {params.message}", file=sys.stderr)

    await client.start_io(sys.executable, "-m", "polycoder_ls", "--stdio", *flags)
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options=settings,
            process_id=os.getpid(),
        )
    )
    client.initialized(types.InitializedParams())
    while (await client.protocol.send_request_async("polycoder/status", {})).state == "loading":
        await asyncio.sleep(0.2)
    return client


async def stop_server(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


async def run_server(
    model: Path, naive: bool, args: argparse.Namespace, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One replay; `extra`: settings of a variant of polycoder-ls (--variant)."""
    settings = {"model": str(model), "maxNewTokens": args.max_new_tokens, "threads": args.threads}
    if naive:  # the usual completion server: no cache, nothing done ahead
        settings.update(
            {"cache": {"size": 0}, "prefetch": False, "warmStart": False, "dtype": "float32"}
        )
    else:
        settings.update({"dtype": args.dtype, **(extra or {})})
    client = await start_server(settings, *(["--naive"] if naive else []))
    replay, rng = Replay(pause_s=args.line_end_pause), random.Random(args.seed)
    for language, path in source_files()[: args.files]:
        print(f"  {'naive' if naive else 'polycoder-ls'}: typing {path}", file=sys.stderr)
        await replay_file(client, path, language, replay, rng, args.context_lines, args.typed_lines)
    status = await client.protocol.send_request_async("polycoder/status", {})
    peak_kib = _peak_memory_kib(client)
    await stop_server(client)
    return summarise(replay, status, peak_kib)


def _peak_memory_kib(client: LanguageClient) -> int:
    server = getattr(client, "_server", None)
    status = Path(f"/proc/{server.pid}/status").read_text() if server else ""
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0
    )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def summarise(replay: Replay, status: Any, peak_kib: int) -> dict[str, Any]:
    runs = [last for last in replay.server_lasts if not last["cacheHit"] and not last["cancelled"]]
    hits = [last for last in replay.server_lasts if last["cacheHit"]]
    prefill_share = [
        (r["promptTokens"] - r["reusedTokens"]) / r["promptTokens"]
        for r in runs
        if r["promptTokens"]
    ]
    decode_per_token = [
        r["decodeMs"] / (r["generatedTokens"] - 1) for r in runs if r["generatedTokens"] > 1
    ]
    totals = {key: getattr(status.totals, key) for key in status.totals._fields}
    return {
        # Unanswered pauses count as the pause length: a lower bound of their latency.
        "pauseToSuggestionMs": {
            "p50": _percentile(replay.pause_latencies_ms, 0.5),
            "p95": _percentile(replay.pause_latencies_ms, 0.95),
            "n": len(replay.pause_latencies_ms),
            "unanswered": replay.unanswered_pauses,
        },
        "prefillShareOfPrompt": {
            "p50": _percentile(prefill_share, 0.5),
            "mean": round(statistics.fmean(prefill_share), 4) if prefill_share else None,
        },
        "promptTokens": {"p50": _percentile([r["promptTokens"] for r in runs], 0.5)},
        "decodeMsPerToken": {"p50": _percentile(decode_per_token, 0.5)},
        "tokensPerDecodeForward": round(
            sum(r["generatedTokens"] - 1 for r in runs if r["generatedTokens"] > 1)
            / max(1, sum(r.get("decodeForwards", 0) for r in runs)),
            3,
        ),
        "typeThroughServerMs": {
            "p50": _percentile([h["latencyMs"] for h in hits], 0.5),
            "n": len(hits),
        },
        "cacheHitRate": round(totals["cacheHits"] / max(1, totals["requests"]), 3),
        "requests": replay.requests,
        "cancelsSent": replay.cancels_sent,
        "serverTotals": totals,
        "peakMemoryMiB": round(peak_kib / 1024, 1),
    }


def measure_engine(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """In-process: memory bandwidth, the decode floor, and cancel-to-stop times."""

    from polycoder_ls.config import Settings
    from polycoder_ls.engine.generate import DecodeParams, Generator
    from polycoder_ls.engine.loading import load_model

    loaded = load_model(Settings(model=str(model), threads=args.threads, dtype=args.dtype))
    context = 1900
    weight_bytes, kv_bytes = bytes_per_decode_step(loaded.model, context, loaded.kv_storage)
    generator = Generator(loaded)
    prompt = [3 + (i * 7919) % (loaded.vocab_limit - 3) for i in range(context)]
    greedy = DecodeParams(max_new_tokens=24, temperature=0.0, top_p=1.0)
    generator.generate("floor", prompt, greedy, lambda text: False, lambda: False)

    def best_decode_ms() -> float:
        """The best of 3 runs, as the bandwidth is the best of 3 reads: the same prompt again
        each time, so one token to prefill, then 24 decode steps."""
        runs = []
        for _ in range(3):
            _, stats = generator.generate("floor", prompt, greedy, lambda _: False, lambda: False)
            runs.append(stats.decode_ms / max(1, stats.generated_tokens - 1))
        return min(runs)

    decode_ms, bandwidth = bandwidth_around(best_decode_ms)
    floor_ms = (weight_bytes + kv_bytes) / (bandwidth["best"] * 1e9) * 1000

    # Cancel at a random moment of the generation (prefill or decode), within its first 3 s:
    # a small model finishes 400 tokens in under a second.
    rng = random.Random(args.seed)
    long = DecodeParams(max_new_tokens=400, temperature=0.0, top_p=1.0)
    window_s = min(3.0, _uncancelled_seconds(generator, prompt[:1000], long))
    trials = [
        _cancel_to_stop_ms(
            generator, prompt[: 1000 + trial], long, rng.uniform(0.05, 0.95) * window_s
        )
        for trial in range(args.cancel_trials)
    ]
    stop_ms = [ms for ms in trials if ms is not None]
    return {
        "bandwidthGBps": bandwidth["best"],
        "bandwidthByReaderGBps": bandwidth,
        "weightBytes": weight_bytes,
        "kvBytesAt1900": kv_bytes,
        "decodeFloorMsAt1900": round(floor_ms, 2),
        "decodeMsPerTokenAt1900": round(decode_ms, 2),
        "decodeVsFloor": round(decode_ms / floor_ms, 3),
        "cancelToStopMs": {
            "p50": _percentile(stop_ms, 0.5),
            "p95": _percentile(stop_ms, 0.95),
            "n": len(stop_ms),
        },
    }


def _uncancelled_seconds(generator: Any, prompt: list[int], params: Any) -> float:
    """How long a generation for a fresh document (prefill, then decode) runs."""
    started = time.perf_counter()
    generator.generate(str(uuid.uuid4()), prompt, params, lambda _: False, lambda: False)
    return time.perf_counter() - started


def _cancel_to_stop_ms(
    generator: Any, prompt: list[int], params: Any, delay_s: float
) -> float | None:
    """Start a generation for a fresh document, cancel it after `delay_s`, and time how long it
    takes to stop; None if it ended before the cancel."""
    import threading

    cancel = threading.Event()
    stopped: list[tuple[float, bool]] = []

    def run() -> None:
        _, stats = generator.generate(
            str(uuid.uuid4()), prompt, params, lambda text: False, cancel.is_set
        )
        stopped.append((time.perf_counter(), stats.cancelled))

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(delay_s)
    cancelled_at = time.perf_counter()
    cancel.set()
    worker.join()
    stopped_at, was_cancelled = stopped[0]
    return (stopped_at - cancelled_at) * 1000 if was_cancelled else None


def build(shape: str, directory: Path) -> Path:
    """A random-weight model of PolyCoder's shape, or the packaged polycoder-nano."""
    from model_factory import build_model

    if shape == "nano":
        from polycoder_ls.engine_state import NANO_DIRECTORY

        return NANO_DIRECTORY
    out = directory / f"polycoder-{shape}-shape"
    if not (out / "config.json").exists():
        build_model(out, vocab_size=8192, embedding_rows=POLYCODER_EMBEDDING_ROWS, **SHAPES[shape])
    return out


def model_facts(model: Path) -> dict[str, Any]:
    config = json.loads((model / "config.json").read_text())
    return {
        "hidden": config["hidden_size"],
        "layers": config["num_hidden_layers"],
        "heads": config["num_attention_heads"],
        "embeddingRows": config["vocab_size"],
    }


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def replay_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options every typing-replay benchmark takes: model shape, typing, output."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--shape", choices=[*sorted(SHAPES), "nano"], default="160m")
    parser.add_argument(
        "--context-lines", type=int, default=400, help="lines open before typing starts"
    )
    parser.add_argument("--typed-lines", type=int, default=2)
    parser.add_argument("--line-end-pause", type=float, default=LINE_END_PAUSE_S, help="seconds")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=Path("/tmp/polycoder-bench-models"))
    parser.add_argument("--out", type=Path, required=True)
    return parser


def main() -> None:
    parser = replay_arguments(__doc__)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cancel-trials", type=int, default=10)
    parser.add_argument(
        "--dtype", default="auto", help="polycoder-ls's weights (the naive baseline: float32)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='also replay polycoder-ls with these settings, e.g. int8=\'{"dtype": "int8"}\'',
    )
    args = parser.parse_args()
    variants = {
        name: json.loads(settings)
        for name, settings in (variant.split("=", 1) for variant in args.variant)
    }
    model = build(args.shape, args.models)
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "model": {
            "shape": args.shape,
            **model_facts(model),
            "dtype": args.dtype,
            "naiveDtype": "float32",
            "threads": args.threads,
        },
        "client": {
            "debounceMs": DEBOUNCE_S * 1000,
            "keyDelayMs": [d * 1000 for d in KEY_DELAY_S],
            "lineEndPauseMs": args.line_end_pause * 1000,
        },
        "polycoderLs": asyncio.run(run_server(model, naive=False, args=args)),
        "variants": {
            name: {
                "settings": settings,
                **asyncio.run(run_server(model, naive=False, args=args, extra=settings)),
            }
            for name, settings in variants.items()
        },
        "naive": asyncio.run(run_server(model, naive=True, args=args)),
        "engine": measure_engine(model, args),
    }
    ours, naive = result["polycoderLs"], result["naive"]
    result["ratios"] = {
        "pauseP50VsNaive": round(
            ours["pauseToSuggestionMs"]["p50"] / naive["pauseToSuggestionMs"]["p50"], 3
        ),
        "pauseP95VsNaive": round(
            ours["pauseToSuggestionMs"]["p95"] / naive["pauseToSuggestionMs"]["p95"], 3
        ),
    }
    for name, variant in result["variants"].items():
        result["ratios"][f"{name}PauseP50VsNaive"] = round(
            variant["pauseToSuggestionMs"]["p50"] / naive["pauseToSuggestionMs"]["p50"], 3
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"]))


if __name__ == "__main__":
    main()
