"""A byte-level BPE trained on the training split, with PolyCoder's special tokens, StarCoder's
fill-in-the-middle tokens and, as GPT-NeoX's tokenizer has, one token for a run of spaces or
tabs (with or without the line break before it), so that indentation costs one token."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..fim import STARCODER, FimFormat

POLYCODER_SPECIAL_TOKENS = ["<|endoftext|>", "<|padding|>", "<|separator|>"]
LONGEST_SPACE_RUN = 24
LONGEST_TAB_RUN = 8
# What the pre-tokenizer keeps apart from words, so that BPE spends no merges on it.
WHITESPACE_RUN = r"\n?(?:  +|\t+)|\n "


def whitespace_runs() -> list[str]:
    """Runs of 2..24 spaces and 1..8 tabs, alone and after a line break (and a break and one
    space). A single space is left to BPE: it belongs to the word after it (` def`)."""
    runs = [" " * count for count in range(2, LONGEST_SPACE_RUN + 1)]
    runs += ["\t" * count for count in range(1, LONGEST_TAB_RUN + 1)]
    return runs + ["\n" + run for run in [" ", *runs]]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    max_length: int,
    fim: FimFormat | None = STARCODER,
    one_token_runs: bool = True,
) -> Any:
    """A PreTrainedTokenizerFast: <|endoftext|>=0, <|padding|>=1, <|separator|>=2, then the
    tokens of `fim` (StarCoder's: <fim_prefix>, <fim_suffix>, <fim_middle>, <fim_pad>), the
    learned merges, and the whitespace runs last (`one_token_runs`; without them, runs are
    split as GPT-2's BPE splits them, as PolyCoder's tokenizer does)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(WHITESPACE_RUN), behavior="isolated"), byte_level]
        )
        if one_token_runs
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    runs = whitespace_runs() if one_token_runs else []
    fim_tokens = [] if fim is None else [*fim.tokens, *fim.ends]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(runs),
        special_tokens=POLYCODER_SPECIAL_TOKENS + fim_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if runs:
        tokenizer.add_tokens([AddedToken(run, normalized=False) for run in runs])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|padding|>",
        additional_special_tokens=fim_tokens,
        model_max_length=max_length,
    )
