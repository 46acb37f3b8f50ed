"""Perplexity the way suggestions are computed: token by token through the decode step.

`polycoder-ls eval` scores whole windows, which a quantized model multiplies in bfloat16 (or
float32) like a prompt; a suggestion's tokens go through the quantized kernels one at a time,
with activations quantized too, on a float16 KV cache. This scores the first TOKENS tokens of
FILES held-out files per language that way (a 32-token prompt, then one decode step per token)
for each dtype, so the cost of the decode path is measured against float32's, on the same
tokens:

    python quality/decode_path.py --model nano --files 3 --tokens 384 .corpus/heldout \
        --json quality/decode-path-nano-v3.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from polycoder_ls.config import Settings
from polycoder_ls.engine.kv_cache import preallocated_cache
from polycoder_ls.engine.loading import LoadedModel, load_model
from polycoder_ls.evaluation.corpus import files_by_language, read_source

PROMPT_TOKENS = 32
DTYPES = ("float32", "int8", "int4")


def decode_nll(loaded: LoadedModel, token_ids: list[int]) -> tuple[float, int]:
    """(nats, tokens scored) of token_ids[PROMPT_TOKENS:], each predicted by one decode step
    after the ones before it, on the cache the server would keep (float16 for quantized
    weights)."""
    step = loaded.token_step
    assert step is not None, "the decode step needs the CPU kernels and a GPT-NeoX model"
    layers = loaded.model.config.num_hidden_layers
    cache = preallocated_cache(layers, len(token_ids), loaded.kv_storage)
    nll = 0.0
    with torch.inference_mode():
        prompt = torch.tensor([token_ids[:PROMPT_TOKENS]])
        logits = loaded.model(input_ids=prompt, cache=cache, logits_to_keep=1).logits[0, -1]
        for position in range(PROMPT_TOKENS, len(token_ids)):
            scores = torch.log_softmax(logits[: loaded.vocab_limit].float(), dim=-1)
            nll -= float(scores[token_ids[position]])
            logits = step(token_ids[position], cache)
    return nll, len(token_ids) - PROMPT_TOKENS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--model", default="nano")
    parser.add_argument("--files", type=int, default=3, help="files per language")
    parser.add_argument("--tokens", type=int, default=384, help="tokens per file")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    files = files_by_language([args.corpus], args.files)
    texts = [text for paths in files.values() for path in paths if (text := read_source(path))]
    result: dict[str, Any] = {"model": args.model, "files": len(texts), "dtypes": {}}
    for dtype in DTYPES:
        loaded = load_model(Settings(model=args.model, dtype=dtype))
        samples = [loaded.tokenize(text)[0][: args.tokens] for text in texts]
        scored = [decode_nll(loaded, ids) for ids in samples if len(ids) > PROMPT_TOKENS + 1]
        nll, tokens = sum(s[0] for s in scored), sum(s[1] for s in scored)
        result["dtypes"][dtype] = {"tokens": tokens, "perplexity": round(math.exp(nll / tokens), 4)}
        print(dtype, result["dtypes"][dtype], file=sys.stderr)
    base = result["dtypes"]["float32"]["perplexity"]
    for entry in result["dtypes"].values():
        entry["costPercent"] = round((entry["perplexity"] / base - 1) * 100, 3)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
