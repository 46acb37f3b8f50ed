"""`polycoder-ls eval`: perplexity as the paper computed it, hole sampling, the command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from pygments.lexers import PythonLexer
from transformers import AutoModelForCausalLM, AutoTokenizer

from polycoder_ls.config import Settings
from polycoder_ls.evaluation.corpus import files_by_language
from polycoder_ls.evaluation.holes import edit_similarity, sample_holes
from polycoder_ls.evaluation.run import EvalOptions, evaluate
from polycoder_ls.languages import language_named

STDLIB = Path(json.__file__).parent
WINDOW = 128


def independent_nll(model_dir: Path, text: str) -> tuple[float, int]:
    """Plain transformers loss over windows: the logits of the first WINDOW positions of a
    WINDOW + 1 token chunk depend only on those positions, so its loss covers one window."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = [tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, WINDOW):
            chunk = torch.tensor([ids[start : start + WINDOW + 1]])
            loss = model(input_ids=chunk, labels=chunk).loss.item()
            total += loss * (chunk.shape[1] - 1)
    return total, len(ids) - 1


def test_perplexity_matches_an_independent_computation(tiny_model: Path, tmp_path: Path):
    source = (STDLIB / "decoder.py").read_text()
    (tmp_path / "Python").mkdir()
    (tmp_path / "Python" / "decoder.py").write_text(source)
    settings = Settings(model=str(tiny_model), context_tokens=WINDOW, max_new_tokens=16)
    result = evaluate(EvalOptions([tmp_path], settings, holes_per_file=0))
    python = result["languages"]["Python"]
    nll, tokens = independent_nll(tiny_model, source)
    assert tokens > 5 * WINDOW, "the file must span several windows"
    assert python["tokens"] == tokens
    assert math.isclose(python["perplexity"], math.exp(nll / tokens), rel_tol=1e-3)
    pygments_tokens = sum(1 for _, value in PythonLexer().get_tokens(source) if value.strip())
    assert python["pygmentsTokens"] == pygments_tokens
    assert math.isclose(python["perplexityPygments"], math.exp(nll / pygments_tokens), rel_tol=1e-3)


def test_languages_by_extension_or_folder_and_limit(tmp_path: Path):
    (tmp_path / "Code-sampled100" / "C#").mkdir(parents=True)
    (tmp_path / "Code-sampled100" / "C#" / "Program").write_text("class P {}\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "empty.rs").write_text("\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    found = files_by_language([tmp_path], limit=1)
    assert {name: [path.name for path in paths] for name, paths in found.items()} == {
        "C#": ["Program"],
        "Python": ["a.py"],
    }


def test_holes_are_deterministic_and_cut_real_lines():
    text = (STDLIB / "encoder.py").read_text()
    python = language_named("Python")
    assert python is not None
    holes = sample_holes(text, python, 9, seed=3, name="encoder.py")
    assert holes == sample_holes(text, python, 9, seed=3, name="encoder.py")
    assert holes != sample_holes(text, python, 9, seed=4, name="encoder.py")
    assert {hole.kind for hole in holes} == {"mid-line", "line-end", "empty-line"}
    for hole in holes:
        line, column = hole.position
        document_line = hole.document.split("\n")[line]
        assert document_line[column:].strip() == ""
        if hole.kind == "line-end":
            assert hole.truth == text.split("\n")[line + 1].strip()
        else:
            original = text.split("\n")[line]
            assert original[:column] == document_line
            assert original[column:].strip() == hole.truth


def test_edit_similarity():
    assert edit_similarity("return x", "return x") == 1.0
    assert edit_similarity("return x", "return y") == 1 - 1 / 8
    assert edit_similarity("", "abc") == 0.0


def test_eval_command_scores_holes_through_the_server(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "polycoder_ls", "eval", "--model", str(tiny_model)]
    done = subprocess.run(
        [*command, "--limit", "2", "--holes", "3", "--json", str(out), str(STDLIB)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    python = result["languages"]["Python"]
    assert python["files"] == 2
    assert python["holeCompletion"]["holes"] == 6
    assert python["holeCompletion"]["serverErrors"] == 0
    assert 0.0 <= python["holeCompletion"]["shownRate"] <= 1.0
    assert "| Python | 2 |" in done.stdout
    assert "holes" in done.stderr  # the progress bar


def test_eval_command_reports_a_missing_path(tiny_model: Path, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "polycoder_ls", "eval", "--model", str(tiny_model), "/nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "no such file or directory: /nope" in done.stderr
