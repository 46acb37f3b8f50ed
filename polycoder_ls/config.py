"""The one typed settings tree: defaults, camelCase wire names, validation and docs.

The same object arrives as `initializationOptions`, as the `polycoder` section of
`workspace/configuration` and through `workspace/didChangeConfiguration`. Invalid values are
reported and the previous valid value is kept.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .fim import FimFormat, from_template

MULTILINE_MODES = ("auto", "always", "never")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8", "int4")
# Settings whose change needs the model to be loaded again.
RELOAD_KEYS = ("model", "fallback_model", "device", "dtype", "threads", "remote", "fim")
FIM_MODES = ("auto", "off")
URL_PATTERN = re.compile(r"^https?://([^\s/?#:\[\]]+|\[[0-9a-fA-F:.]+\])(:\d{1,5})?(/[^\s?#]*)?$")


def _doc(text: str, check: Callable[[Any], Any] | None, user_only: bool = False) -> dict[str, Any]:
    """Field metadata: the README text, the validator (None: a nested settings object), and
    whether only the user may set it (editors ignore it in a workspace's settings)."""
    return {"doc": text, "check": check, "user_only": user_only}


def _fail(message: str) -> Any:
    raise ValueError(message)


def _non_empty_str(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return _fail("must be a non-empty string")


def _optional_str(value: Any) -> str | None:
    return None if value is None else _non_empty_str(value)


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value in options:
            return str(value)
        return _fail("must be one of " + ", ".join(options))

    return check


def _device(value: Any) -> str:
    if isinstance(value, str) and DEVICE_PATTERN.match(value):
        return value
    return _fail("must be auto, cpu, cuda, cuda:N or mps")


def _int_at_least(low: int, optional: bool = False) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= low:
            return value
        return _fail(f"must be an integer >= {low}" + (" or null" if optional else ""))

    return check


def _number_in(low: float, high: float, low_open: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and (value > low if low_open else value >= low) and value <= high:
            return float(value)
        bracket = "(" if low_open else "["
        return _fail(f"must be a number in {bracket}{low}, {high}]")

    return check


def _optional_url(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and URL_PATTERN.match(value.strip()):
        return value.strip().rstrip("/")
    return _fail("must be an http:// or https:// URL such as http://gpu-box:8000/v1, or null")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return _fail("must be true or false")


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    return _fail("must be a list of non-empty strings")


def _fim(value: Any) -> str | FimFormat:
    if value in FIM_MODES:
        return str(value)
    if isinstance(value, Mapping):
        return from_template(value)
    return _fail('must be "auto", "off" or a template object {"prefix", "suffix", "middle"}')


@dataclass(frozen=True)
class ContextSettings:
    """What goes into the prompt besides the text before the cursor."""

    other_files_tokens: int = field(
        default=512,
        metadata=_doc(
            "Tokens of the window for snippets of the other open documents of the workspace "
            "most like the lines around the cursor; 0: none.",
            _int_at_least(0),
        ),
    )
    suffix_tokens: int | None = field(
        default=None,
        metadata=_doc(
            "Most tokens of the text after the cursor in a fill-in-the-middle prompt (null: a "
            "quarter of the window).",
            _int_at_least(0, optional=True),
        ),
    )


@dataclass(frozen=True)
class CacheSettings:
    """The completion cache."""

    size: int = field(default=256, metadata=_doc("Entries kept (LRU).", _int_at_least(0)))
    ttl_seconds: float = field(
        default=600,
        metadata=_doc("Seconds an entry stays valid.", _number_in(0, 86400, low_open=True)),
    )


@dataclass(frozen=True)
class RemoteSettings:
    """A shared vLLM server (OpenAI-compatible API) that generates instead of a local model."""

    url: str | None = field(
        default=None,
        metadata=_doc(
            "Base URL of the API, e.g. http://gpu-box:8000/v1; null: generate in-process.",
            _optional_url,
        ),
    )
    api_key: str | None = field(
        default=None,
        metadata=_doc(
            "Sent as `Authorization: Bearer`; null: the environment variable POLYCODER_API_KEY.",
            _optional_str,
        ),
    )
    served_model: str | None = field(
        default=None,
        metadata=_doc("The model name the server serves; null: `model`.", _optional_str),
    )
    timeout_seconds: float = field(
        default=30,
        metadata=_doc(
            "Seconds to wait for a connection or for the next bytes of an answer.",
            _number_in(0, 3600, low_open=True),
        ),
    )


@dataclass(frozen=True)
class Settings:
    """polycoder-ls configuration (camelCase keys on the wire)."""

    model: str = field(
        default="NinedayWang/PolyCoder-160M",
        metadata=_doc(
            "Hugging Face id, local directory, or alias: polycoder-160m, polycoder-0.4b, "
            "polycoder-2.7b, nano (polycoder-nano, shipped in the package).",
            _non_empty_str,
        ),
    )
    fallback_model: str | None = field(
        default="nano",
        metadata=_doc(
            "Served when `model` cannot be loaded (offline and not cached, say); the reason is "
            "shown and `polycoder/status` reports `fallbackFrom`. null: no fallback.",
            _optional_str,
        ),
    )
    device: str = field(
        default="auto",
        metadata=_doc("auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.", _device),
    )
    dtype: str = field(
        default="auto",
        metadata=_doc(
            "auto (float16 on a GPU, int8 on a CPU), float32, float16, bfloat16; int8 and int4 "
            "(CPU only: weights in groups of 32 with a float16 scale, like llama.cpp's q8_0 and "
            "q4_0; decode reads a quarter or an eighth of float32's bytes; prompts are fed in "
            "bfloat16 where the CPU has AVX512-BF16 or AMX; float32 where the CPU kernels "
            "cannot run). Measured perplexity cost: int8 +0.014 %, int4 +1.1 % (QUALITY.md).",
            _one_of(DTYPES),
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=_doc(
            "CPU threads for torch (null: half the cores, at least 1, leaving room for the "
            "editor).",
            _int_at_least(1, optional=True),
        ),
    )
    context_tokens: int = field(
        default=2048,
        metadata=_doc(
            "Prompt tokens + maxNewTokens never exceed this, nor the model's limit (the window "
            "in use is the smaller; polycoder/status shows it).",
            _int_at_least(16),
        ),
    )
    max_new_tokens: int = field(
        default=64,
        metadata=_doc(
            "Most tokens generated per suggestion (at most half the window in use: the prompt "
            "keeps the other half).",
            _int_at_least(1),
        ),
    )
    temperature: float = field(
        default=0.0,
        metadata=_doc("Sampling temperature; 0 means greedy.", _number_in(0.0, 5.0)),
    )
    top_p: float = field(
        default=0.95,
        metadata=_doc(
            "Nucleus sampling mass (used when temperature > 0).",
            _number_in(0.0, 1.0, low_open=True),
        ),
    )
    draft_tokens: int = field(
        default=2,
        metadata=_doc(
            "Speculative decoding by prompt lookup: where the last tokens occurred earlier in "
            "the prompt, up to this many of the tokens that followed are checked in the same "
            "forward pass as the new token, and kept while greedy decoding agrees (the text "
            "stays the same); with a temperature, each is kept with the probability the model "
            "gives it (speculative sampling: the text is distributed as without drafts). Only "
            "where the whole-model CPU step runs, which computes each token of a forward "
            "exactly as alone. 0: off. More than 2 costs more than it keeps (BENCHMARKS.md).",
            _int_at_least(0),
        ),
    )
    prefetch: bool = field(
        default=True,
        metadata=_doc(
            "While a suggestion is shown and the model is idle, compute the one that follows "
            "it once it is accepted, so that accepting answers at once (accepted before it is "
            "done, it goes on for the request). Any other request or edit stops it. In-process "
            "models only: a shared server's time is not spent on guesses.",
            _bool,
        ),
    )
    anticipate: bool = field(
        default=True,
        metadata=_doc(
            "When an edit arrives, start the suggestion for the cursor after it at once, before "
            "the editor's request (which editors send after a pause of their own) asks for it; "
            "the request then takes over the running generation. Any other request or edit "
            "stops it. In-process models only.",
            _bool,
        ),
    )
    warm_start: bool = field(
        default=True,
        metadata=_doc(
            "When a document is opened, or edited far from the last suggestion, feed the text "
            "before the end of the edit (the end of the document on open) to the model in the "
            "background, so that the first suggestion there needs little prompt work. A "
            "request there lets it finish first; any other request or edit stops it; what was "
            "fed is kept.",
            _bool,
        ),
    )
    multiline: str = field(
        default="auto",
        metadata=_doc(
            "auto (multi-line only on an empty line or right after a block opener), always, never.",
            _one_of(MULTILINE_MODES),
        ),
    )
    stop: tuple[str, ...] = field(default=(), metadata=_doc("Extra stop strings.", _string_list))
    cache: CacheSettings = field(
        default_factory=CacheSettings,
        metadata=_doc('Completion cache: {"size": entries, "ttlSeconds": seconds}.', None),
    )
    disabled_languages: tuple[str, ...] = field(
        default=(), metadata=_doc("Language ids that get no completions.", _string_list)
    )
    fim: str | FimFormat = field(
        default="auto",
        metadata=_doc(
            "Fill-in-the-middle: auto (the format of the model's tokenizer: StarCoder, "
            "Qwen2.5-Coder, DeepSeek-Coder or CodeLlama; none for PolyCoder), off, or a "
            'template {"prefix", "suffix", "middle", "ends": [...], "order": "psm" | "spm"} of '
            "the model's special tokens. polycoder/status shows the one in use.",
            _fim,
        ),
    )
    context: ContextSettings = field(
        default_factory=ContextSettings,
        metadata=_doc('Prompt context: {"otherFilesTokens", "suffixTokens"}.', None),
    )
    remote: RemoteSettings = field(
        default_factory=RemoteSettings,
        metadata=_doc(
            'A shared vLLM server: {"url", "apiKey", "servedModel", "timeoutSeconds"}. With '
            "`url` set, only `model`'s tokenizer is loaded here and every completion is "
            "generated there (README: Team server). VS Code reads it from user settings only: "
            "a workspace cannot send your code elsewhere.",
            None,
            user_only=True,
        ),
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON object, as a client sends it."""
        return _to_wire(self)

    def needs_reload(self, other: Settings) -> bool:
        return any(getattr(self, key) != getattr(other, key) for key in RELOAD_KEYS)


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            camel_case(f.name): _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, tuple):
        return list(value)
    return value


def _update(current: Any, raw: Mapping[str, Any], prefix: str, errors: list[str]) -> Any:
    fields_by_wire = {camel_case(f.name): f for f in dataclasses.fields(current)}
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        spec = fields_by_wire.get(key)
        if spec is None:
            errors.append(f"unknown setting '{prefix}{key}' ignored")
            continue
        check = spec.metadata["check"]
        if check is None:
            if not isinstance(value, Mapping):
                errors.append(f"'{prefix}{key}' must be an object; kept the previous value")
                continue
            changes[spec.name] = _update(getattr(current, spec.name), value, f"{key}.", errors)
            continue
        try:
            changes[spec.name] = check(value)
        except ValueError as error:
            errors.append(
                f"'{prefix}{key}' {error} (got {value!r}); kept "
                f"{_to_wire(getattr(current, spec.name))!r}"
            )
    return dataclasses.replace(current, **changes)


def apply_settings(current: Settings, raw: Any) -> tuple[Settings, list[str]]:
    """Merge a client's settings object over `current`.

    Returns the new settings and one readable message per rejected value; keys the object
    leaves out keep their current value.
    """
    if raw is None or raw == []:  # an empty Lua table is encoded as []
        return current, []
    if not isinstance(raw, Mapping):
        return current, [f"polycoder settings must be an object, got {type(raw).__name__}"]
    errors: list[str] = []
    updated: Settings = _update(current, raw, "", errors)
    if updated.max_new_tokens >= updated.context_tokens:
        errors.append(
            f"'maxNewTokens' ({updated.max_new_tokens}) must be below 'contextTokens' "
            f"({updated.context_tokens}); kept {current.max_new_tokens} and "
            f"{current.context_tokens}"
        )
        updated = dataclasses.replace(
            updated,
            max_new_tokens=current.max_new_tokens,
            context_tokens=current.context_tokens,
        )
    return updated, errors


def settings_rows() -> list[tuple[str, str, str]]:
    """(key, default as JSON, doc) for every setting: the README's configuration table."""
    rows: list[tuple[str, str, str]] = []
    for spec in dataclasses.fields(Settings):
        default = spec.default_factory() if callable(spec.default_factory) else spec.default
        rows.append((camel_case(spec.name), json.dumps(_to_wire(default)), spec.metadata["doc"]))
    return rows


def settings_table() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in settings_rows()]
    return "\n".join(lines)
