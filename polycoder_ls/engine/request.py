"""One completion as both engines run it: the prompt's token ids, the token limit, when the
generated text is finished, and the suggestion it becomes. The in-process and the remote
engine differ only in who computes the tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..documents import Cursor
from ..fim import SENTINEL_TOKENS
from ..neighbors import fit_snippets
from ..postprocess import Suggestion, postprocess, wants_multiline
from ..prompt import build_prompt, clip_suffix, effective_window
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
    fim: bool = False
    """The text after the cursor is in the prompt: mid-line suggestions are allowed."""

    @property
    def multiline(self) -> bool:
        return wants_multiline(self.cursor, self.settings.multiline)

    def finished(self, text: str) -> bool:
        """No more generated text can change the suggestion."""
        healed = len(self.prompt.removed_text)
        if len(text) < healed:
            return False
        cursor, settings = self.cursor, self.settings
        return postprocess(
            text[healed:], cursor, settings.multiline, settings.stop, False, self.fim
        )[1]

    def suggestion(self, text: str) -> Suggestion | None:
        """The suggestion once generation has ended with `text`."""
        removed = self.prompt.removed_text
        continuation = text[len(removed) :] if text.startswith(removed) else ""
        settings = self.settings
        return postprocess(
            continuation, self.cursor, settings.multiline, settings.stop, True, self.fim
        )[0]


def plan_completion(cursor: Cursor, loaded: LoadedModel, settings: Settings) -> CompletionPlan:
    window = effective_window(
        settings.context_tokens, settings.max_new_tokens, loaded.max_positions
    )
    suffix = cursor.line_suffix + cursor.following_text if loaded.fim is not None else ""
    context = ""
    if cursor.snippets and settings.context.other_files_tokens > 0:
        limit = min(settings.context.other_files_tokens, window.prompt_tokens // 2)
        context = fit_snippets(cursor.snippets, cursor.language, loaded.tokenize, limit)
    prompt = model_prompt(cursor.prefix, loaded, settings, suffix, context)
    fim = loaded.fim is not None
    return CompletionPlan(prompt, window.max_new_tokens, cursor, settings, fim)


def model_prompt(
    prefix: str, loaded: LoadedModel, settings: Settings, suffix: str = "", context: str = ""
) -> HealedPrompt:
    """The token ids the model continues: BOS where the tokenizer adds one, then (in the
    model's FIM layout, when it has one) `context` and the left context, and the text after
    the cursor, each in its token budget; the left context's last token taken back for
    healing."""
    start = [] if loaded.bos_id is None else [loaded.bos_id]
    window = effective_window(
        settings.context_tokens, settings.max_new_tokens, loaded.max_positions
    )
    budget = window.prompt_tokens - len(start)
    fim = loaded.fim
    suffix_ids: list[int] = []
    if fim is not None:
        suffix_budget = settings.context.suffix_tokens
        if suffix_budget is None:
            suffix_budget = window.context_tokens // 4
        suffix_ids = clip_suffix(suffix, loaded.tokenize, min(suffix_budget, budget // 2))
        budget -= SENTINEL_TOKENS + len(suffix_ids)
    context_ids = loaded.tokenize(context)[0] if context else []
    budget -= len(context_ids)
    ids = build_prompt(prefix, loaded.tokenize, max(1, budget)).token_ids
    healed = HealedPrompt(ids, "")
    if loaded.token_texts is not None and ids:
        last_text = loaded.decode_after(ids[:-1], ids[-1:])
        if prefix.endswith(last_text):
            keep = 0 if start or fim is not None or context_ids else 1
            healed = heal(ids, last_text, keep_at_least=keep)
    if fim is None:
        body = context_ids + healed.token_ids
    else:
        body = fim.layout(context_ids, healed.token_ids, suffix_ids)
    token_ids = start + body
    if not token_ids and loaded.eos_id is not None:
        token_ids = [loaded.eos_id]
    return HealedPrompt(token_ids, healed.removed_text)
