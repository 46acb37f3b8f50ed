"""Run an evaluation and render its results (JSON and a markdown table)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pygls.exceptions import JsonRpcException
from tqdm import tqdm

from ..config import ContextSettings, Settings
from ..engine.loading import LoadedModel, load_model
from ..languages import Language, language_named
from .corpus import files_by_language, read_source
from .holes import KINDS, REPOSITORY, Hole, HoleScore, definitions, repository_holes, sample_holes
from .lsp_client import EVAL_ROOT, CompletionClient
from .perplexity import Score, score_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    paths: list[Path]
    settings: Settings
    limit: int | None = None
    holes_per_file: int = 4
    seed: int = 0
    repository_holes: int = 2
    """Repository-level holes per file (lines that use a name another file defines)."""
    ablate: bool = False
    """Hole completion with and without FIM, and with and without other-file context."""


@dataclass(frozen=True)
class HoleCondition:
    fim: bool
    other_files_tokens: int

    def settings(self, base: Settings) -> Settings:
        context = replace(base.context, other_files_tokens=self.other_files_tokens)
        return replace(base, fim=base.fim if self.fim else "off", context=context)

    def to_json(self) -> dict[str, Any]:
        return {"fim": self.fim, "otherFilesTokens": self.other_files_tokens}

    @property
    def label(self) -> str:
        files = f"{self.other_files_tokens} tokens" if self.other_files_tokens else "off"
        return f"FIM {'on' if self.fim else 'off'}, other files {files}"


def hole_conditions(options: EvalOptions, has_fim: bool) -> list[HoleCondition]:
    """The settings as given first; with `ablate`, also FIM off (where the model has it) and
    other-file context off (or on, at its default budget, when the settings turn it off)."""
    base = options.settings
    fim = has_fim and base.fim != "off"
    tokens = base.context.other_files_tokens
    given = HoleCondition(fim, tokens)
    if not options.ablate:
        return [given]
    other_tokens = tokens or ContextSettings().other_files_tokens
    fims = (fim, not fim) if has_fim else (False,)
    every = [HoleCondition(f, t) for f in fims for t in (other_tokens, 0)]
    return [given, *(condition for condition in every if condition != given)]


@dataclass(frozen=True)
class Source:
    language: Language
    path: Path
    text: str
    uri: str

    @property
    def language_id(self) -> str:
        return self.language.language_ids[0]


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


def project_of(path: Path, roots: list[Path]) -> tuple[str, str]:
    """(project, path in it): the first folder under the PATH argument that holds the file,
    after a folder named after a language (`heldout/Python/<project>/...`)."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            parts = path.relative_to(root).parts
            if len(parts) > 1 and language_named(parts[0]) is not None:
                parts = parts[1:]
            if len(parts) > 1:
                return parts[0], "/".join(parts[1:])
            return root.name or "files", "/".join(parts)
    return path.parent.name or "files", path.name


def projects(options: EvalOptions, files: dict[str, list[Path]]) -> dict[str, list[Source]]:
    """The files to evaluate, by project, each with the URI it is opened at."""
    grouped: dict[str, list[Source]] = {}
    for language, path, text in _sources(files):
        project, inner = project_of(path, options.paths)
        uri = f"{EVAL_ROOT}/{quote(project)}/{quote(inner)}"
        grouped.setdefault(project, []).append(Source(language, path, text, uri))
    return grouped


def perplexities(
    options: EvalOptions, files: dict[str, list[Path]], loaded: LoadedModel
) -> dict[str, Score]:
    window = _window(options, loaded.max_positions)
    scores: dict[str, Score] = {}
    total = sum(len(paths) for paths in files.values())
    with tqdm(total=total, desc="perplexity", unit="file", leave=False) as progress:
        for language, _, text in _sources(files):
            score = scores.setdefault(language.name, Score())
            score.add(score_file(loaded, text, language, window))
            progress.update()
    return scores


HoleScores = dict[str, dict[str, HoleScore]]
"""Language -> hole kind -> score."""


async def hole_scores(
    options: EvalOptions,
    files: dict[str, list[Path]],
    condition: HoleCondition,
    client: CompletionClient | None = None,
) -> HoleScores:
    """Hole completion through a server with `condition`'s settings. The other files of each
    file's project are open in the editor while its holes are asked (the file itself is not)."""
    client = client or CompletionClient(condition.settings(options.settings).to_wire())
    await client.start()
    scores: HoleScores = {}
    grouped = projects(options, files)
    total = sum(len(sources) for sources in grouped.values())
    try:
        with tqdm(
            total=total, desc=f"holes, {condition.label}", unit="file", leave=False
        ) as progress:
            for sources in grouped.values():
                for source in sources:
                    client.open(source.uri, source.language_id, source.text)
                for source, holes in project_holes(options, sources):
                    client.close(source.uri)
                    by_kind = scores.setdefault(source.language.name, {})
                    for hole in holes:
                        score = by_kind.setdefault(hole.kind, HoleScore())
                        score.add(hole, await _suggestion(client, hole, source, score))
                    client.open(source.uri, source.language_id, source.text)
                    progress.update()
                for source in sources:
                    client.close(source.uri)
    finally:
        await client.stop()
    return scores


