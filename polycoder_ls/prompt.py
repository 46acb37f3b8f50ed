"""The prompt: the left context, tokenised and clipped to an exact token budget.

Clipping drops whole lines from the left, and only at line numbers that are multiples of
CLIP_LINE_STEP, so the prompt's first token stays put while the user types (the KV cache and
vLLM's prefix cache keep matching) until the budget forces the next large step.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

# text -> (token ids, start character offset of each token)
Tokenize = Callable[[str], tuple[list[int], list[int]]]

CLIP_LINE_STEP = 32
# First guess of the characters that hold a full budget of tokens; doubled until they do.
CHARS_PER_TOKEN_GUESS = 8


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    clipped_chars: int

    @property
    def clipped(self) -> bool:
        return self.clipped_chars > 0


@dataclass(frozen=True)
class Window:
    """The context window in use: prompt + new tokens fit `context_tokens`."""

    context_tokens: int
    max_new_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return max(1, self.context_tokens - self.max_new_tokens)


def effective_window(context_tokens: int, max_new_tokens: int, model_limit: int | None) -> Window:
    """The settings' window within the model's positions, with at least half of it left for
    the prompt."""
    context = context_tokens if model_limit is None else min(context_tokens, model_limit)
    return Window(context, min(max_new_tokens, context // 2))


def window_notice(context_tokens: int, max_new_tokens: int, model_limit: int | None) -> str | None:
    """One line when the window in use is not the one the settings ask for."""
    window = effective_window(context_tokens, max_new_tokens, model_limit)
    if window == Window(context_tokens, max_new_tokens):
        return None
    reasons = []
    if window.context_tokens < context_tokens:
        reasons.append(f"contextTokens {context_tokens} is above the model's {model_limit}")
    if window.max_new_tokens < max_new_tokens:
        reasons.append(f"maxNewTokens {max_new_tokens} would leave the prompt under half of it")
    return (
        "; ".join(reasons)
        + f": using contextTokens {window.context_tokens}, maxNewTokens {window.max_new_tokens}"
    )


def token_budget(context_tokens: int, max_new_tokens: int, model_limit: int | None) -> int:
    """Prompt tokens allowed so that prompt + new tokens fit both limits."""
    return effective_window(context_tokens, max_new_tokens, model_limit).prompt_tokens


def _line_start_before(text: str, index: int) -> int:
    return 0 if index <= 0 else text.rfind("\n", 0, index) + 1


def _aligned_line_starts(text: str, begin: int, step: int) -> list[int]:
    """Offsets >= begin where lines whose number is a multiple of `step` start."""
    line_number = text.count("\n", 0, begin)
    position = _line_start_before(text, begin)
    starts = []
    while True:
        if position >= begin and line_number % step == 0:
            starts.append(position)
        next_break = text.find("\n", position)
        if next_break < 0:
            return starts
        position, line_number = next_break + 1, line_number + 1


def _window(prefix: str, tokenize: Tokenize, budget: int) -> tuple[int, list[int], list[int]]:
    """Tokenise the shortest line-aligned tail of `prefix` holding more than `budget` tokens
    (or all of it)."""
    chars = budget * CHARS_PER_TOKEN_GUESS
    while True:
        start = _line_start_before(prefix, len(prefix) - chars)
        ids, offsets = tokenize(prefix[start:])
        if len(ids) > budget or start == 0:
            return start, ids, offsets
        chars *= 2


def build_prompt(prefix: str, tokenize: Tokenize, budget: int) -> Prompt:
    """Tokenise `prefix`, keeping at most `budget` tokens, dropping whole lines from the left."""
    start, ids, offsets = _window(prefix, tokenize, budget)
    if len(ids) <= budget:
        return Prompt(ids, 0)
    for step in (CLIP_LINE_STEP, 1):
        for cut in _aligned_line_starts(prefix, start, step):
            first = bisect.bisect_left(offsets, cut - start)
            if len(ids) - first > budget:
                continue
            exact, _ = tokenize(prefix[cut:])
            if len(exact) <= budget:
                return Prompt(exact, cut)
    # One line longer than the whole budget: keep its last tokens.
    tail = ids[-budget:]
    return Prompt(tail, start + offsets[len(ids) - budget])


def clip_suffix(text: str, tokenize: Tokenize, budget: int) -> list[int]:
    """The token ids of the start of `text` (the text after the cursor), at most `budget` of
    them, cut at the end of a line (mid-line only when its first line alone is longer)."""
    if budget <= 0 or not text:
        return []
    head = text[: budget * CHARS_PER_TOKEN_GUESS]
    ids, offsets = tokenize(head)
    if len(ids) <= budget and len(head) == len(text):
        return ids
    line_end = head.rfind("\n", 0, offsets[budget] if len(ids) > budget else len(head))
    while line_end > 0:
        exact, _ = tokenize(text[:line_end])
        if len(exact) <= budget:
            return exact
        line_end = text.rfind("\n", 0, line_end)
    return ids[:budget]
