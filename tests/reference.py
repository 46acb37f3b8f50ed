"""An independent greedy generation with plain `generate`, to compare the server with."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

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

    def raw_generation(self, prompt: list[int], max_new_tokens: int) -> str:
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
            )
        return self.tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)

    def suggestion(self, text: str, offset: int, settings: Settings) -> Suggestion | None:
        cursor = cursor_at(Document("file:///reference", "python", 0, text), offset)
        raw = self.raw_generation(self.prompt_ids(cursor.prefix, settings), settings.max_new_tokens)
        return postprocess(raw, cursor, settings.multiline, settings.stop)[0]
