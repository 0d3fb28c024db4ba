"""The ``neon`` kernel backend: quantized weights stay as the file's GGUF blocks in memory and
``linear`` runs the C kernels on them in place; everything else is the numpy reference's.

Q4_0, Q4_1 and Q8_0 matrices are held as ``uint8 [out, row_bytes]`` (their file bytes, about 1/6 to
1/8 of fp32); float tensors (norms, F16/F32 matrices) are prepared by the numpy backend as fp32.
When the C extension cannot be imported the backend still registers, reports itself unavailable
with the reason, and would behave exactly like the numpy backend.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgert_core import BackendStatus, TensorInfo, Weight
from edgert_core.backends.numpy_ref import NumpyBackend
from edgert_neon_kernels import kernels

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]


class NeonBackend(NumpyBackend):
    """Quantized matrix products on GGUF blocks: NEON on aarch64 (SDOT when the CPU has it), AVX2
    on x86-64, portable C elsewhere; threads over output rows with the GIL released."""

    name = "neon"
    description = "quantized GGUF blocks in place; C kernels (NEON, x86 AVX2 or portable C)"
    priority = 10

    def __init__(self, threads: int | None = None, act_q8: bool = True) -> None:
        """``threads``: kernel threads, default the CPUs this process may use. ``act_q8``: quantize
        activations to int8 per block of 32 before the product (about 2x faster than fp32
        activations on AVX2; relative error of order 1/254 of each block's largest activation)."""
        self.threads = threads if threads and threads > 0 else kernels.default_threads()
        self.act_q8 = act_q8

    def status(self) -> BackendStatus:
        error = kernels.load_error()
        if error:
            return BackendStatus(available=False, path="none", reason=error)
        return BackendStatus(available=True, path=kernels.active_path())

    def _in_place(self, info: TensorInfo) -> bool:
        """Whether this tensor is held as its file's blocks and multiplied by the C kernels."""
        return (
            info.dtype in kernels.WTYPE_CODES
            and len(info.shape) == 2
            and info.shape[1] % kernels.QK == 0
            and not kernels.load_error()
        )

    def weight_nbytes(self, info: TensorInfo) -> int:
        if self._in_place(info):
            return info.nbytes
        return super().weight_nbytes(info)

    def prepare_weight(self, info: TensorInfo, raw: U8, out: U8) -> Weight:
        """Copy a quantized matrix's blocks (``raw``, ``uint8 [info.nbytes]``) into ``out``; the weight's
        data is ``uint8 [rows, row_bytes]``, a view of ``out``. Other tensors: as the numpy backend."""
        if not self._in_place(info):
            return super().prepare_weight(info, raw, out)
        rows, k = info.shape
        data = out[: info.nbytes].reshape(rows, kernels.row_nbytes(info.dtype, k))
        data.reshape(-1)[:] = raw[: info.nbytes]
        return Weight(info, data)

    def linear(self, x: F32, w: Weight) -> F32:
        """``x @ W.T``: ``x`` float32 ``[T, in]``, ``w`` logical ``[out, in]`` -> float32 ``[T, out]``.
        On quantized blocks the C kernels run in place; fp32 weights go to the numpy backend."""
        if w.data.dtype == np.uint8 and w.info.dtype in kernels.WTYPE_CODES:
            blocks: U8 = w.data  # type: ignore[assignment]
            return kernels.linear(
                x, blocks, w.info.dtype, threads=self.threads, act_q8=self.act_q8
            )
        return super().linear(x, w)
