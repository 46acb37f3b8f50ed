"""One completion as both engines run it: the prompt's token ids, the token limit, when the
generated text is finished, and the suggestion it becomes. The in-process and the remote
engine differ only in who computes the tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..documents import Cursor
from ..postprocess import Suggestion, postprocess, wants_multiline
from ..prompt import build_prompt, effective_window, token_budget
from .healing import HealedPrompt, heal
from .loading import LoadedModel


@dataclass(frozen=True)
class CompletionPlan:
    prompt: HealedPrompt
    """The token ids to continue; the text they leave out for healing (the generated text
    starts by spelling it)."""
    max_new_tokens: int
    cursor: Cursor
    settings: Settings

    @property
    def multiline(self) -> bool:
        return wants_multiline(self.cursor, self.settings.multiline)

    def finished(self, text: str) -> bool:
        """No more generated text can change the suggestion."""
        healed = len(self.prompt.removed_text)
        if len(text) < healed:
            return False
        cursor, settings = self.cursor, self.settings
        return postprocess(text[healed:], cursor, settings.multiline, settings.stop, False)[1]

    def suggestion(self, text: str) -> Suggestion | None:
        """The suggestion once generation has ended with `text`."""
        removed = self.prompt.removed_text
        continuation = text[len(removed) :] if text.startswith(removed) else ""
        return postprocess(continuation, self.cursor, self.settings.multiline, self.settings.stop)[
            0
        ]


def plan_completion(cursor: Cursor, loaded: LoadedModel, settings: Settings) -> CompletionPlan:
    window = effective_window(
        settings.context_tokens, settings.max_new_tokens, loaded.max_positions
    )
    prompt = model_prompt(cursor.prefix, loaded, settings)
    return CompletionPlan(prompt, window.max_new_tokens, cursor, settings)


def model_prompt(prefix: str, loaded: LoadedModel, settings: Settings) -> HealedPrompt:
    """The token ids the model continues: BOS where the tokenizer adds one, the left context
    in the token budget, its last token taken back for healing."""
    start = [] if loaded.bos_id is None else [loaded.bos_id]
    budget = token_budget(settings.context_tokens, settings.max_new_tokens, loaded.max_positions)
    ids = build_prompt(prefix, loaded.tokenize, max(1, budget - len(start))).token_ids
    healed = HealedPrompt(ids, "")
    if loaded.token_texts is not None and ids:
        last_text = loaded.decode_after(ids[:-1], ids[-1:])
        if prefix.endswith(last_text):
            healed = heal(ids, last_text, keep_at_least=0 if start else 1)
    token_ids = start + healed.token_ids
    if not token_ids and loaded.eos_id is not None:
        token_ids = [loaded.eos_id]
    return HealedPrompt(token_ids, healed.removed_text)
