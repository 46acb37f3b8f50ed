"""Build tiny GPT-NeoX models shaped like PolyCoder, for tests, benchmarks and the demo.

Random weights from a fixed seed; a byte-level BPE trained with `tokenizers` on Python's own
standard library; PolyCoder's special tokens (<|endoftext|>=0, <|padding|>=1,
<|separator|>=2); and, like PolyCoder, more embedding rows than tokenizer entries.
Saved with save_pretrained so the server loads them through from_pretrained like any model.

    python tests/model_factory.py OUT_DIR [--vocab N] [--layers N] [--hidden N] [--positions N]
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from polycoder_ls.fim import FimFormat

# PolyCoder has 50,304 embedding rows for 50,257 tokens: 47 rows no token maps to.
EXTRA_EMBEDDING_ROWS = 47


def training_files(limit_bytes: int = 1_500_000) -> list[str]:
    """Python standard library sources, in a fixed order, up to `limit_bytes`."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        files.append(str(path))
        total += path.stat().st_size
        if total >= limit_bytes:
            break
    return files


def build_tokenizer(out: Path, vocab_size: int, fim: FimFormat | None = None):
    """PolyCoder's kind of BPE (no FIM tokens, no one-token whitespace runs), or with the
    special tokens of `fim`."""
    from polycoder_ls.training.tokenizer import train_tokenizer

    texts = (Path(path).read_text() for path in training_files())
    tokenizer = train_tokenizer(texts, vocab_size, 2048, fim=fim, one_token_runs=False)
    tokenizer.save_pretrained(out)
    return tokenizer


def build_model(
    out: Path,
    vocab_size: int = 1024,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    positions: int = 2048,
    seed: int = 0,
    embedding_rows: int | None = None,
    fim: FimFormat | None = None,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
) -> Path:
    """Write a tokenizer and a random-weight GPT-NeoX model to `out`; return `out`.
    `embedding_rows` (default: the tokenizer's size + 47) sets the vocabulary of the model;
    `fim`: the tokenizer has that format's special tokens; `dtype`: the weights' type (default
    float32); `device`: where they are drawn (a GPU draws billions of them in a moment)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out, vocab_size, fim)
    config = GPTNeoXConfig(
        vocab_size=embedding_rows or len(tokenizer) + EXTRA_EMBEDDING_ROWS,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=positions,
        rotary_pct=1.0,
        use_parallel_residual=False,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = GPTNeoXForCausalLM(config)
    model.to(dtype or torch.float32).save_pretrained(out)
    return out


def build_sentencepiece_model(out: Path, vocab_size: int = 1024, seed: int = 0) -> Path:
    """A tiny Llama with a SentencePiece-style BPE (`▁` for spaces, a leading space dropped
    when decoding, BOS put before every text), as Llama and CodeLlama tokenizers do."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    backend.train_from_iterator((Path(path).read_text() for path in training_files()), trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer) + EXTRA_EMBEDDING_ROWS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--positions", type=int, default=2048)
    args = parser.parse_args()
    build_model(args.out, args.vocab, args.layers, args.hidden, positions=args.positions)
    print(args.out)


if __name__ == "__main__":
    main()
