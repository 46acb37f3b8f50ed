"""Source files to evaluate on, grouped by language."""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

from ..languages import Language, language_named, language_of_path

MAX_FILE_BYTES = 1_000_000


def language_of_file(path: Path) -> Language | None:
    """By extension; else by a folder named after a language (`Code-sampled100/C#/...`)."""
    by_extension = language_of_path(path.name)
    if by_extension is not None:
        return by_extension
    for folder in reversed(path.parent.parts):
        if (language := language_named(folder)) is not None:
            return language
    return None


def _walk(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found: list[Path] = []
    for root, folders, files in os.walk(path):
        folders[:] = sorted(folder for folder in folders if not folder.startswith("."))
        found.extend(Path(root, name) for name in sorted(files))
    return found


def read_source(path: Path) -> str | None:
    """The file's text, or None for binary, empty, undecodable or oversized files."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def files_by_language(paths: list[Path], limit: int | None) -> dict[str, list[Path]]:
    """Source files under `paths` by language name, sorted, at most `limit` per language."""
    grouped: dict[str, list[Path]] = defaultdict(list)
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"no such file or directory: {root}")
        for path in _walk(root):
            language = language_of_file(path)
            if language is None or len(grouped.get(language.name, ())) >= (limit or sys.maxsize):
                continue
            if read_source(path) is not None:
                grouped[language.name].append(path)
    return dict(sorted(grouped.items()))
