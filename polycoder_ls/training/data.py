"""Training data: source files by language, exact dedup, a held-out split by file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation.corpus import files_by_language, read_source

HELD_OUT_EVERY = 20
"""One file in this many (by content hash) is held out, per language."""
MIN_HELD_OUT_FILES = 2


@dataclass
class SourceFile:
    path: Path
    language: str
    text: str
    digest: str


@dataclass
class Dataset:
    train: list[SourceFile] = field(default_factory=list)
    held_out: list[SourceFile] = field(default_factory=list)
    duplicates: int = 0

    def summary(self) -> dict[str, dict[str, int]]:
        """Files and bytes per language, for the train and held-out splits."""
        rows: dict[str, dict[str, int]] = {}
        for split, files in (("train", self.train), ("heldOut", self.held_out)):
            for source in files:
                row = rows.setdefault(source.language, {})
                row[f"{split}Files"] = row.get(f"{split}Files", 0) + 1
                size = len(source.text.encode())
                row[f"{split}Bytes"] = row.get(f"{split}Bytes", 0) + size
        return dict(sorted(rows.items()))


def _load(paths: list[Path]) -> tuple[dict[str, list[SourceFile]], int]:
    """Files by language, each distinct content once."""
    seen: set[str] = set()
    duplicates = 0
    by_language: dict[str, list[SourceFile]] = {}
    for language, files in files_by_language(paths, None).items():
        for path in files:
            text = read_source(path)
            if text is None:
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            by_language.setdefault(language, []).append(SourceFile(path, language, text, digest))
    return by_language, duplicates


def load_dataset(data: list[Path], held_out: list[Path] | None = None) -> Dataset:
    """Files under `data`; held out: the files under `held_out` if given, else one file in
    HELD_OUT_EVERY of each language by content hash (at least MIN_HELD_OUT_FILES where a
    language has more than that many files)."""
    by_language, duplicates = _load(data)
    dataset = Dataset(duplicates=duplicates)
    if held_out:
        given, _ = _load(held_out)
        held_digests = {source.digest for files in given.values() for source in files}
        dataset.held_out = [source for files in given.values() for source in files]
        for files in by_language.values():
            dataset.train.extend(source for source in files if source.digest not in held_digests)
        return dataset
    for files in by_language.values():
        ranked = sorted(files, key=lambda source: source.digest)
        wanted = max(len(files) // HELD_OUT_EVERY, min(MIN_HELD_OUT_FILES, len(files) - 1), 0)
        dataset.held_out.extend(ranked[:wanted])
        dataset.train.extend(ranked[wanted:])
    return dataset
