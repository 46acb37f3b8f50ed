"""`polycoder-ls train`: the data split, fine-tuning that lowers held-out perplexity, and a
from-scratch model that loads like PolyCoder."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from polycoder_ls.config import Settings
from polycoder_ls.engine.loading import load_model
from polycoder_ls.training.data import load_dataset
from polycoder_ls.training.loop import TrainOptions, cpu_trains_faster_in_bf16, train

STDLIB = Path(json.__file__).parent.parent


def small_corpus(root: Path, count: int = 30) -> Path:
    """`count` stdlib modules, plus one exact duplicate."""
    modules = sorted(STDLIB.glob("*.py"))[:count]
    for module in modules:
        shutil.copy(module, root / module.name)
    shutil.copy(modules[0], root / "copy_of_first.py")
    return root


def test_split_drops_duplicates_and_never_trains_on_held_out_files(tmp_path: Path):
    dataset = load_dataset([small_corpus(tmp_path)])
    assert dataset.duplicates == 1
    assert len(dataset.train) + len(dataset.held_out) == 30
    assert len(dataset.held_out) == 2
    assert not {s.digest for s in dataset.train} & {s.digest for s in dataset.held_out}
    again = load_dataset([tmp_path])
    assert [s.path for s in again.held_out] == [s.path for s in dataset.held_out]


def test_fine_tuning_lowers_held_out_perplexity(tiny_model: Path, tmp_path: Path):
    (tmp_path / "data").mkdir()
    dataset = load_dataset([small_corpus(tmp_path / "data")])
    out = tmp_path / "tuned"
    options = TrainOptions(
        out=out, init=str(tiny_model), steps=30, seq_len=128, long_seq_len=256,
        tokens_per_step=2048, learning_rate=3e-3,
    )  # fmt: skip
    report = train(options, dataset)
    assert report["heldOutPerplexityAfter"] < 0.8 * report["heldOutPerplexityBefore"]
    with (out / "training-log.csv").open() as log:
        rows = list(csv.DictReader(log))
    assert [int(row["step"]) for row in rows] == [10, 20, 30]
    assert {int(row["seq_len"]) for row in rows} == {128, 256}  # long windows at the end
    tuned = load_model(Settings(model=str(out), threads=1))
    assert tuned.vocab_limit == len(tuned.tokenizer)


def test_train_command_from_scratch(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    small_corpus(data, count=12)
    out = tmp_path / "model"
    done = subprocess.run(
        [
            sys.executable, "-m", "polycoder_ls", "train", "--data", str(data), "--out", str(out),
            "--steps", "4", "--seq-len", "64", "--vocab-size", "400", "--layers", "1",
            "--hidden", "32", "--heads", "2",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "held-out perplexity per token" in done.stdout
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] == 4
    loaded = load_model(Settings(model=str(out), threads=1))
    assert loaded.model.config.vocab_size > len(loaded.tokenizer)  # padding rows, as PolyCoder
    assert loaded.tokenizer.convert_ids_to_tokens([0, 1, 2]) == [
        "<|endoftext|>",
        "<|padding|>",
        "<|separator|>",
    ]


def test_train_command_without_code_says_so(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("no code here\n")
    done = subprocess.run(
        [sys.executable, "-m", "polycoder_ls", "train", "--data", str(tmp_path), "--out",
         str(tmp_path / "out"), "--steps", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "need source files" in done.stderr


def test_a_time_budget_covers_the_whole_run(tmp_path: Path):
    """--minutes bounds set-up, both held-out evaluations and saving, not only the steps."""
    data = tmp_path / "data"
    data.mkdir()
    small_corpus(data, count=12)
    out = tmp_path / "model"
    budget_minutes = 0.3
    began = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "polycoder_ls", "train", "--data", str(data), "--out", str(out),
            "--minutes", str(budget_minutes), "--seq-len", "64", "--vocab-size", "400",
            "--layers", "1", "--hidden", "32", "--heads", "2",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] > 0
    wall_minutes = (time.monotonic() - began) / 60
    assert wall_minutes <= budget_minutes * 1.2, (wall_minutes, report)
    assert report["trainingMinutes"] + report["evaluationMinutes"] <= report["minutes"]
    assert "s/s" not in done.stderr


def test_bf16_training_only_where_the_cpu_has_bf16_instructions(tmp_path: Path):
    def cpu(flags: str) -> Path:
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
        return path

    assert cpu_trains_faster_in_bf16(cpu("avx512f avx512_bf16 avx512_vnni"))  # Zen 4
    assert cpu_trains_faster_in_bf16(cpu("amx_bf16 amx_tile"))  # Sapphire Rapids
    assert not cpu_trains_faster_in_bf16(cpu("avx512f avx512_vnni"))
    assert not cpu_trains_faster_in_bf16(cpu("avx_vnni"))
    assert not cpu_trains_faster_in_bf16(tmp_path / "missing")
