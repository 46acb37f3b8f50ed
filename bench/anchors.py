"""polycoder-ls beside llama.cpp and CTranslate2 on the same weights, in one run: prefill of a
long prompt and decode ms/token for each weight format, each against its memory-bandwidth floor.

    python bench/anchors.py --llama-cpp DIR [--no-ctranslate2] [--shape 160m] [--rounds 5]
        [--context 1900] [--tokens 64] --out bench/results/anchors-160m.json

DIR is a llama.cpp source tree built with `make llama-cpp` (build/bin/llama-bench and
llama-quantize); CTranslate2 is the `ctranslate2` package (`make anchors` installs it), its model
converted once from the same checkpoint (float32, and int8 quantized as it loads: int8 weights with
a float32 scale a row, float32 activations and cache). The model is a random-weight GPT-NeoX of
PolyCoder's shape (typing_replay's), converted once to GGUF f32, q8_0 and q4_0 (as llama-quantize
makes it: the output layer in q6_K). Each measurement is a process of its own, 2 threads; the
engines take turns, their order rotated each round, and the bandwidth is read before each round
(this shared machine's moves by tens of percent over minutes: compare within one run). Reported: min
and median over rounds. Each floor is the bytes a step reads over the best bandwidth seen in the
run: the best read, or what an engine's fastest decode step proved where that was faster
(floor_bandwidth).

Quality beside the speed: teacher-forced greedy agreement with float32 over the first 16 decode
steps and the largest logit difference, for our int8 and int4 (random weights give flat logits,
where near-ties flip; `polycoder-ls eval --dtype int8` measures the perplexity cost on real code).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

OURS = ("float32", "int8", "int4")
LLAMA_FORMATS = ("f32", "q8_0", "q4_0")
CTRANSLATE2_TYPES = ("float32", "int8")
THREADS = 2
GREEDY_CHECK_STEPS = 16


def _prompt(context: int) -> list[int]:
    return [3 + (i * 7919) % 8000 for i in range(context)]


def measure_ours(model: Path, dtype: str, context: int, tokens: int) -> dict[str, Any]:
    """One process: the server's engine (Generator: chunked prefill, whole-model decode step)."""
    from polycoder_ls.config import Settings
    from polycoder_ls.engine.generate import DecodeParams, Generator
    from polycoder_ls.engine.loading import load_model

    loaded = load_model(Settings(model=str(model), dtype=dtype, threads=THREADS))
    params = DecodeParams(max_new_tokens=tokens, temperature=0.0, top_p=1.0)
    _, stats = Generator(loaded, reuse_kv=False).generate(
        "anchor", _prompt(context), params, _never, _never
    )
    steps = max(1, stats.generated_tokens - 1)
    return {
        "prefillMs": round(stats.prefill_ms, 1),
        "decodeMsPerToken": round(stats.decode_ms / steps, 2),
        "generatedTokens": stats.generated_tokens,
    }


def _never(*_: Any) -> bool:
    return False


def measure_llama(llama_cpp: Path, gguf: Path, context: int, tokens: int) -> dict[str, Any]:
    """llama-bench: prefill of `context` tokens; decode of `tokens` at depth `context`."""
    bench = str(llama_cpp / "build" / "bin" / "llama-bench")
    common = ["-m", str(gguf), "-t", str(THREADS), "-fa", "1", "-r", "1", "-o", "json"]
    prefill = _llama_bench([bench, *common, "-p", str(context), "-n", "0"])
    decode = _llama_bench([bench, *common, "-p", "0", "-n", str(tokens), "-d", str(context)])
    return {
        "prefillMs": round(prefill["avg_ns"] / 1e6, 1),
        "decodeMsPerToken": round(decode["avg_ns"] / 1e6 / tokens, 2),
    }


def _llama_bench(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)[0]
    return result


