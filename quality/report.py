"""Render QUALITY.md's tables from the JSON results of `make quality`.

python quality/report.py   (reads quality/{nano,nano-512,trigram,random}.json, the newer nanos'
quality/nano-{v2,v3}.json, the hole results quality/holes-{nano-v3,nano-v2,nano,trigram,random}.json
and quality/humaneval-{nano-v3,nano-v2,nano}.json; a model whose file is missing is left out)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The PolyCoder paper (2.7B model, its unseen test set, per Pygments token).
PAPER_POLYCODER_2_7B = {"C": 2.3464, "Python": 3.1767, "JavaScript": 3.0611}
# The PolyCoder paper's HumanEval results for the 2.7B model (percent).
PAPER_HUMANEVAL_2_7B = {"pass@1": 5.59, "pass@10": 9.84, "pass@100": 17.68}
HOLE_MODELS = {
    "nano-v3": "nano v3",
    "nano-v2": "nano v2",
    "nano": "nano v1",
    "trigram": "trigram",
    "random": "random-weight",
}
HOLE_KINDS = ("mid-line", "inside-line", "line-end", "empty-line", "repository")


def _load(name: str) -> dict[str, Any]:
    return json.loads((HERE / f"{name}.json").read_text())["languages"]


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def perplexity_table() -> str:
    nano, long_off, trigram, random = (
        _load(name) for name in ("nano", "nano-512", "trigram", "random")
    )
    rows = [
        "| language | held-out files | nano tokens | nano / token | nano / Pygments token "
        "| nano, 512-token windows / token | trigram / token | trigram / Pygments token "
        "| random-weight model / Pygments token | PolyCoder 2.7B (paper) / Pygments token |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in nano.items():
        rows.append(
            f"| {name} | {entry['files']} | {entry['tokens']} | {_num(entry['perplexity'])} "
            f"| {_num(entry['perplexityPygments'])} "
            f"| {_num(long_off.get(name, {}).get('perplexity'))} "
            f"| {_num(trigram.get(name, {}).get('perplexity'))} "
            f"| {_num(trigram.get(name, {}).get('perplexityPygments'))} "
            f"| {_sci(random.get(name, {}).get('perplexityPygments'))} "
            f"| {_num(PAPER_POLYCODER_2_7B.get(name), 4)} |"
        )
    return "\n".join(rows)


def versions_table() -> str:
    """Perplexity per Pygments token of each nano version beside the trigram, per language."""
    versions = {name: _json(name) for name in ("nano", "nano-v2", "nano-v3")}
    present = {name: result["languages"] for name, result in versions.items() if result}
    trigram = _load("trigram")
    labels = [HOLE_MODELS[name] for name in present]
    rows = [
        "| language | "
        + " | ".join(f"{label} / Pygments token" for label in labels)
        + " | trigram / Pygments token | newest beats trigram |",
        "|---|" + "---|" * (len(labels) + 2),
    ]
    wins = 0
    for language, entry in trigram.items():
        values = [result.get(language, {}).get("perplexityPygments") for result in present.values()]
        newest, baseline = values[-1], entry.get("perplexityPygments")
        beats = newest is not None and baseline is not None and newest < baseline
        wins += beats
        rows.append(
            f"| {language} | "
            + " | ".join(_short(value) for value in values)
            + f" | {_short(baseline)} | {'yes' if beats else 'no'} |"
        )
    rows += ["", f"{labels[-1]} beats the trigram in {wins} of {len(trigram)} languages."]
    return "\n".join(rows)


def _short(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value >= 1e6 else f"{value:.1f}"


def holes_table() -> str:
    nano, random = _load("nano-holes"), _load("random-holes")
    rows = [
        "| language | holes | nano shown | nano exact line | nano edit similarity "
        "| random-weight shown | random-weight exact line | random-weight edit similarity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in nano.items():
        ours = entry.get("holeCompletion", {})
        theirs = random.get(name, {}).get("holeCompletion", {})
        rows.append(
            f"| {name} | {ours.get('holes', '-')} | {_percent(ours.get('shownRate'))} "
            f"| {_percent(ours.get('exactMatch'))} | {_num(ours.get('editSimilarity'), 3)} "
            f"| {_percent(theirs.get('shownRate'))} | {_percent(theirs.get('exactMatch'))} "
            f"| {_num(theirs.get('editSimilarity'), 3)} |"
        )
    return "\n".join(rows)


def _json(name: str) -> dict[str, Any] | None:
    path = HERE / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _hole_cell(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return (
        f"{_percent(summary['shownRate'])} / {_percent(summary['exactMatch'])} "
        f"/ {_num(summary['editSimilarity'], 3)}"
    )


def hole_kinds_table() -> str:
    """Hole completion by kind, for each model and condition (FIM, other-file context)."""
    rows = [
        "| model | condition | " + " | ".join(HOLE_KINDS) + " | all |",
        "|---|---|" + "---|" * (len(HOLE_KINDS) + 1),
    ]
    counts = None
    for name, label in HOLE_MODELS.items():
        result = _json(f"holes-{name}")
        if result is None:
            continue
        conditions = result.get("holeConditions") or [
            {"label": "left to right, no other files", **result}
        ]
        counts = counts or conditions[0]
        for condition in conditions:
            cells = [_hole_cell(condition["byKind"].get(kind)) for kind in HOLE_KINDS]
            rows.append(
                f"| {label} | {condition['label']} | "
                + " | ".join(cells)
                + f" | {_hole_cell(condition['all'])} |"
            )
    if counts:
        holes = ", ".join(f"{kind} {counts['byKind'][kind]['holes']}" for kind in HOLE_KINDS)
        rows += ["", f"Holes: {holes}; each cell: shown / exact line / edit similarity."]
    return "\n".join(rows)


def humaneval_table() -> str:
    rows = [
        "| model | temperature | pass@1 | pass@10 | pass@100 | infilling single-line pass "
        "| infilling block pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("nano-v3", "nano-v2", "nano"):
        result = _json(f"humaneval-{name}")
        if result is None:
            continue
        infilling = result.get("infilling") or {}
        single = infilling.get("single-line", {}).get("passRate")
        block = infilling.get("block", {}).get("passRate")
        for entry in result["temperatures"]:
            rows.append(
                f"| {HOLE_MODELS[name]} | {entry['temperature']} "
                + "".join(f"| {_percent(entry[k], 2)} " for k in ("pass@1", "pass@10", "pass@100"))
                + f"| {_percent(single, 2) if infilling else 'no FIM'} "
                f"| {_percent(block, 2) if infilling else 'no FIM'} |"
            )
    paper = " | ".join(f"{value:.2f}%" for value in PAPER_HUMANEVAL_2_7B.values())
    rows.append(f"| PolyCoder 2.7B (paper) | best of 0.2-0.8 | {paper} | - | - |")
    return "\n".join(rows)


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


if __name__ == "__main__":
    print("## Perplexity\n\n" + perplexity_table() + "\n\n## Hole completion\n\n" + holes_table())
    print("\n## nano versions against the trigram\n\n" + versions_table())
    print("\n## Hole completion by kind and condition\n\n" + hole_kinds_table())
    print("\n## HumanEval\n\n" + humaneval_table())
