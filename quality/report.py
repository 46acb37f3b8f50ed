"""Render QUALITY.md's tables from the JSON results of `make quality`.

python quality/report.py   (reads quality/{nano,nano-512,trigram,random}.json)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The PolyCoder paper (2.7B model, its unseen test set, per Pygments token).
PAPER_POLYCODER_2_7B = {"C": 2.3464, "Python": 3.1767, "JavaScript": 3.0611}


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


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


if __name__ == "__main__":
    print("## Perplexity\n\n" + perplexity_table() + "\n\n## Hole completion\n\n" + holes_table())
