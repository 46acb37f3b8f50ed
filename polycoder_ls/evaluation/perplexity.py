"""Perplexity the way the PolyCoder paper measured it.

Each file is scored on its own, in non-overlapping windows of `window` tokens, with
end-of-text prepended to the first window; every token of the file is predicted exactly once,
from the tokens before it in its window. Perplexity is reported per model token and per
Pygments token (the total negative log-likelihood divided by the number of non-whitespace
tokens Pygments' lexer for the language finds), so models with different tokenizers compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pygments.lexers import get_lexer_by_name

from ..engine.loading import LoadedModel
from ..languages import Language


@dataclass
class Score:
    """Summed over files: negative log-likelihood (nats) and token counts."""

    files: int = 0
    nll: float = 0.0
    tokens: int = 0
    pygments_tokens: int = 0

    def add(self, other: Score) -> None:
        self.files += other.files
        self.nll += other.nll
        self.tokens += other.tokens
        self.pygments_tokens += other.pygments_tokens

    @property
    def perplexity(self) -> float | None:
        return math.exp(self.nll / self.tokens) if self.tokens else None

    @property
    def perplexity_pygments(self) -> float | None:
        return math.exp(self.nll / self.pygments_tokens) if self.pygments_tokens else None


def pygments_token_count(text: str, language: Language) -> int:
    lexer = get_lexer_by_name(language.pygments_lexer, stripnl=False, ensurenl=False)
    return sum(1 for _, value in lexer.get_tokens(text) if value.strip())


def file_nll(loaded: LoadedModel, text: str, window: int) -> tuple[float, int]:
    """(negative log-likelihood in nats, tokens predicted) of one file."""
    token_ids = loaded.tokenize(text)[0]
    # The paper's end-of-text first; BOS instead where the tokenizer puts one before text.
    start_id = next((i for i in (loaded.bos_id, loaded.eos_id) if i is not None), 0)
    sequence = torch.tensor([start_id, *token_ids], device=loaded.device)
    nll = 0.0
    with torch.inference_mode():
        for start in range(0, len(token_ids), window):
            inputs = sequence[start : start + window]
            targets = sequence[start + 1 : start + window + 1]
            logits = loaded.model(input_ids=inputs[None, : len(targets)]).logits[0].float()
            nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    return nll, len(token_ids)


def score_file(loaded: LoadedModel, text: str, language: Language, window: int) -> Score:
    nll, tokens = file_nll(loaded, text, window)
    return Score(1, nll, tokens, pygments_token_count(text, language))
