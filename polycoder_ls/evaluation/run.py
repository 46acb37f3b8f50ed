"""Run an evaluation and render its results (JSON and a markdown table)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pygls.exceptions import JsonRpcException
from tqdm import tqdm

from ..config import Settings
from ..engine.loading import load_model
from ..languages import Language, language_named
from .corpus import files_by_language, read_source
from .holes import HoleScore, sample_holes
from .lsp_client import CompletionClient
from .perplexity import Score, score_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    paths: list[Path]
    settings: Settings
    limit: int | None = None
    holes_per_file: int = 4
    seed: int = 0


def _window(options: EvalOptions, max_positions: int | None) -> int:
    window = options.settings.context_tokens
    return min(window, max_positions) if max_positions else window


def _sources(files: dict[str, list[Path]]) -> Iterator[tuple[Language, Path, str]]:
    """(language, path, text) of every readable file, language by language."""
    for name, paths in files.items():
        language = language_named(name)
        assert language is not None
        for path in paths:
            if (text := read_source(path)) is not None:
                yield language, path, text


def perplexities(options: EvalOptions, files: dict[str, list[Path]]) -> dict[str, Score]:
    loaded = load_model(options.settings)
    window = _window(options, loaded.max_positions)
    scores: dict[str, Score] = {}
    total = sum(len(paths) for paths in files.values())
    with tqdm(total=total, desc="perplexity", unit="file", leave=False) as progress:
        for language, _, text in _sources(files):
            score = scores.setdefault(language.name, Score())
            score.add(score_file(loaded, text, language, window))
            progress.update()
    return scores


async def _hole_scores(options: EvalOptions, files: dict[str, list[Path]]) -> dict[str, HoleScore]:
    client = CompletionClient(options.settings.to_wire())
    await client.start()
    scores: dict[str, HoleScore] = {}
    try:
        total = sum(len(paths) for paths in files.values()) * options.holes_per_file
        with tqdm(total=total, desc="holes", unit="hole", leave=False) as progress:
            for language, path, text in _sources(files):
                score = scores.setdefault(language.name, HoleScore())
                holes = sample_holes(
                    text, language, options.holes_per_file, options.seed, path.name
                )
                for hole in holes:
                    try:
                        suggestion = await client.suggestion(
                            hole, language.language_ids[0], language.extensions[0]
                        )
                    except JsonRpcException as error:
                        log.error("the server failed on a hole in %s: %s", path, error)
                        score.errors += 1
                        suggestion = None
                    score.add(hole, suggestion)
                    progress.update()
    finally:
        await client.stop()
    return scores


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Perplexity and hole completion scores per language, as the JSON result."""
    files = files_by_language(options.paths, options.limit)
    scores = perplexities(options, files)
    holes = asyncio.run(_hole_scores(options, files)) if options.holes_per_file else {}
    languages: dict[str, Any] = {}
    for name, score in scores.items():
        languages[name] = {
            "files": score.files,
            "tokens": score.tokens,
            "pygmentsTokens": score.pygments_tokens,
            "perplexity": _rounded(score.perplexity),
            "perplexityPygments": _rounded(score.perplexity_pygments),
        }
        if name in holes:
            languages[name]["holeCompletion"] = holes[name].summary()
    return {
        "model": options.settings.model,
        "contextTokens": options.settings.context_tokens,
        "seed": options.seed,
        "holesPerFile": options.holes_per_file,
        "languages": languages,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def markdown_table(result: dict[str, Any]) -> str:
    rows = [
        f"Model: `{result['model']}`, windows of {result['contextTokens']} tokens.",
        "",
        "| language | files | tokens | perplexity / token | perplexity / Pygments token "
        "| holes | shown | exact match | edit similarity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["languages"].items():
        holes = entry.get("holeCompletion", {})
        rows.append(
            f"| {name} | {entry['files']} | {entry['tokens']} | {_cell(entry['perplexity'])} "
            f"| {_cell(entry['perplexityPygments'])} | {holes.get('holes', '-')} "
            f"| {_percent(holes.get('shownRate'))} | {_percent(holes.get('exactMatch'))} "
            f"| {_cell(holes.get('editSimilarity'), 3)} |"
        )
    return "\n".join(rows) + "\n"


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")
