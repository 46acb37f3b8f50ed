"""A document's indentation style, and re-indenting suggested lines to it."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

_LEADING = re.compile(r"^[ \t]*")
SAMPLE_LINES = 400


@dataclass(frozen=True)
class IndentStyle:
    """Tabs, or spaces in steps of `width`."""

    tabs: bool
    width: int = 4


def detect_indent(text: str) -> IndentStyle | None:
    """The style most indented lines of `text` use; None when no line is indented."""
    lines = text.split("\n")[-SAMPLE_LINES:]
    tab_lines = sum(1 for line in lines if line.startswith("\t"))
    space_lines = [line for line in lines if line.startswith(" ") and line.strip()]
    if tab_lines == 0 and not space_lines:
        return None
    if tab_lines > len(space_lines):
        return IndentStyle(tabs=True)
    steps: Counter[int] = Counter()
    previous = 0
    for line in lines:
        if not line.strip() or line.startswith("\t"):
            continue
        width = len(line) - len(line.lstrip(" "))
        if width > previous:
            steps[width - previous] += 1
        previous = width
    common = max(((count, -step) for step, count in steps.items() if step > 1), default=None)
    return IndentStyle(tabs=False, width=-common[1] if common else 4)


def style_of_lines(lines: list[str]) -> IndentStyle | None:
    """The style of a few suggested lines: tabs, or spaces in steps of their common divisor;
    None when mixed or unclear."""
    tabs = any(line.startswith("\t") for line in lines)
    widths = [len(line) - len(line.lstrip(" ")) for line in lines if line.startswith(" ")]
    if tabs != (not widths):
        return None
    if tabs:
        return IndentStyle(tabs=True)
    step = math.gcd(*widths)
    return IndentStyle(tabs=False, width=step) if step >= 2 else None


def reindent(line: str, source: IndentStyle, target: IndentStyle) -> str:
    """`line` with its leading whitespace moved from `source` style to `target` style."""
    leading = _LEADING.match(line)
    assert leading is not None
    whitespace = leading.group()
    if not whitespace or source == target:
        return line
    columns = sum(source.width if char == "\t" else 1 for char in whitespace)
    levels, rest = divmod(columns, source.width)
    new = "\t" * levels if target.tabs else " " * (levels * target.width)
    return new + " " * rest + line[len(whitespace) :]
