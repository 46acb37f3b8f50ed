"""The simple baseline for QUALITY.md: an interpolated trigram model (absolute discounting,
D = 0.75, add-one unigrams) over polycoder-nano's own tokenizer, fit on the training split and
scored on the held-out split exactly as `polycoder-ls eval` scores a model: each file on its
own, end-of-text first, per model token and per Pygments token.

    python nano/ngram_baseline.py [--model nano] [--train .corpus/train] [--heldout .corpus/heldout]
        [--json OUT] [--holes-json OUT --limit 10]

With --holes-json it also completes the holes of `polycoder-ls eval --holes 4` (the same files,
seed and holes, repository-level ones included) greedily, left to right, one line at most, and
scores them the same way: the trigram as an anchor for hole completion.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoTokenizer

from polycoder_ls.config import Settings
from polycoder_ls.engine.loading import resolve_model
from polycoder_ls.evaluation.corpus import files_by_language, read_source
from polycoder_ls.evaluation.holes import HoleScore
from polycoder_ls.evaluation.perplexity import pygments_token_count
from polycoder_ls.evaluation.run import EvalOptions, project_holes, projects
from polycoder_ls.languages import language_named

DISCOUNT = 0.75
HOLES_PER_FILE = 4
MAX_HOLE_TOKENS = 48


def _ids(tokenizer, text: str) -> np.ndarray:
    ids = [tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    return np.asarray(ids, dtype=np.int64)


class Trigram:
    def __init__(self, sequences: list[np.ndarray], vocab: int) -> None:
        self.vocab = vocab
        unigrams = np.concatenate(sequences)
        self.unigram = np.bincount(unigrams, minlength=vocab).astype(np.float64)
        self.total = self.unigram.sum()
        bigrams = np.concatenate([s[:-1] * vocab + s[1:] for s in sequences])
        trigrams = np.concatenate([(s[:-2] * vocab + s[1:-1]) * vocab + s[2:] for s in sequences])
        self.bi_keys, self.bi_counts = np.unique(bigrams, return_counts=True)
        self.tri_keys, self.tri_counts = np.unique(trigrams, return_counts=True)
        # context totals and distinct followers
        self.ctx1 = np.bincount(self.bi_keys // vocab, weights=self.bi_counts, minlength=vocab)
        self.ctx1_types = np.bincount(self.bi_keys // vocab, minlength=vocab).astype(np.float64)
        self.ctx2_keys, inverse = np.unique(self.tri_keys // vocab, return_inverse=True)
        self.ctx2 = np.bincount(inverse, weights=self.tri_counts).astype(np.float64)
        self.ctx2_types = np.bincount(inverse).astype(np.float64)

    @staticmethod
    def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(keys, query), 0, len(keys) - 1)
        return np.where(keys[index] == query, values[index], 0).astype(np.float64)

    def next_token(self, before: list[int]) -> int:
        """The most probable token after `before` (greedy)."""
        vocab = self.vocab
        words = np.arange(vocab)
        p = (self.unigram + 1) / (self.total + vocab)
        prev = before[-1]
        c_prev = self.ctx1[prev]
        if c_prev > 0:
            c_bi = self._lookup(self.bi_keys, self.bi_counts, prev * vocab + words)
            p = (
                np.maximum(c_bi - DISCOUNT, 0) / c_prev
                + DISCOUNT * self.ctx1_types[prev] / c_prev * p
            )
        if len(before) >= 2:
            context = before[-2] * vocab + prev
            c_ctx = self._lookup(self.ctx2_keys, self.ctx2, np.array([context]))[0]
            if c_ctx > 0:
                types = self._lookup(self.ctx2_keys, self.ctx2_types, np.array([context]))[0]
                c_tri = self._lookup(self.tri_keys, self.tri_counts, context * vocab + words)
                p = np.maximum(c_tri - DISCOUNT, 0) / c_ctx + DISCOUNT * types / c_ctx * p
        return int(np.argmax(p))

    def nll(self, ids: np.ndarray) -> float:
        """Negative log-likelihood (nats) of ids[1:] given the tokens before each."""
        vocab = self.vocab
        word = ids[1:]
        p = (self.unigram[word] + 1) / (self.total + vocab)
        prev = ids[:-1]
        c_bi = self._lookup(self.bi_keys, self.bi_counts, prev * vocab + word)
        c_prev = self.ctx1[prev]
        with np.errstate(divide="ignore", invalid="ignore"):
            bigram = (
                np.maximum(c_bi - DISCOUNT, 0) / c_prev
                + DISCOUNT * self.ctx1_types[prev] / c_prev * p
            )
        p = np.where(c_prev > 0, bigram, p)
        prev2 = np.concatenate([[ids[0]], ids[:-2]]) * vocab + prev
        has_two = np.arange(len(word)) > 0
        c_tri = self._lookup(self.tri_keys, self.tri_counts, prev2 * vocab + word)
        c_ctx = self._lookup(self.ctx2_keys, self.ctx2, prev2)
        types = self._lookup(self.ctx2_keys, self.ctx2_types, prev2)
        with np.errstate(divide="ignore", invalid="ignore"):
            trigram = np.maximum(c_tri - DISCOUNT, 0) / c_ctx + DISCOUNT * types / c_ctx * p
        p = np.where(has_two & (c_ctx > 0), trigram, p)
        return float(-np.log(p).sum())


def complete_line(model: Trigram, tokenizer, prefix: str) -> str:
    """Greedy tokens after `prefix` until a line break, end-of-text or MAX_HOLE_TOKENS."""
    before = list(_ids(tokenizer, prefix)[-2:])
    generated: list[int] = []
    text = ""
    while len(generated) < MAX_HOLE_TOKENS:
        token = model.next_token(before)
        if token == tokenizer.eos_token_id:
            break
        generated.append(token)
        before = [before[-1], token]
        text = tokenizer.decode(generated)
        if text.strip() and "\n" in text.lstrip("\n"):
            break
    return text


def hole_scores(model: Trigram, tokenizer, heldout: Path, limit: int) -> dict:
    """The holes of `polycoder-ls eval --holes 4` (seed 0), completed by the trigram."""
    options = EvalOptions([heldout], Settings(), limit=limit, holes_per_file=HOLES_PER_FILE)
    scores: dict[str, HoleScore] = {}
    for sources in projects(options, files_by_language([heldout], limit)).values():
        for _, holes in project_holes(options, sources):
            for hole in holes:
                suggestion = complete_line(model, tokenizer, hole.document[: hole.offset])
                scores.setdefault(hole.kind, HoleScore()).add(hole, suggestion)
    by_kind = {kind: score.summary() for kind, score in scores.items()}
    return {"byKind": by_kind, "all": HoleScore.merged(scores.values()).summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="nano")
    parser.add_argument("--train", type=Path, default=Path(".corpus/train"))
    parser.add_argument("--heldout", type=Path, default=Path(".corpus/heldout"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--holes-json", type=Path, help="also complete eval's holes, to here")
    parser.add_argument("--limit", type=int, default=10, help="files per language for holes")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    vocab = len(tokenizer)
    train = [
        _ids(tokenizer, text)
        for paths in files_by_language([args.train], None).values()
        for path in paths
        if (text := read_source(path)) is not None
    ]
    model = Trigram(train, vocab)
    languages = {}
    for name, paths in files_by_language([args.heldout], None).items():
        language = language_named(name)
        assert language is not None
        nll = tokens = pygments = 0
        for path in paths:
            text = read_source(path)
            if text is None:
                continue
            ids = _ids(tokenizer, text)
            nll += model.nll(ids)
            tokens += len(ids) - 1
            pygments += pygments_token_count(text, language)
        languages[name] = {
            "files": len(paths),
            "tokens": tokens,
            "perplexity": round(math.exp(nll / tokens), 4),
            "perplexityPygments": round(math.exp(nll / pygments), 4),
        }
    result = {"model": f"trigram on {args.model}'s tokenizer", "languages": languages}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.holes_json:
        holes = hole_scores(model, tokenizer, args.heldout, args.limit)
        holes["model"] = result["model"]
        args.holes_json.write_text(json.dumps(holes, indent=2) + "\n")
    print("| language | files | tokens | perplexity / token | perplexity / Pygments token |")
    print("|---|---|---|---|---|")
    for name, row in languages.items():
        print(
            f"| {name} | {row['files']} | {row['tokens']} | {row['perplexity']:.2f} "
            f"| {row['perplexityPygments']:.2f} |"
        )


if __name__ == "__main__":
    main()
