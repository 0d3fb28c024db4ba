"""The numpy reference kernel backend: every operation the model modules call, in fp32.

Sections: dequantization (GGUF block formats and float types, exact), and the backend class (how
weights are held: fp32 ``[out, in]``; ``linear``, ``rows`` and ``fuse_rows`` on them). The other math
ops (norms, activations, RoPE, attention) are :class:`~edgert_core.backends.base.KernelBackend`'s
reference implementations, which this class keeps. ``linear`` is where the time goes: one BLAS call
of ``x @ W.T`` on a C-contiguous fp32 ``[out, in]`` weight.

Every array here is float32; the code never lets a Python or numpy float64 scalar promote a result to
float64 (under numpy 2 rules a ``np.float64`` scalar would make everything float64 and 20x slower).
This module does no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from edgert_core.backends.base import BackendStatus, KernelBackend, TensorForm, Weight
from edgert_core.errors import ModelError
from edgert_core.hookspecs import hookimpl
from edgert_core.layout import TensorInfo

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]

# ---------------------------------------------------------------------------------------------
# Block formats (ggml-quants.h): 32 weights per block, a float16 scale first.
#   Q8_0: f16 d, int8 q[32]             -> x = d * q                     34 bytes
#   Q4_0: f16 d, u8 qs[16]              -> x = d * (nibble - 8)          18 bytes
#   Q4_1: f16 d, f16 m, u8 qs[16]       -> x = d * nibble + m            20 bytes
# Nibbles: byte j holds weight j in its low 4 bits and weight j + 16 in its high 4 bits.
# ---------------------------------------------------------------------------------------------

QK = 32
BLOCK_BYTES: dict[str, int] = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
FLOAT_BYTES: dict[str, int] = {"F32": 4, "F16": 2, "BF16": 2}
SUPPORTED_DTYPES = frozenset({*FLOAT_BYTES, *BLOCK_BYTES})

#: Blocks dequantized per step, so a big tensor never needs big temporaries.
_CHUNK_BLOCKS = 1 << 15


def file_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of ``dtype`` and logical ``shape`` takes in a file (rows of whole blocks)."""
    n = math.prod(shape)
    if dtype in FLOAT_BYTES:
        return n * FLOAT_BYTES[dtype]
    if dtype in BLOCK_BYTES:
        if not shape or shape[-1] % QK:
            raise ModelError(
                f"A {dtype} tensor's rows must hold whole blocks of {QK}, got shape {shape}."
            )
        return n // QK * BLOCK_BYTES[dtype]
    raise ModelError(
        f"Tensor type {dtype} is not supported; supported: {', '.join(sorted(SUPPORTED_DTYPES))}."
    )


def _half(blocks: U8, start: int) -> F32:
    """The float16 at byte ``start`` of every block: ``uint8 [nb, B] -> float32 [nb, 1]``."""
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: U8) -> U8:
    """``uint8 [nb, 16]`` packed nibbles -> ``uint8 [nb, 32]`` values 0..15 in weight order."""
    return np.concatenate((qs & 0x0F, qs >> 4), axis=1)


def _dequant_blocks(dtype: str, blocks: U8, out: F32) -> None:
    """Dequantize ``uint8 [nb, block_bytes]`` into ``float32 [nb, 32]`` ``out``."""
    if dtype == "Q8_0":
        np.multiply(blocks[:, 2:].view(np.int8), _half(blocks, 0), out=out)
    elif dtype == "Q4_0":
        q = _nibbles(blocks[:, 2:]).view(np.int8) - np.int8(8)
        np.multiply(q, _half(blocks, 0), out=out)
    elif dtype == "Q4_1":
        np.multiply(_nibbles(blocks[:, 4:]), _half(blocks, 0), out=out)
        out += _half(blocks, 2)
    else:  # pragma: no cover - guarded by callers
        raise ModelError(f"Tensor type {dtype} is not a block format.")


def dequantize_into(dtype: str, raw: U8, out: F32) -> None:
    """Exact fp32 values of a tensor's file bytes.

    ``raw``: ``uint8 [nbytes]`` in the file's format; ``out``: ``float32`` of the tensor's element count
    (any shape, C-contiguous), written in place.
    """
    flat = out.reshape(-1)
    if dtype == "F32":
        flat[:] = raw.view(np.float32)
    elif dtype == "F16":
        flat[:] = raw.view(np.float16)
    elif dtype == "BF16":
        # bf16 is the top half of an fp32: shift the 16 bits up, exact.
        np.left_shift(raw.view(np.uint16), 16, out=flat.view(np.uint32), dtype=np.uint32)
    elif dtype in BLOCK_BYTES:
        bb = BLOCK_BYTES[dtype]
        blocks = raw.reshape(-1, bb)
        vals = flat.reshape(-1, QK)
        for s in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            _dequant_blocks(dtype, blocks[s : s + _CHUNK_BLOCKS], vals[s : s + _CHUNK_BLOCKS])
    else:
        raise ModelError(
            f"Tensor type {dtype} is not supported by the numpy backend; supported: "
            f"{', '.join(sorted(SUPPORTED_DTYPES))}."
        )


