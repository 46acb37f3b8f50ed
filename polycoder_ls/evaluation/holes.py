"""Hole completion: cut real files at sampled cursor positions, ask the server over LSP for a
suggestion, and score it against the true continuation (an idea of llm-ls's testbed that needs
no build of the repository).

Four kinds of hole, each one line of truth or less:
- mid-line: after an identifier or an opener, the rest of the line removed;
- inside-line: after an identifier or an opener, a piece up to a later such point removed, the
  rest of the line kept (what fill-in-the-middle is for; a left-to-right model shows nothing);
- line-end: at the end of a line that opens a block, the next line removed;
- empty-line: a line inside a block emptied down to its indentation.
And a repository-level kind (`repository_holes`): a line emptied down to its indentation that
uses a name defined in another file of the same project and nowhere in its own file before it,
so only the other files can tell it.
The first non-blank line of the suggestion is compared with the truth.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..languages import Language

KINDS = ("mid-line", "inside-line", "line-end", "empty-line")
REPOSITORY = "repository"
_MID_LINE_CUT = re.compile(r"(?<=[A-Za-z0-9_])(?=[^A-Za-z0-9_])|(?<=[(\[{=.,])")
MIN_TRUTH_CHARS = 2
MIN_NAME_CHARS = 5
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODIFIERS = (
    r"(?:(?:export|pub(?:\([a-z]+\))?|async|static|public|private|protected|internal|final"
    r"|abstract|unsafe|extern|inline|virtual|default|sealed|override|partial|readonly)\s+)*"
)
# A definition starts its line: `def f`, `func (r *T) F`, `pub fn f`, `export class C`...
_KEYWORD_DEFINITION = re.compile(
    r"^\s*" + _MODIFIERS + r"(?:def|class|func|fn|struct|enum|trait|interface|type|function"
    r"|const|let|var|module|macro_rules!|namespace|typedef|#define)\s+(?:\([^)]*\)\s*)?\*?"
    r"([A-Za-z_][A-Za-z0-9_]*)"
)
# A function defined at the start of a line by its signature (C, C++, Java, C#):
# `int foo(`, `static void bar(`, `public String baz(`.
_SIGNATURE_DEFINITION = re.compile(r"^\s*(?:[A-Za-z_][\w:<>,\[\]]*[\s*&]+)+([A-Za-z_]\w*)\s*\(")
_NOT_NAMES = frozenset(("return", "function", "import", "struct", "class", "await", "async"))


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

    @classmethod
    def merged(cls, scores: Iterable[HoleScore]) -> HoleScore:
        total = cls()
        for score in scores:
            total.holes += score.holes
            total.shown += score.shown
            total.exact += score.exact
            total.similarity += score.similarity
            total.errors += score.errors
            for kind, count in score.by_kind.items():
                total.by_kind[kind] = total.by_kind.get(kind, 0) + count
        return total

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


def _candidates(lines: list[str], language: Language) -> dict[str, list[tuple[int, ...]]]:
    """(line, column) candidates per kind; (line, column, end column) for inside-line."""
    found: dict[str, list[tuple[int, ...]]] = {kind: [] for kind in KINDS}
    for number, line in enumerate(lines):
        content = line.strip()
        if len(content) < MIN_TRUTH_CHARS:
            continue
        indent = len(line) - len(line.lstrip())
        cuts = [match.start() for match in _MID_LINE_CUT.finditer(line, indent + 1)]
        for index, cut in enumerate(cuts):
            if len(line[cut:].strip()) >= MIN_TRUTH_CHARS:
                found["mid-line"].append((number, cut))
            ends = [end for end in cuts[index + 1 :] if len(line[cut:end].strip()) >= 2]
            if ends and line[ends[0] :].strip():
                found["inside-line"].append((number, cut, ends[0]))
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if language.opens_block.search(line.rstrip()) and len(following.strip()) >= 2:
            found["line-end"].append((number, len(line.rstrip())))
        previous = lines[number - 1] if number else ""
        if indent > 0 and previous.strip() and not language.opens_block.search(previous.rstrip()):
            found["empty-line"].append((number, indent))
    return found


def _hole(lines: list[str], kind: str, line: int, column: int, end: int | None = None) -> Hole:
    starts = [0]
    for text in lines:
        starts.append(starts[-1] + len(text) + 1)
    if kind == "line-end":
        truth = lines[line + 1].strip()
        kept = lines[: line + 1] + lines[line + 2 :]
        return Hole(kind, "\n".join(kept), starts[line] + column, truth)
    text = lines[line]
    cut = len(text) if end is None else end
    truth = text[column:cut].strip()
    kept = [*lines[:line], text[:column] + text[cut:], *lines[line + 1 :]]
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
        chosen = candidates[kind].pop(rng.randrange(len(candidates[kind])))
        holes.append(_hole(lines, kind, *chosen))
    return holes


def definitions(text: str) -> set[str]:
    """Names `text` defines (functions, types, constants...), by keyword or by signature."""
    names: set[str] = set()
    for line in text.split("\n"):
        if keyword := _KEYWORD_DEFINITION.match(line):
            names.add(keyword.group(1))
        elif (signature := _SIGNATURE_DEFINITION.match(line)) and not line.rstrip().endswith(";"):
            names.add(signature.group(1))
    return {name for name in names if len(name) >= MIN_NAME_CHARS and name not in _NOT_NAMES}


def _used_in_code(name: str, line: str) -> bool:
    """`name` called, indexed, dereferenced, assigned or reached as a member in `line`."""
    escaped = re.escape(name)
    uses = rf"\b{escaped}\s*[(\[{{<]|\b{escaped}(?:\.|::)\w|[.:>]{escaped}\b|=\s*{escaped}\b"
    return bool(re.search(uses, line))


def repository_holes(
    text: str, defined_elsewhere: set[str], count: int, seed: int, name: str
) -> list[Hole]:
    """`count` lines of `text` that use a name of `defined_elsewhere` that `text` neither defines
    nor mentions before that line, each emptied down to its indentation."""
    own = definitions(text)
    wanted = defined_elsewhere - own
    lines = text.split("\n")
    seen: set[str] = set()
    candidates: list[int] = []
    for number, line in enumerate(lines):
        names = set(_IDENTIFIER.findall(line))
        content = line.strip()
        if len(content) >= MIN_TRUTH_CHARS and not content.startswith(("#", "//", "/*", "*")):
            used = {name for name in (names & wanted) - seen if _used_in_code(name, line)}
            if used and not definitions(line):
                candidates.append(number)
        seen |= names
    rng = random.Random(seed * 1_000_003 + zlib.crc32(name.encode()) + 1)
    chosen = sorted(rng.sample(candidates, min(count, len(candidates))))
    holes = []
    for number in chosen:
        indent = len(lines[number]) - len(lines[number].lstrip())
        hole = _hole(lines, "empty-line", number, indent)
        holes.append(Hole(REPOSITORY, hole.document, hole.offset, hole.truth))
    return holes
