"""The training run: a GPT-NeoX model shaped like PolyCoder, scaled down, trained on CPU or GPU
within a time budget, with a progress bar, a loss log and checkpoints."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..engine.loading import LoadedModel, pick_device
from ..evaluation.perplexity import file_nll
from ..fim import FimTokens
from ..fim import resolve as resolve_fim
from .data import Dataset, SourceFile
from .fim_samples import FimOptions, fim_token_ids
from .tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

EMBEDDING_ROW_MULTIPLE = 128
SAVE_SECONDS = 5.0
# By time: seconds of training done and left, without a rate (it would read "s/s").
TIME_BAR = "{l_bar}{bar}| {n:.0f}/{total:.0f} s of training [{elapsed}<{remaining}{postfix}]"
WARMUP_STEPS = 30
LOG_EVERY_STEPS = 10


@dataclass(frozen=True)
class TrainOptions:
    out: Path
    init: str | None = None
    minutes: float = 60.0
    steps: int | None = None
    seq_len: int = 512
    long_seq_len: int = 2048
    long_fraction: float = 0.2
    """The last part of the run (by time or steps) trains on long_seq_len windows, so the model
    holds up with 2048-token prompts."""
    tokens_per_step: int = 4096
    learning_rate: float | None = None
    vocab_size: int = 8192
    layers: int = 6
    hidden: int = 256
    heads: int = 8
    device: str = "auto"
    seed: int = 0
    checkpoint_minutes: float = 10.0
    started: float | None = None
    """time.monotonic() when the time budget began (the command's start); None: now."""
    save_dtype: str = "float16"
    fim_rate: float = 0.5
    """The share of segments trained as fill-in-the-middle samples, where the tokenizer has
    FIM tokens (a new tokenizer has StarCoder's); 0: left to right only."""


def cpu_trains_faster_in_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AMX or AVX512-BF16: bf16 autocast there trains ~2.3x faster than fp32 (nano's shape,
    AVX512-BF16 without AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _new_model(options: TrainOptions, tokenizer: Any) -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    rows = (len(tokenizer) // EMBEDDING_ROW_MULTIPLE + 1) * EMBEDDING_ROW_MULTIPLE
    config = GPTNeoXConfig(
        vocab_size=rows,  # like PolyCoder: more embedding rows than tokens
        hidden_size=options.hidden,
        num_hidden_layers=options.layers,
        num_attention_heads=options.heads,
        intermediate_size=4 * options.hidden,
        max_position_embeddings=options.long_seq_len,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 1.0,
        },
        use_parallel_residual=False,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(options.seed)
    return GPTNeoXForCausalLM(config)


def _model_and_tokenizer(options: TrainOptions, dataset: Dataset) -> tuple[Any, Any]:
    if options.init is None:
        texts = (source.text for source in dataset.train)
        tokenizer = train_tokenizer(texts, options.vocab_size, options.long_seq_len)
        return _new_model(options, tokenizer), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..engine_state import resolve_model

    source = resolve_model(options.init)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    return model, tokenizer


def _token_stream(
    files: list[SourceFile], tokenizer: Any, fim: FimTokens | None, options: TrainOptions
) -> torch.Tensor:
    """The files' token ids, each after end-of-text; with `fim`, a share `options.fim_rate`
    of their segments as FIM samples."""

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    rng = random.Random(options.seed)
    fim_options = FimOptions(rate=options.fim_rate)
    ids: list[int] = []
    for source in files:
        ids.append(tokenizer.eos_token_id)
        if fim is None:
            ids.extend(encode(source.text))
            continue
        ids += fim_token_ids(source.text, encode, tokenizer.eos_token_id, fim, fim_options, rng)
    return torch.tensor(ids, dtype=torch.long)


def held_out_perplexity(model: Any, tokenizer: Any, files: list[SourceFile], device: str) -> float:
    """Per-token perplexity over the held-out files (each file on its own, windows of the
    model's context), as `polycoder-ls eval` computes it."""
    loaded = LoadedModel(
        name="training",
        source="training",
        tokenizer=tokenizer,
        model=model,
        device=device,
        dtype=torch.float32,
        vocab_limit=len(tokenizer),
        max_positions=model.config.max_position_embeddings,
        eos_id=tokenizer.eos_token_id,
    )
    model.eval()
    nll, tokens = 0.0, 0
    for source in files:
        file_loss, file_tokens = file_nll(loaded, source.text, model.config.max_position_embeddings)
        nll, tokens = nll + file_loss, tokens + file_tokens
    return math.exp(nll / max(1, tokens))


class _Schedule:
    """Progress by time (or steps), warmup then cosine decay to a tenth, and when to switch to
    long windows."""

    def __init__(self, options: TrainOptions, peak_lr: float, seconds: float) -> None:
        self.options, self.peak_lr, self.seconds = options, peak_lr, seconds
        self.started = time.monotonic()

    def progress(self, step: int) -> float:
        if self.options.steps is not None:
            return step / self.options.steps
        return (time.monotonic() - self.started) / self.seconds

    def learning_rate(self, step: int) -> float:
        warm = min(1.0, (step + 1) / WARMUP_STEPS)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, self.progress(step))))
        return self.peak_lr * warm * (0.1 + 0.9 * cosine)

    def seq_len(self, step: int) -> int:
        long = self.progress(step) >= 1 - self.options.long_fraction
        return self.options.long_seq_len if long else self.options.seq_len


