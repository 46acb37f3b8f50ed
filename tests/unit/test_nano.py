"""polycoder-nano, the model shipped in the package: it loads offline through the same
from_pretrained path as PolyCoder and completes code."""

from __future__ import annotations

from pathlib import Path

from polycoder_ls.config import Settings
from polycoder_ls.documents import Document, cursor_at
from polycoder_ls.engine import Engine
from polycoder_ls.engine.loading import load_model
from polycoder_ls.engine_state import NANO_DIRECTORY

MAX_BYTES_ON_DISK = 25 * 1024 * 1024


def test_nano_is_small_and_shaped_like_polycoder():
    size = sum(path.stat().st_size for path in NANO_DIRECTORY.iterdir() if path.is_file())
    assert size <= MAX_BYTES_ON_DISK
    loaded = load_model(Settings(model="nano", threads=1))
    config = loaded.model.config
    assert config.model_type == "gpt_neox"
    assert config.max_position_embeddings == 2048
    assert config.vocab_size > len(loaded.tokenizer)  # untrained rows, as in PolyCoder
    assert loaded.tokenizer.convert_ids_to_tokens([0, 1, 2]) == [
        "<|endoftext|>",
        "<|padding|>",
        "<|separator|>",
    ]


def test_nano_completes_python_code(tmp_path: Path):
    text = "def add(a, b):\n    return a + b\n\n\ndef multiply(a, b):\n    return a"
    engine = Engine()
    settings = Settings(model="nano", threads=1, max_new_tokens=16)
    assert engine.load(settings).result().state == "ready"
    cursor = cursor_at(Document("file:///x.py", "python", 0, text), len(text))
    suggestion = engine.complete("x", cursor, settings).result().suggestion
    engine.stop(wait=True)
    assert suggestion is not None and suggestion.text.strip()
