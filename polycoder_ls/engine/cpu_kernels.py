"""Decode-step kernels for CPUs: matrix-vector products and single-query attention.

A decode step on CPU is bound by how fast the weights and the KV cache stream from memory.
On a 2-core AMD EPYC torch streams a one-row matrix product at ~16-24 GB/s and single-query
attention at ~24 GB/s; the loops in cpu_kernels.c reach ~32-42 and ~37 GB/s, about what a plain
reduction reads (bench/decode_kernels.py). They are compiled with the machine's C compiler on
first use (about a second), cached under ~/.cache/polycoder-ls/kernels, and called through
ctypes. Anything they do not cover (several rows, other dtypes, masks that hide positions) goes
to torch unchanged; neox_decode.py runs a whole GPT-NeoX decode step on them.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from ..processes import process_alive

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# -ffast-math lets gcc vectorize expf through glibc's libmvec; the kernels never see inf/nan
# unless the model itself overflows.
COMPILE_FLAGS = (
    "-O3", "-mavx2", "-mfma", "-mf16c", "-ffast-math", "-fopenmp", "-shared", "-fPIC"
)  # fmt: skip
GROUP = 32
"""int8 weights come in groups of this many consecutive weights of a row, one scale each."""
ATTENTION_NAME = "polycoder_cpu"

_POINTER = ctypes.c_void_p
_INT = ctypes.c_int64


class KernelUnavailable(RuntimeError):
    """The kernels cannot run here (no AVX2, no C compiler, or the build failed)."""


def _cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "polycoder-ls" / "kernels"


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        if candidate and shutil.which(candidate.split()[0]):
            return candidate.split()[0]
    raise KernelUnavailable("no C compiler found (set CC, or install gcc)")


BUILD_PREFIX = "build-"


def _build(library: Path) -> None:
    """Compile the kernels into `library` (atomically: concurrent servers may race). The
    compiler leads a process group of its own, so that the server can end it with its
    children when it is terminated; the scratch directory names this process, so that what a
    killed server left is known as such (`remove_unfinished_builds`)."""
    library.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{BUILD_PREFIX}{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        command = [_compiler(), *COMPILE_FLAGS, "-o", str(built), str(SOURCE), "-lm"]
        with subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as compiler:
            _, errors = compiler.communicate()
        if compiler.returncode != 0:
            raise KernelUnavailable(f"compiling {SOURCE.name} failed: {errors.strip()}")
        os.replace(built, library)


def remove_unfinished_builds(also_this_process: bool = False) -> None:
    """Remove the scratch directories of builds whose server is gone (and this one's)."""
    directory = _cache_directory()
    for scratch in directory.glob(f"{BUILD_PREFIX}*-*") if directory.is_dir() else ():
        pid = scratch.name.removeprefix(BUILD_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        if (also_this_process and int(pid) == os.getpid()) or not process_alive(int(pid)):
            shutil.rmtree(scratch, ignore_errors=True)


def _cpu_has_avx2() -> bool:
    return torch.backends.cpu.get_cpu_capability() in {"AVX2", "AVX512"}


def _compiler_identity(compiler: str) -> str:
    """The compiler's file, its size and modification time: another compiler or an upgrade
    builds anew. Not its `--version`: running it would start a compiler outside `_build`'s
    process group, which a terminated server could not end."""
    path = Path(shutil.which(compiler) or compiler).resolve()
    try:
        stat = path.stat()
    except OSError:
        return str(path)
    return f"{path} {stat.st_size} {stat.st_mtime_ns}"


class NeoXShape(ctypes.Structure):
    """`struct neox_shape` of cpu_kernels.c: a GPT-NeoX model's sizes and the step's position."""

    _fields_ = [
        *((name, _INT) for name in ("layers", "hidden", "heads", "head_dim", "intermediate")),
        *((name, _INT) for name in ("rotary_dim", "vocab", "position")),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("parallel_residual", _INT),
    ]


@dataclass(frozen=True)
class CpuKernels:
    """The compiled kernels; each call runs on torch's intra-op thread count."""

    library: Any

    @classmethod
    def load(cls) -> CpuKernels:
        """Build (once per source version) and load the kernels; raise KernelUnavailable."""
        if not _cpu_has_avx2():
            raise KernelUnavailable("the CPU lacks AVX2/FMA/F16C")
        compiler = _compiler()
        key = [SOURCE.read_bytes(), " ".join(COMPILE_FLAGS), _compiler_identity(compiler)]
        digest = hashlib.sha256(repr(key).encode())
        library_path = _cache_directory() / f"cpu_kernels-{digest.hexdigest()[:16]}.so"
        try:
            remove_unfinished_builds()
            if not library_path.exists():
                _build(library_path)
            # torch is imported, so its OpenMP runtime (libgomp.so.1) is the one this binds to.
            library = ctypes.CDLL(str(library_path))
        except OSError as error:
            raise KernelUnavailable(f"cannot build or load {library_path}: {error}") from error
        library.pcls_gemv.argtypes = [_POINTER] * 5 + [_INT, _INT, ctypes.c_int]
        library.pcls_gemv.restype = None
        library.pcls_attend.argtypes = [_POINTER] * 5 + [_INT] * 4 + [ctypes.c_float, ctypes.c_int]
        library.pcls_attend.restype = None
        library.pcls_neox_workspace.argtypes = [_POINTER, _INT]
        library.pcls_neox_workspace.restype = _INT
        library.pcls_neox_step.argtypes = [_POINTER, _INT, *[_POINTER] * 12, ctypes.c_int]
        library.pcls_neox_step.restype = None
        return cls(library)

    def gemv(
        self, weight: torch.Tensor | Int8Weight, row: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """`weight @ row + bias` for a contiguous float32 (or int8) weight [out, in] and a
        float32 row [in]."""
        out = torch.empty(weight.shape[0], dtype=torch.float32)
        self.library.pcls_gemv(
            *weight_pointers(weight),
            row.data_ptr(),
            optional_pointer(bias),
            out.data_ptr(),
            weight.shape[0],
            weight.shape[1],
            torch.get_num_threads(),
        )
        return out

    def attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Softmax attention of one query per head: query [heads, dim] contiguous; keys and
        values [heads, length, dim] with contiguous rows and equal strides. Returns [heads, dim]."""
        heads, length, dim = keys.shape
        out = torch.empty(heads, dim, dtype=torch.float32)
        scores = torch.empty(heads * length, dtype=torch.float32)
        self.library.pcls_attend(
            query.data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            out.data_ptr(),
            scores.data_ptr(),
            heads,
            length,
            dim,
            keys.stride(0),
            scale,
            torch.get_num_threads(),
        )
        return out

    def neox_step(
        self,
        shape: NeoXShape,
        embeddings: torch.Tensor,
        layer_pointers: list[int | None],
        head_strides: list[int],
        rotary: tuple[torch.Tensor, torch.Tensor],
        final_norm: tuple[torch.Tensor, torch.Tensor | None],
        head: tuple[torch.Tensor | Int8Weight, torch.Tensor | None],
    ) -> torch.Tensor:
        """New tokens through a whole GPT-NeoX model (pcls_neox_step in cpu_kernels.c):
        `embeddings` [tokens, hidden]; `layer_pointers` holds each layer's weights, biases and
        cache rows in the C order; `rotary` the cos and sin [tokens, rotary_dim] of the tokens'
        positions. Returns the logits [tokens, vocab]."""
        tokens = embeddings.shape[0]
        workspace = torch.empty(self.library.pcls_neox_workspace(ctypes.byref(shape), tokens))
        logits = torch.empty(tokens, shape.vocab, dtype=torch.float32)
        self.library.pcls_neox_step(
            ctypes.byref(shape),
            tokens,
            embeddings.data_ptr(),
            (_POINTER * len(layer_pointers))(*layer_pointers),
            (_INT * len(head_strides))(*head_strides),
            rotary[0].data_ptr(),
            rotary[1].data_ptr(),
            *(optional_pointer(tensor) for tensor in final_norm),
            *weight_pointers(head[0]),
            optional_pointer(head[1]),
            workspace.data_ptr(),
            logits.data_ptr(),
            torch.get_num_threads(),
        )
        return logits


def optional_pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


@dataclass(frozen=True)
class Int8Weight:
    """A matrix [out, in] as int8 in groups of GROUP consecutive weights of a row, each group
    with a float16 scale: weight = value * scale (ggml's q8_0 layout, row by row)."""

    values: torch.Tensor
    """int8 [out, in], contiguous."""
    scales: torch.Tensor
    """float16 [out, in // GROUP], contiguous."""

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Int8Weight:
        """Round to nearest on a scale of each group's largest magnitude / 127."""
        groups = weight.detach().float().reshape(weight.shape[0], -1, GROUP)
        scales = (groups.abs().amax(dim=-1) / 127).to(torch.float16)
        wide = scales.float().unsqueeze(-1)
        values = torch.where(wide > 0, groups / wide, 0.0).round().clamp(-127, 127)
        return cls(values.to(torch.int8).reshape(weight.shape).contiguous(), scales.contiguous())

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix these values stand for."""
        groups = self.values.reshape(self.shape[0], -1, GROUP).float()
        return (groups * self.scales.float().unsqueeze(-1)).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.scales.nbytes


def weight_pointers(weight: torch.Tensor | Int8Weight) -> tuple[int, int | None]:
    """The C kernels' (weight, scales) pointers: no scales for a float32 matrix."""
    if isinstance(weight, Int8Weight):
        return weight.values.data_ptr(), weight.scales.data_ptr()
    return weight.data_ptr(), None


def _is_plain_float32(tensor: torch.Tensor) -> bool:
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu"


class KernelLinear(nn.Linear):
    """`nn.Linear` whose single-row products (decode steps) run on the CPU kernel. With int8
    weights, `weight` holds their float32 values (what every other product uses)."""

    kernels: CpuKernels
    int8: Int8Weight | None

    @classmethod
    def wrap(cls, linear: nn.Linear, kernels: CpuKernels, int8: bool) -> KernelLinear:
        swapped = cls.__new__(cls)
        swapped.__dict__.update(linear.__dict__)
        swapped.kernels = kernels
        swapped.int8 = None
        if int8 and linear.in_features % GROUP == 0:
            swapped.int8 = Int8Weight.quantize(linear.weight)
            with torch.no_grad():
                linear.weight.copy_(swapped.int8.dequantize())
        return swapped

    @property
    def decode_weight(self) -> torch.Tensor | Int8Weight:
        """The weight the single-row products read."""
        return self.weight if self.int8 is None else self.int8

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.numel() != self.in_features or not _is_plain_float32(hidden):
            return functional.linear(hidden, self.weight, self.bias)
        out = self.kernels.gemv(self.decode_weight, hidden.contiguous(), self.bias)
        return out.view(*hidden.shape[:-1], self.out_features)


def _mask_hides_nothing(mask: torch.Tensor | None) -> bool:
    if mask is None:
        return True
    return bool(mask.all()) if mask.dtype == torch.bool else bool((mask == 0).all())


def _kernel_attention(kernels: CpuKernels) -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        batch, heads, queries, dim = query.shape
        if (
            batch != 1
            or queries != 1
            or not all(map(_is_plain_float32, (query, key, value)))
            or key.stride() != value.stride()
            or key.stride(-1) != 1
            or key.stride(-2) != dim
            or key.shape[1] != heads
            or not _mask_hides_nothing(attention_mask)
        ):
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, scaling=scaling, **kwargs
            )
        scale = dim**-0.5 if scaling is None else scaling
        out = kernels.attend(query[0, :, 0].contiguous(), key[0], value[0], scale)
        return out.view(1, 1, heads, dim), None

    return attention


def use_cpu_kernels(model: nn.Module, int8: bool = False) -> CpuKernels | None:
    """Run `model`'s single-row products and single-query attention on the CPU kernels and
    return them; None (and a log line) where they cannot run, leaving the model as it was.
    `int8`: every linear layer whose input size is a multiple of GROUP gets int8 weights; its
    float32 weight becomes their values, so every path computes with the same weights."""
    try:
        kernels = CpuKernels.load()
    except KernelUnavailable as reason:
        log.warning("CPU decode kernels unavailable, using torch's: %s", reason)
        return None
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in swaps:
        setattr(parent, name, KernelLinear.wrap(child, kernels, int8))
    AttentionInterface.register(ATTENTION_NAME, _kernel_attention(kernels))
    # Without a mask function of its own, transformers would hand this attention no mask at all,
    # and SDPA's top-left causal mask is wrong for a chunk that follows cached tokens.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    try:
        model.set_attn_implementation(ATTENTION_NAME)  # type: ignore[operator]
    except (AttributeError, ValueError) as reason:
        log.warning("%s keeps its own attention: %s", type(model).__name__, reason)
    log.info("CPU decode kernels in use (%d linear layers%s)", len(swaps), ", int8" * int8)
    return kernels
