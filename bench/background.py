"""Work done before it is asked for, measured over the real LSP on stdio, with it and without it
in one run (the same random-weight model of PolyCoder's shape, the same files).

- Accept: a suggestion is shown at a line end and the user accepts it (Tab) once the server is
  idle again; the figure is accept-to-next-suggestion (the didChange of the accept to the
  answer of the request that follows it), with `prefetch` on and off.
- Open: a file of about 2,000 lines is opened, the user pauses, then asks at its end; the figure
  is that first suggestion's latency with `warmStart` on and off, beside one suggestion's
  decode time (the ratio the issue asks for).

    python bench/background.py --shape 160m --out bench/results/160m-background.json
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient
from typing_replay import (
    build,
    machine,
    model_facts,
    replay_arguments,
    source_files,
    start_server,
    stop_server,
)

OPEN_FILE_LINES = 2000


async def status(client: LanguageClient) -> Any:
    return await client.protocol.send_request_async("polycoder/status", {})


async def wait_for(client: LanguageClient, condition: Any, timeout: float = 120) -> Any:
    deadline = time.perf_counter() + timeout
    while not condition(current := await status(client)):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"still {current}")
        await asyncio.sleep(0.01)
    return current


def end_of(text: str) -> types.Position:
    lines = text.split("\n")
    return types.Position(len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2)


async def ask(client: LanguageClient, uri: str, text: str) -> tuple[str, float]:
    """The suggestion at the end of `text` and the milliseconds it took."""
    started = time.perf_counter()
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=end_of(text),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
            ),
        )
    )
    elapsed = (time.perf_counter() - started) * 1000
    items = list(result.items) if result is not None else []
    return (str(items[0].insert_text) if items else ""), elapsed


def opened(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, language, 1, text))
    )


def closed(client: LanguageClient, uri: str) -> None:
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri=uri))
    )


async def accept_run(client: LanguageClient, args: Any, prefetch: bool) -> dict[str, Any]:
    latencies: list[float] = []
    server_ms: list[float] = []
    """The same requests at the server: the answer's latencyMs in polycoder/status."""
    texts: list[str] = []
    for language, path in source_files()[: args.files]:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        text = "\n".join(lines[: args.context_lines]) + "\n"
        uri = f"{path.as_uri()}#accept"
        opened(client, uri, text, language)
        shown, _ = await ask(client, uri, text)
        for version in range(2, 2 + args.accepts):
            if not shown:
                break
            if prefetch:  # the user reads the suggestion; the server computes the next
                before = (await status(client)).totals.prefetched
                await wait_for(client, lambda s, b=before: s.totals.prefetched > b)
            started = time.perf_counter()
            position = end_of(text)
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    [
                        types.TextDocumentContentChangePartial(
                            range=types.Range(position, position), text=shown
                        )
                    ],
                )
            )
            text += shown
            shown, _ = await ask(client, uri, text)
            latencies.append((time.perf_counter() - started) * 1000)
            server_ms.append((await status(client)).last.latencyMs)
            texts.append(shown)
        closed(client, uri)
    return {
        "acceptToNextSuggestionMs": {
            "p50": round(statistics.median(latencies), 2) if latencies else None,
            "n": len(latencies),
            "serverP50": round(statistics.median(server_ms), 2) if server_ms else None,
        },
        "texts": texts,
    }


async def open_run(client: LanguageClient, args: Any, model_text: str) -> dict[str, Any]:
    uri = "file:///bench/opened.py"
    opened(client, uri, model_text)
    await asyncio.sleep(args.open_pause)
    text, latency = await ask(client, uri, model_text)
    last = (await status(client)).last
    closed(client, uri)
    return {
        "firstSuggestionMs": round(latency, 2),
        "promptTokens": last.promptTokens,
        "reusedTokens": last.reusedTokens,
        "decodeMs": last.decodeMs,
        "text": text,
    }


def long_file() -> str:
    """About OPEN_FILE_LINES lines of real Python source."""
    lines: list[str] = []
    for language, path in source_files():
        if language == "python":
            lines += path.read_text(encoding="utf-8", errors="replace").split("\n")
        if len(lines) >= OPEN_FILE_LINES:
            break
    while len(lines) < OPEN_FILE_LINES:
        lines += lines
    return "\n".join(lines[:OPEN_FILE_LINES]) + "\n"


async def measure(model: Path, args: Any, background: bool) -> dict[str, Any]:
    settings = {
        "model": str(model),
        "maxNewTokens": args.max_new_tokens,
        "threads": args.threads,
        "dtype": args.dtype,
        "prefetch": background,
        "warmStart": background,
    }
    client = await start_server(settings)
    try:
        return {
            "accept": await accept_run(client, args, prefetch=background),
            "open": await open_run(client, args, long_file()),
        }
    finally:
        await stop_server(client)


def main() -> None:
    parser = replay_arguments(__doc__)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--accepts", type=int, default=3, help="accepted in a row per file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--open-pause", type=float, default=2.0, help="seconds after opening")
    args = parser.parse_args()
    model = build(args.shape, args.models)
    on = asyncio.run(measure(model, args, background=True))
    off = asyncio.run(measure(model, args, background=False))
    cold_decode = off["open"]["decodeMs"]
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "model": {"shape": args.shape, **model_facts(model), "dtype": args.dtype},
        "on": on,
        "off": off,
        "sameTexts": on["accept"]["texts"] == off["accept"]["texts"]
        and on["open"]["text"] == off["open"]["text"],
        "ratios": {
            "acceptP50OnVsOff": round(
                on["accept"]["acceptToNextSuggestionMs"]["p50"]
                / off["accept"]["acceptToNextSuggestionMs"]["p50"],
                3,
            ),
            "openFirstSuggestionOnVsDecode": round(
                on["open"]["firstSuggestionMs"] / max(cold_decode, 1e-9), 3
            ),
            "openFirstSuggestionOnVsOff": round(
                on["open"]["firstSuggestionMs"] / off["open"]["firstSuggestionMs"], 3
            ),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"]), json.dumps({"sameTexts": result["sameTexts"]}))


if __name__ == "__main__":
    main()
