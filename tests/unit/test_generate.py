"""The decoder: KV reuse is exact, padding rows are never emitted, sampling obeys top-p."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from reference import ReferenceModel, as_quantized_server
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from polycoder_ls.config import Settings
from polycoder_ls.engine.cpu_kernels import BF16_MIN_ROWS
from polycoder_ls.engine.generate import (
    DecodeParams,
    Generator,
    PromptLookup,
    _choose,
    _verify,
)
from polycoder_ls.engine.loading import LoadedModel, load_model
from polycoder_ls.engine_state import NANO_DIRECTORY

GREEDY = DecodeParams(max_new_tokens=12, temperature=0.0, top_p=1.0)


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    return load_model(Settings(model=str(tiny_model), threads=1))


def never(*_: object) -> bool:
    return False


def test_reused_prefix_gives_the_same_text_as_a_fresh_start(loaded):
    text = Path(__file__).read_text()
    prompt = loaded.tokenize(text)[0][:300]
    warm = Generator(loaded)
    warm.generate("doc", [*prompt[:250], 5, 6, 7], GREEDY, never, never)
    reused_text, stats = warm.generate("doc", prompt, GREEDY, never, never)
    fresh_text, fresh_stats = Generator(loaded).generate("doc", prompt, GREEDY, never, never)
    assert stats.reused_tokens == 250
    assert fresh_stats.reused_tokens == 0
    assert reused_text == fresh_text


def test_identical_prompt_reuses_all_but_the_last_token(loaded):
    prompt = loaded.tokenize("def main():\n    print('hello')\n")[0]
    generator = Generator(loaded)
    first, _ = generator.generate("doc", prompt, GREEDY, never, never)
    again, stats = generator.generate("doc", prompt, GREEDY, never, never)
    assert again == first
    assert stats.reused_tokens == len(prompt) - 1


def test_documents_do_not_share_caches(loaded):
    prompt = loaded.tokenize("import os\n")[0]
    generator = Generator(loaded)
    generator.generate("a", prompt, GREEDY, never, never)
    _, stats = generator.generate("b", prompt, GREEDY, never, never)
    assert stats.reused_tokens == 0
    generator.forget("a")
    _, stats = generator.generate("a", prompt, GREEDY, never, never)
    assert stats.reused_tokens == 0


def test_untrained_embedding_rows_are_never_emitted(tiny_model: Path):
    # float32: the test edits the head's weights (quantized ones have no float32 matrix)
    loaded = load_model(Settings(model=str(tiny_model), threads=1, dtype="float32"))
    output = loaded.model.get_output_embeddings().weight
    assert output.shape[0] > loaded.vocab_limit
    saved = output.data[loaded.vocab_limit :].clone()
    output.data[loaded.vocab_limit :] = 5.0  # make every padding row win the argmax
    try:
        text, stats = Generator(loaded).generate(
            "doc", loaded.tokenize("x = ")[0], GREEDY, never, never
        )
    finally:
        output.data[loaded.vocab_limit :] = saved
    assert stats.generated_tokens == GREEDY.max_new_tokens
    assert text.strip()


def test_finished_and_cancel_stop_the_decoder(loaded):
    prompt = loaded.tokenize("import os\n")[0]
    text, stats = Generator(loaded).generate("doc", prompt, GREEDY, lambda t: len(t) > 0, never)
    assert stats.generated_tokens == 1
    text, stats = Generator(loaded).generate("doc", prompt, GREEDY, never, lambda: True)
    assert (text, stats.cancelled, stats.generated_tokens) == ("", True, 0)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    nucleus = DecodeParams(1, temperature=1.0, top_p=0.5)
    assert {_choose(logits, nucleus) for _ in range(50)} == {0}
    wide = DecodeParams(1, temperature=1.0, top_p=0.99)
    assert {_choose(logits, wide) for _ in range(300)} >= {0, 1}
    assert _choose(logits, DecodeParams(1, temperature=0.0, top_p=0.5)) == 0


def test_preallocated_cache_matches_transformers_dynamic_cache(loaded):
    from transformers import DynamicCache

    from polycoder_ls.engine.kv_cache import cache_nbytes, preallocated_cache

    ids = torch.tensor([loaded.tokenize(Path(__file__).read_text())[0][:200]])
    layers = loaded.model.config.num_hidden_layers
    grown = preallocated_cache(layers, capacity=8)  # forces several reallocations
    reference = DynamicCache(config=loaded.model.config)
    with torch.inference_mode():
        for cache in (grown, reference):
            loaded.model(input_ids=ids[:, :150], cache=cache, use_cache=True)
            cache.crop(-30)
        ours = loaded.model(input_ids=ids[:, 120:], cache=grown, use_cache=True).logits
        theirs = loaded.model(input_ids=ids[:, 120:], cache=reference, use_cache=True).logits
    assert grown.get_seq_length() == reference.get_seq_length() == 200
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert cache_nbytes(grown) > 0


def test_cancel_inside_a_forward_leaves_a_consistent_cache(loaded):
    """A cancel that lands inside a decoder layer of a prefill chunk (the check runs before
    every layer and every matrix product): the next request reuses only whole chunks and still
    gives the exact result."""
    prompt = loaded.tokenize(Path(__file__).read_text())[0][:600]
    generator = Generator(loaded)
    checks_per_chunk = 1 + sum(
        1 + sum(isinstance(module, torch.nn.Linear) for module in layer.modules())
        for layer in loaded.model.gpt_neox.layers
    )
    checks = 0

    def cancel_in_second_chunk() -> bool:
        nonlocal checks
        checks += 1
        return checks > checks_per_chunk + 3

    _, stats = generator.generate("doc", prompt, GREEDY, never, cancel_in_second_chunk)
    assert stats.cancelled
    text, stats = generator.generate("doc", prompt, GREEDY, never, never)
    fresh, _ = Generator(loaded).generate("doc", prompt, GREEDY, never, never)
    assert 0 < stats.reused_tokens < len(prompt) - 1
    assert text == fresh


def test_typing_through_a_suggestion_reuses_its_generated_tokens(loaded):
    text = "def main():\n    print('hello')\n"
    generator = Generator(loaded)
    suggestion, first = generator.generate("doc", loaded.tokenize(text)[0], GREEDY, never, never)
    assert first.generated_tokens >= 4, "the tiny model should write a few tokens"
    typed = text + suggestion[: len(suggestion) // 2]
    _, stats = generator.generate("doc", loaded.tokenize(typed)[0], GREEDY, never, never)
    assert stats.reused_tokens > first.prompt_tokens


def _brute_force_draft(tokens: list[int], limit: int) -> list[int]:
    """What followed the latest earlier occurrence of the longest of the last 3, 2, 1 tokens."""
    for n in (3, 2, 1):
        if len(tokens) < n:
            continue
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tokens[-n:]:
                return tokens[start + n : start + n + limit]
    return []


def test_prompt_lookup_drafts_what_followed_the_last_tokens_before():
    assert PromptLookup([1, 2, 3, 4, 1, 2]).draft(3) == [3, 4, 1]
    assert PromptLookup([5, 1, 9, 1, 7, 1]).draft(5) == [7, 1], "the latest occurrence"
    assert PromptLookup([8, 1, 2, 3, 9, 7, 2, 3]).draft(2) == [9, 7], "the longest n-gram"
    assert PromptLookup([1, 2, 3]).draft(4) == []
    assert PromptLookup([]).draft(4) == []
    rng = random.Random(0)
    for _ in range(300):
        tokens = [rng.randrange(6) for _ in range(rng.randrange(1, 40))]
        grown = PromptLookup(tokens[:5])
        grown.extend(tokens[5:])
        for limit in (1, 4):
            assert PromptLookup(tokens).draft(limit) == _brute_force_draft(tokens, limit)
            assert grown.draft(limit) == _brute_force_draft(tokens, limit)


CODE = """import os


