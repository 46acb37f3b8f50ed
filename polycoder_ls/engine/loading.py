"""Loading a causal LM (PolyCoder or any Hugging Face model) onto a device."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from ..config import Settings
from ..engine_state import resolve_model
from ..fim import FimFormat, FimTokens, resolve
from .cpu_kernels import use_cpu_kernels
from .graph_step import GraphStep
from .healing import REPLACEMENT_CHARACTER, TokenTexts
from .hub import cached_snapshot, first_line
from .kv_cache import allocated_rows, most_caches_alive
from .token_step import TokenStep, sliding_window

log = logging.getLogger(__name__)

CONTEXT_DECODE_TOKENS = 4
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The configured model could not be loaded; the message says why."""


@dataclass
class LoadedModel:
    """A tokenizer and model ready for inference, and the facts the pipeline needs."""

    name: str
    source: str
    tokenizer: Any
    model: Any
    device: str
    dtype: torch.dtype
    vocab_limit: int
    max_positions: int | None
    eos_id: int | None
    special_ids: frozenset[int] = frozenset()
    """End-of-text, padding, separator...: text never continues past one of them."""
    token_step: TokenStep | GraphStep | None = None
    """A whole decode step in one call: of the CPU kernels where the model allows one, of a
    CUDA graph on a GPU."""
    notices: tuple[str, ...] = ()
    """Settings that could not be honoured, and what was done instead."""
    bos_id: int | None = None
    """Put before every prompt, where the tokenizer itself adds it (Llama, CodeLlama...)."""
    token_texts: TokenTexts | None = None
    """For token healing; None when the tokenizer's texts cannot be known."""
    fim: FimTokens | None = None
    """The fill-in-the-middle format in use (the `fim` setting against this tokenizer)."""

    quantized_bits: int | None = None
    """Linear layers hold weights of this many bits (8 or 4, on the CPU kernels); `dtype` is
    their values' type."""
    kv_storage: torch.dtype | None = None
    """The KV cache's type where it is not the model's: float16 for quantized weights with the
    whole-model decode step (half the bytes a step reads, as llama.cpp's caches)."""

    @property
    def dtype_name(self) -> str:
        if self.quantized_bits is not None:
            return f"int{self.quantized_bits}"
        return str(self.dtype).removeprefix("torch.")

    def tokenize(self, text: str) -> tuple[list[int], list[int]]:
        # A lone surrogate (a JSON "\ud83d" from the client) is no character the tokenizer
        # takes: U+FFFD instead, one code point for one, so offsets stay the text's own.
        text = LONE_SURROGATE.sub(REPLACEMENT_CHARACTER, text)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [start for start, _ in encoded["offset_mapping"]]

    def __post_init__(self) -> None:
        self._library_decode = _library_decode(self.tokenizer)

    def decode(self, token_ids: list[int]) -> str:
        if self._library_decode is not None:
            return self._library_decode(token_ids)
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def text_after(self, context: list[int]) -> Callable[[list[int]], str]:
        """A decoder of the text token ids add after `context` (a SentencePiece token's
        leading space is only kept when it is decoded after other tokens). The context's own
        text is decoded once, not at every step."""
        tail = context[-CONTEXT_DECODE_TOKENS:]
        before = self.decode(tail)

        def text(token_ids: list[int]) -> str:
            after = self.decode(tail + token_ids)
            return after[len(before) :] if after.startswith(before) else self.decode(token_ids)

        return text

    def decode_after(self, context: list[int], token_ids: list[int]) -> str:
        return self.text_after(context)(token_ids)

    def growing_text_after(self, context: list[int]) -> GrowingText:
        """text_after(context) for token ids that only grow, one call per new token."""
        return GrowingText(self, context)


SETTLE_TOKENS = 8


