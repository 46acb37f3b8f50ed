"""polycoder-nano v2's training data: one token per whitespace run, and FIM samples that hold
the whole text in the format's order."""

from __future__ import annotations

import random

from polycoder_ls.fim import STARCODER, resolve
from polycoder_ls.training.fim_samples import FimOptions, fim_token_ids, segments
from polycoder_ls.training.tokenizer import train_tokenizer

CODE = "func main() {\n\tif x {\n\t\t\treturn\n\t}\n}\n\ndef f(a):\n        return a  # x\n" * 200


def _tokenizer():
    return train_tokenizer([CODE], 400, 2048)


def test_a_run_of_spaces_or_tabs_is_one_token_and_text_round_trips():
    tokenizer = _tokenizer()
    for run in ("\t\t\t", "\n\t\t\t", "        ", "\n        "):
        assert len(tokenizer(run + "x", add_special_tokens=False)["input_ids"]) == 2, repr(run)
    ids = tokenizer(CODE, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == CODE
    fim_ids = tokenizer.convert_tokens_to_ids(list(STARCODER.tokens))
    assert fim_ids == [3, 4, 5]


def test_fim_samples_rearrange_each_segment_and_keep_all_its_text():
    tokenizer = _tokenizer()
    p, s, m = tokenizer.convert_tokens_to_ids(list(STARCODER.tokens))
    eos = tokenizer.eos_token_id

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    fim, _ = resolve(STARCODER, tokenizer.get_vocab())
    assert fim is not None
    ids = fim_token_ids(CODE, encode, eos, fim, FimOptions(rate=1.0), random.Random(1))
    samples = [sample for sample in _split(ids, eos) if sample]
    pieces = segments(CODE)
    assert len(samples) == len(pieces) > 1
    orders = set()
    for sample, segment in zip(samples, pieces, strict=True):
        assert sample[0] == p and sample.count(s) == 1 and sample.count(m) == 1
        if sample[1] == s:  # SPM: suffix, then prefix and middle
            suffix = sample[2 : sample.index(m)]
            prefix_middle = tokenizer.decode(sample[sample.index(m) + 1 :])
            assert prefix_middle + tokenizer.decode(suffix) == segment
            orders.add("spm")
        else:
            prefix = tokenizer.decode(sample[1 : sample.index(s)])
            suffix = tokenizer.decode(sample[sample.index(s) + 1 : sample.index(m)])
            middle = tokenizer.decode(sample[sample.index(m) + 1 :])
            assert prefix + middle + suffix == segment
            assert "\n" not in middle.rstrip("\n") or middle.count("\n") <= 3
            orders.add("psm")
    assert orders == {"psm", "spm"}


def _split(ids: list[int], eos: int) -> list[list[int]]:
    samples, current = [], []
    for token in ids:
        if token == eos:
            samples.append(current)
            current = []
        else:
            current.append(token)
    return [*samples, current]