def measure_ctranslate2(
    model: Path, converted: Path, compute_type: str, context: int, tokens: int
) -> dict[str, Any]:
    """CTranslate2's Generator: the time to the first token (the prefill), then the mean time
    of the next `tokens` - 1 (no end token stops it)."""
    import ctranslate2
    from transformers import AutoTokenizer

    generator = ctranslate2.Generator(
        str(converted), device="cpu", compute_type=compute_type, intra_threads=THREADS
    )
    prompt = AutoTokenizer.from_pretrained(model).convert_ids_to_tokens(_prompt(context))
    steps = generator.generate_tokens(
        prompt, max_length=tokens, min_length=tokens, sampling_topk=1, end_token=[]
    )
    started = time.perf_counter()
    times = [time.perf_counter() for _ in steps]
    return {
        "prefillMs": round((times[0] - started) * 1000, 1),
        "decodeMsPerToken": round((times[-1] - times[0]) * 1000 / (len(times) - 1), 2),
        "generatedTokens": len(times),
    }


def to_ctranslate2(model: Path, out: Path) -> Path:
    """The model converted for CTranslate2 (once). Its converter predates transformers 5's
    GPT-NeoX (`rotary_pct` became rope_parameters' partial_rotary_factor, `embed_out` the
    output embeddings): both are given back to it."""
    if (out / "model.bin").exists():
        return out
    import ctranslate2.converters

    class Converter(ctranslate2.converters.TransformersConverter):  # type: ignore[misc]
        def load_model(self, model_class: Any, name: str, **kwargs: Any) -> Any:
            loaded = super().load_model(model_class, name, **kwargs)
            rope = getattr(loaded.config, "rope_parameters", None) or {}
            loaded.config.rotary_pct = rope.get("partial_rotary_factor", 1.0)
            loaded.embed_out = loaded.get_output_embeddings()
            return loaded

    Converter(str(model)).convert(str(out), force=True)
    return out


CONVERT = """
import conversion.base as base

load_hparams = base.ModelBase.load_hparams


def with_rotary_pct(directory, mistral_format):
    config = load_hparams(directory, mistral_format)
    rope = config.get("rope_parameters") or {}
    config.setdefault("rotary_pct", rope.get("partial_rotary_factor", 1.0))
    return config


base.ModelBase.load_hparams = staticmethod(with_rotary_pct)
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
import convert_hf_to_gguf

convert_hf_to_gguf.main()
"""


def to_gguf(llama_cpp: Path, model: Path, out: Path) -> dict[str, Path]:
    """The model as GGUF f32, q8_0 and q4_0 (made once). llama.cpp's converter predates
    transformers 5's config (`rotary_pct` became rope_parameters' partial_rotary_factor) and
    does not know this test tokenizer (a GPT-2-style byte-level BPE): both are told to it."""
    files = {name: out / f"model-{name}.gguf" for name in LLAMA_FORMATS}
    if all(path.exists() for path in files.values()):
        return files
    out.mkdir(parents=True, exist_ok=True)
    for name in ("f32", "q8_0"):
        subprocess.run(
            [sys.executable, "-c", CONVERT, str(model), "--outtype", name,
             "--outfile", str(files[name])],
            cwd=llama_cpp,
            env={**os.environ, "PYTHONPATH": f"{llama_cpp}:{llama_cpp / 'gguf-py'}"},
            check=True,
            capture_output=True,
        )  # fmt: skip
    quantize = str(llama_cpp / "build" / "bin" / "llama-quantize")
    subprocess.run(
        [quantize, str(files["f32"]), str(files["q4_0"]), "q4_0"], check=True, capture_output=True
    )
    return files


