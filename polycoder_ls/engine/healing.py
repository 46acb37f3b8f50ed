"""Token healing: the prompt's last token is taken back and the first generated tokens must
spell it again, so that text the tokenizer would merge with what follows (a trailing space,
a half-typed `json.lo`) is continued as the model saw such text in training.

Without it, a prompt ending in `return ` ends in a lone space token, which the model rarely
saw before a word (it saw ` word` as one token), and it suggests a second space.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

REPLACEMENT_CHARACTER = "\ufffd"


class TokenTexts:
    """Each token's text as it reads after other text (SentencePiece drops a leading space
    when a token is decoded alone), sorted for prefix searches."""

    def __init__(self, texts: list[str | None]) -> None:
        self._by_text: dict[str, list[int]] = {}
        for token_id, text in enumerate(texts):
            if text:
                self._by_text.setdefault(text, []).append(token_id)
        self._sorted = sorted(self._by_text)

    @classmethod
    def of_tokenizer(cls, tokenizer: Any, count: int, anchor: list[int]) -> TokenTexts:
        anchor_text = _decode(tokenizer, anchor)
        decoded = tokenizer.batch_decode(
            [[*anchor, token_id] for token_id in range(count)],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        special = set(tokenizer.all_special_ids)
        texts: list[str | None] = [
            None
            if token_id in special
            or not text.startswith(anchor_text)
            or REPLACEMENT_CHARACTER in text
            else text[len(anchor_text) :]
            for token_id, text in enumerate(decoded)
        ]
        return cls(texts)

    def allowed(self, pending: str) -> list[int]:
        """Tokens that can come next while `pending` must still be spelled: those starting
        with all of it, and those that are a beginning of it."""
        ids: list[int] = []
        start = bisect.bisect_left(self._sorted, pending)
        for text in self._sorted[start:]:
            if not text.startswith(pending):
                break
            ids.extend(self._by_text[text])
        for length in range(1, len(pending)):
            ids.extend(self._by_text.get(pending[:length], ()))
        return ids


@dataclass(frozen=True)
class HealedPrompt:
    token_ids: list[int]
    removed_text: str
    """What the generated text must start with (and what is cut from its start)."""


def heal(token_ids: list[int], removed_text: str, keep_at_least: int = 1) -> HealedPrompt:
    """Take the last token (whose text is `removed_text`) back, leaving at least
    `keep_at_least` tokens; a token that is no whole character stays."""
    if len(token_ids) <= keep_at_least or not removed_text or REPLACEMENT_CHARACTER in removed_text:
        return HealedPrompt(token_ids, "")
    return HealedPrompt(token_ids[:-1], removed_text)


def pending_text(removed_text: str, generated_text: str) -> str:
    """What of `removed_text` the generated text has still to spell."""
    return removed_text[len(generated_text) :] if len(generated_text) < len(removed_text) else ""


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
