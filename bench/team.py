"""Team server: N editors typing real files against one vLLM server, beside the same N editors
each with its own in-process engine on the same machine, in one run.

Each editor is its own polycoder-ls process driven by the typing replay's client (a didChange
per keystroke, a debounced inline request, $/cancelRequest for a superseded one, a pause at each
line end). "remote": every polycoder-ls sends its prompts to one vLLM server (continuous
batching, prefix caching, one copy of the weights). "local": each polycoder-ls runs the model
itself with cores / N threads. Both get the same CPU.

    python bench/team.py --shape 160m --editors 1,4,8 --out bench/results/team-160m-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pygls.lsp.client import LanguageClient
from typing_replay import (
    Replay,
    _percentile,
    build,
    machine,
    model_facts,
    replay_arguments,
    replay_file,
    source_files,
    start_server,
    stop_server,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vllm_server import SERVED_NAME, VllmServer  # noqa: E402

VLLM_COUNTERS = (
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
)


def process_tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total_kib, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total_kib += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0
        )
    return round(total_kib / 1024, 1)


async def type_as_editor(
    client: LanguageClient, number: int, args: argparse.Namespace
) -> tuple[Replay, float]:
    """Editor `number` types its own file (the files taken in turn, each editor further down)."""
    files = source_files()
    language, path = files[number % len(files)]
    replay, rng = Replay(pause_s=args.line_end_pause), random.Random(args.seed + number)
    context_lines = args.context_lines + 60 * (number // len(files))
    await replay_file(client, path, language, replay, rng, context_lines, args.typed_lines)
    server = getattr(client, "_server", None)
    return replay, process_tree_rss_mib(server.pid) if server else 0.0


async def run_team(
    count: int, settings: dict[str, Any], args: argparse.Namespace, vllm: VllmServer | None
) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix=f"team-{count}-"))
    print(f"  editors' logs: {logs}", file=sys.stderr)
    editors = [
        await start_server(settings, "-v", "--log-file", str(logs / f"editor-{number}.log"))
        for number in range(count)
    ]
    for client in editors:
        status = await client.protocol.send_request_async("polycoder/status", {})
        assert status.state == "ready", f"an editor's server is {status.state}: {status.error}"
    before = {name: vllm.metric(name) for name in VLLM_COUNTERS} if vllm else {}
    started = time.perf_counter()
    typed = await asyncio.gather(*(type_as_editor(c, n, args) for n, c in enumerate(editors)))
    wall_s = time.perf_counter() - started
    server_rss = process_tree_rss_mib(vllm.process.pid) if vllm and vllm.process else 0.0
    for client in editors:
        await stop_server(client)
    latencies = [ms for replay, _ in typed for ms in replay.pause_latencies_ms]
    lasts = [last for replay, _ in typed for last in replay.server_lasts]
    runs = [last for last in lasts if not last["cacheHit"] and not last["cancelled"]]
    requests = sum(replay.requests for replay, _ in typed)
    result: dict[str, Any] = {
        "editors": count,
        "wallSeconds": round(wall_s, 1),
        "pauseToSuggestionMs": {
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
            "n": len(latencies),
            "unanswered": sum(replay.unanswered_pauses for replay, _ in typed),
        },
        "firstTokenMs": {"p50": _percentile([r["firstTokenMs"] for r in runs], 0.5)},
        "requests": requests,
        "requestsPerEditorSecond": round(requests / (wall_s * count), 2),
        # The share of the time an editor has a request at the server: the load each
        # developer adds while typing.
        "inFlightShare": round(
            sum(sum(replay.request_seconds) for replay, _ in typed) / (wall_s * count), 3
        ),
        "cancelsSent": sum(replay.cancels_sent for replay, _ in typed),
        "memoryMiB": round(sum(rss for _, rss in typed) + server_rss, 1),
    }
    reused = sum(r["reusedTokens"] or 0 for r in runs)
    prompt = sum(r["promptTokens"] for r in runs)
    result["reusedShareOfAnsweredPrompts"] = round(reused / prompt, 3) if prompt else None
    if vllm is None:
        generated = sum(r["generatedTokens"] for r in runs)
        result["answeredTokensPerSecond"] = round(generated / wall_s, 1)
        return result
    delta = {name: vllm.metric(name) - before[name] for name in VLLM_COUNTERS}
    result["vllm"] = {
        "generationTokensPerSecond": round(delta["vllm:generation_tokens_total"] / wall_s, 1),
        "promptTokensPerSecond": round(delta["vllm:prompt_tokens_total"] / wall_s, 1),
        "prefixCacheHitRate": round(
            delta["vllm:prefix_cache_hits_total"]
            / max(1.0, delta["vllm:prefix_cache_queries_total"]),
            3,
        ),
        "rssMiB": server_rss,
    }
    return result


def main() -> None:
    parser = replay_arguments(__doc__)
    parser.add_argument("--editors", default="1,4,8", help="team sizes, comma-separated")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    args = parser.parse_args()
    model = build(args.shape, args.models)
    counts = [int(n) for n in args.editors.split(",")]
    base = {"model": str(model), "maxNewTokens": args.max_new_tokens}
    log = Path(tempfile.mkdtemp(prefix="team-bench-")) / "vllm.log"
    vllm = VllmServer(
        model, log, kv_cache_bytes=int(args.kv_cache_gib * 2**30), batched_tokens=2048
    )
    print(f"starting vLLM (log: {log})", file=sys.stderr)
    vllm.start()
    remote: list[dict[str, Any]] = []
    try:
        vllm.wait_ready()
        settings = base | {"remote": {"url": vllm.url, "servedModel": SERVED_NAME}}
        for count in counts:
            print(f"remote: {count} editors", file=sys.stderr)
            remote.append(asyncio.run(run_team(count, settings, args, vllm)))
    finally:
        vllm.stop()
    local = []
    for count in counts:
        print(f"local: {count} editors", file=sys.stderr)
        threads = max(1, (os.cpu_count() or 1) // count)
        local.append(asyncio.run(run_team(count, base | {"threads": threads}, args, None)))
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "model": {"shape": args.shape, **model_facts(model), "dtype": "float32"},
        "client": {"lineEndPauseMs": args.line_end_pause * 1000, "typedLines": args.typed_lines},
        "remote": remote,
        "local": local,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for ours, theirs in zip(remote, local, strict=True):
        print(
            f"N={ours['editors']}: remote p50/p95 {ours['pauseToSuggestionMs']['p50']}/"
            f"{ours['pauseToSuggestionMs']['p95']} ms, local "
            f"{theirs['pauseToSuggestionMs']['p50']}/{theirs['pauseToSuggestionMs']['p95']} ms"
        )


if __name__ == "__main__":
    main()