def greedy_agreement(model: Path, context: int) -> dict[str, Any]:
    """int8 and int4 against float32, teacher-forced on float32's greedy tokens."""
    import torch

    from polycoder_ls.config import Settings
    from polycoder_ls.engine.kv_cache import preallocated_cache
    from polycoder_ls.engine.loading import load_model

    def logits_along(dtype: str, forced: list[int] | None) -> tuple[list[int], list[Any]]:
        loaded = load_model(Settings(model=str(model), dtype=dtype, threads=THREADS))
        assert loaded.token_step is not None
        cache = preallocated_cache(loaded.model.config.num_hidden_layers, context + 32)
        with torch.inference_mode():
            prompt = torch.tensor([_prompt(context)])
            step = loaded.model(input_ids=prompt, cache=cache, logits_to_keep=1).logits[0, -1]
            tokens, steps = [], []
            for index in range(GREEDY_CHECK_STEPS):
                step = step[: loaded.vocab_limit]
                steps.append(step)
                tokens.append(int(step.argmax()) if forced is None else forced[index])
                step = loaded.token_step(tokens[-1], cache)
        return tokens, steps

    reference_tokens, reference = logits_along("float32", None)
    result = {}
    for dtype in ("int8", "int4"):
        _, quantized = logits_along(dtype, reference_tokens)
        pairs = list(zip(quantized, reference_tokens, strict=True))
        result[f"{dtype}Top1Agreement"] = (
            f"{sum(int(q.argmax()) == t for q, t in pairs)}/{GREEDY_CHECK_STEPS}"
        )
        result[f"{dtype}MaxLogitDiff"] = max(
            float((q - r).abs().max()) for q, r in zip(quantized, reference, strict=True)
        )
    return result


def floors_ms(model: Path, context: int, gbps: float) -> dict[str, float]:
    """Bytes one decode step reads at `context` tokens / bandwidth, per format: the weights less
    the input embedding, and the KV cache (float16 for quantized weights and llama.cpp, float32
    for our float32 and CTranslate2). q4_0 stores 18 bytes a
    group of 32, q8_0 34, our int8 32 + a float16 scale and our int4 16 + one; q6_K (llama.cpp's
    q4_0 output layer) 210 bytes a block of 256; CTranslate2's int8 a byte a weight and a
    float32 scale a row."""
    config = json.loads((model / "config.json").read_text())
    hidden, layers, rows = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    matrices = layers * 12 * hidden * hidden
    small = layers * (13 * hidden + 4 * hidden) + 2 * hidden  # biases and norms, float32
    head = rows * hidden
    matrix_rows = layers * 9 * hidden + rows  # query-key-value 3, dense 1, MLP 4 + 1; the head
    kv_values = layers * 2 * context * hidden

    def ms(weight_bytes: float, kv_bytes: int) -> float:
        return round((weight_bytes + small * 4 + kv_bytes) / gbps / 1e6, 2)

    return {
        "polycoder-ls float32": ms(4 * (matrices + head), 4 * kv_values),
        "polycoder-ls int8": ms(34 / 32 * (matrices + head), 2 * kv_values),
        "polycoder-ls int4": ms(18 / 32 * (matrices + head), 2 * kv_values),
        "llama.cpp f32": ms(4 * (matrices + head), 2 * kv_values),
        "llama.cpp q8_0": ms(34 / 32 * (matrices + head), 2 * kv_values),
        "llama.cpp q4_0": ms(18 / 32 * matrices + 210 / 256 * head, 2 * kv_values),
        "ctranslate2 float32": ms(4 * (matrices + head), 4 * kv_values),
        "ctranslate2 int8": ms(matrices + head + 4 * matrix_rows, 4 * kv_values),
    }


def floor_bandwidth(
    model: Path, context: int, reads: list[float], runs: dict[str, list[dict[str, Any]]]
) -> tuple[float, str]:
    """The bandwidth the floors are computed at, and what showed it: the best read, or an
    engine whose fastest decode step read its bytes faster than that (then the reads around the
    run missed this machine's best moment, and that engine proves it)."""
    bytes_per_ms = floors_ms(model, context, 1.0)
    best, source = max(reads), "read"
    for engine, engine_runs in runs.items():
        shown = bytes_per_ms[engine] / min(run["decodeMsPerToken"] for run in engine_runs)
        if shown > best:
            best, source = shown, engine
    return best, source


