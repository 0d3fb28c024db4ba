"""Typed access to the C extension ``edgert_neon_kernels._kernels``.

The extension may be missing (not built, or built for another CPU): importing this module never
fails; :func:`load_error` then says why, and every kernel call raises :class:`KernelsUnavailable`.
This module does no I/O.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

EXTENSION = "edgert_neon_kernels._kernels"

#: Weight types the kernels read in place, with their codes in the C enum and bytes per block.
WTYPE_CODES: dict[str, int] = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2}
BLOCK_BYTES: dict[str, int] = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
QK = 32


class KernelsUnavailable(ImportError):
    """The C extension could not be imported; the message names it and gives the cause."""


def _load() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(EXTENSION), ""
    except ImportError as exc:
        return None, f"C extension {EXTENSION} could not be imported ({type(exc).__name__}: {exc})"


_ext, _error = _load()


def load_error() -> str:
    """Why the extension is unavailable, or ``""`` when it loaded."""
    return _error


def _module() -> ModuleType:
    if _ext is None:
        raise KernelsUnavailable(_error)
    return _ext


def extension() -> ModuleType | None:
    """The C module itself (``None`` when it could not be imported), for callers that check their
    arguments themselves: the backend's hot paths."""
    return _ext


def c_time() -> tuple[int, float]:
    """``(calls, seconds)``: how many C ops ran so far in this process and the wall time the calling
    threads spent inside them (benchmarks: a run's time minus this is its Python work)."""
    calls, seconds = _module().c_time()
    return int(calls), float(seconds)