def read_config(path):
    with open(path) as handle:
        return handle.read()


def write_config(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def read_settings(path):
    with open(path) as handle:
        return handle.read()


def write_settings(path, text):
"""


@pytest.fixture(scope="module")
def nano() -> LoadedModel:
    return load_model(Settings(model="nano"))


@pytest.mark.parametrize("dtype", ["float32", "int8", "int4"])
def test_speculation_keeps_the_greedy_text_in_fewer_forward_passes(dtype):
    loaded = load_model(Settings(model="nano", dtype=dtype))
    prompt = loaded.tokenize(CODE)[0]
    reference = ReferenceModel(NANO_DIRECTORY, bits=None)
    if dtype != "float32":
        as_quantized_server(reference.model, int(dtype.removeprefix("int")), BF16_MIN_ROWS)
        reference.float16_kv = True
    expected = reference.raw_generation(prompt, 40)
    plain = DecodeParams(max_new_tokens=40, temperature=0.0, top_p=1.0)
    speculative = DecodeParams(max_new_tokens=40, temperature=0.0, top_p=1.0, draft_tokens=8)
    text, stats = Generator(loaded).generate("a", prompt, speculative, never, never)
    plain_text, plain_stats = Generator(loaded).generate("a", prompt, plain, never, never)
    assert text == plain_text == expected
    assert stats.generated_tokens == plain_stats.generated_tokens == 40
    assert plain_stats.decode_forwards == 39
    assert stats.decode_forwards <= 39 - 5, "drafts from the prompt were kept"


def test_a_speculative_generation_leaves_the_cache_as_its_tokens(nano):
    # Against a generator with the same history decoded token by token: a quantized model's
    # logits depend on how earlier tokens were batched (a prompt in bfloat16, decode steps on
    # the quantized kernels), so the same history is what must give the same text.
    speculating, stepping = Generator(nano), Generator(nano)
    prompt = nano.tokenize(CODE)[0]
    speculative = DecodeParams(max_new_tokens=24, temperature=0.0, top_p=1.0, draft_tokens=8)
    text, stats = speculating.generate("doc", prompt, speculative, never, never)
    assert stats.decode_forwards < stats.generated_tokens - 1, "drafts were kept"
    assert (
        text
        == stepping.generate("doc", prompt, replace(speculative, draft_tokens=0), never, never)[0]
    )
    longer = prompt + nano.tokenize(text)[0][:-1]
    plain = DecodeParams(max_new_tokens=12, temperature=0.0, top_p=1.0)
    again, stats = speculating.generate("doc", longer, plain, never, never)
    assert stats.reused_tokens > len(prompt)
    assert again == stepping.generate("doc", longer, plain, never, never)[0]


@pytest.mark.parametrize("drafted", [0, 2, 4])
def test_a_verified_draft_comes_out_as_often_as_the_model_samples_it(drafted):
    # Nucleus 0.9 of these logits keeps tokens 0-3 (4 is outside it): each token's frequency
    # over many verifications of `drafted` must be the truncated distribution's, drafted or not.
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, -1.0])
    params = DecodeParams(1, temperature=1.0, top_p=0.9)
    probabilities = torch.softmax(logits, dim=-1)
    probabilities[4] = 0.0
    expected = probabilities / probabilities.sum()
    torch.manual_seed(0)
    draws = 20000
    counts = torch.bincount(
        torch.tensor([_verify(logits, drafted, params) for _ in range(draws)]), minlength=5
    )
    observed = counts.double() / draws
    tolerance = 4 * torch.sqrt(expected.double() * (1 - expected.double()) / draws) + 1e-9
    assert torch.all((observed - expected.double()).abs() <= tolerance), (observed, expected)


def test_a_greedy_verification_is_the_argmax_whatever_was_drafted():
    logits = torch.tensor([0.1, 3.0, 0.2])
    greedy = DecodeParams(1, temperature=0.0, top_p=1.0)
    assert [_verify(logits, drafted, greedy) for drafted in range(3)] == [1, 1, 1]


def test_sampling_speculates_and_keeps_the_cache_as_its_tokens(nano):
    prompt = nano.tokenize(CODE)[0]
    # Nearly greedy: speculative sampling must then keep the greedy text, drafts and all.
    cold = DecodeParams(24, temperature=1e-4, top_p=1.0, draft_tokens=8)
    greedy = DecodeParams(24, temperature=0.0, top_p=1.0)
    torch.manual_seed(0)
    text, stats = Generator(nano).generate("a", prompt, cold, never, never)
    assert stats.decode_forwards < stats.generated_tokens - 1, "drafts were kept"
    assert text == Generator(nano).generate("a", prompt, greedy, never, never)[0]
    # Warm: drafts are checked and some rejected; the cache holds exactly the tokens chosen.
    sampling = Generator(nano)
    warm = DecodeParams(24, temperature=0.8, top_p=0.95, draft_tokens=8)
    forwards = tokens = 0
    for seed in range(4):
        torch.manual_seed(seed)
        text, stats = sampling.generate(f"doc{seed}", prompt, warm, never, never)
        forwards, tokens = forwards + stats.decode_forwards, tokens + stats.generated_tokens - 1
        kept = sampling._kept[f"doc{seed}"]
        assert kept.cache.get_seq_length() == len(kept.token_ids)
        assert kept.token_ids[: len(prompt)] == prompt
        fed = kept.token_ids[len(prompt) :]
        # The last token is fed only when an end-of-text token, not the limit, came after it.
        assert len(fed) == stats.generated_tokens - (stats.generated_tokens == warm.max_new_tokens)
        assert text.startswith(nano.decode(fed))
    assert forwards < tokens, "drafts were kept while sampling"


def test_no_speculation_where_the_whole_model_step_does_not_compute(nano):
    """Only the step computes each token of a forward bit for bit as alone; a batched forward
    through transformers could round otherwise and change greedy text in a near-tie."""
    without_step = replace(nano, token_step=None)
    prompt = nano.tokenize(CODE)[0]
    speculative = DecodeParams(max_new_tokens=16, temperature=0.0, top_p=1.0, draft_tokens=8)
    _, stats = Generator(without_step).generate("a", prompt, speculative, never, never)
    assert stats.decode_forwards == stats.generated_tokens - 1
    _, stats = Generator(nano).generate("a", prompt, speculative, never, never)
    assert stats.decode_forwards < stats.generated_tokens - 1


def _sentencepiece_like(loaded: LoadedModel) -> LoadedModel:
    """`loaded` with a Llama-style tokenizer: words start with "▁" (a space, dropped at the
    start of a text), bytes of rare characters as tokens of their own."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens]
    )
    code = Path(__file__).read_text(encoding="utf-8")
    tokenizer.train_from_iterator([code] * 3, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, clean_up_tokenization_spaces=False
    )
    return replace(loaded, tokenizer=wrapped, vocab_limit=len(wrapped))