def _library_decode(tokenizer: Any) -> Callable[[list[int]], str] | None:
    """The tokenizers library's decode where transformers' decode is only that (its own
    `_decode`, no clean-up of spaces): the same text in half the time, without ~10 Python
    calls around it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is None
        or getattr(tokenizer, "clean_up_tokenization_spaces", True) is not False
        or type(tokenizer)._decode is not PreTrainedTokenizerFast._decode
    ):
        return None
    return functools.partial(backend.decode, skip_special_tokens=True)


class GrowingText:
    """The text of token ids added after a context, as LoadedModel.text_after gives it, for a
    list that only grows: each call decodes the tokens since the text was last settled (with a
    few tokens before them, for a SentencePiece token's space) instead of all of them, whose
    cost grew with the suggestion (~140 us a token after 100 tokens). Text is settled every
    SETTLE_TOKENS tokens where it ends in a whole character: the bytes of later tokens then come
    after it. A tokenizer that cleans up spaces (which may join text across tokens) decodes all
    of them every time."""

    def __init__(self, loaded: LoadedModel, context: list[int]) -> None:
        self._loaded, self._context = loaded, context
        self._growing = getattr(loaded.tokenizer, "clean_up_tokenization_spaces", True) is False
        self._before = context[-CONTEXT_DECODE_TOKENS:]
        self._before_text = self._loaded.decode(self._before)
        self._settled_tokens = 0
        self._settled_text = ""

    def __call__(self, token_ids: list[int]) -> str:
        if not self._growing:
            return self._whole(token_ids)
        pending = token_ids[self._settled_tokens :]
        decoded = self._loaded.decode(self._before + pending)
        if not decoded.startswith(self._before_text):
            return self._whole(token_ids)
        text = self._settled_text + decoded[len(self._before_text) :]
        if len(pending) >= SETTLE_TOKENS and not text.endswith(REPLACEMENT_CHARACTER):
            self._settled_tokens, self._settled_text = len(token_ids), text
            self._before = (self._before + pending)[-CONTEXT_DECODE_TOKENS:]
            self._before_text = self._loaded.decode(self._before)
        return text

    def _whole(self, token_ids: list[int]) -> str:
        """All of them decoded again (rare: a tokenizer that cleans up spaces, or text that
        changed before the settled point)."""
        return self._loaded.text_after(self._context)(token_ids)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~"))


class NotDownloaded(ModelLoadError):
    """A hub model that is not in the local cache: it must be downloaded first."""


def local_directory(source: str) -> str:
    """The directory to load `source` from: itself, or its snapshot in the hub cache."""
    if os.path.isdir(source):
        return source
    if _looks_like_path(source):
        raise ModelLoadError(f"model directory not found: {source}")
    snapshot = cached_snapshot(source)
    if snapshot is None:
        raise NotDownloaded(f"'{source}' is not downloaded yet")
    return snapshot


def _config(directory: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(directory, trust_remote_code=False, local_files_only=True)


def _from_pretrained(directory: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """Tokenizer and model from a local directory: loading never touches the network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        directory, trust_remote_code=False, local_files_only=True
    )
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, trust_remote_code=False, local_files_only=True
    )
    return tokenizer, model


