"""An independent greedy generation with plain `generate`, to compare the server with."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
)

from polycoder_ls.config import Settings
from polycoder_ls.documents import Document, cursor_at
from polycoder_ls.engine.cpu_kernels import use_cpu_kernels
from polycoder_ls.postprocess import Suggestion, postprocess
from polycoder_ls.prompt import build_prompt, token_budget


class ReferenceModel:
    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        # The server's CPU kernels for matrix products and attention: the same summation orders,
        # so that a near-tie between two logits of a random-weight model cannot flip differently.
        use_cpu_kernels(self.model)

    def tokenize(self, text: str) -> tuple[list[int], list[int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]

    def prompt_ids(self, prefix: str, settings: Settings) -> list[int]:
        limit = self.model.config.max_position_embeddings
        budget = token_budget(settings.context_tokens, settings.max_new_tokens, limit)
        ids = build_prompt(prefix, self.tokenize, budget).token_ids
        return ids or [self.tokenizer.eos_token_id]

    def raw_generation(self, prompt: list[int], max_new_tokens: int, healed: str = "") -> str:
        """Greedy text after `prompt`; its first tokens spell `healed` (token healing)."""
        never = list(range(len(self.tokenizer), self.model.config.vocab_size))
        with torch.inference_mode():
            output = self.model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                suppress_tokens=never,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.all_special_ids,
                logits_processor=LogitsProcessorList([_Spell(self, len(prompt), healed)]),
            )
        return self.tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def healed_prompt(self, prefix: str, settings: Settings) -> tuple[list[int], str]:
        """The prompt without its last token, and that token's text."""
        ids = self.prompt_ids(prefix, settings)
        last = self.token_text(ids[-1])
        if len(ids) < 2 or not prefix.endswith(last) or "\ufffd" in last:
            return ids, ""
        return ids[:-1], last

    def suggestion(self, text: str, offset: int, settings: Settings) -> Suggestion | None:
        cursor = cursor_at(Document("file:///reference", "python", 0, text), offset)
        prompt, healed = self.healed_prompt(cursor.prefix, settings)
        raw = self.raw_generation(prompt, settings.max_new_tokens, healed)
        if not raw.startswith(healed):
            return None
        return postprocess(raw[len(healed) :], cursor, settings.multiline, settings.stop)[0]


class _Spell(LogitsProcessor):
    """Only tokens that go on spelling `healed` while the output has not spelled it all."""

    def __init__(self, reference: ReferenceModel, prompt_length: int, healed: str) -> None:
        self.reference, self.prompt_length, self.healed = reference, prompt_length, healed
        special = set(reference.tokenizer.all_special_ids)
        self.texts = [
            "" if i in special else reference.token_text(i) for i in range(len(reference.tokenizer))
        ]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        so_far = self.reference.tokenizer.decode(input_ids[0, self.prompt_length :])
        if len(so_far) >= len(self.healed):
            return scores
        pending = self.healed[len(so_far) :]
        for token_id, text in enumerate(self.texts):
            if not text or not (text.startswith(pending) or pending.startswith(text)):
                scores[0, token_id] = float("-inf")
        scores[0, len(self.texts) :] = float("-inf")
        return scores