@pytest.mark.parametrize("which", ["tiny", "nano", "sentencepiece"])
def test_the_text_of_tokens_decoded_as_they_come_is_the_text_of_all_of_them(which, loaded, nano):
    """Every prefix of a sequence of tokens: code with characters of several bytes (split over
    tokens, so some prefixes end inside one), then tokens drawn at random."""
    model = {"tiny": loaded, "nano": nano, "sentencepiece": _sentencepiece_like(loaded)}[which]
    context = model.tokenize("def naïve(x):\n    return x  # ")[0]
    generated = model.tokenize("« déjà vu » 日本語 🙂 ok\n\t  x = 'ü'\n")[0]
    rows = min(len(model.tokenizer), model.vocab_limit)
    generated += random.Random(3).choices(range(rows), k=120)
    growing = model.growing_text_after(context)
    whole = model.text_after(context)
    for length in range(1, len(generated) + 1):
        assert growing(generated[:length]) == whole(generated[:length]), length


@pytest.mark.parametrize("which", ["tiny", "sentencepiece"])
def test_the_text_of_tokens_is_what_the_tokenizer_itself_decodes(which, loaded):
    """LoadedModel.decode may skip transformers' wrapper: the same text, special tokens left
    out, as transformers' own decode gives."""
    model = loaded if which == "tiny" else _sentencepiece_like(loaded)
    ids = model.tokenize("x = 'déjà vu 🙂'\n")[0] + sorted(model.special_ids)
    ids += random.Random(5).choices(range(min(len(model.tokenizer), model.vocab_limit)), k=60)
    assert model.decode(ids) == model.tokenizer.decode(ids, skip_special_tokens=True)
