"""Decode-step kernels for CPUs: matrix-vector products and single-query attention.

A decode step on CPU is bound by how fast the weights and the KV cache stream from memory.
On a 2-core AMD EPYC torch streams a one-row matrix product at ~16-24 GB/s and single-query
attention at ~24 GB/s; the loops in cpu_kernels.c reach ~32-42 and ~37 GB/s, about what a plain
reduction reads (bench/decode_kernels.py). They are compiled with the machine's C compiler on
first use (about a second), cached under ~/.cache/polycoder-ls/kernels, and called through
ctypes. Anything they do not cover (other dtypes, masks that hide positions) goes to torch
unchanged; token_step.py runs a whole decode step on them.

Quantized weights (int8 or 4-bit in groups of GROUP, `QuantizedWeight`) replace the float32
ones; products of fewer than BF16_MIN_ROWS rows run on them in the kernels, with activations
quantized too. Products of more rows (prefill chunks, eval windows) run through torch: in
bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX; about twice float32's speed
here), else in float32 on the unpacked values. The kernels are built for the best of BUILDS
the CPU runs, chosen at run time from its flags.
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
from collections import Counter
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
COMMON_FLAGS = ("-O3", "-ffast-math", "-fopenmp", "-shared", "-fPIC")


@dataclass(frozen=True)
class KernelBuild:
    """One build of cpu_kernels.c for CPUs that have `needs` (Linux's /proc/cpuinfo names)."""

    name: str
    flags: tuple[str, ...]
    needs: frozenset[str]


_AVX2 = KernelBuild("avx2", ("-mavx2", "-mfma", "-mf16c"), frozenset({"avx2", "fma", "f16c"}))
BUILDS = (
    KernelBuild(
        "avx512-vnni",
        (*_AVX2.flags, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"),
        _AVX2.needs | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
    ),
    _AVX2,
)
"""The builds, best first: the first whose needs the CPU has is used (chosen at run time)."""
GROUP = 32
"""Quantized weights come in groups of this many consecutive weights of a row, one scale each."""
BLOCK_GROUPS = 8
"""Groups of a row a quantized matrix interleaves (cpu_kernels.c: one lane of a vector each)."""
QUANTIZED_BLOCK_ROWS = 1024
"""Rows quantized or unpacked at a time."""
BF16_MIN_ROWS = 32
"""Products of at least this many rows of a quantized model run in bfloat16 (where the CPU has
it); fewer rows (decode steps, drafts being checked) run on the quantized weights."""
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


def _build(library: Path, build: KernelBuild) -> None:
    """Compile the kernels into `library` (atomically: concurrent servers may race). The
    compiler leads a process group of its own, so that the server can end it with its
    children when it is terminated; the scratch directory names this process, so that what a
    killed server left is known as such (`remove_unfinished_builds`)."""
    library.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{BUILD_PREFIX}{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        command = [_compiler(), *COMMON_FLAGS, *build.flags, "-o", str(built), str(SOURCE)]
        command.append("-lm")
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


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    lines = (line for line in text.splitlines() if line.startswith("flags"))
    return frozenset(next(lines, ":").split(":", 1)[1].split())


def runnable_builds() -> list[KernelBuild]:
    """The builds this CPU can run, best first. Without /proc/cpuinfo, the AVX2 build where
    torch found AVX2."""
    flags = cpu_flags()
    if not flags:
        capable = torch.backends.cpu.get_cpu_capability() in {"AVX2", "AVX512"}
        return [_AVX2] if capable else []
    return [build for build in BUILDS if build.needs <= flags]


def cpu_computes_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


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


class DecoderShape(ctypes.Structure):
    """`struct decoder_shape` of cpu_kernels.c: a decoder model's sizes, what its layers compute
    (token_step.Norm, token_step.Activation) and the step's position."""

    _fields_ = [
        *((name, _INT) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim")),
        *((name, _INT) for name in ("intermediate", "rotary_dim", "vocab", "position")),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        *((name, _INT) for name in ("parallel_residual", "bits", "kv_half", "norm")),
        *((name, _INT) for name in ("activation", "fused_qkv")),
    ]


@dataclass(frozen=True)
class CpuKernels:
    """The compiled kernels; each call runs on torch's intra-op thread count."""

    library: Any
    build: KernelBuild

    @classmethod
    def load(cls, build: KernelBuild | None = None) -> CpuKernels:
        """Build (once per source, flags and compiler) and load the kernels: `build`, or the
        best this CPU runs; raise KernelUnavailable."""
        if build is None:
            runnable = runnable_builds()
            if not runnable:
                raise KernelUnavailable("the CPU lacks AVX2/FMA/F16C")
            build = runnable[0]
        compiler = _compiler()
        flags = " ".join((*COMMON_FLAGS, *build.flags))
        key = [SOURCE.read_bytes(), flags, _compiler_identity(compiler)]
        digest = hashlib.sha256(repr(key).encode())
        library_path = _cache_directory() / f"cpu_kernels-{digest.hexdigest()[:16]}.so"
        try:
            remove_unfinished_builds()
            if not library_path.exists():
                _build(library_path, build)
            # torch is imported, so its OpenMP runtime (libgomp.so.1) is the one this binds to.
            library = ctypes.CDLL(str(library_path))
        except OSError as error:
            raise KernelUnavailable(f"cannot build or load {library_path}: {error}") from error
        library.pcls_gemm.argtypes = [_POINTER, _POINTER, ctypes.c_int, *[_POINTER] * 3]
        library.pcls_gemm.argtypes += [_INT] * 3 + [_POINTER, ctypes.c_int]
        library.pcls_gemm.restype = None
        library.pcls_gemm_workspace.argtypes = [_INT, _INT]
        library.pcls_gemm_workspace.restype = _INT
        half, scale, threads = ctypes.c_int, ctypes.c_float, ctypes.c_int
        library.pcls_attend.argtypes = [_POINTER] * 5 + [_INT] * 4 + [half, scale, threads]
        library.pcls_attend.restype = None
        library.pcls_decoder_workspace.argtypes = [_POINTER, _INT]
        library.pcls_decoder_workspace.restype = _INT
        library.pcls_decoder_step.argtypes = [_POINTER, _INT, *[_POINTER] * 13, ctypes.c_int]
        library.pcls_decoder_step.restype = None
        return cls(library, build)

    def gemm(
        self,
        weight: torch.Tensor | QuantizedWeight,
        rows: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """`rows @ weight.T + bias` for a contiguous float32 (or quantized) weight [out, in]
        and contiguous float32 rows [tokens, in] (or one row [in]): [tokens, out] (or [out]).
        A quantized weight multiplies the rows quantized to int8 in groups of GROUP."""
        out = torch.empty(*rows.shape[:-1], weight.shape[0], dtype=torch.float32)
        tokens = rows.numel() // weight.shape[1]
        quantized = isinstance(weight, QuantizedWeight)
        workspace = torch.empty(
            self.library.pcls_gemm_workspace(tokens, weight.shape[1]) if quantized else 0
        )
        self.library.pcls_gemm(
            *weight_pointers(weight),
            weight_bits(weight),
            rows.data_ptr(),
            optional_pointer(bias),
            out.data_ptr(),
            weight.shape[0],
            weight.shape[1],
            tokens,
            workspace.data_ptr(),
            torch.get_num_threads(),
        )
        return out

    def attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Softmax attention of one query per head: query [heads, dim] contiguous; keys and
        values [heads, length, dim] (float32, or both float16) with contiguous rows and equal
        strides. Returns [heads, dim]."""
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
            int(keys.dtype == torch.float16),
            scale,
            torch.get_num_threads(),
        )
        return out

    def decoder_step(
        self,
        shape: DecoderShape,
        embeddings: torch.Tensor,
        ids: ctypes.Array[Any],
        layer_pointers: ctypes.Array[Any],
        head_strides: ctypes.Array[Any],
        rotary: tuple[int, int],
        final_norm: tuple[torch.Tensor, torch.Tensor | None],
        head: tuple[torch.Tensor | QuantizedWeight, torch.Tensor | None],
    ) -> torch.Tensor:
        """New tokens through a whole decoder model (pcls_decoder_step in cpu_kernels.c): the
        token `ids` (int_array), whose input embeddings are rows of `embeddings` [rows,
        hidden]; `layer_pointers` (pointer_array) holds each layer's weights, biases and cache
        rows in the C order; `head_strides` (int_array) the elements between two heads' cache
        rows of each layer; `rotary` points to the cos and sin [tokens, rotary_dim] of the
        tokens' positions. Returns the logits [tokens, vocab]."""
        tokens = len(ids)
        workspace = torch.empty(self.library.pcls_decoder_workspace(ctypes.byref(shape), tokens))
        logits = torch.empty(tokens, shape.vocab, dtype=torch.float32)
        self.library.pcls_decoder_step(
            ctypes.byref(shape),
            tokens,
            embeddings.data_ptr(),
            ids,
            layer_pointers,
            head_strides,
            *rotary,
            *(optional_pointer(tensor) for tensor in final_norm),
            *weight_pointers(head[0]),
            optional_pointer(head[1]),
            workspace.data_ptr(),
            logits.data_ptr(),
            torch.get_num_threads(),
        )
        return logits


def pointer_array(pointers: list[int | None]) -> ctypes.Array[Any]:
    """`pointers` as the C array of pointers the kernels take (None: NULL)."""
    return (_POINTER * len(pointers))(*pointers)


def int_array(values: list[int]) -> ctypes.Array[Any]:
    """`values` as the C array of int64_t the kernels take."""
    return (_INT * len(values))(*values)


def optional_pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


@dataclass(frozen=True)
class QuantizedWeight:
    """A matrix [out, in] quantized in groups of GROUP consecutive weights of a row, each group
    with a float16 scale: weight = value * scale, row by row. int8 (`bits` 8, ggml's q8_0 rule):
    values in -127..127, scale = the group's largest magnitude / 127. 4-bit (`bits` 4, q4_0's
    rule): values in -8..7, scale = the group's weight of largest magnitude / -8. Stored
    unsigned (int8 values + 128 in a byte, 4-bit values + 8 in a nibble) and interleaved in
    blocks of BLOCK_GROUPS groups as the kernels read them (`_interleave`)."""

    stored: torch.Tensor
    """uint8 [out, in] (int8) or [out, in // 2] (4-bit), contiguous."""
    scales: torch.Tensor
    """float16 [out, in // GROUP], contiguous."""
    bits: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.scales.shape[0], self.scales.shape[1] * GROUP))

    @classmethod
    def quantize(cls, weight: torch.Tensor, bits: int) -> QuantizedWeight:
        """Round each weight to the nearest multiple of its group's scale (a block of rows at a
        time: the temporaries stay small beside the matrix)."""
        parts = [
            cls._quantize_rows(weight[start : start + QUANTIZED_BLOCK_ROWS], bits)
            for start in range(0, weight.shape[0], QUANTIZED_BLOCK_ROWS)
        ]
        stored = torch.cat([part.stored for part in parts])
        return cls(stored, torch.cat([part.scales for part in parts]), bits)

    @classmethod
    def _quantize_rows(cls, weight: torch.Tensor, bits: int) -> QuantizedWeight:
        groups = weight.detach().float().reshape(weight.shape[0], -1, GROUP)
        if bits == 8:
            scales, low, high = groups.abs().amax(dim=-1) / 127, -127, 127
        else:
            largest = groups.abs().argmax(dim=-1, keepdim=True)
            scales, low, high = groups.gather(-1, largest).squeeze(-1) / -8, -8, 7
        scales = scales.to(torch.float16)
        wide = scales.float().unsqueeze(-1)
        values = torch.where(wide != 0, groups / wide, 0.0).round().clamp(low, high)
        stored = _interleave((values + _offset(bits)).to(torch.uint8), bits)
        return cls(stored.contiguous(), scales.contiguous(), bits)

    def values(self) -> torch.Tensor:
        """The integer values, [out, in // GROUP, GROUP]."""
        stored = _deinterleave(self.stored, self.scales.shape[1], self.bits)
        return (stored.to(torch.int16) - _offset(self.bits)).to(torch.int8)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The matrix these values stand for, computed in float32 and stored as `dtype` (a
        block of rows at a time)."""
        out = torch.empty(self.shape, dtype=dtype)
        for start in range(0, self.shape[0], QUANTIZED_BLOCK_ROWS):
            rows = slice(start, start + QUANTIZED_BLOCK_ROWS)
            part = QuantizedWeight(self.stored[rows], self.scales[rows], self.bits)
            wide = part.scales.float().unsqueeze(-1)
            out[rows] = (part.values().float() * wide).reshape(part.shape)
        return out

    @property
    def nbytes(self) -> int:
        return self.stored.nbytes + self.scales.nbytes


def _offset(bits: int) -> int:
    """What a stored value exceeds its value by."""
    return 128 if bits == 8 else 8


def _interleave(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """Stored values [rows, groups, GROUP] (uint8) in the kernels' order, [rows, bytes]: each
    block of BLOCK_GROUPS groups (a row's last one may have fewer, `lanes`) as vectors of 4
    consecutive values of each group: byte (k * lanes + lane) * 4 + j holds value 4 k + j of
    group `lane`; 4-bit values pack vectors 2 c (low nibbles) and 2 c + 1 (high) into chunk c."""
    rows, groups = stored.shape[:2]
    full = groups // BLOCK_GROUPS * BLOCK_GROUPS
    parts = [_interleave_blocks(stored[:, :full].reshape(rows, -1, BLOCK_GROUPS, GROUP), bits)]
    if full < groups:
        parts.append(_interleave_blocks(stored[:, full:].unsqueeze(1), bits))
    return torch.cat(parts, dim=1)


def _interleave_blocks(blocks: torch.Tensor, bits: int) -> torch.Tensor:
    rows, count, lanes = blocks.shape[:3]
    if bits == 8:  # [rows, count, lane, k, j] -> [rows, count, k, lane, j]
        return blocks.reshape(rows, count, lanes, 8, 4).permute(0, 1, 3, 2, 4).reshape(rows, -1)
    # value 8 c + 4 n + j: [rows, count, lane, c, n, j] -> [rows, count, c, lane, j, n]
    split = blocks.reshape(rows, count, lanes, 4, 2, 4).permute(0, 1, 3, 2, 5, 4)
    return (split[..., 0] | (split[..., 1] << 4)).reshape(rows, -1)


def _deinterleave(stored: torch.Tensor, groups: int, bits: int) -> torch.Tensor:
    """The inverse of _interleave: [rows, groups, GROUP]."""
    full = groups // BLOCK_GROUPS * BLOCK_GROUPS
    split_at = full * GROUP * bits // 8
    parts = [_deinterleave_blocks(stored[:, :split_at], full // BLOCK_GROUPS, BLOCK_GROUPS, bits)]
    if full < groups:
        parts.append(_deinterleave_blocks(stored[:, split_at:], 1, groups - full, bits))
    return torch.cat(parts, dim=1)


def _deinterleave_blocks(stored: torch.Tensor, count: int, lanes: int, bits: int) -> torch.Tensor:
    rows = stored.shape[0]
    if bits == 8:  # [rows, count, k, lane, j] -> [rows, count, lane, k, j]
        blocks = stored.reshape(rows, count, 8, lanes, 4).permute(0, 1, 3, 2, 4)
    else:  # [rows, count, c, lane, j, n] -> [rows, count, lane, c, n, j]
        packed = stored.reshape(rows, count, 4, lanes, 4)
        blocks = torch.stack((packed & 0x0F, packed >> 4), dim=-1).permute(0, 1, 3, 2, 5, 4)
    return blocks.reshape(rows, count * lanes, GROUP)


def weight_pointers(weight: torch.Tensor | QuantizedWeight) -> tuple[int, int | None]:
    """The C kernels' (weight, scales) pointers: no scales for a float32 matrix."""
    if isinstance(weight, QuantizedWeight):
        return weight.stored.data_ptr(), weight.scales.data_ptr()
    return weight.data_ptr(), None


def weight_bits(weight: torch.Tensor | QuantizedWeight) -> int:
    """The C kernels' `bits`: 0 for float32."""
    return weight.bits if isinstance(weight, QuantizedWeight) else 0


def _is_plain_float32(tensor: torch.Tensor) -> bool:
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu"


class KernelLinear(nn.Linear):
    """`nn.Linear` on the CPU kernels. Float32: single rows (decode steps) run on the kernel,
    more rows through torch. Quantized (`quantized`): fewer than BF16_MIN_ROWS rows run on the
    quantized kernel, more through torch: in bfloat16 (`prefill_weight`, the values rounded to
    it) where the CPU computes it natively, else in float32 on the values, unpacked for the
    call. `weight` is then empty, unless another module shares it (tied embeddings)."""

    kernels: CpuKernels
    quantized: QuantizedWeight | None
    prefill_weight: torch.Tensor | None

    @classmethod
    def wrap(
        cls,
        linear: nn.Linear,
        kernels: CpuKernels,
        bits: int | None,
        bf16_prefill: bool,
        weight_shared: bool = False,
    ) -> KernelLinear:
        swapped = cls.__new__(cls)
        swapped.__dict__.update(linear.__dict__)
        swapped.kernels = kernels
        swapped.quantized = swapped.prefill_weight = None
        if bits is not None and linear.in_features % GROUP == 0:
            swapped.quantized = QuantizedWeight.quantize(linear.weight, bits)
            if bf16_prefill:
                swapped.prefill_weight = swapped.quantized.dequantize(torch.bfloat16)
            with torch.no_grad():
                if weight_shared:
                    linear.weight.copy_(swapped.quantized.dequantize())
                else:
                    swapped.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        return swapped

    @property
    def decode_weight(self) -> torch.Tensor | QuantizedWeight:
        """The weight the kernels read."""
        return self.weight if self.quantized is None else self.quantized

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.numel() // self.in_features
        plain = _is_plain_float32(hidden)
        if plain and (rows == 1 or (self.quantized is not None and 1 < rows < BF16_MIN_ROWS)):
            out = self.kernels.gemm(self.decode_weight, hidden.contiguous(), self.bias)
            return out.view(*hidden.shape[:-1], self.out_features)
        if self.quantized is None:
            return functional.linear(hidden, self.weight, self.bias)
        if self.prefill_weight is not None and plain:
            out = functional.linear(hidden.to(torch.bfloat16), self.prefill_weight)
            # one pass to float32, the bias added in it (as .float() + bias, bit for bit)
            return out.float() if self.bias is None else torch.add(self.bias, out)
        return functional.linear(hidden, self.quantized.dequantize().to(hidden), self.bias)


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


def _own_the_rest(model: nn.Module) -> None:
    """Copy the parameters left in float32 (embeddings, norms, biases) out of the checkpoint's
    memory map, which they would otherwise keep resident whole: every page of it was read to
    quantize the matrices."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()


def _return_freed_memory() -> None:
    """Give the heap the float32 weights and the quantization's temporaries held back to the
    system (glibc keeps freed memory of mid-sized blocks; without this a quantized model's
    resident memory stays above float32's)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def use_cpu_kernels(
    model: nn.Module, bits: int | None = None, build: KernelBuild | None = None
) -> CpuKernels | None:
    """Run `model`'s single-row products and single-query attention on the CPU kernels and
    return them; None (and a log line) where they cannot run, leaving the model as it was.
    `bits` (8 or 4): every linear layer whose input size is a multiple of GROUP gets quantized
    weights (KernelLinear), which replace its float32 weight (or become its values, where
    another module shares it). `build`: the kernels' build (default: the best for this CPU)."""
    try:
        kernels = CpuKernels.load(build)
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
    holders = Counter(
        id(parameter) for module in model.modules() for parameter in module._parameters.values()
    )
    bf16_prefill = bits is not None and cpu_computes_bf16()
    for parent, name, child in swaps:
        shared = holders[id(child.weight)] > 1
        setattr(parent, name, KernelLinear.wrap(child, kernels, bits, bf16_prefill, shared))
    if bits is not None:
        _return_freed_memory()
        _own_the_rest(model)
        _return_freed_memory()
    AttentionInterface.register(ATTENTION_NAME, _kernel_attention(kernels))
    # Without a mask function of its own, transformers would hand this attention no mask at all,
    # and SDPA's top-left causal mask is wrong for a chunk that follows cached tokens.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    try:
        model.set_attn_implementation(ATTENTION_NAME)  # type: ignore[operator]
    except (AttributeError, ValueError) as reason:
        log.warning("%s keeps its own attention: %s", type(model).__name__, reason)
    log.info(
        "CPU decode kernels (%s build) in use (%d linear layers%s%s)",
        kernels.build.name,
        len(swaps),
        f", {bits}-bit weights" if bits else "",
        ", bfloat16 prefill" if bf16_prefill else "",
    )
    return kernels
