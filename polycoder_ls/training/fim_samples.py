"""Fill-in-the-middle training samples (the objective of Bavarian et al. 2022, as StarCoder
trained it): a file is cut into segments at line boundaries; a share of them is rearranged so
that the middle comes last, in PSM or SPM order, and ended by end-of-text.

Middles are shaped like what an editor asks for: from a point in a line to its end, to a point
later in the same line, or over a few more lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..fim import FimTokens, Order

SEGMENT_CHARS = 3000
MAX_EXTRA_MIDDLE_LINES = 3


@dataclass(frozen=True)
class FimOptions:
    rate: float = 0.5
    """The share of segments rearranged."""
    spm_rate: float = 0.5
    """The share of rearranged segments in SPM order (the rest PSM)."""


def segments(text: str, size: int = SEGMENT_CHARS) -> list[str]:
    """`text` in pieces of about `size` characters, each ending at a line break (or the end)."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def split_points(segment: str, rng: random.Random) -> tuple[int, int]:
    """Where the middle starts and ends in `segment`."""
    start = rng.randrange(0, len(segment))
    line_end = segment.find("\n", start)
    line_end = len(segment) if line_end < 0 else line_end
    shape = rng.random()
    if shape < 0.5:
        return start, line_end
    if shape < 0.75:
        return start, rng.randint(start, line_end)
    end = line_end
    for _ in range(rng.randint(1, MAX_EXTRA_MIDDLE_LINES)):
        following = segment.find("\n", end + 1)
        end = len(segment) if following < 0 else following
    return start, end


def fim_token_ids(
    text: str,
    encode: Callable[[str], list[int]],
    eos_id: int,
    fim: FimTokens,
    options: FimOptions,
    rng: random.Random,
) -> list[int]:
    """`text` as training token ids: its segments in order, each either as it is or as a FIM
    sample ended by `eos_id`."""
    ids: list[int] = []
    for segment in segments(text):
        if rng.random() >= options.rate:
            ids.extend(encode(segment))
            continue
        start, end = split_points(segment, rng)
        order: Order = "spm" if rng.random() < options.spm_rate else "psm"
        prefix, suffix = encode(segment[:start]), encode(segment[end:])
        ids += [*fim.layout([], prefix, suffix, order), *encode(segment[start:end]), eos_id]
    return ids