def _run_in_process(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", engine, "--model", str(args.model_dir)]
    command += ["--context", str(args.context), "--tokens", str(args.tokens)]
    command += ["--llama-cpp", str(args.llama_cpp), "--out", os.devnull]
    if args.ctranslate2_model is not None:
        command += ["--ctranslate2-model", str(args.ctranslate2_model)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    """`engine`: "polycoder-ls DTYPE", "llama.cpp FORMAT" or "ctranslate2 TYPE", measured in
    this process."""
    name, weight_format = engine.split()
    if name == "polycoder-ls":
        return measure_ours(args.model_dir, weight_format, args.context, args.tokens)
    if name == "ctranslate2":
        return measure_ctranslate2(
            args.model_dir, args.ctranslate2_model, weight_format, args.context, args.tokens
        )
    gguf = args.model_dir.parent / "gguf" / f"model-{weight_format}.gguf"
    return measure_llama(args.llama_cpp, gguf, args.context, args.tokens)


def _summary(runs: list[dict[str, Any]], floor: float) -> dict[str, Any]:
    decode = [run["decodeMsPerToken"] for run in runs]
    prefill = [run["prefillMs"] for run in runs]
    return {
        "decodeMsPerTokenMin": min(decode),
        "decodeMsPerTokenMedian": round(statistics.median(decode), 2),
        "prefillMsMin": min(prefill),
        "prefillMsMedian": round(statistics.median(prefill), 1),
        "floorMsPerToken": floor,
        "decodeMinVsFloor": round(min(decode) / floor, 2),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, metavar="DIR")
    parser.add_argument("--no-ctranslate2", action="store_true", help="leave CTranslate2 out")
    parser.add_argument("--shape", default="160m")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--context", type=int, default=1900)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--models", type=Path, default=Path("/tmp/polycoder-bench-models"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, dest="model_dir", help=argparse.SUPPRESS)
    parser.add_argument("--ctranslate2-model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args, args.measure)))
        return
    from memory import bandwidth_gbps
    from typing_replay import build

    args.model_dir = build(args.shape, args.models)
    to_gguf(args.llama_cpp, args.model_dir, args.model_dir.parent / "gguf")
    engines = [f"polycoder-ls {dtype}" for dtype in OURS]
    engines += [f"llama.cpp {name}" for name in LLAMA_FORMATS]
    if not args.no_ctranslate2:
        args.ctranslate2_model = to_ctranslate2(args.model_dir, args.model_dir.parent / "ct2")
        engines += [f"ctranslate2 {compute_type}" for compute_type in CTRANSLATE2_TYPES]
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
    bandwidths = []
    for round_number in range(args.rounds):
        bandwidths.append(bandwidth_gbps()["best"])
        shift = round_number % len(engines)
        for engine in engines[shift:] + engines[:shift]:
            started = time.monotonic()
            runs[engine].append(_run_in_process(args, engine))
            print(f"round {round_number + 1}: {engine} {runs[engine][-1]} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr)  # fmt: skip
    gbps, source = floor_bandwidth(args.model_dir, args.context, bandwidths, runs)
    floors = floors_ms(args.model_dir, args.context, gbps)
    result = {
        "shape": args.shape,
        "context": args.context,
        "tokens": args.tokens,
        "threads": THREADS,
        "rounds": args.rounds,
        "cpu": _cpu_name(),
        "bandwidthGBps": bandwidths,
        "floorGBps": round(gbps, 2),
        "floorGBpsFrom": source,
        "engines": {engine: _summary(runs[engine], floors[engine]) for engine in engines},
        "quality": greedy_agreement(args.model_dir, args.context),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def table(result: dict[str, Any]) -> str:
    rows = [
        "| engine, format | decode ms/token min / median | its floor | min vs floor "
        "| prefill ms min / median |",
        "|---|---|---|---|---|",
    ]
    for engine, summary in result["engines"].items():
        rows.append(
            f"| {engine} | {summary['decodeMsPerTokenMin']} / {summary['decodeMsPerTokenMedian']}"
            f" | {summary['floorMsPerToken']} | {summary['decodeMinVsFloor']} x"
            f" | {summary['prefillMsMin']} / {summary['prefillMsMedian']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
