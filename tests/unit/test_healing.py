"""Token healing, BOS and decoding in context: golden cases of the pure parts, and the
engine's suggestions against independent greedy references (GPT-NeoX byte-level BPE and a
SentencePiece-style Llama)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_factory import build_sentencepiece_model
from reference import ReferenceModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from polycoder_ls.config import Settings
from polycoder_ls.documents import Document, cursor_at
from polycoder_ls.engine import Engine, model_prompt
from polycoder_ls.engine.healing import TokenTexts, heal, pending_text
from polycoder_ls.postprocess import postprocess

HALF_TYPED = [
    "import json\n\n\ndef load(path):\n    with open(path) as handle:\n        return json.lo",
    "def add(a, b):\n    return ",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
    "values = [1, 2, 3]\nfor value in val",
    "if __name__ == ",
]


def test_allowed_tokens_start_with_the_pending_text_or_begin_it():
    texts = TokenTexts(["a", "ab", "abc", "b", " ab", None, "ab", "x"])
    assert sorted(texts.allowed("ab")) == [0, 1, 2, 6]
    assert sorted(texts.allowed("b")) == [3]
    assert texts.allowed("zz") == []


def test_heal_takes_back_the_last_token_only_when_something_is_left():
    assert heal([5, 6, 7], "lo").token_ids == [5, 6] and heal([5, 6, 7], "lo").removed_text == "lo"
    assert heal([7], "lo").removed_text == ""
    assert heal([7], "lo", keep_at_least=0).token_ids == []
    assert heal([5, 6], "\ufffd").removed_text == ""  # part of a character: never healed
    assert pending_text("json", "js") == "on" and pending_text("json", "json.") == ""


def engine_suggestion(model: Path, text: str, max_new_tokens: int = 12):
    settings = Settings(model=str(model), max_new_tokens=max_new_tokens, threads=1)
    engine = Engine()
    try:
        assert engine.load(settings).result().state == "ready"
        cursor = cursor_at(Document("file:///t.py", "python", 1, text), len(text))
        future = engine.complete("file:///t.py", cursor, settings)
        return future.result().suggestion
    finally:
        engine.stop(wait=True)


@pytest.mark.parametrize("text", HALF_TYPED)
def test_a_healed_suggestion_equals_the_reference(tiny_model, text):
    settings = Settings(model=str(tiny_model), max_new_tokens=12)
    expected = ReferenceModel(tiny_model).suggestion(text, len(text), settings)
    got = engine_suggestion(tiny_model, text)
    assert (got and got.text) == (expected and expected.text)


def test_the_prompt_gives_back_its_last_token(tiny_model):
    from polycoder_ls.engine.loading import load_model

    loaded = load_model(Settings(model=str(tiny_model)))
    text = "def add(a, b):\n    return "
    ids = loaded.tokenize(text)[0]
    prompt = model_prompt(text, loaded, Settings())
    assert prompt.token_ids == ids[:-1]
    assert prompt.removed_text == loaded.decode(ids[-1:]) and text.endswith(prompt.removed_text)


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sentencepiece_model(tmp_path_factory.mktemp("sentencepiece"))


def reference_continuation(model_dir: Path, prefix: str, max_new_tokens: int) -> str:
    """Greedy decoding written out by hand: BOS from the tokenizer's own encoding, the last
    token taken back and spelled again, each token's text read from the whole sequence."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer(prefix)["input_ids"]  # with BOS
    assert ids[0] == tokenizer.bos_token_id
    kept, last = ids[:-1], ids[-1]

    def text_after(context: list[int], extra: list[int]) -> str:
        return tokenizer.decode(context + extra)[len(tokenizer.decode(context)) :]

    removed = text_after(kept, [last])
    generated: list[int] = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([kept + generated])).logits[0, -1, : len(tokenizer)]
        so_far = text_after(kept, generated)
        if len(so_far) < len(removed):
            pending = removed[len(so_far) :]
            for token_id in range(len(tokenizer)):
                piece = text_after(kept + generated, [token_id])
                if (
                    token_id in tokenizer.all_special_ids
                    or not piece
                    or not (piece.startswith(pending) or pending.startswith(piece))
                ):
                    logits[token_id] = float("-inf")
        token = int(torch.argmax(logits))
        if token in tokenizer.all_special_ids:
            break
        generated.append(token)
    return text_after(kept, generated)[len(removed) :]


@pytest.mark.parametrize("text", HALF_TYPED[:3])
def test_sentencepiece_keeps_leading_spaces_and_gets_its_bos(sentencepiece_model, text):
    from polycoder_ls.engine.loading import load_model

    loaded = load_model(Settings(model=str(sentencepiece_model)))
    assert loaded.bos_id == loaded.tokenizer.bos_token_id
    assert model_prompt(text, loaded, Settings()).token_ids[0] == loaded.bos_id

    raw = reference_continuation(sentencepiece_model, text, 10)
    cursor = cursor_at(Document("file:///t.py", "python", 1, text), len(text))
    expected = postprocess(raw, cursor, "auto", ())[0]
    got = engine_suggestion(sentencepiece_model, text, max_new_tokens=10)
    assert (got and got.text) == (expected and expected.text)


def test_a_sentencepiece_token_read_after_others_keeps_its_space(sentencepiece_model):
    from polycoder_ls.engine.loading import load_model

    loaded = load_model(Settings(model=str(sentencepiece_model)))
    ids = loaded.tokenize("x = foo")[0]
    word = next(
        i for i, token in enumerate(ids) if loaded.decode_after(ids[:i], [token])[:1] == " "
    )
    assert loaded.decode(ids[word : word + 1])[:1] != " "  # alone, the space is gone
    assert (
        loaded.decode_after(ids[:word], ids[word:])
        == loaded.decode(ids)[len(loaded.decode(ids[:word])) :]
    )


TRAILING_SPACE = {
    "python": [
        "def add(a, b):\n    return ",
        "import os\n\npath = ",
        "for i in range(10):\n    if ",
    ],
    "javascript": ["const total = "],
    "go": ["func main() {\n\tx := "],
}


def test_after_a_trailing_space_nano_never_suggests_a_second_one():
    """The finding: `return ` got ` + 't'` (two spaces in the buffer). Healed, the space the
    user typed is the first half of the model's ` word` token."""
    settings = Settings(model="nano", max_new_tokens=16, threads=1)
    engine = Engine()
    texts = []
    try:
        assert engine.load(settings).result().state == "ready"
        for language, prefixes in TRAILING_SPACE.items():
            for prefix in prefixes:
                cursor = cursor_at(Document("file:///t", language, 1, prefix), len(prefix))
                future = engine.complete(prefix, cursor, settings)
                suggestion = future.result().suggestion
                texts.append(suggestion.text if suggestion else None)
    finally:
        engine.stop(wait=True)
    shown = [text for text in texts if text]
    assert len(shown) >= 4, texts
    assert not [text for text in shown if text[0].isspace()], texts
