"""Hole completion: cut real files at sampled cursor positions, ask the server over LSP for a
suggestion, and score it against the true continuation (an idea of llm-ls's testbed that needs
no build of the repository).

Three kinds of hole, each one line of truth:
- mid-line: after an identifier or an opener, the rest of the line removed;
- line-end: at the end of a line that opens a block, the next line removed;
- empty-line: a line inside a block emptied down to its indentation.
The first non-blank line of the suggestion is compared with the truth.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass, field

from ..languages import Language

KINDS = ("mid-line", "line-end", "empty-line")
_MID_LINE_CUT = re.compile(r"(?<=[A-Za-z0-9_])(?=[^A-Za-z0-9_])|(?<=[(\[{=.,])")
MIN_TRUTH_CHARS = 2


@dataclass(frozen=True)
class Hole:
    kind: str
    document: str
    offset: int
    truth: str

    @property
    def position(self) -> tuple[int, int]:
        """(line, column in characters) of the cursor."""
        before = self.document[: self.offset]
        return before.count("\n"), self.offset - (before.rfind("\n") + 1)


@dataclass
class HoleScore:
    holes: int = 0
    shown: int = 0
    exact: int = 0
    similarity: float = 0.0
    errors: int = 0
    """Requests the server answered with an error (counted as not shown)."""
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, hole: Hole, suggestion: str | None) -> None:
        self.holes += 1
        self.by_kind[hole.kind] = self.by_kind.get(hole.kind, 0) + 1
        if suggestion is None or not suggestion.strip():
            return
        self.shown += 1
        guess = first_line(suggestion)
        self.exact += guess == hole.truth
        self.similarity += edit_similarity(guess, hole.truth)

    def summary(self) -> dict[str, object]:
        count = max(1, self.holes)
        return {
            "holes": self.holes,
            "byKind": dict(sorted(self.by_kind.items())),
            "shownRate": round(self.shown / count, 4),
            "exactMatch": round(self.exact / count, 4),
            "editSimilarity": round(self.similarity / count, 4),
            "serverErrors": self.errors,
        }


def first_line(suggestion: str) -> str:
    return next((line.strip() for line in suggestion.split("\n") if line.strip()), "")


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / length of the longer string."""
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return 1 - previous[-1] / max(len(a), len(b))


def _candidates(lines: list[str], language: Language) -> dict[str, list[tuple[int, int]]]:
    """(line, column) candidates per kind."""
    found: dict[str, list[tuple[int, int]]] = {kind: [] for kind in KINDS}
    for number, line in enumerate(lines):
        content = line.strip()
        if len(content) < MIN_TRUTH_CHARS:
            continue
        indent = len(line) - len(line.lstrip())
        for match in _MID_LINE_CUT.finditer(line, indent + 1):
            if len(line[match.start() :].strip()) >= MIN_TRUTH_CHARS:
                found["mid-line"].append((number, match.start()))
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if language.opens_block.search(line.rstrip()) and len(following.strip()) >= 2:
            found["line-end"].append((number, len(line.rstrip())))
        previous = lines[number - 1] if number else ""
        if indent > 0 and previous.strip() and not language.opens_block.search(previous.rstrip()):
            found["empty-line"].append((number, indent))
    return found


def _hole(lines: list[str], kind: str, line: int, column: int) -> Hole:
    starts = [0]
    for text in lines:
        starts.append(starts[-1] + len(text) + 1)
    if kind == "line-end":
        truth = lines[line + 1].strip()
        kept = lines[: line + 1] + lines[line + 2 :]
        return Hole(kind, "\n".join(kept), starts[line] + column, truth)
    truth = lines[line][column:].strip()
    kept = [*lines[:line], lines[line][:column], *lines[line + 1 :]]
    return Hole(kind, "\n".join(kept), starts[line] + column, truth)


def sample_holes(text: str, language: Language, count: int, seed: int, name: str) -> list[Hole]:
    """`count` holes of `text`, spread over the kinds, the same for the same seed and name."""
    rng = random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))
    lines = text.split("\n")
    candidates = _candidates(lines, language)
    holes: list[Hole] = []
    for index in range(count):
        kinds = [kind for kind in KINDS if candidates[kind]]
        if not kinds:
            break
        kind = kinds[index % len(kinds)]
        line, column = candidates[kind].pop(rng.randrange(len(candidates[kind])))
        holes.append(_hole(lines, kind, line, column))
    return holes
