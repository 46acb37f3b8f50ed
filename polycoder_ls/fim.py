"""Fill-in-the-middle formats: the special tokens each model family was trained with, how a
format is recognised from a tokenizer's vocabulary, and the order of the prompt's parts.

The one source of these facts: the engines build FIM prompts from it, `polycoder-ls train`
trains polycoder-nano v2 in the StarCoder format, and the tests build tiny models with each
format's tokens.
"""

# ruff: noqa: RUF001 (DeepSeek-Coder's tokens are spelled with full-width bars)
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

Order = Literal["psm", "spm"]
"""psm: prefix, suffix, then the middle. spm: suffix first, then the prefix and the middle
continue it, so the part that is stable while the user types (the suffix) comes first."""


@dataclass(frozen=True)
class FimFormat:
    name: str
    prefix: str
    suffix: str
    middle: str
    ends: tuple[str, ...] = ()
    """Tokens (besides end-of-text) that end the middle."""
    order: Order = "psm"
    """The order used for prompts: spm only for families trained with it (StarCoder's
    bigcode training ran half its FIM samples in SPM order; CodeLlama's ran both)."""

    @property
    def tokens(self) -> tuple[str, str, str]:
        return (self.prefix, self.suffix, self.middle)

    def describe(self) -> str:
        return f"{self.name} ({self.order.upper()})"


STARCODER = FimFormat(
    "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", ("<fim_pad>",), "spm"
)
QWEN = FimFormat(
    "qwen2.5-coder",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    ("<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>"),
)
DEEPSEEK = FimFormat(
    "deepseek-coder",
    "<｜fim▁begin｜>",
    "<｜fim▁hole｜>",
    "<｜fim▁end｜>",
    ("<|EOT|>",),
)
CODELLAMA = FimFormat("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", ("▁<EOT>",), "spm")
CODELLAMA_PLAIN = FimFormat("codellama", "<PRE>", "<SUF>", "<MID>", ("<EOT>",), "spm")

KNOWN_FORMATS = (STARCODER, QWEN, DEEPSEEK, CODELLAMA, CODELLAMA_PLAIN)
"""In the order they are tried; the first whose three tokens are all in a vocabulary wins."""

TEMPLATE_KEYS = ("prefix", "suffix", "middle")


def detect(vocabulary: Collection[str]) -> FimFormat | None:
    """The known format whose prefix, suffix and middle tokens the tokenizer has."""
    for known in KNOWN_FORMATS:
        if all(token in vocabulary for token in known.tokens):
            return known
    return None


def from_template(template: Mapping[str, object]) -> FimFormat:
    """A format given as a setting: {prefix, suffix, middle, ends?, order?}. Raises ValueError
    with the reason."""
    unknown = set(template) - {*TEMPLATE_KEYS, "ends", "order", "name"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (expected {', '.join(TEMPLATE_KEYS)})")
    tokens = [template.get(key) for key in TEMPLATE_KEYS]
    if not all(isinstance(token, str) and token for token in tokens):
        raise ValueError("prefix, suffix and middle must be non-empty strings")
    ends = template.get("ends", [])
    if not isinstance(ends, list) or not all(isinstance(end, str) and end for end in ends):
        raise ValueError("ends must be a list of token strings")
    order = template.get("order", "psm")
    if order not in ("psm", "spm"):
        raise ValueError('order must be "psm" or "spm"')
    prefix, suffix, middle = (str(token) for token in tokens)
    name = str(template.get("name", "custom"))
    return FimFormat(name, prefix, suffix, middle, tuple(ends), "spm" if order == "spm" else "psm")


@dataclass(frozen=True)
class FimTokens:
    """A format resolved against one tokenizer: its token ids."""

    format: FimFormat
    prefix_id: int
    suffix_id: int
    middle_id: int
    end_ids: tuple[int, ...]

    def layout(
        self, context: list[int], prefix: list[int], suffix: list[int], order: Order | None = None
    ) -> list[int]:
        """The prompt: other files' snippets (`context`) lead the left context; in the
        format's order unless `order` is given (training samples use both)."""
        if (order or self.format.order) == "spm":
            return [self.prefix_id, self.suffix_id, *suffix, self.middle_id, *context, *prefix]
        return [self.prefix_id, *context, *prefix, self.suffix_id, *suffix, self.middle_id]


SENTINEL_TOKENS = 3
"""Tokens a FIM prompt spends on its prefix, suffix and middle markers."""


def resolve(
    setting: str | FimFormat, vocabulary: Mapping[str, int]
) -> tuple[FimTokens | None, str | None]:
    """The format the `fim` setting asks for, as ids of this vocabulary, and a notice when a
    template's tokens are not in it (then no FIM)."""
    if setting == "off":
        return None, None
    wanted = detect(vocabulary) if setting == "auto" else setting
    if not isinstance(wanted, FimFormat):
        return None, None
    missing = [token for token in wanted.tokens if token not in vocabulary]
    if missing:
        return None, f"fim: the tokenizer has no {', '.join(missing)}; fill-in-the-middle is off"
    prefix_id, suffix_id, middle_id = (vocabulary[token] for token in wanted.tokens)
    ends = tuple(vocabulary[end] for end in wanted.ends if end in vocabulary)
    return FimTokens(wanted, prefix_id, suffix_id, middle_id, ends), None
