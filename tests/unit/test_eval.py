"""`polycoder-ls eval`: perplexity as the paper computed it, hole sampling, the command."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from model_factory import build_model
from pygments.lexers import PythonLexer
from transformers import AutoModelForCausalLM, AutoTokenizer

from polycoder_ls.config import ContextSettings, Settings
from polycoder_ls.evaluation.corpus import files_by_language
from polycoder_ls.evaluation.holes import (
    Hole,
    definitions,
    edit_similarity,
    repository_holes,
    sample_holes,
)
from polycoder_ls.evaluation.lsp_client import EVAL_ROOT, CompletionClient
from polycoder_ls.evaluation.run import (
    EvalOptions,
    HoleCondition,
    evaluate,
    hole_conditions,
    hole_scores,
    project_of,
    projects,
)
from polycoder_ls.fim import STARCODER
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
    holes = sample_holes(text, python, 12, seed=3, name="encoder.py")
    assert holes == sample_holes(text, python, 12, seed=3, name="encoder.py")
    assert holes != sample_holes(text, python, 12, seed=4, name="encoder.py")
    assert {hole.kind for hole in holes} == {"mid-line", "inside-line", "line-end", "empty-line"}
    for hole in holes:
        line, column = hole.position
        document_line = hole.document.split("\n")[line]
        original = text.split("\n")[line]
        if hole.kind == "inside-line":  # a piece removed, the rest of the line kept
            rest = document_line[column:]
            assert rest.strip() and original == document_line[:column] + original[column:]
            assert original[column:].endswith(rest)
            assert original[column : len(original) - len(rest)].strip() == hole.truth
            continue
        assert document_line[column:].strip() == ""
        if hole.kind == "line-end":
            assert hole.truth == text.split("\n")[line + 1].strip()
        else:
            assert original[:column] == document_line
            assert original[column:].strip() == hole.truth


def test_definitions_are_found_in_each_language_by_keyword_or_signature():
    assert definitions("def load_model(x):\n    pass\nclass Engine:\n") == {"load_model", "Engine"}
    assert definitions("func (r *Reader) ReadRune() {}\ntype Buffer struct {}") == {
        "ReadRune",
        "Buffer",
    }
    assert definitions("pub fn parse_args() {}\npub(crate) struct Parser;") == {
        "parse_args",
        "Parser",
    }
    assert definitions("static int count_lines(const char *s) {\nint helper(void);") == {
        "count_lines"  # a declaration (ending in ;) defines nothing
    }
    assert definitions("export function render() {}\n  public String getName() {") == {
        "render",
        "getName",
    }
    assert definitions("    # the def keyword in prose\nx = type(y)\n") == set()


def test_repository_holes_are_lines_using_a_name_only_another_file_defines():
    text = (
        "import helpers\n"
        "\n"
        "def run(items):\n"
        "    # the total comes from helpers\n"
        "    total = helpers.compute_total(items)\n"
        "    again = helpers.compute_total(items)\n"
        "    shown = format_local(total)\n"
        "    return shown\n"
        "\n"
        "def format_local(value):\n"
        "    return str(value)\n"
    )
    elsewhere = {"compute_total", "format_local", "unused_name"}
    holes = repository_holes(text, elsewhere, 5, seed=0, name="main.py")
    # The first use only (the second can be copied from it); never a name this file defines.
    assert [hole.truth for hole in holes] == ["total = helpers.compute_total(items)"]
    (hole,) = holes
    assert hole.kind == "repository" and hole.position == (4, 4)
    assert hole.document.split("\n")[4] == "    "
    assert repository_holes(text, set(), 5, seed=0, name="main.py") == []


def test_files_are_grouped_by_project_under_a_language_folder(tmp_path: Path):
    for path in ("Go/netlib/a/x.go", "Go/netlib/y.go", "Go/other/z.go", "top.go"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("package x\n")
    assert project_of(tmp_path / "Go/netlib/a/x.go", [tmp_path]) == ("netlib", "a/x.go")
    assert project_of(tmp_path / "Go/other/z.go", [tmp_path]) == ("other", "z.go")
    assert project_of(tmp_path / "top.go", [tmp_path]) == (tmp_path.name, "top.go")
    options = EvalOptions([tmp_path], Settings())
    grouped = projects(options, files_by_language([tmp_path], None))
    assert {name: sorted(s.uri for s in sources) for name, sources in grouped.items()} == {
        "netlib": [f"{EVAL_ROOT}/netlib/a/x.go", f"{EVAL_ROOT}/netlib/y.go"],
        "other": [f"{EVAL_ROOT}/other/z.go"],
        tmp_path.name: [f"{EVAL_ROOT}/{tmp_path.name}/top.go"],
    }


def test_the_ablation_conditions():
    def labels(settings: Settings, ablate: bool, has_fim: bool) -> list[str]:
        options = EvalOptions([], settings, ablate=ablate)
        return [condition.label for condition in hole_conditions(options, has_fim)]

    assert labels(Settings(), False, True) == ["FIM on, other files 512 tokens"]
    assert labels(Settings(fim="off"), False, True) == ["FIM off, other files 512 tokens"]
    assert labels(Settings(), True, True) == [
        "FIM on, other files 512 tokens",
        "FIM on, other files off",
        "FIM off, other files 512 tokens",
        "FIM off, other files off",
    ]
    off = Settings(context=ContextSettings(other_files_tokens=0))
    assert labels(off, True, False) == [
        "FIM off, other files off",
        "FIM off, other files 512 tokens",
    ]


def test_edit_similarity():
    assert edit_similarity("return x", "return x") == 1.0
    assert edit_similarity("return x", "return y") == 1 - 1 / 8
    assert edit_similarity("", "abc") == 0.0


def test_eval_command_scores_holes_through_the_server(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "polycoder_ls", "eval", "--model", str(tiny_model)]
    limits = ["--limit", "2", "--holes", "3", "--repository-holes", "0"]
    done = subprocess.run(
        [*command, *limits, "--json", str(out), str(STDLIB)],
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


def test_eval_ablation_asks_the_same_holes_under_each_condition(tmp_path: Path):
    model = build_model(tmp_path / "fim-model", fim=STARCODER)
    project = tmp_path / "code" / "Python" / "shop"
    project.mkdir(parents=True)
    (project / "prices.py").write_text(
        "def compute_total(items):\n    return sum(item.price for item in items)\n\n\n"
        "def apply_discount(total, rate):\n    return total * (1 - rate)\n"
    )
    (project / "cart.py").write_text(
        "import prices\n\n\nclass Cart:\n    def __init__(self):\n        self.items = []\n\n"
        "    def total(self):\n        value = prices.compute_total(self.items)\n"
        "        return prices.apply_discount(value, 0.1)\n"
    )
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "polycoder_ls", "eval", "--model", str(model), "--ablate"]
    done = subprocess.run(
        [*command, "--holes", "4", "--json", str(out), str(tmp_path / "code")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    conditions = json.loads(out.read_text())["holeConditions"]
    assert [c["condition"] for c in conditions] == [
        {"fim": True, "otherFilesTokens": 512},
        {"fim": True, "otherFilesTokens": 0},
        {"fim": False, "otherFilesTokens": 512},
        {"fim": False, "otherFilesTokens": 0},
    ]
    for condition in conditions:
        assert condition["byKind"]["repository"]["holes"] == 2  # cart.py's two uses
        assert condition["all"]["holes"] == conditions[0]["all"]["holes"]
        assert condition["all"]["serverErrors"] == 0
    assert "| repository | 2 |" in done.stdout and "FIM off, other files off" in done.stdout


class _RecordingClient(CompletionClient):
    """Records which documents are open whenever a suggestion is asked; answers nothing."""

    def __init__(self) -> None:
        self.open_uris: set[str] = set()
        self.asked: list[tuple[str, frozenset[str]]] = []

    async def start(self) -> None:
        pass

    def open(self, uri: str, language_id: str, text: str) -> None:
        assert uri not in self.open_uris
        self.open_uris.add(uri)

    def close(self, uri: str) -> None:
        self.open_uris.remove(uri)

    async def suggestion(self, hole: Hole, uri: str, language_id: str) -> str | None:
        self.asked.append((uri, frozenset(self.open_uris)))
        return None

    async def stop(self) -> None:
        pass


def test_a_files_holes_are_asked_with_the_other_files_of_its_project_open_and_not_itself(
    tmp_path: Path,
):
    for path in ("Python/shop/a.py", "Python/shop/b.py", "Python/shop/c.py", "Python/blog/d.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("def f(x):\n    y = x + 1\n    return y\n")
    options = EvalOptions([tmp_path], Settings(), holes_per_file=2)
    client = _RecordingClient()
    files = files_by_language([tmp_path], None)
    asyncio.run(hole_scores(options, files, HoleCondition(False, 512), client))
    shop = {f"{EVAL_ROOT}/shop/{name}" for name in ("a.py", "b.py", "c.py")}
    assert {uri for uri, _ in client.asked} == {*shop, f"{EVAL_ROOT}/blog/d.py"}
    for uri, open_uris in client.asked:
        project = shop if uri in shop else {uri}
        assert open_uris == project - {uri}, uri
    assert client.open_uris == set()  # all closed at the end
