"""The engine's side of a completion: the sampling settings reach the decoder, the prompt keeps
its exact budget with a BOS, and a cancel that lands in decode (the prompt all cached) stops
it within one step and leaves the cache sound."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from polycoder_ls.config import Settings
from polycoder_ls.documents import Document, cursor_at
from polycoder_ls.engine import Engine, model_prompt
from polycoder_ls.engine.generate import DecodeParams, Generator
from polycoder_ls.engine.loading import load_model

TEXT = "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return "
GREEDY = DecodeParams(max_new_tokens=16, temperature=0.0, top_p=1.0)


def never(*_: object) -> bool:
    return False


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    return load_model(Settings(model=str(tiny_model), threads=1))


def test_a_cancel_in_decode_with_the_prompt_cached_stops_within_one_step(loaded):
    prompt = loaded.tokenize(TEXT)[0]
    generator = Generator(loaded)
    full, first = generator.generate("doc", prompt, GREEDY, never, never)
    assert first.generated_tokens >= 6, "pick a text the tiny model continues further"
    texts: list[str] = []

    def finished(text: str) -> bool:
        texts.append(text)
        return False

    text, stats = generator.generate("doc", prompt, GREEDY, finished, lambda: len(texts) >= 3)
    assert stats.reused_tokens == len(prompt) - 1  # all but the last token came from the cache
    assert stats.cancelled and text == ""
    assert stats.generated_tokens == 3
    again, after = generator.generate("doc", prompt, GREEDY, never, never)
    assert again == full and after.reused_tokens == len(prompt) - 1


def engine_text(engine: Engine, settings: Settings) -> str | None:
    cursor = cursor_at(Document("file:///t.py", "python", 1, TEXT), len(TEXT))
    suggestion = engine.complete("file:///t.py", cursor, settings).result().suggestion
    return None if suggestion is None else suggestion.text


def test_sampling_follows_temperature_and_top_p(tiny_model):
    greedy = Settings(model=str(tiny_model), max_new_tokens=12, threads=1, temperature=0.0)
    engine = Engine()
    try:
        assert engine.load(greedy).result().state == "ready"
        expected = engine_text(engine, greedy)
        assert expected
        nucleus_of_one = dataclasses.replace(greedy, temperature=1.0, top_p=1e-6)
        assert engine_text(engine, nucleus_of_one) == expected
        wide = dataclasses.replace(greedy, temperature=5.0, top_p=1.0)
        assert {engine_text(engine, wide) for _ in range(3)} != {expected}
    finally:
        engine.stop(wait=True)


def test_the_prompt_with_its_bos_keeps_the_exact_budget():
    def tokenize(text: str) -> tuple[list[int], list[int]]:
        return [ord(char) for char in text], list(range(len(text)))

    fake = SimpleNamespace(
        tokenize=tokenize, bos_id=1, eos_id=2, token_texts=None, max_positions=None, fim=None
    )
    settings = Settings(context_tokens=16, max_new_tokens=8)  # a budget of 8 prompt tokens
    for prefix in ("abcdefg", "abcdefgh", "abcdefghi", "ab\ncdefghijk"):
        ids = model_prompt(prefix, fake, settings).token_ids  # type: ignore[arg-type]
        assert ids[0] == 1 and len(ids) <= 8
        assert ids[1:] == [ord(char) for char in prefix[-(len(ids) - 1) :]]


LONG_TEXT = TEXT + "".join(f"value_{n} = read_file('data_{n}.txt')\n" for n in range(60))


def test_a_warm_start_feeds_the_prompt_ahead_and_changes_no_text(loaded):
    prompt = loaded.tokenize(LONG_TEXT)[0]
    assert len(prompt) > 2 * 256, "the prompt spans several prefill chunks"
    cold_text, cold = Generator(loaded).generate("doc", prompt, GREEDY, never, never)
    assert cold.reused_tokens == 0
    generator = Generator(loaded)
    assert generator.prefill("doc", prompt, GREEDY.max_new_tokens, never)
    text, warm = generator.generate("doc", prompt, GREEDY, never, never)
    assert text == cold_text
    assert warm.reused_tokens == len(prompt), "its logits were kept: nothing is fed again"
    again, stats = generator.generate("doc", prompt, GREEDY, never, never)
    assert again == cold_text and stats.reused_tokens == len(prompt) - 1, "only once"


def test_a_stopped_warm_start_keeps_what_it_fed(loaded):
    prompt = loaded.tokenize(LONG_TEXT)[0]
    cold_text, _ = Generator(loaded).generate("doc", prompt, GREEDY, never, never)
    counted: list[int] = []

    def counting() -> bool:
        counted.append(1)
        return False

    Generator(loaded).prefill("doc", prompt, 16, counting)
    generator = Generator(loaded)
    checks = iter(range(len(counted)))
    # Stopped half way through its cancel checks: some of the prompt went in, not all.
    assert not generator.prefill("doc", prompt, 16, lambda: next(checks) >= len(counted) // 2)
    text, warm = generator.generate("doc", prompt, GREEDY, never, never)
    assert 0 < warm.reused_tokens < len(prompt) - 1
    assert text == cold_text