def swiglu(gate_up: NDArray[np.float32]) -> NDArray[np.float32]:
    """``silu(gate) * up`` for ``gate_up`` float32 ``[T, 2n]`` (gate columns, then up) -> a new
    float32 ``[T, n]``."""
    g = _f32(gate_up)
    if g.ndim != 2 or g.shape[1] % 2:
        raise ValueError(f"swiglu: gate_up must be [T, 2n], got {list(g.shape)}.")
    t, n2 = g.shape
    out = np.empty((t, n2 // 2), dtype=np.float32)
    _module().swiglu(g, out, t, n2 // 2)
    return out


def active_path() -> str:
    """The kernel path in use: ``neon``, ``neon-dotprod``, ``x86-avx2`` or ``portable``."""
    return str(_module().path())


def paths() -> dict[str, bool]:
    """Every path compiled into the extension, mapped to whether this CPU can run it."""
    return {str(k): bool(v) for k, v in _module().paths().items()}


def set_path(name: str) -> None:
    """Use the named path from now on (process-wide; tests and benchmarks compare paths)."""
    _module().set_path(name)


def has_dotprod() -> bool:
    """Whether the CPU reports the Armv8.2 dot-product instructions (always False off aarch64)."""
    return bool(_module().has_dotprod())


def row_nbytes(dtype: str, k: int) -> int:
    """Bytes of one row of ``k`` weights of block type ``dtype`` (``k`` a multiple of 32)."""
    return k // QK * BLOCK_BYTES[dtype]


def linear(
    x: NDArray[np.float32],
    blocks: NDArray[np.uint8],
    dtype: str,
    *,
    threads: int = 1,
    act_q8: bool = True,
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """``x @ W.T`` computed on the quantized blocks of ``W`` in place.

    ``x``: float32 ``[T, K]`` (or ``[K]``); ``blocks``: uint8 ``[N, K/32 * block_bytes]``, the GGUF
    rows of ``W`` (logical ``[N, K]``) of type ``dtype`` (``Q4_0``, ``Q4_1``, ``Q8_0``); returns float32
    ``[T, N]`` (``[N]`` for a 1-D ``x``), written into ``out`` when given. ``threads`` split the rows
    (the GIL is released). ``act_q8`` quantizes each block of 32 activations to int8 first (faster;
    error bounded by the activation rounding), otherwise activations stay fp32.
    """
    if dtype not in WTYPE_CODES:
        raise ValueError(f"Weight type {dtype} has no quantized kernel; use one of {sorted(WTYPE_CODES)}.")
    vector = x.ndim == 1
    x2 = np.ascontiguousarray(x.reshape(1, -1) if vector else x, dtype=np.float32)
    t, k = x2.shape
    if k % QK:
        raise ValueError(f"The input size {k} is not a multiple of the block size {QK}.")
    if blocks.ndim != 2 or blocks.dtype != np.uint8 or blocks.shape[1] != row_nbytes(dtype, k):
        raise ValueError(
            f"{dtype} weight blocks must be uint8 [N, {row_nbytes(dtype, k)}] for an input of {k}, "
            f"got {blocks.dtype} {list(blocks.shape)}."
        )
    n = blocks.shape[0]
    if out is None:
        out = np.empty((t, n), dtype=np.float32)
    elif out.dtype != np.float32 or out.size != t * n or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of {t * n} elements.")
    _module().linear(
        x2, np.ascontiguousarray(blocks), out, t, k, n, WTYPE_CODES[dtype], threads, act_q8
    )
    return out.reshape(n) if vector else out.reshape(t, n)


def linear_unchecked(
    x: NDArray[np.float32],
    blocks: NDArray[np.uint8],
    code: int,
    out: NDArray[np.float32],
    threads: int,
    act_q8: bool,
) -> None:
    """:func:`linear` without the friendly checks, for the backend's hot path: ``x`` C-contiguous
    float32 ``[T, K]``, ``blocks`` uint8 ``[N, row_bytes]`` of weight type ``code``
    (:data:`WTYPE_CODES`), ``out`` C-contiguous float32 ``[T, N]``. The C side still refuses
    buffers too small for the sizes, so a mistake raises instead of reading out of bounds."""
    t, k = x.shape
    _module().linear(x, blocks, out, t, k, blocks.shape[0], code, threads, act_q8)


def _f32(a: NDArray[np.float32]) -> NDArray[np.float32]:
    """``a`` itself when it is C-contiguous float32 (the usual case), else a contiguous copy."""
    if a.dtype == np.float32 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


def rmsnorm(
    x: NDArray[np.float32], w: NDArray[np.float32], eps: float
) -> NDArray[np.float32]:
    """RMSNorm over the last axis: ``x`` float32 ``[T, n]``, ``w`` float32 ``[n]`` -> a new float32
    ``[T, n]``, ``x / sqrt(mean(x**2) + eps) * w``."""
    x2, w2 = _f32(x), _f32(w)
    t, n = x2.shape
    if w2.size != n:
        raise ValueError(f"rmsnorm: the weight has {w2.size} elements for rows of {n}.")
    out = np.empty((t, n), dtype=np.float32)
    _module().rmsnorm(x2, w2, out, t, n, eps)
    return out


def rope(
    x: NDArray[np.float32],
    cos: NDArray[np.float32],
    sin: NDArray[np.float32],
    *,
    interleaved: bool,
) -> NDArray[np.float32]:
    """Rotary embedding: ``x`` float32 ``[T, H, D]``, ``cos``/``sin`` float32 ``[T, D/2]`` -> a new
    float32 ``[T, H, D]``. ``interleaved`` rotates pairs ``(x[2i], x[2i+1])`` (GGUF), otherwise
    ``(x[i], x[i + D/2])`` (Hugging Face)."""
    x2, c2, s2 = _f32(x), _f32(cos), _f32(sin)
    t, h, d = x2.shape
    if c2.shape != (t, d // 2) or s2.shape != (t, d // 2):
        raise ValueError(f"rope: cos and sin must be [{t}, {d // 2}], got {c2.shape}, {s2.shape}.")
    out = np.empty((t, h, d), dtype=np.float32)
    _module().rope(x2, c2, s2, out, t, h, d, interleaved)
    return out


def attention(
    q: NDArray[np.float32],
    k: NDArray[np.float32],
    v: NDArray[np.float32],
    start: int,
    *,
    threads: int = 1,
) -> NDArray[np.float32]:
    """Causal attention of ``T`` new queries over a KV cache, grouped KV heads.

    ``q`` float32 ``[T, H, D]`` at positions ``start .. start+T-1``; ``k``, ``v`` float32
    ``[Hkv, S, D]`` with ``S >= start + T`` (a view into a larger cache is fine as long as each
    head's ``[S, D]`` is contiguous). Query head ``h`` reads KV head ``h // (H / Hkv)``; query
    ``t`` sees positions ``0 .. start+t``. Returns float32 ``[T, H * D]``."""
    q2 = _f32(q)
    t, h, d = q2.shape
    hkv, s, _ = k.shape
    if k.strides[1:] != (4 * d, 4) or k.dtype != np.float32:
        k = np.ascontiguousarray(k, dtype=np.float32)
    if v.strides != k.strides or v.dtype != np.float32:
        v = np.ascontiguousarray(v, dtype=np.float32)
        k = np.ascontiguousarray(k)
    out = np.empty((t, h * d), dtype=np.float32)
    _module().attention(q2, k, v, out, t, h, d, hkv, s, start, threads)
    return out


def shutdown_pool() -> None:
    """Stop the kernel worker threads (they restart on the next call that needs them)."""
    if _ext is not None:
        _ext.shutdown_pool()
