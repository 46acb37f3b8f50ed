import re
from pathlib import Path

from polycoder_ls.config import Settings, apply_settings, settings_table

DESIGN_DEFAULTS = {
    "model": "NinedayWang/PolyCoder-160M",
    "fallbackModel": "nano",  # issue 6
    "device": "auto",
    "dtype": "auto",
    "threads": None,
    "contextTokens": 2048,
    "maxNewTokens": 64,
    "temperature": 0.0,
    "topP": 0.95,
    "draftTokens": 2,  # issue 16
    "prefetch": True,  # issue 16
    "anticipate": True,  # issue 16
    "warmStart": True,  # issue 16
    "multiline": "auto",
    "stop": [],
    "cache": {"size": 256, "ttlSeconds": 600},
    "disabledLanguages": [],
    "remote": {"url": None, "apiKey": None, "servedModel": None, "timeoutSeconds": 30},
    "fim": "auto",  # issue 15
    "context": {"otherFilesTokens": 512, "suffixTokens": None},
}


def test_defaults_are_the_documented_contract():
    assert Settings().to_wire() == DESIGN_DEFAULTS


def test_valid_values_apply_and_missing_keys_keep_theirs():
    settings, problems = apply_settings(
        Settings(), {"maxNewTokens": 32, "cache": {"size": 10}, "stop": ["\n\n"]}
    )
    assert problems == []
    assert settings.max_new_tokens == 32
    assert settings.cache.size == 10
    assert settings.cache.ttl_seconds == 600
    assert settings.stop == ("\n\n",)


def test_invalid_values_keep_the_previous_value_with_a_message():
    previous = Settings(temperature=0.2)
    settings, problems = apply_settings(
        previous,
        {"temperature": -1, "device": "gpu", "multiline": "sometimes", "threads": 0, "x": 1},
    )
    assert settings == previous
    assert len(problems) == 5
    assert any("'temperature'" in problem and "kept 0.2" in problem for problem in problems)
    assert any("unknown setting 'x'" in problem for problem in problems)


def test_new_tokens_must_leave_room_for_a_prompt():
    settings, problems = apply_settings(Settings(), {"contextTokens": 64, "maxNewTokens": 64})
    assert (settings.context_tokens, settings.max_new_tokens) == (2048, 64)
    assert problems


def test_a_non_object_is_rejected():
    settings, problems = apply_settings(Settings(), ["model"])
    assert settings == Settings()
    assert problems


def test_readme_table_is_generated_from_the_settings():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert settings_table() in readme
    assert re.search(r"\| `contextTokens` \| `2048` \|", readme)
