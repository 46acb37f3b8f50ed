"""An independent oracle for the server's suggestions: plain `generate` for the model, and the
prompt and post-processing computed here from their documented rules, without the server's
prompt builder, cursor or post-processor (a bug there cannot hide in the expectation).

What it covers: a cursor at the end of its line (nothing or whitespace after it). Single-line
suggestions are computed exactly; a multi-line suggestion is checked for consistency with the
raw generation (`multiline_consistent`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
)
from transformers.cache_utils import DynamicLayer

from polycoder_ls.config import Settings
from polycoder_ls.engine.cpu_kernels import use_cpu_kernels
from polycoder_ls.fim import FimFormat

# The prompt: whole lines dropped from the left, first only at line numbers that are multiples
# of this (README: "Prompt"), then at any line, then the last tokens of one huge line.
CLIP_LINE_STEP = 32
# Text that ends a suggestion: special tokens the model may spell, and U+FFFD (bytes that
# decode to no character).
ENDS = ("<|endoftext|>", "<|padding|>", "<|separator|>", "<fim_", "<|fim", "\ufffd")
BLOCK_OPENERS = re.compile(r"[:{(\[]\s*$")


# After the cursor on its line, only these (closers the suggestion may retype) allow one.
CLOSERS = set(")]}>\"'`;,.: \t")


@dataclass(frozen=True)
class Expected:
    text: str
    replaced_chars: int = 0


class ReferenceModel:
    def __init__(self, model_dir: Path, bits: int | None = 8) -> None:
        """`bits`: the server's weights, 8 as with `dtype: auto` on a CPU, None for float32."""
        self.float16_kv = bits is not None
        """Keys and values rounded to float16 as they are cached, as with quantized weights."""
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        # The server's CPU kernels for matrix products and attention, and its weights: the same
        # values and summation orders, so that a near-tie between two logits of a random-weight
        # model cannot flip differently. (Here the model stands for the server's, so that what
        # is checked is the prompt and post-processing; test_cpu_kernels.py checks the kernels
        # and quantization against plain transformers and the rules in reference_quantized.)
        use_cpu_kernels(self.model, bits)

    def tokenize(self, text: str) -> tuple[list[int], list[int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]

    def prompt_ids(self, prefix: str, settings: Settings) -> list[int]:
        limit = self.model.config.max_position_embeddings
        context = min(settings.context_tokens, limit)
        budget = max(1, context - min(settings.max_new_tokens, context // 2))
        return self._clipped(prefix, budget) or [self.tokenizer.eos_token_id]

    def _clipped(self, prefix: str, budget: int) -> list[int]:
        ids = self.tokenize(prefix)[0]
        if len(ids) <= budget:
            return ids
        starts = [0] + [index + 1 for index, char in enumerate(prefix) if char == "\n"]
        for step in (CLIP_LINE_STEP, 1):
            for number, start in enumerate(starts):
                if number % step == 0 and len(kept := self.tokenize(prefix[start:])[0]) <= budget:
                    return kept
        return ids[-budget:]

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
                cache=float16_cache(self.model) if self.float16_kv else None,
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

    def raw_suggestion(self, prefix: str, settings: Settings) -> str | None:
        """What the model writes after `prefix` (token healing undone), or None if its first
        tokens do not spell the healed text."""
        prompt, healed = self.healed_prompt(prefix, settings)
        raw = self.raw_generation(prompt, self._new_tokens(settings), healed)
        return raw[len(healed) :] if raw.startswith(healed) else None

    def _new_tokens(self, settings: Settings) -> int:
        context = min(settings.context_tokens, self.model.config.max_position_embeddings)
        return min(settings.max_new_tokens, context // 2)

    def suggestion(self, text: str, offset: int, settings: Settings) -> Expected | None:
        """The single-line suggestion at `offset`: at the end of its line, or before closers."""
        line_end = _line_end(text, offset)
        suffix = text[offset:line_end]
        if not set(suffix) <= CLOSERS:
            return None  # mid-line, before code: no suggestion
        if _multiline(text[:offset], settings.multiline) and not suffix.strip():
            raise NotImplementedError("multi-line: check with multiline_consistent")
        raw = self.raw_suggestion(text[:offset], settings)
        if raw is None:
            return None
        line = _cut_repeated_run(_first_line(_until_end(raw, settings.stop))).rstrip()
        if not line.strip():
            return None
        whole_line = (text[text.rfind("\n", 0, offset) + 1 : offset] + line).strip()
        following = [below for below in text[line_end:].split("\n")[1:] if below.strip()]
        if following and following[0].strip() == whole_line:
            return None  # the document's next line, repeated
        closers = iter(line)
        retyped = suffix.strip() and all(char in closers for char in "".join(suffix.split()))
        return Expected(line, len(suffix) if retyped or not suffix.strip() else 0)


def multiline_consistent(suggestion: str, raw: str) -> bool:
    """A multi-line suggestion is the raw text's first lines (whitespace at the line ends and the
    indentation aside), at least one, and stops where the raw text stops or earlier."""
    lines = [line.strip() for line in suggestion.split("\n")]
    written = [line.strip() for line in _until_end(raw, ()).split("\n")]
    return 0 < len(lines) <= len(written) and lines == written[: len(lines)] and bool(lines[0])


def _line_end(text: str, offset: int) -> int:
    ends = [index for index in (text.find("\n", offset), text.find("\r", offset)) if index >= 0]
    return min(ends, default=len(text))


def _multiline(prefix: str, mode: str) -> bool:
    if mode != "auto":
        return mode == "always"
    line = prefix[prefix.rfind("\n") + 1 :]
    return not line.strip() or (
        not line.lstrip().startswith("#") and bool(BLOCK_OPENERS.search(line.rstrip()))
    )


def _until_end(raw: str, stops: tuple[str, ...]) -> str:
    cut = min((index for end in (*ENDS, *stops) if (index := raw.find(end)) >= 0), default=-1)
    return raw if cut < 0 else raw[:cut]


def _first_line(text: str) -> str:
    return re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]


def _cut_repeated_run(line: str) -> str:
    """A piece of up to 16 characters that ends in a non-blank and comes 7 or more times in a
    row is kept once (brute force, from the rule's statement)."""
    for start in range(len(line)):
        for size in range(1, 17):
            piece = line[start : start + size]
            if len(piece) < size or not piece.strip() or piece[-1].isspace():
                continue
            if line[start : start + 7 * size] == piece * 7:
                return line[: start + size]
    return line


def fim_prompt(
    reference: ReferenceModel, fim: FimFormat, prefix: str, suffix: str
) -> tuple[list[int], str]:
    """Independently: sentinel ids from the tokenizer, the two texts tokenised whole, the
    prefix's last token taken back (healing), in the format's documented order."""
    p, s, m = reference.tokenizer.convert_tokens_to_ids(list(fim.tokens))
    prefix_ids, _ = reference.tokenize(prefix)
    suffix_ids, _ = reference.tokenize(suffix)
    healed = reference.token_text(prefix_ids[-1])
    kept = prefix_ids[:-1]
    if fim.order == "spm":
        return [p, s, *suffix_ids, m, *kept], healed
    return [p, *kept, s, *suffix_ids, m], healed


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


def reference_quantized(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantization rules, group by group in plain Python. int8 (q8_0's): scale = largest
    magnitude / 127, values in -127..127. 4-bit (q4_0's): scale = the weight of largest
    magnitude (the first of equals) / -8, values in -8..7. Scales are stored as float16, each
    value is the nearest integer to weight / scale. Returns (values as int8, scales)."""
    values = torch.zeros(weight.shape, dtype=torch.int8)
    scales = torch.zeros(weight.shape[0], weight.shape[1] // 32, dtype=torch.float16)
    low, high = (-127, 127) if bits == 8 else (-8, 7)
    for row in range(weight.shape[0]):
        for group in range(weight.shape[1] // 32):
            chunk = [float(w) for w in weight[row, 32 * group : 32 * group + 32]]
            extreme = max(chunk, key=abs)
            exact = abs(extreme) / 127 if bits == 8 else extreme / -8
            scale = float(torch.tensor(exact, dtype=torch.float16))
            scales[row, group] = scale
            for i, w in enumerate(chunk):
                value = max(low, min(high, round(w / scale))) if scale else 0
                values[row, 32 * group + i] = value
    return values, scales


def with_quantized_values(model: nn.Module, bits: int) -> nn.Module:
    """`model` with every linear layer's weight replaced by its quantized values
    (reference_quantized)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.in_features % 32 == 0:
                values, scales = reference_quantized(module.weight, bits)
                wide = scales.float().repeat_interleave(32, dim=1)
                module.weight.copy_(values.float() * wide)
    return model


def quantized_activations(rows: torch.Tensor) -> torch.Tensor:
    """What the quantized kernels multiply instead of `rows` (last dimension a multiple of 32):
    per group of 32, value = the nearest integer to x * (127 / largest magnitude), times
    largest magnitude / 127."""
    groups = rows.reshape(*rows.shape[:-1], -1, 32)
    largest = groups.abs().amax(dim=-1, keepdim=True)
    values = torch.where(largest > 0, groups * (127 / largest), 0.0).round()
    return (values * (largest / 127)).reshape(rows.shape)


def with_quantized_activations(model: nn.Module, max_rows: int) -> nn.Module:
    """`model` with the inputs of its quantized linear layers (inputs a multiple of 32) of
    fewer than `max_rows` rows quantized (quantized_activations), as the kernels do."""

    def quantize(module: nn.Module, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor] | None:
        (hidden,) = inputs
        if hidden.numel() // hidden.shape[-1] >= max_rows:
            return None
        return (quantized_activations(hidden),)

    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features % 32 == 0:
            module.register_forward_pre_hook(quantize)
    return model


class _Float16Layer(DynamicLayer):
    """Keys and values rounded to float16 as they are stored, attended to as float32."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rounded = key_states.half().float(), value_states.half().float()
        return super().update(*rounded, *args, **kwargs)


def float16_cache(model: nn.Module) -> DynamicCache:
    """A cache for `model` that keeps its keys and values as float16 (what a quantized model's
    server keeps)."""
    cache = DynamicCache()
    cache.layers = [_Float16Layer() for _ in range(model.config.num_hidden_layers)]
    return cache


def as_quantized_server(model: nn.Module, bits: int, bf16_min_rows: int) -> nn.Module:
    """`model` computing what a server with `bits`-bit weights computes: the weights' values,
    activations quantized for products of fewer than `bf16_min_rows` rows, and more rows in
    bfloat16 where the CPU has it (its cache: float16_cache)."""
    with_quantized_values(model, bits)
    with_quantized_activations(model, bf16_min_rows)
    if cpu_has_bf16():
        with_bf16_prompts(model, bf16_min_rows)
    return model


def cpu_has_bf16() -> bool:
    """Whether /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (then quantized models feed prompts
    in bfloat16)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " avx512_bf16" in flags or " amx_bf16" in flags


def with_bf16_prompts(model: nn.Module, min_rows: int) -> nn.Module:
    """`model` with the products of its quantized linear layers (inputs a multiple of 32) of at
    least `min_rows` rows computed in bfloat16 (inputs and weights rounded to it, the bias
    added in float32 afterwards), as a quantized model feeds prompts where the CPU has it."""

    def in_bf16(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor):
        (hidden,) = inputs
        if hidden.numel() // hidden.shape[-1] < min_rows:
            return output
        product = functional.linear(hidden.to(torch.bfloat16), module.weight.to(torch.bfloat16))
        return product.float() + (0 if module.bias is None else module.bias)

    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features % 32 == 0:
            module.register_forward_hook(in_bf16)
    return model
