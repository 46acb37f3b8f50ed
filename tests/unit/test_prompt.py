from pathlib import Path

import pytest
from transformers import AutoTokenizer

from polycoder_ls.prompt import CLIP_LINE_STEP, build_prompt, token_budget, window_notice


@pytest.fixture(scope="module")
def tokenize(tiny_model: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def run(text: str) -> tuple[list[int], list[int]]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]

    return run


SOURCE = "".join(f"def function_{n}(value):\n    return value * {n}\n\n" for n in range(300))


def test_budget_respects_context_and_model_limit():
    assert token_budget(2048, 64, None) == 1984
    assert token_budget(2048, 64, 1024) == 960
    # At least half the window stays for the prompt; the model's positions bound the window.
    assert token_budget(100, 200, None) == 50
    assert token_budget(8192, 4000, 2048) == 1024
    assert window_notice(8192, 4000, 2048) == (
        "contextTokens 8192 is above the model's 2048; maxNewTokens 4000 would leave the prompt "
        "under half of it: using contextTokens 2048, maxNewTokens 1024"
    )
    assert window_notice(2048, 64, 2048) is None


def test_short_prompt_is_the_whole_prefix(tokenize):
    prompt = build_prompt("import os\n", tokenize, 100)
    assert not prompt.clipped
    assert prompt.token_ids == tokenize("import os\n")[0]


@pytest.mark.parametrize("budget", [50, 300, 1000])
def test_clipped_prompt_is_exact_and_starts_at_a_line(tokenize, budget):
    prefix = SOURCE + "def last(x):\n    return x."
    prompt = build_prompt(prefix, tokenize, budget)
    assert prompt.clipped
    assert len(prompt.token_ids) <= budget
    assert prefix[prompt.clipped_chars - 1] == "\n"
    assert prompt.token_ids == tokenize(prefix[prompt.clipped_chars :])[0]


def test_clip_point_is_stable_while_typing(tokenize):
    prefix = SOURCE + "def last(x):\n    return x"
    starts = {build_prompt(prefix + typed, tokenize, 500).clipped_chars for typed in ".abcdef"}
    assert len(starts) == 1
    start = starts.pop()
    assert prefix[:start].count("\n") % CLIP_LINE_STEP == 0


def test_clip_moves_in_large_steps(tokenize):
    lines = SOURCE.splitlines(keepends=True)
    cuts = {build_prompt("".join(lines[:n]), tokenize, 500).clipped_chars for n in range(300, 330)}
    assert len(cuts) <= 2


def test_a_single_huge_line_keeps_its_last_tokens(tokenize):
    prefix = "x = [" + ", ".join(str(n) for n in range(3000))
    prompt = build_prompt(prefix, tokenize, 200)
    assert len(prompt.token_ids) == 200
    assert prompt.token_ids == tokenize(prefix)[0][-200:]