def _batch(stream: torch.Tensor, seq_len: int, rows: int, rng: random.Random) -> torch.Tensor:
    starts = [rng.randrange(0, len(stream) - seq_len - 1) for _ in range(rows)]
    return torch.stack([stream[start : start + seq_len] for start in starts])


def _save(model: Any, tokenizer: Any, out: Path, dtype: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    original = next(model.parameters()).dtype
    model.to(getattr(torch, dtype)).save_pretrained(out)
    model.to(original)
    tokenizer.save_pretrained(out)


def train(options: TrainOptions, dataset: Dataset) -> dict[str, Any]:
    """Train, save the model and tokenizer to `options.out`, and return the report. With a
    time budget, the whole run fits in it: set-up, both held-out evaluations and saving."""
    started = options.started if options.started is not None else time.monotonic()
    device, notice = pick_device(options.device)
    if notice is not None:
        logger.warning("%s", notice)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = _model_and_tokenizer(options, dataset)
    model.to(device)
    fim, _ = resolve_fim("auto" if options.fim_rate > 0 else "off", tokenizer.get_vocab())
    stream = _token_stream(dataset.train, tokenizer, fim, options)
    if len(stream) <= options.long_seq_len + 1:
        raise ValueError(f"too little training text: {len(stream)} tokens")
    evaluation_started = time.monotonic()
    before = held_out_perplexity(model, tokenizer, dataset.held_out, device)
    evaluation_seconds = time.monotonic() - evaluation_started
    # What is left once the evaluation after training (as long as this one) and saving are kept.
    spent = time.monotonic() - started
    seconds = max(1.0, options.minutes * 60 - spent - evaluation_seconds * 1.1 - SAVE_SECONDS)
    peak_lr = options.learning_rate or (2e-3 if options.init is None else 5e-5)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    autocast = (device == "cpu" and cpu_trains_faster_in_bf16()) or device.startswith("cuda")
    schedule = _Schedule(options, peak_lr, seconds)
    rng = random.Random(options.seed)
    options.out.mkdir(parents=True, exist_ok=True)
    log_path = options.out / "training-log.csv"
    step, tokens_seen, last_checkpoint = 0, 0, time.monotonic()
    total = options.steps or int(seconds)
    bar = (
        tqdm(total=total, unit="step", mininterval=1.0)
        if options.steps
        else tqdm(total=total, mininterval=1.0, bar_format=TIME_BAR)
    )
    with log_path.open("w", newline="") as log_file, bar:
        log = csv.writer(log_file)
        log.writerow(["step", "seconds", "tokens", "seq_len", "loss", "learning_rate"])
        model.train()
        while schedule.progress(step) < 1:
            seq_len = schedule.seq_len(step)
            rows = max(1, options.tokens_per_step // seq_len)
            inputs = _batch(stream, seq_len, rows, rng).to(device)
            for group in optimizer.param_groups:
                group["lr"] = schedule.learning_rate(step)
            with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=autocast):
                loss = model(input_ids=inputs, labels=inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += inputs.numel()
            if step % LOG_EVERY_STEPS == 0:
                seconds = time.monotonic() - schedule.started
                log.writerow(
                    [step, round(seconds, 1), tokens_seen, seq_len, round(loss.item(), 4),
                     f"{schedule.learning_rate(step):.2e}"]
                )  # fmt: skip
                log_file.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}", seq=seq_len)
            done = step if options.steps else min(total, int(schedule.progress(step) * total))
            bar.update(done - bar.n)  # tqdm redraws at most every mininterval
            if time.monotonic() - last_checkpoint > options.checkpoint_minutes * 60:
                _save(model, tokenizer, options.out / "checkpoint", "float32")
                last_checkpoint = time.monotonic()
    after_started = time.monotonic()
    after = held_out_perplexity(model, tokenizer, dataset.held_out, device)
    _save(model, tokenizer, options.out, options.save_dtype)
    report = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "device": device,
        "bf16Autocast": autocast,
        "steps": step,
        "trainTokens": len(stream),
        "fimFormat": None if fim is None else fim.format.name,
        "tokensSeen": tokens_seen,
        "minutes": round((time.monotonic() - started) / 60, 2),
        "trainingMinutes": round((after_started - schedule.started) / 60, 2),
        "evaluationMinutes": round((evaluation_seconds + time.monotonic() - after_started) / 60, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldOutPerplexityBefore": round(before, 4),
        "heldOutPerplexityAfter": round(after, 4),
        "data": dataset.summary(),
        "duplicatesDropped": dataset.duplicates,
    }
    (options.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
