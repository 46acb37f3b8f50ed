"""Fill-in-the-middle: format detection, the prompt layout of each format, mid-line suggestions
against an independent greedy reference, and KV reuse while typing."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_factory import build_model
from reference import ReferenceModel, _until_end, fim_prompt

from polycoder_ls.config import Settings, apply_settings
from polycoder_ls.documents import Document, cursor_at
from polycoder_ls.engine import Engine, model_prompt
from polycoder_ls.engine.loading import load_model
from polycoder_ls.fim import CODELLAMA, DEEPSEEK, QWEN, STARCODER, FimFormat, detect, resolve
from polycoder_ls.postprocess import postprocess

FORMATS = {"starcoder": STARCODER, "qwen": QWEN, "deepseek": DEEPSEEK, "codellama": CODELLAMA}
TEXT = "def area(width, height):\n    result = width * height\n    return result\n\nx = 1\n"


@pytest.fixture(scope="module", params=list(FORMATS))
def fim_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    fim = FORMATS[request.param]
    return build_model(tmp_path_factory.mktemp(request.param), fim=fim), fim


def test_each_known_format_is_detected_from_its_tokens():
    for fim in FORMATS.values():
        vocabulary = {"a": 0, **{token: 1 + index for index, token in enumerate(fim.tokens)}}
        assert detect(vocabulary) == fim
    assert detect({"<|endoftext|>": 0, "<fim_prefix>": 1}) is None  # PolyCoder: none


def test_a_template_setting_is_checked_and_missing_tokens_turn_fim_off():
    settings, problems = apply_settings(Settings(), {"fim": {"prefix": "<p>", "suffix": "<s>"}})
    assert settings.fim == "auto" and "prefix, suffix and middle" in problems[0]
    template = {"prefix": "<p>", "suffix": "<s>", "middle": "<m>", "order": "spm"}
    settings, problems = apply_settings(Settings(), {"fim": template})
    assert problems == [] and isinstance(settings.fim, FimFormat) and settings.fim.order == "spm"
    tokens, notice = resolve(settings.fim, {"<p>": 5, "<s>": 6})
    assert tokens is None and notice is not None and "<m>" in notice
    tokens, notice = resolve(settings.fim, {"<p>": 5, "<s>": 6, "<m>": 7})
    assert notice is None and tokens is not None and tokens.layout([9], [1, 2], [3]) == [
        5, 6, 3, 7, 9, 1, 2,
    ]  # fmt: skip
    assert resolve("off", {"<fim_prefix>": 1, "<fim_suffix>": 2, "<fim_middle>": 3}) == (None, None)


def test_the_prompt_layout_of_each_format(fim_model):
    model_dir, fim = fim_model
    loaded = load_model(Settings(model=str(model_dir)))
    assert loaded.fim is not None and loaded.fim.format == fim
    prefix, suffix = (
        "def area(width, height):\n    result = wid",
        "th * height\n    return result\n",
    )
    prompt = model_prompt(prefix, loaded, Settings(), suffix)
    expected, healed = fim_prompt(ReferenceModel(model_dir), fim, prefix, suffix)
    assert prompt.token_ids == expected and prompt.removed_text == healed


def test_the_suffix_is_clipped_at_a_line_end_within_a_quarter_of_the_window(fim_model):
    model_dir, fim = fim_model
    loaded = load_model(Settings(model=str(model_dir)))
    settings = Settings(context_tokens=256, max_new_tokens=32)  # suffix: at most 64 tokens
    suffix = "".join(f"    value_{n} = compute({n}, other_{n})\n" for n in range(40))
    prompt = model_prompt("x = ", loaded, settings, suffix).token_ids
    suffix_ids, _ = loaded.tokenize(suffix)
    s, m = (loaded.tokenizer.convert_tokens_to_ids(t) for t in (fim.suffix, fim.middle))
    kept = prompt[prompt.index(s) + 1 : prompt.index(m)]
    assert 0 < len(kept) <= 64 and kept == suffix_ids[: len(kept)]
    assert loaded.decode(kept).endswith(")")  # whole lines only
    assert len(prompt) <= 256 - 32


def _engine_suggestion(engine: Engine, settings: Settings, text: str, offset: int):
    cursor = cursor_at(Document("file:///t.py", "python", 1, text), offset)
    return engine.complete("file:///t.py", cursor, settings).result()


def test_mid_line_suggestions_equal_the_greedy_reference(fim_model):
    model_dir, fim = fim_model
    settings = Settings(model=str(model_dir), max_new_tokens=10, threads=1)
    reference = ReferenceModel(model_dir)
    engine = Engine()
    shown = 0
    try:
        assert engine.load(settings).result().state == "ready"
        for cursor_text in ("width * ", "return res", "def area(wi"):
            offset = TEXT.index(cursor_text) + len(cursor_text)
            line_end = TEXT.index("\n", offset)
            prompt, healed = fim_prompt(reference, fim, TEXT[:offset], TEXT[offset:])
            raw = reference.raw_generation(prompt, 10, healed)[len(healed) :]
            line = _until_end(raw, ()).split("\n")[0].rstrip()
            rest = TEXT[offset:line_end].rstrip()
            overlap = max((n for n in range(len(rest) + 1) if line.endswith(rest[:n])), default=0)
            line = line[: len(line) - overlap] if overlap else line
            got = _engine_suggestion(engine, settings, TEXT, offset).suggestion
            assert (got and got.text) == (line if line.strip() else None), cursor_text
            shown += got is not None
    finally:
        engine.stop(wait=True)
    assert shown > 0  # a left-to-right model shows none of these (code after the cursor)


def test_typing_in_the_middle_of_a_line_reuses_the_kv_cache(tmp_path: Path):
    model_dir = build_model(tmp_path / "starcoder", fim=STARCODER)  # SPM: suffix first
    settings = Settings(model=str(model_dir), max_new_tokens=4, threads=1)
    engine = Engine()
    try:
        assert engine.load(settings).result().state == "ready"
        offset = TEXT.index("width * ") + len("width * ")
        first = _engine_suggestion(engine, settings, TEXT, offset).stats
        typed = TEXT[:offset] + "h" + TEXT[offset:]
        second = _engine_suggestion(engine, settings, typed, offset + 1).stats
        assert second.reused_tokens is not None
        assert second.reused_tokens >= first.prompt_tokens - 2  # only the edited token again
    finally:
        engine.stop(wait=True)


def test_without_fim_a_mid_line_cursor_gets_nothing_and_with_it_the_overlap_goes():
    cursor = cursor_at(Document("file:///t.py", "python", 1, "x = f(b)\n"), 6)
    assert postprocess("a, b", cursor, "auto", ())[0] is None
    with_fim = postprocess("a, b", cursor, "auto", (), fim=True)[0]
    assert with_fim is not None and with_fim.text == "a, " and with_fim.replaced_chars == 0
