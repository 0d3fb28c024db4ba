"""KV cache precisions: how one cached position of one KV head is stored, and the numpy reference
of writing it (quantize) and reading it back (dequantize). No I/O here.

Three settings (``--kv-cache``), one row of ``head_dim`` values each:

======  ===================================================  =====================  ===========
name    a row of ``D`` values is                             bytes per row          exact
======  ===================================================  =====================  ===========
f32     float32 ``[D]``                                      ``4 D``                yes
f16     float16 ``[D]`` (IEEE half, values beyond +-65504    ``2 D``                no
        saturate to +-65504)
q8_0    GGUF Q8_0 blocks of 32 along ``D``: per block an     ``34 D / 32``          no
        f16 scale ``d`` then int8 ``q[32]``; ``x = d * q``
======  ===================================================  =====================  ===========

Q8_0 quantizes as ggml's reference (``quantize_row_q8_0_ref``) and llama.cpp's ``q8_0`` KV cache
do: per block ``amax = max|x|``, ``d = amax / 127`` (fp32), ``id = 1/d`` (0 when ``d`` is 0),
``q = roundf(x * id)`` (halves away from zero), and ``d`` is stored as float16. ``q8_0`` needs
``head_dim`` to be a multiple of 32.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgert_core.errors import ModelError, UnknownNameError

F32 = NDArray[np.float32]
F16 = NDArray[np.float16]
U8 = NDArray[np.uint8]

#: The settings, the exact one first (the default).
KV_CACHE_MODES: tuple[str, ...] = ("f32", "f16", "q8_0")
DEFAULT_KV_CACHE = "f32"

QK8_0 = 32
Q8_0_BLOCK_BYTES = 34  # f16 d + int8 q[32]
F16_MAX = np.float32(65504.0)

_STORE_DTYPES: dict[str, type[np.generic]] = {"f32": np.float32, "f16": np.float16, "q8_0": np.uint8}


def check_mode(mode: str) -> str:
    """``mode`` if it is a KV cache setting, else :class:`UnknownNameError` listing the settings."""
    if mode not in KV_CACHE_MODES:
        raise UnknownNameError(
            f"Unknown KV cache precision {mode!r}; choose one of {', '.join(KV_CACHE_MODES)} "
            f"(--kv-cache, default {DEFAULT_KV_CACHE})."
        )
    return mode


def check_kv_cache(mode: str, head_dim: int) -> str:
    """``mode`` if a model with heads of ``head_dim`` values can cache in it; one clear error
    otherwise (an unknown setting, or ``q8_0`` with ``head_dim`` not a multiple of 32)."""
    check_mode(mode)
    if mode == "q8_0" and head_dim % QK8_0:
        fits = ", ".join(m for m in KV_CACHE_MODES if m != "q8_0")
        raise ModelError(
            f"--kv-cache q8_0 stores blocks of {QK8_0} values along a head, but this model's "
            f"head_dim is {head_dim}, not a multiple of {QK8_0}; use --kv-cache {fits}."
        )
    return mode


def row_elements(mode: str, head_dim: int) -> int:
    """Elements of the stored dtype (:func:`store_dtype`) per cached row of ``head_dim`` values."""
    check_kv_cache(mode, head_dim)
    if mode == "q8_0":
        return head_dim // QK8_0 * Q8_0_BLOCK_BYTES
    return head_dim


def store_dtype(mode: str) -> np.dtype[np.generic]:
    """The numpy dtype a ``mode`` cache is stored in (uint8 block bytes for ``q8_0``)."""
    return np.dtype(_STORE_DTYPES[check_mode(mode)])


def row_bytes(mode: str, head_dim: int) -> int:
    """Bytes of one cached row (one position of one KV head, K or V)."""
    return row_elements(mode, head_dim) * store_dtype(mode).itemsize


# -- f16 --------------------------------------------------------------------------------------------


def quantize_f16_into(x: F32, out: F16) -> None:
    """Store float32 ``x`` (any shape) as float16 into ``out`` (same shape): round to nearest even,
    magnitudes beyond 65504 saturate (not inf)."""
    np.copyto(out, np.clip(x, -F16_MAX, F16_MAX), casting="same_kind")


def dequantize_f16_into(src: F16, out: F32) -> None:
    """float16 ``src`` -> float32 ``out`` (same shape), exact."""
    np.copyto(out, src, casting="safe")


# -- Q8_0 -------------------------------------------------------------------------------------------


def _roundf(y: F32) -> F32:
    """C's ``roundf``: to the nearest integer, halves away from zero (``np.rint`` rounds them to
    even). ``a - floor(a)`` is exact in floating point, so the half test is exact."""
    a = np.abs(y)
    whole = np.floor(a)
    whole += (a - whole) >= np.float32(0.5)
    return np.copysign(whole, y)


def quantize_q8_0_into(x: F32, out: U8) -> None:
    """Q8_0 blocks of float32 ``x`` ``[..., D]`` (``D`` a multiple of 32) into uint8 ``out``
    ``[..., D/32*34]`` (may be a strided view; each row's bytes contiguous)."""
    *lead, d_in = x.shape
    nb = d_in // QK8_0
    xb = np.asarray(x, dtype=np.float32).reshape(*lead, nb, QK8_0)  # [..., nb, 32]
    amax = np.max(np.abs(xb), axis=-1, keepdims=True)  # [..., nb, 1]
    d = amax / np.float32(127)
    inv = np.zeros_like(d)
    # 1/d where it is finite; a block below 127 * 2^-126 has a float16 scale of 0 and stores zeros
    np.divide(np.float32(1), d, out=inv, where=d >= np.float32(2.0**-126))
    q = _roundf(xb * inv).astype(np.int8)  # |x * inv| <= 127
    blocks = out.reshape(*lead, nb, Q8_0_BLOCK_BYTES)  # a view: a row's bytes are contiguous
    blocks[..., :2].view(np.float16)[...] = np.minimum(d, F16_MAX).astype(np.float16)
    blocks[..., 2:].view(np.int8)[...] = q


def dequantize_q8_0_into(src: U8, out: F32) -> None:
    """uint8 Q8_0 blocks ``src`` ``[..., D/32*34]`` -> float32 ``out`` ``[..., D]``: ``x = d * q``
    (exact in fp32). Both may be strided views whose rows are contiguous."""
    *lead, nbytes = src.shape
    nb = nbytes // Q8_0_BLOCK_BYTES
    blocks = src.reshape(*lead, nb, Q8_0_BLOCK_BYTES)
    scale = blocks[..., :2].view(np.float16).astype(np.float32)  # [..., nb, 1]
    np.multiply(blocks[..., 2:].view(np.int8), scale, out=out.reshape(*lead, nb, QK8_0))


def quantize_into(mode: str, x: F32, out: NDArray[np.generic]) -> None:
    """Store float32 rows ``x`` ``[..., D]`` in ``mode`` into ``out`` ``[..., row_elements]``."""
    if mode == "f32":
        out[...] = x
    elif mode == "f16":
        quantize_f16_into(x, out)  # type: ignore[arg-type]
    else:
        quantize_q8_0_into(x, out)  # type: ignore[arg-type]


def dequantize_into(mode: str, src: NDArray[np.generic], out: F32) -> None:
    """float32 values of stored rows ``src`` ``[..., row_elements]`` into ``out`` ``[..., D]``."""
    if mode == "f32":
        out[...] = src
    elif mode == "f16":
        dequantize_f16_into(src, out)  # type: ignore[arg-type]
    else:
        dequantize_q8_0_into(src, out)  # type: ignore[arg-type]