def pick_device(setting: str) -> tuple[str, str | None]:
    """The device to run on, and a notice when the setting cannot be honoured here (or leaves
    GPUs unused: a model runs on one)."""
    if setting == "auto":
        if torch.cuda.is_available():
            return "cuda", other_gpus_notice(torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return "mps", None
        return "cpu", None
    missing = (setting.startswith("cuda") and not _cuda_device_exists(setting)) or (
        setting == "mps" and not torch.backends.mps.is_available()
    )
    if missing:
        return "cpu", f"device '{setting}' is not available here; running on the CPU"
    return setting, None


def other_gpus_notice(count: int) -> str | None:
    if count < 2:
        return None
    return (
        f"{count} GPUs here: the model runs on cuda:0 alone "
        "(set device to cuda:N for another; a model is never split across GPUs)"
    )


@dataclass(frozen=True)
class MemoryNeed:
    """What a model takes on a device: its weights, and the KV caches of the documents a
    generator can hold at once, each for the full context (a GPU's are allocated at load)."""

    weight_bytes: int
    kv_bytes: int
    """All the documents' caches."""
    context: int
    documents: int = 1

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv_bytes

    @classmethod
    def of(cls, config: Any, dtype: torch.dtype, context: int) -> MemoryNeed:
        """From the configuration alone (the model is built on the meta device: no memory)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        size = torch.empty((), dtype=dtype).element_size()
        weights = sum(parameter.numel() for parameter in skeleton.parameters()) * size
        one = document_kv_bytes(config, dtype, context)
        documents = most_caches_alive(one)
        return cls(weights, documents * one, context, documents)


def document_kv_bytes(config: Any, dtype: torch.dtype, context: int) -> int:
    """One document's KV cache for `context` tokens (the rows a layer allocates for them)."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    size = torch.empty((), dtype=dtype).element_size()
    return 2 * text.num_hidden_layers * allocated_rows(context) * kv_heads * head_dim * size


GPU_HEADROOM_BYTES = 512 * 1024 * 1024
"""Room left beside the weights and the cache: activations, graphs' pools, cuBLAS workspaces."""


def gpu_fit_notice(name: str, need: MemoryNeed, device: str, free: int, total: int) -> str | None:
    """None when `need` fits in the `free` bytes of `device`, else why the model runs on the CPU."""
    if need.total + GPU_HEADROOM_BYTES <= free:
        return None
    gib = 1024**3
    return (
        f"model '{name}' needs {need.total / gib:.1f} GiB on {device} (weights "
        f"{need.weight_bytes / gib:.1f} GiB, KV caches of {need.documents} x {need.context} "
        f"tokens {need.kv_bytes / gib:.1f} GiB) and {GPU_HEADROOM_BYTES / gib:.1f} GiB of "
        f"headroom; {device} has {free / gib:.1f} GiB free of {total / gib:.1f}: running on the CPU"
    )


def gpu_fit(name: str, config: Any, settings: Settings, device: str) -> str | None:
    """gpu_fit_notice for a model of `config` on CUDA `device`, from its free memory now."""
    dtype = pick_dtype(settings.dtype, device)
    need = MemoryNeed.of(config, dtype, graph_capacity(settings, config))
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return gpu_fit_notice(name, need, device, free, total)


def _gpu_too_small(source: str, directory: str, settings: Settings, device: str) -> str | None:
    try:
        config = _config(directory)
    except Exception:  # from_pretrained then says what is wrong with the directory
        return None
    return gpu_fit(source, config, settings, device)


def _cuda_device_exists(setting: str) -> bool:
    if not torch.cuda.is_available():
        return False
    index = int(setting.partition(":")[2] or 0)
    return index < torch.cuda.device_count()


QUANTIZED_BITS = {"int8": 8, "int4": 4, "auto": 8}
"""The `dtype` settings that quantize the weights on a CPU, and their bits. `auto` picks int8:
its perplexity cost on nano's held-out files is +0.014 % (QUALITY.md), and it decodes and
feeds prompts faster than float32 (BENCHMARKS.md)."""


def pick_dtype(setting: str, device: str) -> torch.dtype:
    """The torch dtype of the model's tensors (quantized weights are made from float32 ones)."""
    if setting not in QUANTIZED_BITS:
        return DTYPES[setting]
    return torch.float32 if device == "cpu" else torch.float16


def default_threads() -> int:
    """Half the cores: the editor and the rest of the machine keep the other half."""
    return max(1, (os.cpu_count() or 2) // 2)


def use_threads(settings: Settings, device: str) -> None:
    """torch's CPU threads for work started from the calling thread (OpenMP keeps the count
    per thread: the inference worker calls this itself)."""
    if device == "cpu":
        torch.set_num_threads(settings.threads or default_threads())


def _max_positions(config: Any) -> int | None:
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(settings: Settings) -> LoadedModel:
    """Load `settings.model` from local files; raise ModelLoadError (NotDownloaded when a hub
    model is not in the cache yet)."""
    source = resolve_model(settings.model)
    directory = local_directory(source)
    device, device_notice = pick_device(settings.device)
    notices: tuple[str, ...] = () if device_notice is None else (device_notice,)
    if device.startswith("cuda") and (
        too_big := gpu_fit(source, _config(directory), settings, device)
    ):
        device, notices = "cpu", (*notices, too_big)
    dtype = pick_dtype(settings.dtype, device)
    if settings.dtype in {"int8", "int4"} and device != "cpu":
        notices += (f"dtype {settings.dtype} runs on the CPU only: {device} uses float16",)
    use_threads(settings, device)
    log.info("loading %s on %s as %s", source, device, dtype)
    try:
        tokenizer, model = _from_pretrained(directory, dtype)
        model.to(device).eval()
    except torch.cuda.OutOfMemoryError as error:
        raise ModelLoadError(
            f"model '{source}' does not fit on {device}: {first_line(str(error))} "
            "(set device to cpu, or free the GPU)"
        ) from error
    except Exception as error:  # from_pretrained raises many types (OSError, ValueError, ...)
        raise ModelLoadError(f"cannot load model '{source}': {first_line(str(error))}") from error
    token_step: TokenStep | GraphStep | None = None
    bits = QUANTIZED_BITS.get(settings.dtype) if device == "cpu" else None
    kernels = use_cpu_kernels(model, bits) if device == "cpu" and dtype == torch.float32 else None
    if device.startswith("cuda"):
        capacity = graph_capacity(settings, model.config)
        slots = most_caches_alive(document_kv_bytes(model.config, dtype, capacity))
        token_step = GraphStep.for_model(model, capacity, slots)
    elif kernels is not None:
        token_step = TokenStep.for_model(model, kernels)
    elif bits is not None:
        if settings.dtype != "auto":
            notices += (
                f"dtype {settings.dtype} needs the CPU decode kernels (see the log): using float32",
            )
        bits = None
    return _loaded(
        settings.model,
        source,
        tokenizer,
        model.config,
        settings.fim,
        model=model,
        device=device,
        dtype=dtype,
        token_step=token_step,
        notices=notices,
        quantized_bits=bits,
        kv_storage=torch.float16 if bits is not None and token_step is not None else None,
    )


def graph_capacity(settings: Settings, config: Any) -> int:
    """The cache rows a GPU decode step's graphs cover: the context window in use, and no more
    than a sliding window (their mask hides only the rows after the new token)."""
    limits = [settings.context_tokens, _max_positions(config), sliding_window(config)]
    return min(limit for limit in limits if limit is not None)


def load_tokenizer(settings: Settings) -> LoadedModel:
    """Only the tokenizer and configuration of `settings.model` (a remote server holds the
    weights): what the prompt, the allowed ids and the decoded text need."""
    from transformers import AutoTokenizer

    source = resolve_model(settings.model)
    directory = local_directory(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            directory, trust_remote_code=False, local_files_only=True
        )
        config = _config(directory)
    except Exception as error:
        raise ModelLoadError(
            f"cannot load the tokenizer of '{source}': {first_line(str(error))}"
        ) from error
    return _loaded(
        settings.model, source, tokenizer, config, settings.fim, model=None, device="remote"
    )


def _loaded(
    name: str,
    source: str,
    tokenizer: Any,
    config: Any,
    fim_setting: str | FimFormat,
    model: Any,
    device: str,
    dtype: torch.dtype = torch.float32,
    token_step: TokenStep | GraphStep | None = None,
    notices: tuple[str, ...] = (),
    quantized_bits: int | None = None,
    kv_storage: torch.dtype | None = None,
) -> LoadedModel:
    vocab_limit = min(len(tokenizer), config.get_text_config().vocab_size)
    vocabulary = {token: id for token, id in tokenizer.get_vocab().items() if id < vocab_limit}
    fim, fim_notice = resolve(fim_setting, vocabulary)
    if fim_notice is not None:
        notices = (*notices, fim_notice)
    log.info("fill-in-the-middle: %s", "off" if fim is None else fim.format.describe())
    fim_ids = () if fim is None else (fim.prefix_id, fim.suffix_id, fim.middle_id, *fim.end_ids)
    return LoadedModel(
        name=name,
        source=source,
        tokenizer=tokenizer,
        model=model,
        device=device,
        dtype=dtype,
        vocab_limit=vocab_limit,
        max_positions=_max_positions(config),
        eos_id=tokenizer.eos_token_id,
        special_ids=frozenset(
            {*tokenizer.all_special_ids, tokenizer.eos_token_id, *fim_ids} - {None}
        ),
        token_step=token_step,
        notices=notices,
        bos_id=_added_bos(tokenizer),
        token_texts=_token_texts(tokenizer, vocab_limit),
        fim=fim,
        quantized_bits=quantized_bits,
        kv_storage=kv_storage,
    )


def _added_bos(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer puts it before the text it encodes."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if with_special and with_special[0] == bos else None


def _token_texts(tokenizer: Any, count: int) -> TokenTexts | None:
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    try:
        return TokenTexts.of_tokenizer(tokenizer, count, anchor) if anchor else None
    except Exception:  # a tokenizer without batch_decode of plain ids: no healing
        log.warning("token healing unavailable for this tokenizer", exc_info=True)
        return None
