"""Loading a causal LM (PolyCoder or any Hugging Face model) onto a device."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Settings
from .cpu_kernels import use_cpu_kernels
from .neox_decode import NeoXTokenStep

log = logging.getLogger(__name__)

NANO_DIRECTORY = Path(__file__).resolve().parent.parent / "models" / "nano"
MODEL_ALIASES = {
    "nano": str(NANO_DIRECTORY),
    "polycoder-nano": str(NANO_DIRECTORY),
    "polycoder-160m": "NinedayWang/PolyCoder-160M",
    "polycoder-0.4b": "NinedayWang/PolyCoder-0.4B",
    "polycoder-2.7b": "NinedayWang/PolyCoder-2.7B",
}
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
    token_step: NeoXTokenStep | None = None
    """A whole decode step in one call of the CPU kernels, where the model allows one."""

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def tokenize(self, text: str) -> tuple[list[int], list[int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [start for start, _ in encoded["offset_mapping"]]

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))


def resolve_model(name: str) -> str:
    """An alias's Hugging Face id; a local path with ~ expanded; otherwise `name`."""
    if name.lower() in MODEL_ALIASES:
        return MODEL_ALIASES[name.lower()]
    return os.path.expanduser(name) if name.startswith("~") else name


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~"))


def _from_pretrained(source: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """Tokenizer and model, from the local cache first so a cached model needs no network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for local_only in (True, False):
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                source, trust_remote_code=False, local_files_only=local_only
            )
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, trust_remote_code=False, local_files_only=local_only
            )
            return tokenizer, model
        except OSError:
            if not local_only or os.path.isdir(source):
                raise
    raise AssertionError("unreachable")


def pick_device(setting: str) -> str:
    if setting != "auto":
        if setting.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device '{setting}' requested but CUDA is not available")
        if setting == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("device 'mps' requested but MPS is not available")
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(setting: str, device: str) -> torch.dtype:
    if setting != "auto":
        return DTYPES[setting]
    return torch.float32 if device == "cpu" else torch.float16


def default_threads() -> int:
    """Half the cores: the editor and the rest of the machine keep the other half."""
    return max(1, (os.cpu_count() or 2) // 2)


def _max_positions(config: Any) -> int | None:
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(settings: Settings) -> LoadedModel:
    """Load `settings.model` with AutoTokenizer/AutoModelForCausalLM; raise ModelLoadError."""
    source = resolve_model(settings.model)
    if _looks_like_path(source) and not os.path.isdir(source):
        raise ModelLoadError(f"model directory not found: {source}")
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    if device == "cpu":
        torch.set_num_threads(settings.threads or default_threads())
    log.info("loading %s on %s as %s", source, device, dtype)
    try:
        tokenizer, model = _from_pretrained(source, dtype)
    except Exception as error:  # from_pretrained raises many types (OSError, ValueError, ...)
        raise ModelLoadError(f"cannot load model '{source}': {error}") from error
    model.to(device).eval()
    token_step = None
    if device == "cpu" and dtype == torch.float32 and (kernels := use_cpu_kernels(model)):
        token_step = NeoXTokenStep.for_model(model, kernels)
    return LoadedModel(
        name=settings.model,
        source=source,
        tokenizer=tokenizer,
        model=model,
        device=device,
        dtype=dtype,
        vocab_limit=min(len(tokenizer), model.config.vocab_size),
        max_positions=_max_positions(model.config),
        eos_id=tokenizer.eos_token_id,
        special_ids=frozenset({*tokenizer.all_special_ids, tokenizer.eos_token_id} - {None}),
        token_step=token_step,
    )