def dequantize(dtype: str, raw: U8, shape: tuple[int, ...]) -> F32:
    """A new ``float32`` array of ``shape`` holding the exact values of ``raw`` (``uint8 [nbytes]``)."""
    out = np.empty(shape, dtype=np.float32)
    dequantize_into(dtype, raw, out)
    return out


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class NumpyBackend(KernelBackend):
    """Reference backend: weights held as fp32 ``[out, in]``; math in numpy + BLAS, fp32 throughout."""

    name = "numpy"
    description = "numpy reference: fp32 weights, exact dequantization, BLAS matmul"
    priority = 0

    def status(self) -> BackendStatus:
        return BackendStatus(available=True, path="numpy")

    def supported_dtypes(self) -> frozenset[str]:
        return SUPPORTED_DTYPES

    def prepared_form(self, info: TensorInfo) -> TensorForm:
        """fp32 of the logical shape; the file's bytes themselves for an F32 tensor."""
        return TensorForm.of(np.float32, info.shape, identical=info.dtype == "F32")

    def prepare_weight(self, info: TensorInfo, raw: U8, out: U8) -> Weight:
        """Dequantize ``raw`` (``uint8 [info.nbytes]``) into ``out`` (``uint8 [4 * n_elements]``); the
        weight's data is ``out`` viewed as ``float32 [*info.shape]``."""
        if info.dtype not in SUPPORTED_DTYPES:
            raise ModelError(
                f"Tensor {info.name} has type {info.dtype}, which the numpy backend cannot load; "
                f"supported: {', '.join(sorted(SUPPORTED_DTYPES))}."
            )
        data = out[: self.weight_nbytes(info)].view(np.float32).reshape(info.shape)
        dequantize_into(info.dtype, raw, data)
        return Weight(info, data)

    def new_weight(self, info: TensorInfo, raw: U8) -> Weight:
        """:meth:`prepare_weight` into freshly allocated memory."""
        return self.prepare_weight(info, raw, np.empty(self.weight_nbytes(info), dtype=np.uint8))

    # -- views of weights --------------------------------------------------------------------
    def to_float(self, w: Weight) -> F32:
        """A weight's values as ``float32 [*w.info.shape]`` (a view when held as fp32, else
        dequantized from the file's bytes held in ``w.data``)."""
        if w.data.dtype == np.float32:
            return w.data.reshape(w.info.shape)  # type: ignore[return-value]
        raw = np.ascontiguousarray(w.data).reshape(-1).view(np.uint8)
        return dequantize(w.info.dtype, raw, w.info.shape)

    def rows(self, w: Weight, ids: NDArray[np.int64]) -> F32:
        """Rows ``ids`` (``int64 [T]``) of a 2-D weight: ``float32 [T, in]`` (embedding lookup)."""
        if w.data.dtype == np.float32:
            return w.data.reshape(w.info.shape)[ids]  # type: ignore[return-value]
        raw = np.ascontiguousarray(w.data).reshape(w.info.shape[0], -1).view(np.uint8)[ids]
        return dequantize(w.info.dtype, raw.reshape(-1), (len(ids), w.info.shape[1]))

    # -- math ----------------------------------------------------------------------------------
    def linear(self, x: F32, w: Weight) -> F32:
        """``x @ W.T``: ``x`` float32 ``[T, in]``, ``w`` logical ``[out, in]`` -> float32 ``[T, out]``.

        The function where the time goes: one BLAS call on the C-contiguous fp32 weight (a
        matrix-vector product for a single token, which BLAS runs faster than a 1-row gemm)."""
        weight = self.to_float(w)
        if x.shape[0] == 1:
            y: F32 = np.matmul(weight, x[0])  # [out]
            return y[None, :]
        out: F32 = np.matmul(x, weight.T)  # [T, out]
        return out

    def fuse_rows(self, weights: Sequence[Weight]) -> Weight | None:
        """One weight ``[sum(out_i), in]`` viewing ``weights`` stacked by rows, when they are fp32,
        share ``in`` and lie back to back in memory (so ``linear`` runs once instead of
        ``len(weights)`` times); ``None`` otherwise. Nothing is copied."""
        arrays = [w.data for w in weights]
        if not arrays or any(a.dtype != np.float32 or a.ndim != 2 for a in arrays):
            return None
        cols = arrays[0].shape[1]
        for a, b in itertools.pairwise(arrays):
            if b.shape[1] != cols or b.ctypes.data != a.ctypes.data + a.nbytes:
                return None
        if not all(a.flags.c_contiguous for a in arrays):
            return None
        rows = sum(a.shape[0] for a in arrays)
        base = arrays[0].base
        if isinstance(base, np.ndarray) and base.ndim == 1 and base.dtype == np.uint8:
            # the usual case, weights in one pool block: a plain slice of it (as_strided is slow)
            start = arrays[0].ctypes.data - base.ctypes.data
            data = base[start : start + rows * cols * 4].view(np.float32).reshape(rows, cols)
        else:
            data = np.lib.stride_tricks.as_strided(arrays[0], shape=(rows, cols), strides=(cols * 4, 4))
        name = "+".join(w.info.name for w in weights)
        return Weight(TensorInfo(name, (rows, cols), "F32", rows * cols * 4), data)


@hookimpl
def edgert_register_backends(register: Callable[[type[KernelBackend]], None]) -> None:
    """The numpy backend is a built-in plugin."""
    register(NumpyBackend)