async def _suggestion(
    client: CompletionClient, hole: Hole, source: Source, score: HoleScore
) -> str | None:
    try:
        return await client.suggestion(hole, source.uri, source.language_id)
    except JsonRpcException as error:
        log.error("the server failed on a hole in %s: %s", source.path, error)
        score.errors += 1
        return None


def project_holes(
    options: EvalOptions, sources: list[Source]
) -> Iterator[tuple[Source, list[Hole]]]:
    """Each file of one project with its holes: `holes_per_file` of the four kinds, and
    `repository_holes` lines that use a name only the project's other files define."""
    defined = {source.uri: definitions(source.text) for source in sources}
    for source in sources:
        elsewhere = set().union(*(names for uri, names in defined.items() if uri != source.uri))
        name, seed = source.path.name, options.seed
        yield (
            source,
            [
                *sample_holes(source.text, source.language, options.holes_per_file, seed, name),
                *repository_holes(source.text, elsewhere, options.repository_holes, seed, name),
            ],
        )


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Perplexity and hole completion scores per language, as the JSON result."""
    files = files_by_language(options.paths, options.limit)
    loaded = load_model(options.settings)
    scores = perplexities(options, files, loaded)
    has_fim = loaded.fim is not None
    del loaded
    conditions = hole_conditions(options, has_fim) if options.holes_per_file else []
    runs = [asyncio.run(hole_scores(options, files, c)) for c in conditions]
    languages: dict[str, Any] = {}
    for name, score in scores.items():
        languages[name] = {
            "files": score.files,
            "tokens": score.tokens,
            "pygmentsTokens": score.pygments_tokens,
            "perplexity": _rounded(score.perplexity),
            "perplexityPygments": _rounded(score.perplexity_pygments),
        }
        if runs and name in runs[0]:
            languages[name]["holeCompletion"] = HoleScore.merged(runs[0][name].values()).summary()
    return {
        "model": options.settings.model,
        "contextTokens": options.settings.context_tokens,
        "seed": options.seed,
        "holesPerFile": options.holes_per_file,
        "repositoryHolesPerFile": options.repository_holes,
        "languages": languages,
        "holeConditions": [
            _condition_result(condition, run)
            for condition, run in zip(conditions, runs, strict=True)
        ],
    }


def _condition_result(condition: HoleCondition, run: HoleScores) -> dict[str, Any]:
    kinds = sorted({kind for by_kind in run.values() for kind in by_kind}, key=_kind_order)
    return {
        "condition": condition.to_json(),
        "label": condition.label,
        "all": HoleScore.merged(s for by_kind in run.values() for s in by_kind.values()).summary(),
        "byKind": {
            kind: HoleScore.merged(
                by_kind[kind] for by_kind in run.values() if kind in by_kind
            ).summary()
            for kind in kinds
        },
    }


def _kind_order(kind: str) -> int:
    order = (*KINDS, REPOSITORY)
    return order.index(kind) if kind in order else len(order)


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
    if result["holeConditions"]:
        rows += [
            "",
            "| hole kind | holes | "
            + " | ".join(c["label"] for c in result["holeConditions"])
            + " |",
            "|---|---|" + "---|" * len(result["holeConditions"]),
        ]
        first = result["holeConditions"][0]
        for kind in [*first["byKind"], "all"]:
            cells = [
                _kind_cell(c["all"] if kind == "all" else c["byKind"].get(kind, {}))
                for c in result["holeConditions"]
            ]
            holes = (first["all"] if kind == "all" else first["byKind"][kind])["holes"]
            rows.append(f"| {kind} | {holes} | " + " | ".join(cells) + " |")
        rows += ["", "Each condition: shown / exact line / edit similarity."]
    return "\n".join(rows) + "\n"


def _kind_cell(summary: dict[str, Any]) -> str:
    return (
        f"{_percent(summary.get('shownRate'))} / {_percent(summary.get('exactMatch'))} "
        f"/ {_cell(summary.get('editSimilarity'), 3)}"
    )


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")
